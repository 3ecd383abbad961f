#pragma once

// Helpers shared by the C++ tests: algorithm traits for typed tests, state
// snapshots through the public `fields` visitors, and comparisons.

#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/optim/optimizer.h>

#include <holocron/optim.h>

#include "registry.h"

#include <cmath>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace holocron_test {

namespace ho = holocron::optim;
using torch::optim::OptimizerParamGroup;

// ---- Comparisons -----------------------------------------------------------

inline std::vector<double> to_vec(const torch::Tensor& t) {
  auto c = t.detach().to(torch::kDouble).contiguous().reshape({-1});
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

// |a - b| <= rtol * |b| + atol, element-wise.
inline void expect_close(const torch::Tensor& actual, const std::vector<double>& expected,
                         const std::string& what, double rtol = 1e-10, double atol = 1e-14) {
  ASSERT_TRUE(actual.defined()) << what << " is undefined";
  const auto a = to_vec(actual);
  ASSERT_EQ(a.size(), expected.size()) << what;
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_TRUE(std::isfinite(a[i])) << what << "[" << i << "] = " << a[i];
    ASSERT_LE(std::abs(a[i] - expected[i]), rtol * std::abs(expected[i]) + atol)
        << what << "[" << i << "]: got " << a[i] << ", expected " << expected[i];
  }
}

inline void expect_close_scalar(double actual, double expected, const std::string& what,
                                double rtol = 1e-10, double atol = 1e-14) {
  ASSERT_LE(std::abs(actual - expected), rtol * std::abs(expected) + atol)
      << what << ": got " << actual << ", expected " << expected;
}

// Runs `fn`, expects it to throw (c10::Error or a std exception) with a
// message that contains `needle`.
inline void expect_throw_naming(const std::function<void()>& fn, const std::string& needle,
                                const std::string& context) {
  try {
    fn();
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
        << context << ": the message does not name '" << needle << "': " << e.what();
    return;
  }
  ADD_FAILURE() << context << ": no exception (expected one naming '" << needle << "')";
}

// ---- State snapshots -------------------------------------------------------

// Collects every field of a param state (tensors cloned) in declaration order.
struct StateSnapshot {
  std::vector<std::string> names;
  std::vector<torch::Tensor> tensors;  // undefined where the field is
  std::vector<double> numbers;         // NaN for tensor fields

  template <typename T>
  void operator()(const char* name, const T& value) {
    names.emplace_back(name);
    if constexpr (std::is_same_v<T, torch::Tensor>) {
      tensors.push_back(value.defined() ? value.clone() : torch::Tensor());
      numbers.push_back(std::nan(""));
    } else {
      tensors.emplace_back();
      numbers.push_back(static_cast<double>(value));
    }
  }
};

inline void expect_same_snapshot(const StateSnapshot& a, const StateSnapshot& b,
                                 const std::string& what) {
  ASSERT_EQ(a.names, b.names) << what;
  for (size_t i = 0; i < a.names.size(); ++i) {
    ASSERT_EQ(a.tensors[i].defined(), b.tensors[i].defined()) << what << " " << a.names[i];
    if (a.tensors[i].defined()) {
      EXPECT_TRUE(torch::equal(a.tensors[i], b.tensors[i])) << what << " " << a.names[i];
    } else if (!std::isnan(a.numbers[i]) || !std::isnan(b.numbers[i])) {
      EXPECT_EQ(a.numbers[i], b.numbers[i]) << what << " " << a.names[i];
    }
  }
}

template <typename State>
StateSnapshot snapshot_state(const torch::optim::OptimizerParamState& state) {
  StateSnapshot snap;
  State::fields(static_cast<const State&>(state), snap);
  return snap;
}

// Snapshot of every parameter's state (in group order); `has` is false where
// a parameter has no state.
struct OptimizerSnapshot {
  std::vector<bool> has;
  std::vector<StateSnapshot> states;
  std::vector<torch::Tensor> params;
  std::vector<double> lrs;
};

template <typename State>
OptimizerSnapshot snapshot(const torch::optim::Optimizer& opt) {
  OptimizerSnapshot out;
  for (const auto& group : opt.param_groups()) {
    out.lrs.push_back(group.options().get_lr());
    for (const auto& p : group.params()) {
      out.params.push_back(p.detach().clone());
      auto it = opt.state().find(p.unsafeGetTensorImpl());
      out.has.push_back(it != opt.state().end());
      out.states.push_back(it != opt.state().end() ? snapshot_state<State>(*it->second)
                                                   : StateSnapshot{});
    }
  }
  return out;
}

inline void expect_same(const OptimizerSnapshot& a, const OptimizerSnapshot& b,
                        const std::string& what) {
  ASSERT_EQ(a.params.size(), b.params.size()) << what;
  EXPECT_EQ(a.lrs, b.lrs) << what;
  for (size_t i = 0; i < a.params.size(); ++i) {
    EXPECT_TRUE(torch::equal(a.params[i], b.params[i])) << what << ": param " << i;
    ASSERT_EQ(a.has[i], b.has[i]) << what << ": param " << i;
    if (a.has[i]) expect_same_snapshot(a.states[i], b.states[i], what + ": state of param " +
                                                                     std::to_string(i));
  }
}

// ---- Algorithm traits for typed tests -------------------------------------

// The traits and their one list live in the test registry (registry.h).
using namespace holocron::optim::testing;  // NOLINT(google-build-using-namespace): the registry's traits
using AllAlgorithms = Algorithms::As<::testing::Types>;

struct TraitsName {
  template <typename T>
  static std::string GetName(int) {
    return T::name;
  }
};

// ---- A tiny deterministic model --------------------------------------------

// Parameters of a linear model y = x W^T + b (plus an unused-by-shape 0-d
// scale), all double, requiring grad.
struct TinyModel {
  torch::Tensor weight, bias, scale;

  static TinyModel make(uint64_t seed) {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    TinyModel m;
    m.weight = at::randn({3, 4}, gen, torch::kDouble).set_requires_grad(true);
    m.bias = at::randn({3}, gen, torch::kDouble).set_requires_grad(true);
    m.scale = at::randn({}, gen, torch::kDouble).add_(1.5).set_requires_grad(true);
    return m;
  }
  TinyModel clone() const {
    TinyModel m;
    m.weight = weight.detach().clone().set_requires_grad(true);
    m.bias = bias.detach().clone().set_requires_grad(true);
    m.scale = scale.detach().clone().set_requires_grad(true);
    return m;
  }
  std::vector<torch::Tensor> params() const { return {weight, bias, scale}; }

  // A different batch each step.
  torch::Tensor loss(int64_t step) const {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(1000 + static_cast<uint64_t>(step));
    auto x = at::randn({8, 4}, gen, torch::kDouble);
    auto y = at::randn({8, 3}, gen, torch::kDouble);
    auto pred = at::matmul(x, weight.t()) * scale + bias;
    return (pred - y).pow(2).mean();
  }

  void zero_grad() const {
    for (const auto& p : params()) p.mutable_grad() = torch::Tensor();
  }
  // Sets the gradients of `loss(step)`.
  void backward(int64_t step) const {
    zero_grad();
    loss(step).backward();
  }
};

inline bool all_equal(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!torch::equal(a[i], b[i])) return false;
  }
  return true;
}

}  // namespace holocron_test
