#pragma once

/// \file
/// Parameter groups as timm makes them: biases and one-dimensional parameters out of weight decay.

#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>

#include <memory>
#include <string>
#include <vector>

namespace holocron::optim {

/// Whether `name` matches the shell-style `pattern` as Python's `fnmatch.fnmatch` does on Linux
/// (timm's name filters): `*` any text (dots included), `?` one character, `[a-c]` and `[!a-c]`
/// one character of a set or not of it; `^`, backslashes and POSIX classes have no special
/// meaning. Characters are bytes: for names outside ASCII, `?` matches one byte of UTF-8.
bool name_matches(const std::string& name, const std::string& pattern);

/// Two parameter groups of `module`'s named parameters that require grad (a parameter shared by
/// several modules once, under its first name), as timm's `param_groups_weight_decay` (and
/// `holocron_optim.param_groups`) makes them, for an optimizer whose options are `Options`:
/// first the parameters without weight decay, with `options` and `weight_decay(0)`: those of at
/// most one dimension or whose name ends in `.bias` (with `exclude_1d`), and those whose name
/// matches a pattern of `no_weight_decay_names` (see name_matches()); then the others, with
/// `options` and `weight_decay(weight_decay)`. A group without parameters is left out;
/// `weight_decay == 0` puts every parameter in the first group.
///
/// For LibTorch's own optimizers (torch::optim::SGD, ...), construct the optimizer with defaults
/// whose weight decay is 0: their add_param_group (LibTorch 2.13) replaces a group's option that
/// equals the options type's default with the optimizer's own, so a weight decay of 0 in the
/// first group would become the optimizer's. This library's optimizers keep each group's options.
///
///     auto optimizer = holocron::optim::LAMB(
///         holocron::optim::param_groups_weight_decay(*model, 0.05, {"pos_embed"},
///                                                    holocron::optim::LAMBOptions(1e-3)));
///
/// \throws std::invalid_argument if `weight_decay` is negative or not finite.
template <typename Options>
std::vector<torch::optim::OptimizerParamGroup> param_groups_weight_decay(
    const torch::nn::Module& module, double weight_decay,
    const std::vector<std::string>& no_weight_decay_names = {}, const Options& options = Options(),
    bool exclude_1d = true);

/// \cond INTERNAL
namespace detail {
// Which named parameters (that require grad) of `module` decay, in order; the check of
// `weight_decay` (a clear error before anything is built).
struct WeightDecaySplit {
  std::vector<torch::Tensor> no_decay, decay;
};
WeightDecaySplit split_by_weight_decay(const torch::nn::Module& module, double weight_decay,
                                       const std::vector<std::string>& no_weight_decay_names,
                                       bool exclude_1d);
}  // namespace detail

template <typename Options>
std::vector<torch::optim::OptimizerParamGroup> param_groups_weight_decay(
    const torch::nn::Module& module, double weight_decay,
    const std::vector<std::string>& no_weight_decay_names, const Options& options, bool exclude_1d) {
  auto split = detail::split_by_weight_decay(module, weight_decay, no_weight_decay_names, exclude_1d);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  if (!split.no_decay.empty()) {
    auto without = std::make_unique<Options>(options);
    without->weight_decay(0.0);
    groups.emplace_back(std::move(split.no_decay), std::move(without));
  }
  if (!split.decay.empty()) {
    auto with = std::make_unique<Options>(options);
    with->weight_decay(weight_decay);
    groups.emplace_back(std::move(split.decay), std::move(with));
  }
  return groups;
}
/// \endcond

}  // namespace holocron::optim
