// Drives one C++ optimizer class for tests/python/test_cpp_front.py, which
// compares its trajectory with the reference package.
//
//   holocron_parity_runner ALGO SEED STEPS [name=value ...]
//
// ALGO is an algorithm's name, or WRAPPER+ALGO (Lookahead or Scout around
// it; settings sync_rate and sync_period).
// Parameters (float64) of shapes kShapes come from torch::randn after
// torch::manual_seed(SEED), then each step draws one gradient per parameter in
// order, exactly as the Python test does. Prints the final parameters, one
// line per tensor.

#include <ATen/ATen.h>
#include <torch/optim/optimizer.h>
#include <torch/utils.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include <holocron/optim.h>

namespace {

namespace ho = holocron::optim;
using Settings = std::map<std::string, double>;

const std::vector<std::vector<int64_t>> kShapes = {{4, 3}, {7}, {2, 3, 3, 3}, {1}};

double get(const Settings& s, const std::string& key, double fallback) {
  auto it = s.find(key);
  return it == s.end() ? fallback : it->second;
}

ho::scale_clip_t clip_of(const Settings& s) {
  if (!s.count("clip_low")) return std::nullopt;
  return std::make_tuple(s.at("clip_low"), s.at("clip_high"));
}

std::shared_ptr<torch::optim::Optimizer> make(const std::string& algo, std::vector<torch::Tensor> p,
                                              const Settings& s) {
  const auto plus = algo.find('+');
  if (plus != std::string::npos) {
    const auto wrapper = algo.substr(0, plus);
    auto base = make(algo.substr(plus + 1), std::move(p), s);
    const auto options = ho::LookaheadOptions()
                             .sync_rate(get(s, "sync_rate", 0.5))
                             .sync_period(static_cast<int64_t>(get(s, "sync_period", 6)));
    if (wrapper == "Lookahead") return std::make_shared<ho::Lookahead>(base, options);
    if (wrapper == "Scout") return std::make_shared<ho::Scout>(base, options);
    throw std::invalid_argument("unknown wrapper " + wrapper);
  }
  const double lr = get(s, "lr", 1e-3);
  const double wd = get(s, "weight_decay", 0.0);
  const double eps = get(s, "eps", 1e-8);
  const bool amsgrad = get(s, "amsgrad", 0.0) != 0.0;
  // Betas not given keep each algorithm's own defaults.
  const auto with_betas = [&s](auto options) {
    if (!s.count("beta1")) return options;
    if constexpr (std::tuple_size_v<std::decay_t<decltype(options.betas())>> == 2) {
      return options.betas(std::make_tuple(s.at("beta1"), s.at("beta2")));
    } else {
      return options.betas(std::make_tuple(s.at("beta1"), s.at("beta2"), s.at("beta3")));
    }
  };
  if (algo == "LARS") {
    return std::make_shared<ho::LARS>(p, ho::LARSOptions(lr)
                                             .momentum(get(s, "momentum", 0.0))
                                             .dampening(get(s, "dampening", 0.0))
                                             .weight_decay(wd)
                                             .nesterov(get(s, "nesterov", 0.0) != 0.0)
                                             .scale_clip(clip_of(s)));
  }
  if (algo == "LAMB") {
    return std::make_shared<ho::LAMB>(
        p, with_betas(ho::LAMBOptions(lr)).eps(eps).weight_decay(wd).scale_clip(clip_of(s)));
  }
  if (algo == "RaLars") {
    return std::make_shared<ho::RaLars>(
        p, with_betas(ho::RaLarsOptions(lr)).eps(eps).weight_decay(wd).scale_clip(clip_of(s))
               .force_adaptive_momentum(get(s, "force_adaptive_momentum", 0.0) != 0.0));
  }
  if (algo == "TAdam") {
    ho::dof_t dof;
    if (s.count("dof")) dof = s.at("dof");
    return std::make_shared<ho::TAdam>(
        p, with_betas(ho::TAdamOptions(lr)).eps(eps).weight_decay(wd).amsgrad(amsgrad).dof(dof));
  }
  if (algo == "AdaBelief") {
    return std::make_shared<ho::AdaBelief>(
        p, with_betas(ho::AdaBeliefOptions(lr)).eps(eps).weight_decay(wd).amsgrad(amsgrad));
  }
  if (algo == "AdamP") {
    return std::make_shared<ho::AdamP>(p, with_betas(ho::AdamPOptions(lr)).eps(eps).weight_decay(wd)
                                               .amsgrad(amsgrad).delta(get(s, "delta", 0.1)));
  }
  if (algo == "Adan") {
    return std::make_shared<ho::Adan>(
        p, with_betas(ho::AdanOptions(lr)).eps(eps).weight_decay(wd).amsgrad(amsgrad));
  }
  if (algo == "AdEMAMix") {
    return std::make_shared<ho::AdEMAMix>(
        p, with_betas(ho::AdEMAMixOptions(lr)).alpha(get(s, "alpha", 5.0)).eps(eps).weight_decay(wd));
  }
  throw std::invalid_argument("unknown algorithm " + algo);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s ALGO SEED STEPS [name=value ...]\n", argv[0]);
    return 2;
  }
  const std::string algo = argv[1];
  const auto seed = std::strtoull(argv[2], nullptr, 10);
  const int steps = std::atoi(argv[3]);
  Settings settings;
  for (int i = 4; i < argc; ++i) {
    const std::string arg = argv[i];
    const auto eq = arg.find('=');
    if (eq == std::string::npos) {
      std::fprintf(stderr, "bad setting %s\n", arg.c_str());
      return 2;
    }
    settings[arg.substr(0, eq)] = std::stod(arg.substr(eq + 1));
  }

  torch::manual_seed(seed);
  std::vector<torch::Tensor> params;
  for (const auto& shape : kShapes) params.push_back(torch::randn(shape, torch::kDouble).requires_grad_());
  auto optimizer = make(algo, params, settings);
  for (int step = 0; step < steps; ++step) {
    for (auto& p : params) p.mutable_grad() = torch::randn(p.sizes(), torch::kDouble);
    optimizer->step();
  }
  for (const auto& p : params) {
    const auto flat = p.detach().reshape({-1});
    for (int64_t i = 0; i < flat.numel(); ++i) std::printf("%s%.17g", i ? " " : "", flat[i].item<double>());
    std::printf("\n");
  }
  return 0;
}
