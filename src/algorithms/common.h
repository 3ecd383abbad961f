#pragma once

// What each src/algorithms/<algo>.cpp includes: an algorithm's reference math,
// functional function, C++ class and operator are written in one file, against
// the shared machinery of each layer.

#include <tuple>
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
  for (size_t i = 0; i < states.size(); ++i) states[i]->step(steps[i]);
}

// One list per state buffer, in parameter order.
template <typename State, typename Getter>
TensorVector gather(const std::vector<State*>& states, Getter getter) {
  TensorVector out;
  out.reserve(states.size());
  for (auto* s : states) out.push_back(getter(*s));
  return out;
}

}  // namespace holocron::optim::detail
