#pragma once

/// \file
/// Structs whose fields are listed once: the options, the param states and the functional
/// layer's hyper-parameters declare each field with a macro that also numbers it, and
/// `detail::visit_fields` visits them in declaration order (serialization, comparison, the
/// operators' arguments read by name, the options handed to the math).

#include <type_traits>
#include <utility>

/// Starts the fields of a struct (before its first HOLOCRON_FIELD or HOLOCRON_HYPER). Fields are
/// numbered by their line below it (the same in every translation unit, as the one-definition
/// rule wants; two on one line do not compile).
#define HOLOCRON_FIELDS static constexpr int kHolocronFieldBase = __LINE__

/// A hyper-parameter of the functional layer: a plain member (designated initializers fill the
/// struct, which stays an aggregate), visited as `visit("name", self.name)`. A default follows it
/// as a member initializer: `HOLOCRON_HYPER(double, eps) = 0.0;`. Public, as any field: the visitor
/// is found by substitution, which would skip an inaccessible one without a word.
#define HOLOCRON_HYPER(T, name) HOLOCRON_HYPER_NUMBERED(T, name, __LINE__)
#define HOLOCRON_HYPER_NUMBERED(T, name, line) \
 public:                                        \
  HOLOCRON_FIELD_VISITOR(name, line, self.name) \
  T name

// The numbered visitor behind HOLOCRON_FIELD and HOLOCRON_HYPER; `access` reads the field of `self`.
#define HOLOCRON_FIELD_VISITOR(name, line, access)                                                       \
  static constexpr const char* field_name(::holocron::optim::detail::FieldIndex<line - kHolocronFieldBase>) { \
    static_assert(line - kHolocronFieldBase < ::holocron::optim::detail::kMaxFieldLines,                 \
                  "a field more than detail::kMaxFieldLines lines below HOLOCRON_FIELDS");               \
    return #name;                                                                                       \
  }                                                                                                     \
  template <typename Self, typename Visitor>                                                            \
  static void visit_field(::holocron::optim::detail::FieldIndex<line - kHolocronFieldBase>, Self& self,  \
                          Visitor& visit) {                                                             \
    visit(#name, access);                                                                               \
  }

namespace holocron::optim::detail {

// A field is declared once (HOLOCRON_FIELD, HOLOCRON_HYPER), so that what visits the fields
// (serialization, comparison, the defaults' listing, the operators' readers) cannot miss one.
template <int N>
struct FieldIndex {};

// How far below HOLOCRON_FIELDS a field may stand (a static_assert in each field holds it).
inline constexpr int kMaxFieldLines = 192;

template <typename Derived, int N, typename = void>
struct HasField : std::false_type {};
template <typename Derived, int N>
struct HasField<Derived, N, std::void_t<decltype(Derived::field_name(FieldIndex<N>{}))>> : std::true_type {};

// Every line below HOLOCRON_FIELDS is tried, in order.
template <typename Derived, typename Self, typename Visitor, int... N>
void visit_declared_fields(Self& self, Visitor& visit, std::integer_sequence<int, N...>) {
  (
      [&] {
        if constexpr (HasField<Derived, N>::value) Derived::visit_field(FieldIndex<N>{}, self, visit);
      }(),
      ...);
}

/// Calls `visit(name, field)` on each field of `self` (a `Derived`, const or not), in
/// declaration order.
template <typename Derived, typename Self, typename Visitor>
void visit_fields(Self& self, Visitor& visit) {
  visit_declared_fields<Derived>(self, visit, std::make_integer_sequence<int, kMaxFieldLines>{});
}

}  // namespace holocron::optim::detail
