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

#include "registry.h"

namespace {

namespace ho = holocron::optim;
using holocron::optim::testing::Settings;

const std::vector<std::vector<int64_t>> kShapes = {{4, 3}, {7}, {2, 3, 3, 3}, {1}};

double get(const Settings& s, const std::string& key, double fallback) {
  return holocron::optim::testing::setting(s, key, fallback);
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
  if (algo.rfind("timm:", 0) == 0) {  // create_optimizer's name, over one group
    ho::FactoryOptions options;
    if (s.count("lr")) options.lr = s.at("lr");
    options.weight_decay = s.count("weight_decay") ? s.at("weight_decay") : 0.0;
    options.momentum = s.count("momentum") ? s.at("momentum") : 0.9;
    return ho::create_optimizer(algo.substr(5), {torch::optim::OptimizerParamGroup(std::move(p))}, options);
  }
  if (auto made = holocron::optim::testing::make_by_name(algo, std::move(p), s)) return made;
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
std::string value_text(ho::StatePrecision v) { return std::string("'") + ho::to_string(v) + "'"; }
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
  holocron::optim::testing::Algorithms::for_each([](auto traits) {
    using T = decltype(traits);
    const typename T::Options defaults;
    std::printf("%s", T::name);
    const auto print = [](const char* key, const auto& value) { std::printf(" %s=%s", key, value_text(value).c_str()); };
    T::Options::fields(defaults, print);
    std::printf("\n");
  });
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
