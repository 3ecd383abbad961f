#pragma once

// What each src/algorithms/<algo>.cpp includes: an algorithm's reference math,
// functional function, C++ class and operator are written in one file, against
// the shared machinery of each layer.

#include <algorithm>
#include <array>
#include <cstring>
#include <initializer_list>
#include <optional>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <vector>

#include "functional/common.h"
#include "holocron/optim.h"
#include "kernels/reference/reference.h"
#include "ops.h"

namespace holocron::optim::detail {

using torch::optim::OptimizerParamGroup;
using TensorVector = std::vector<torch::Tensor>;

constexpr double kDefaultClipLow = 0.0;
constexpr double kDefaultClipHigh = 10.0;

inline functional::ScaleClip to_clip(const std::tuple<double, double>& clip) {
  return {std::get<0>(clip), std::get<1>(clip)};
}

inline functional::ScaleClip clip_or_default(const scale_clip_t& clip) {
  return clip ? to_clip(*clip) : functional::ScaleClip{kDefaultClipLow, kDefaultClipHigh};
}

// The functional layer's hyper-parameters from an algorithm's options (its hyper()): each field
// from the option of its name, `beta1`, `beta2` and `beta3` from `betas`, a ScaleClip from
// `scale_clip` (none standing for (0, 10) where the math always clips), so that hyper() restates
// none of them. A field that no option holds is set by the caller afterwards and named in
// `set_by_caller`; any other such field, or an option of its name but another type, is a bug,
// reported (at run time: the names are strings) by the construction of any such optimizer, whose
// options check calls hyper().
template <typename Hyper, typename Options>
Hyper hyper_of(const Options& options, std::initializer_list<std::string_view> set_by_caller = {}) {
  Hyper hyper{};
  auto assign = [&](const char* name, auto& field) {
    using Field = std::decay_t<decltype(field)>;
    bool found = false;
    auto take = [&](const char* option, const auto& value) {
      using Value = std::decay_t<decltype(value)>;
      if (std::strcmp(option, name) == 0) {
        found = true;
        if constexpr (std::is_same_v<Field, Value>) {
          field = value;
        } else if constexpr (std::is_same_v<Field, functional::ScaleClip> && std::is_same_v<Value, scale_clip_t>) {
          field = clip_or_default(value);
        } else if constexpr (std::is_same_v<Field, std::optional<functional::ScaleClip>> &&
                             std::is_same_v<Value, scale_clip_t>) {
          field = value ? std::optional<functional::ScaleClip>(to_clip(*value)) : std::nullopt;
        } else {
          TORCH_INTERNAL_ASSERT(false, "hyper_of: option '", option, "' has no conversion to its hyper-parameter");
        }
      } else if constexpr (std::is_same_v<Field, double> &&
                           (std::is_same_v<Value, betas2_t> || std::is_same_v<Value, betas3_t>)) {
        if (std::strcmp(option, "betas") != 0 || std::strlen(name) != 5 || std::strncmp(name, "beta", 4) != 0) return;
        const auto betas = std::apply([](auto... beta) { return std::array<double, sizeof...(beta)>{beta...}; }, value);
        const auto index = static_cast<size_t>(name[4] - '1');
        if (index < betas.size()) {
          field = betas[index];
          found = true;
        }
      }
    };
    Options::fields(options, take);
    TORCH_INTERNAL_ASSERT(found || std::find(set_by_caller.begin(), set_by_caller.end(), name) != set_by_caller.end(),
                          "hyper_of: no option holds the hyper-parameter '", name, "'");
  };
  visit_fields<Hyper>(hyper, assign);
  return hyper;
}

// Step counters after this step's increment; written back only once the
// functional call has succeeded.
template <typename State>
std::vector<int64_t> next_steps(const std::vector<State*>& states) {
  std::vector<int64_t> steps(states.size());
  for (size_t i = 0; i < states.size(); ++i) steps[i] = states[i]->step() + 1;
  return steps;
}

template <typename State>
void store_steps(const std::vector<State*>& states, const std::vector<int64_t>& steps) {
  for (size_t i = 0; i < states.size(); ++i) {
    functional::detail::prefetch_object(states, i);  // cold after the update's sweep
    states[i]->step(steps[i]);
  }
}

// One list per state buffer, in parameter order.
template <typename State, typename Getter>
functional::detail::HeldTensors gather(const std::vector<State*>& states, Getter getter) {
  functional::detail::HeldTensors out;
  out.reserve(states.size());
  for (auto* s : states) out.push_back(getter(*s));
  return out;
}

}  // namespace holocron::optim::detail
