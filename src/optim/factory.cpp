// create_optimizer: timm's names (and holocron's own) mapped onto the classes,
// with the defaults that give timm's numbers.

#include "holocron/optim/factory.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <stdexcept>
#include <tuple>
#include <utility>

#include "holocron/optim/adabelief.h"
#include "holocron/optim/adamp.h"
#include "holocron/optim/ademamix.h"
#include "holocron/optim/adan.h"
#include "holocron/optim/lamb.h"
#include "holocron/optim/lars.h"
#include "holocron/optim/param_groups.h"
#include "holocron/optim/ralars.h"
#include "holocron/optim/tadam.h"
#include "holocron/optim/wrapper.h"

namespace holocron::optim {
namespace {

using Groups = std::vector<torch::optim::OptimizerParamGroup>;
// The optimizer from groups, or from a module whose groups are made with the name's options.
using Maker = std::function<std::unique_ptr<torch::optim::Optimizer>(const torch::nn::Module*, const Groups&,
                                                                       const FactoryOptions&)>;

template <typename Optimizer, typename Options>
Maker maker(std::function<Options(const FactoryOptions&)> defaults) {
  return [defaults](const torch::nn::Module* module, const Groups& groups, const FactoryOptions& options) {
    auto base = defaults(options);
    base.state_precision(options.state_precision).kahan_summation(options.kahan_summation);
    if (!module) return std::unique_ptr<torch::optim::Optimizer>(new Optimizer(groups, base.weight_decay(options.weight_decay)));
    auto made = param_groups_weight_decay(*module, options.weight_decay, options.no_weight_decay_names, base,
                                          options.filter_bias_and_bn);
    // As timm: the groups hold the weight decay; the optimizer's default is 0.
    return std::unique_ptr<torch::optim::Optimizer>(new Optimizer(made, base.weight_decay(0.0)));
  };
}

LAMBOptions timm_lamb(const FactoryOptions& o, bool trust_clip, bool decoupled, bool caution = false) {
  return LAMBOptions(o.lr.value_or(1e-3))
      .caution(caution)
      .decoupled_weight_decay(decoupled)
      .bias_correction(true)
      .eps(1e-6)
      .max_grad_norm(1.0)
      .always_adapt(false)
      .trust_clip(trust_clip)
      .scale_clip(std::make_tuple(0.0, INFINITY));
}

LARSOptions timm_lars(const FactoryOptions& o, bool nesterov, bool trust_clip) {
  return LARSOptions(o.lr.value_or(1.0))
      .momentum(o.momentum)
      .nesterov(nesterov)
      .trust_coeff(1e-3)
      .eps(1e-8)
      .trust_clip(trust_clip)
      .always_adapt(false)
      .trust_on_gradient(true);
}

// timm's Adan: the authors' decay, never in the gradient.
AdanOptions timm_adan(const FactoryOptions& o, bool no_prox, bool caution) {
  return AdanOptions(o.lr.value_or(1e-3)).decoupled_weight_decay(true).no_prox(no_prox).caution(caution);
}

// timm's AdaBelief: eps in the second moment (and its default 1e-16), the decay decoupled.
AdaBeliefOptions timm_adabelief(const FactoryOptions& o, bool rectify) {
  return AdaBeliefOptions(o.lr.value_or(1e-3))
      .eps(1e-16)
      .eps_in_variance(true)
      .decoupled_weight_decay(true)
      .rectify(rectify);
}

// timm's adamp: the authors' projection and decay, with timm's defaults for the name.
AdamPOptions timm_adamp(const FactoryOptions& o) {
  return AdamPOptions(o.lr.value_or(1e-3)).decoupled_weight_decay(true).channel_projection(true).wd_ratio(0.01).nesterov(true);
}

const std::map<std::string, Maker>& registry() {
  static const std::map<std::string, Maker> makers = {
      {"lamb", maker<LAMB, LAMBOptions>([](const FactoryOptions& o) { return timm_lamb(o, false, false); })},
      {"lambc", maker<LAMB, LAMBOptions>([](const FactoryOptions& o) { return timm_lamb(o, true, false); })},
      {"lambw", maker<LAMB, LAMBOptions>([](const FactoryOptions& o) { return timm_lamb(o, false, true); })},
      {"lambcw", maker<LAMB, LAMBOptions>([](const FactoryOptions& o) { return timm_lamb(o, true, true); })},
      {"clamb", maker<LAMB, LAMBOptions>([](const FactoryOptions& o) { return timm_lamb(o, false, false, true); })},
      {"clambw", maker<LAMB, LAMBOptions>([](const FactoryOptions& o) { return timm_lamb(o, false, true, true); })},
      {"adan", maker<Adan, AdanOptions>([](const FactoryOptions& o) { return timm_adan(o, false, false); })},
      {"adanw", maker<Adan, AdanOptions>([](const FactoryOptions& o) { return timm_adan(o, true, false); })},
      {"cadan", maker<Adan, AdanOptions>([](const FactoryOptions& o) { return timm_adan(o, false, true); })},
      {"cadanw", maker<Adan, AdanOptions>([](const FactoryOptions& o) { return timm_adan(o, true, true); })},
      {"adabelief",
       maker<AdaBelief, AdaBeliefOptions>([](const FactoryOptions& o) { return timm_adabelief(o, false); })},
      {"radabelief",
       maker<AdaBelief, AdaBeliefOptions>([](const FactoryOptions& o) { return timm_adabelief(o, true); })},
      {"adamp", maker<AdamP, AdamPOptions>([](const FactoryOptions& o) { return timm_adamp(o); })},
      {"lars", maker<LARS, LARSOptions>([](const FactoryOptions& o) { return timm_lars(o, false, false); })},
      {"larc", maker<LARS, LARSOptions>([](const FactoryOptions& o) { return timm_lars(o, false, true); })},
      {"nlars", maker<LARS, LARSOptions>([](const FactoryOptions& o) { return timm_lars(o, true, false); })},
      {"nlarc", maker<LARS, LARSOptions>([](const FactoryOptions& o) { return timm_lars(o, true, true); })},
      {"ralars", maker<RaLars, RaLarsOptions>(
                     [](const FactoryOptions& o) { return RaLarsOptions(o.lr.value_or(RaLarsOptions().lr())); })},
      {"tadam", maker<TAdam, TAdamOptions>(
                    [](const FactoryOptions& o) { return TAdamOptions(o.lr.value_or(TAdamOptions().lr())); })},
      {"ademamix", maker<AdEMAMix, AdEMAMixOptions>([](const FactoryOptions& o) {
         return AdEMAMixOptions(o.lr.value_or(AdEMAMixOptions().lr()));
       })},
  };
  return makers;
}

// timm's names whose algorithm this library does not compute yet.
const char* not_yet(const std::string& name) {
  static const std::map<std::string, const char*> names = {
      {"cadamp", "timm's spherical cautious updates"}, {"cadamw", "cautious updates"}, {"cadopt", "cautious updates"},
      {"cadoptw", "cautious updates"}, {"clion", "cautious updates"}, {"cmars", "cautious updates"},
      {"cnadamw", "cautious updates"}, {"crmsproptf", "cautious updates"}, {"csgdw", "cautious updates"},
  };
  const auto it = names.find(name);
  return it == names.end() ? nullptr : it->second;
}

std::unique_ptr<torch::optim::Optimizer> create(const std::string& name, const torch::nn::Module* module,
                                                const Groups& groups, const FactoryOptions& options) {
  std::string lower = name;
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
  const auto underscore = lower.find('_');
  const std::string prefix = underscore == std::string::npos ? "" : lower.substr(0, underscore);
  const std::string base = underscore == std::string::npos ? lower : lower.substr(underscore + 1);
  if (!prefix.empty() && prefix != "scout" && prefix != "lookahead") {
    throw std::invalid_argument("create_optimizer: unknown optimizer '" + name + "'");
  }
  const char* missing = not_yet(base);
  TORCH_CHECK_NOT_IMPLEMENTED(missing == nullptr, "create_optimizer: '", base, "' (", missing ? missing : "",
                              ") is not available yet");
  const auto it = registry().find(base);
  if (it == registry().end()) {
    throw std::invalid_argument("create_optimizer: unknown optimizer '" + name + "' (see list_optimizers())");
  }
  auto made = it->second(module, groups, options);
  if (prefix == "scout") return std::make_unique<Scout>(std::shared_ptr<torch::optim::Optimizer>(std::move(made)));
  if (prefix == "lookahead") {
    return std::make_unique<Lookahead>(std::shared_ptr<torch::optim::Optimizer>(std::move(made)),
                                       LookaheadOptions().sync_rate(0.5).sync_period(6).slow_from_first_sync(true));
  }
  return made;
}

}  // namespace

std::vector<std::string> list_optimizers() {
  std::vector<std::string> names;
  for (const auto& entry : registry()) names.push_back(entry.first);
  return names;
}

std::unique_ptr<torch::optim::Optimizer> create_optimizer(const std::string& name, const torch::nn::Module& module,
                                                          const FactoryOptions& options) {
  return create(name, &module, {}, options);
}

std::unique_ptr<torch::optim::Optimizer> create_optimizer(const std::string& name, const Groups& groups,
                                                          const FactoryOptions& options) {
  return create(name, nullptr, groups, options);
}

}  // namespace holocron::optim
