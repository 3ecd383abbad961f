#include "holocron/optim/param_groups.h"

#include <fnmatch.h>

#include <cmath>
#include <sstream>
#include <stdexcept>

namespace holocron::optim {

bool name_matches(const std::string& name, const std::string& pattern) {
  // No FNM_PATHNAME or FNM_PERIOD: `*` crosses dots and slashes, as in Python's fnmatch, which
  // has no escapes either (FNM_NOESCAPE).
  return ::fnmatch(pattern.c_str(), name.c_str(), FNM_NOESCAPE) == 0;
}

namespace detail {

WeightDecaySplit split_by_weight_decay(const torch::nn::Module& module, double weight_decay,
                                       const std::vector<std::string>& no_weight_decay_names,
                                       bool exclude_1d) {
  if (!(std::isfinite(weight_decay) && weight_decay >= 0.0)) {
    std::ostringstream message;
    message << "param_groups_weight_decay: invalid weight_decay value: " << weight_decay
            << " (expected in [0, inf))";
    throw std::invalid_argument(message.str());
  }
  WeightDecaySplit split;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    const auto& name = item.key();
    const auto& param = item.value();
    if (!param.requires_grad()) continue;
    bool decays = weight_decay != 0.0;
    if (decays && exclude_1d) {
      const std::string suffix = ".bias";
      const bool is_bias = name.size() >= suffix.size() &&
                           name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
      decays = param.dim() > 1 && !is_bias;
    }
    for (const auto& pattern : no_weight_decay_names) {
      if (decays && name_matches(name, pattern)) decays = false;
    }
    (decays ? split.decay : split.no_decay).push_back(param);
  }
  return split;
}

}  // namespace detail

}  // namespace holocron::optim
