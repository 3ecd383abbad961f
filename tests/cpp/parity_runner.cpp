// Drives one C++ optimizer class for tests/python/test_cpp_front.py, which
// compares its trajectory with the reference package.
//
//   holocron_parity_runner ALGO SEED STEPS [name=value ...]
//   holocron_parity_runner --defaults
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
#include <optional>
#include <utility>
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

// --defaults: each class's default options, one line per class
// (`NAME key=value ...`, values as Python writes them), which
// tests/python/test_cpp_front.py compares with the Python classes' defaults.
std::string value_text(double v) {
  char text[64];
  std::snprintf(text, sizeof(text), "%.17g", v);
  return text;
}
std::string value_text(int64_t v) { return std::to_string(v); }
std::string value_text(bool v) { return v ? "True" : "False"; }
template <typename... T>
std::string value_text(const std::tuple<T...>& v) {
  std::string out = "(";
  std::apply([&out](const auto&... x) { ((out += value_text(x) + ","), ...); }, v);
  out.pop_back();
  return out + ")";
}
template <typename T>
std::string value_text(const std::optional<T>& v) {
  return v ? value_text(*v) : "None";
}

void print_defaults() {
  const auto line = [](const char* name, std::initializer_list<std::pair<const char*, std::string>> fields) {
    std::printf("%s", name);
    for (const auto& [key, value] : fields) std::printf(" %s=%s", key, value.c_str());
    std::printf("\n");
  };
  const ho::LARSOptions lars;
  line("LARS", {{"lr", value_text(lars.lr())}, {"momentum", value_text(lars.momentum())},
                {"dampening", value_text(lars.dampening())}, {"weight_decay", value_text(lars.weight_decay())},
                {"nesterov", value_text(lars.nesterov())}, {"scale_clip", value_text(lars.scale_clip())}});
  const ho::LAMBOptions lamb;
  line("LAMB", {{"lr", value_text(lamb.lr())}, {"betas", value_text(lamb.betas())}, {"eps", value_text(lamb.eps())},
                {"weight_decay", value_text(lamb.weight_decay())}, {"scale_clip", value_text(lamb.scale_clip())}});
  const ho::RaLarsOptions ralars;
  line("RaLars", {{"lr", value_text(ralars.lr())}, {"betas", value_text(ralars.betas())},
                  {"eps", value_text(ralars.eps())}, {"weight_decay", value_text(ralars.weight_decay())},
                  {"force_adaptive_momentum", value_text(ralars.force_adaptive_momentum())},
                  {"scale_clip", value_text(ralars.scale_clip())}});
  const ho::TAdamOptions tadam;
  line("TAdam", {{"lr", value_text(tadam.lr())}, {"betas", value_text(tadam.betas())},
                 {"eps", value_text(tadam.eps())}, {"weight_decay", value_text(tadam.weight_decay())},
                 {"amsgrad", value_text(tadam.amsgrad())}, {"dof", value_text(tadam.dof())}});
  const ho::AdaBeliefOptions adabelief;
  line("AdaBelief", {{"lr", value_text(adabelief.lr())}, {"betas", value_text(adabelief.betas())},
                     {"eps", value_text(adabelief.eps())}, {"weight_decay", value_text(adabelief.weight_decay())},
                     {"amsgrad", value_text(adabelief.amsgrad())}});
  const ho::AdamPOptions adamp;
  line("AdamP", {{"lr", value_text(adamp.lr())}, {"betas", value_text(adamp.betas())},
                 {"eps", value_text(adamp.eps())}, {"weight_decay", value_text(adamp.weight_decay())},
                 {"amsgrad", value_text(adamp.amsgrad())}, {"delta", value_text(adamp.delta())}});
  const ho::AdanOptions adan;
  line("Adan", {{"lr", value_text(adan.lr())}, {"betas", value_text(adan.betas())}, {"eps", value_text(adan.eps())},
                {"weight_decay", value_text(adan.weight_decay())}, {"amsgrad", value_text(adan.amsgrad())}});
  const ho::AdEMAMixOptions ademamix;
  line("AdEMAMix", {{"lr", value_text(ademamix.lr())}, {"betas", value_text(ademamix.betas())},
                    {"alpha", value_text(ademamix.alpha())}, {"eps", value_text(ademamix.eps())},
                    {"weight_decay", value_text(ademamix.weight_decay())}});
  const ho::LookaheadOptions lookahead;
  for (const char* name : {"Lookahead", "Scout"}) {
    line(name, {{"sync_rate", value_text(lookahead.sync_rate())},
                {"sync_period", value_text(lookahead.sync_period())}});
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 2 && std::string(argv[1]) == "--defaults") {
    print_defaults();
    return 0;
  }
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
