#pragma once

// The C++ test registry: one traits struct per algorithm, and `Algorithms`, the
// one list of them that the typed tests (test_util.h's AllAlgorithms), the
// parity runner (dispatch by name, --defaults) and the checkpoint fuzzer
// (choice by index) read. Adding an algorithm to the C++ tests is adding its
// traits here and its name to `Algorithms`.

#include <cstddef>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <holocron/optim.h>

namespace holocron::optim::testing {

namespace ho = holocron::optim;

// Options as `name=value` doubles (the parity runner's command line; booleans are 0/1).
using Settings = std::map<std::string, double>;

inline double setting(const Settings& s, const std::string& key, double fallback) {
  auto it = s.find(key);
  return it == s.end() ? fallback : it->second;
}

inline ho::scale_clip_t clip_setting(const Settings& s) {
  if (!s.count("clip_low")) return std::nullopt;
  return std::make_tuple(s.at("clip_low"), s.at("clip_high"));
}

inline bool flag_setting(const Settings& s, const std::string& key, bool fallback = false) {
  return setting(s, key, fallback ? 1.0 : 0.0) != 0.0;
}

// The options every Adam-like algorithm shares, from settings; betas not given
// keep the algorithm's own defaults.
template <typename Options>
Options adam_like_settings(Options options, const Settings& s) {
  if (s.count("beta1")) {
    if constexpr (std::tuple_size_v<std::decay_t<decltype(options.betas())>> == 2) {
      options.betas(std::make_tuple(s.at("beta1"), s.at("beta2")));
    } else {
      options.betas(std::make_tuple(s.at("beta1"), s.at("beta2"), s.at("beta3")));
    }
  }
  return options.eps(setting(s, "eps", 1e-8))
      .weight_decay(setting(s, "weight_decay", 0.0))
      .decoupled_weight_decay(flag_setting(s, "decoupled_weight_decay"));
}

inline std::optional<double> optional_setting(const Settings& s, const std::string& key) {
  auto it = s.find(key);
  return it == s.end() ? std::nullopt : std::optional<double>(it->second);
}

// Each traits struct gives:
//   name: the class's name;
//   options(lr): non-default options with the optional buffers switched on;
//   plain(lr): weight_decay 0 (the update is then proportional to lr given the state);
//   from_settings(s): options from `name=value` settings (the parity runner);
//   fuzzed(in, lr, choose): options drawn by the checkpoint fuzzer, where
//     `choose(low, high)` is a value in range or a bad one.
struct LarsTraits {
  using Opt = ho::LARS;
  using Options = ho::LARSOptions;
  using State = ho::LARSParamState;
  static constexpr const char* name = "LARS";
  static Options options(double lr) { return Options(lr).momentum(0.9).dampening(0.1).weight_decay(1e-3); }
  static Options plain(double lr) { return Options(lr).momentum(0.9); }
  static Options from_settings(const Settings& s) {
    return Options(setting(s, "lr", 1e-3))
        .momentum(setting(s, "momentum", 0.0))
        .dampening(setting(s, "dampening", 0.0))
        .weight_decay(setting(s, "weight_decay", 0.0))
        .nesterov(flag_setting(s, "nesterov"))
        .scale_clip(clip_setting(s))
        .trust_coeff(setting(s, "trust_coeff", 1.0))
        .eps(setting(s, "eps", 0.0))
        .trust_clip(flag_setting(s, "trust_clip"))
        .always_adapt(flag_setting(s, "always_adapt", true))
        .trust_on_gradient(flag_setting(s, "trust_on_gradient"))
        .decoupled_weight_decay(flag_setting(s, "decoupled_weight_decay"));
  }
  template <typename Input, typename Choose>
  static Options fuzzed(Input& in, double lr, double wd, double, double, Choose choose) {
    return Options(lr)
        .momentum(choose(0.0, 0.9))
        .weight_decay(wd)
        .trust_coeff(choose(0.0, 1.0))
        .eps(choose(0.0, 1e-3))
        .trust_clip(in.ConsumeBool())
        .always_adapt(in.ConsumeBool())
        .trust_on_gradient(in.ConsumeBool());
  }
};

struct LambTraits {
  using Opt = ho::LAMB;
  using Options = ho::LAMBOptions;
  using State = ho::LAMBParamState;
  static constexpr const char* name = "LAMB";
  static Options options(double lr) {
    return Options(lr).betas({0.8, 0.95}).weight_decay(1e-2).scale_clip(std::make_tuple(0.1, 5.0));
  }
  static Options plain(double lr) { return Options(lr); }
  static Options from_settings(const Settings& s) {
    return adam_like_settings(Options(setting(s, "lr", 1e-3)), s)
        .scale_clip(clip_setting(s))
        .bias_correction(flag_setting(s, "bias_correction"))
        .grad_averaging(flag_setting(s, "grad_averaging", true))
        .max_grad_norm(optional_setting(s, "max_grad_norm"))
        .trust_clip(flag_setting(s, "trust_clip"))
        .always_adapt(flag_setting(s, "always_adapt", true))
        .caution(flag_setting(s, "caution"))
        .corrected_weight_decay(flag_setting(s, "corrected_weight_decay"))
        .max_lr(optional_setting(s, "max_lr"));
  }
  template <typename Input, typename Choose>
  static Options fuzzed(Input& in, double lr, double wd, double b1, double b2, Choose choose) {
    auto options = Options(lr).betas({b1, b2}).weight_decay(wd).bias_correction(in.ConsumeBool());
    if (in.ConsumeBool()) options.max_grad_norm(choose(0.0, 10.0));
    return options.grad_averaging(in.ConsumeBool())
        .trust_clip(in.ConsumeBool())
        .always_adapt(in.ConsumeBool())
        .decoupled_weight_decay(in.ConsumeBool());
  }
};

struct RaLarsTraits {
  using Opt = ho::RaLars;
  using Options = ho::RaLarsOptions;
  using State = ho::RaLarsParamState;
  static constexpr const char* name = "RaLars";
  static Options options(double lr) {
    return Options(lr).betas({0.9, 0.9}).weight_decay(1e-2).force_adaptive_momentum(true);
  }
  static Options plain(double lr) { return Options(lr).betas({0.9, 0.9}); }
  static Options from_settings(const Settings& s) {
    return adam_like_settings(Options(setting(s, "lr", 1e-3)), s)
        .scale_clip(clip_setting(s))
        .force_adaptive_momentum(flag_setting(s, "force_adaptive_momentum"));
  }
  template <typename Input, typename Choose>
  static Options fuzzed(Input&, double lr, double, double b1, double b2, Choose) {
    return Options(lr).betas({b1, b2});
  }
};

struct TAdamTraits {
  using Opt = ho::TAdam;
  using Options = ho::TAdamOptions;
  using State = ho::TAdamParamState;
  static constexpr const char* name = "TAdam";
  static Options options(double lr) { return Options(lr).amsgrad(true).weight_decay(1e-2).dof(4.0); }
  static Options plain(double lr) { return Options(lr); }
  static Options from_settings(const Settings& s) {
    ho::dof_t dof;
    if (s.count("dof")) dof = s.at("dof");
    return adam_like_settings(Options(setting(s, "lr", 1e-3)), s).amsgrad(flag_setting(s, "amsgrad")).dof(dof);
  }
  template <typename Input, typename Choose>
  static Options fuzzed(Input& in, double lr, double, double b1, double b2, Choose) {
    return Options(lr).betas({b1, b2}).amsgrad(in.ConsumeBool());
  }
};

struct AdaBeliefTraits {
  using Opt = ho::AdaBelief;
  using Options = ho::AdaBeliefOptions;
  using State = ho::AdaBeliefParamState;
  static constexpr const char* name = "AdaBelief";
  static Options options(double lr) { return Options(lr).amsgrad(true).weight_decay(1e-2); }
  static Options plain(double lr) { return Options(lr); }
  static Options from_settings(const Settings& s) {
    return adam_like_settings(Options(setting(s, "lr", 1e-3)), s)
        .amsgrad(flag_setting(s, "amsgrad"))
        .rectify(flag_setting(s, "rectify"))
        .degenerated_to_sgd(flag_setting(s, "degenerated_to_sgd", true))
        .fixed_decay(flag_setting(s, "fixed_decay"))
        .eps_in_variance(flag_setting(s, "eps_in_variance"));
  }
  template <typename Input, typename Choose>
  static Options fuzzed(Input& in, double lr, double, double, double, Choose) {
    const bool decoupled = in.ConsumeBool();
    return Options(lr)
        .amsgrad(in.ConsumeBool())
        .decoupled_weight_decay(decoupled)
        .fixed_decay(decoupled && in.ConsumeBool())
        .rectify(in.ConsumeBool())
        .degenerated_to_sgd(in.ConsumeBool())
        .eps_in_variance(in.ConsumeBool());
  }
};

struct AdamPTraits {
  using Opt = ho::AdamP;
  using Options = ho::AdamPOptions;
  using State = ho::AdamPParamState;
  static constexpr const char* name = "AdamP";
  static Options options(double lr) { return Options(lr).amsgrad(true).weight_decay(1e-2).delta(0.5); }
  static Options plain(double lr) { return Options(lr); }
  static Options from_settings(const Settings& s) {
    return adam_like_settings(Options(setting(s, "lr", 1e-3)), s)
        .amsgrad(flag_setting(s, "amsgrad"))
        .delta(setting(s, "delta", 0.1))
        .nesterov(flag_setting(s, "nesterov"))
        .wd_ratio(setting(s, "wd_ratio", 1.0))
        .channel_projection(flag_setting(s, "channel_projection"))
        .caution(flag_setting(s, "caution"));
  }
  template <typename Input, typename Choose>
  static Options fuzzed(Input& in, double lr, double, double, double, Choose choose) {
    const bool timm = in.ConsumeBool();
    return Options(lr)
        .delta(choose(0.0, 1.0))
        .nesterov(in.ConsumeBool())
        .channel_projection(timm)
        .decoupled_weight_decay(timm)
        .wd_ratio(timm ? choose(0.0, 1.0) : 1.0)
        .caution(in.ConsumeBool());
  }
};

struct AdanTraits {
  using Opt = ho::Adan;
  using Options = ho::AdanOptions;
  using State = ho::AdanParamState;
  static constexpr const char* name = "Adan";
  static Options options(double lr) { return Options(lr).amsgrad(true).weight_decay(2e-2); }
  static Options plain(double lr) { return Options(lr); }
  static Options from_settings(const Settings& s) {
    return adam_like_settings(Options(setting(s, "lr", 1e-3)), s)
        .amsgrad(flag_setting(s, "amsgrad"))
        .no_prox(flag_setting(s, "no_prox"))
        .max_grad_norm(optional_setting(s, "max_grad_norm"))
        .caution(flag_setting(s, "caution"));
  }
  template <typename Input, typename Choose>
  static Options fuzzed(Input& in, double lr, double, double, double, Choose) {
    return Options(lr).amsgrad(in.ConsumeBool()).decoupled_weight_decay(in.ConsumeBool()).no_prox(in.ConsumeBool());
  }
};

struct AdEMAMixTraits {
  using Opt = ho::AdEMAMix;
  using Options = ho::AdEMAMixOptions;
  using State = ho::AdEMAMixParamState;
  static constexpr const char* name = "AdEMAMix";
  static Options options(double lr) { return Options(lr).alpha(2.0).betas({0.8, 0.9, 0.99}).weight_decay(1e-2); }
  static Options plain(double lr) { return Options(lr).alpha(2.0); }
  static Options from_settings(const Settings& s) {
    return adam_like_settings(Options(setting(s, "lr", 1e-3)), s)
        .alpha(setting(s, "alpha", 5.0))
        .t_alpha(optional_setting(s, "t_alpha"))
        .t_beta3(optional_setting(s, "t_beta3"))
        .caution(flag_setting(s, "caution"));
  }
  template <typename Input, typename Choose>
  static Options fuzzed(Input&, double lr, double, double, double, Choose choose) {
    return Options(lr).alpha(choose(0.0, 5.0));
  }
};

// A list of traits: `for_each(f)` calls f(Traits{}) for each, in order.
template <typename... Traits>
struct AlgorithmList {
  static constexpr size_t size = sizeof...(Traits);
  template <typename F>
  static void for_each(F&& f) {
    (f(Traits{}), ...);
  }
  template <template <typename...> class Into>
  using As = Into<Traits...>;
};

// Every algorithm of holocron::optim, in the order of the Python package's __all__.
using Algorithms = AlgorithmList<LarsTraits, LambTraits, RaLarsTraits, TAdamTraits, AdaBeliefTraits,
                                 AdamPTraits, AdanTraits, AdEMAMixTraits>;

// The optimizer named `name`, with options from `settings`; nullptr if none is.
inline std::shared_ptr<torch::optim::Optimizer> make_by_name(const std::string& name,
                                                             std::vector<torch::Tensor> params,
                                                             const Settings& settings) {
  std::shared_ptr<torch::optim::Optimizer> made;
  Algorithms::for_each([&](auto traits) {
    using T = decltype(traits);
    if (made || name != T::name) return;
    auto options = T::from_settings(settings);
    // 0: the parameter's dtype, 1: float32, 2: bfloat16 (StatePrecision's order).
    options.state_precision(static_cast<ho::StatePrecision>(setting(settings, "state_precision", 0.0)));
    made = std::make_shared<typename T::Opt>(params, options);
  });
  return made;
}

}  // namespace holocron::optim::testing
