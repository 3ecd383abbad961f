// libFuzzer target: the C++ classes built with options from random bytes,
// stepped, checkpointed, and the checkpoint's bytes damaged before it is
// loaded into another optimizer. A load either succeeds or throws with the
// optimizer unchanged; nothing crashes or trips ASan/UBSan.

#include <fuzzer/FuzzedDataProvider.h>

#include <ATen/Parallel.h>
#include <torch/optim/adam.h>
#include <torch/serialize.h>

#include <cstdint>
#include <cstdlib>
#include <functional>
#include <limits>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <holocron/optim.h>

#include "../cpp/registry.h"

namespace ho = holocron::optim;
using holocron::optim::testing::Algorithms;

namespace {

double option(FuzzedDataProvider& in, double low, double high) {
  switch (in.ConsumeIntegralInRange<int>(0, 12)) {
    case 0: return std::numeric_limits<double>::quiet_NaN();
    case 1: return -1.0;
    case 2: return high;
    default: return in.ConsumeFloatingPointInRange<double>(low, high);
  }
}

// kind: an algorithm of the test registry by index, then Scout, then Lookahead.
std::shared_ptr<torch::optim::Optimizer> make(FuzzedDataProvider& in, int kind, std::vector<torch::Tensor> params) {
  const double lr = option(in, 0.0, 0.5), b1 = option(in, 0.0, 0.99), b2 = option(in, 0.0, 0.999);
  const double wd = option(in, 0.0, 0.1);
  const auto choose = [&in](double low, double high) { return option(in, low, high); };
  std::shared_ptr<torch::optim::Optimizer> made;
  int index = 0;
  Algorithms::for_each([&](auto traits) {
    using T = decltype(traits);
    if (index++ == kind) made = std::make_shared<typename T::Opt>(params, T::fuzzed(in, lr, wd, b1, b2, choose));
  });
  if (made) return made;
  if (kind == static_cast<int>(Algorithms::size)) {
    return std::make_shared<ho::Scout>(std::make_shared<ho::LAMB>(params, ho::LAMBOptions(lr)),
                                       ho::ScoutOptions().sync_period(in.ConsumeIntegralInRange<int64_t>(0, 4)));
  }
  return std::make_shared<ho::Lookahead>(std::make_shared<torch::optim::Adam>(params),
                                         ho::LookaheadOptions().sync_rate(option(in, 0.0, 1.0)));
}

std::vector<torch::Tensor> make_params(FuzzedDataProvider& in, uint64_t seed) {
  torch::manual_seed(seed);
  std::vector<torch::Tensor> params;
  const int n = in.ConsumeIntegralInRange<int>(1, 3);
  for (int i = 0; i < n; ++i) {
    std::vector<int64_t> shape(static_cast<size_t>(in.ConsumeIntegralInRange<int>(0, 3)));
    for (auto& d : shape) d = in.ConsumeIntegralInRange<int64_t>(1, 5);
    params.push_back(torch::randn(shape, in.ConsumeBool() ? torch::kDouble : torch::kFloat).requires_grad_());
  }
  return params;
}

void train(torch::optim::Optimizer& opt, const std::vector<torch::Tensor>& params, int steps) {
  for (int s = 0; s < steps; ++s) {
    for (const auto& p : params) p.mutable_grad() = torch::randn_like(p);
    opt.step();
  }
}

uint32_t little_endian(const std::string& b, size_t at, int bytes) {
  uint32_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(b[at + static_cast<size_t>(i)]);
  return v;
}

// (offset, length) of each tensor's bytes in a checkpoint: the zip entries
// named .../data/N, stored uncompressed by torch::save.
std::vector<std::pair<size_t, size_t>> tensor_payloads(const std::string& b) {
  std::vector<std::pair<size_t, size_t>> regions;
  for (size_t pos = b.find("PK\x03\x04"); pos != std::string::npos && pos + 30 <= b.size();
       pos = b.find("PK\x03\x04", pos + 4)) {
    const size_t size = little_endian(b, pos + 18, 4), name_length = little_endian(b, pos + 26, 2);
    const size_t extra_length = little_endian(b, pos + 28, 2), start = pos + 30 + name_length + extra_length;
    if (start + size > b.size()) continue;
    const std::string name = b.substr(pos + 30, name_length);
    if (name.find("/data/") != std::string::npos) regions.emplace_back(start, size);
  }
  return regions;
}

std::string saved(torch::optim::Optimizer& opt) {
  std::ostringstream out;
  torch::save(opt, out);
  return out.str();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const bool once = [] {
    at::set_num_threads(1);
    return true;
  }();
  (void)once;
  FuzzedDataProvider in(data, size);
  const int kind = in.ConsumeIntegralInRange<int>(0, static_cast<int>(Algorithms::size) + 1);
  const uint64_t seed = in.ConsumeIntegral<uint32_t>();
  std::shared_ptr<torch::optim::Optimizer> source, target;
  auto source_params = make_params(in, seed);
  try {
    source = make(in, kind, source_params);
    train(*source, source_params, in.ConsumeIntegralInRange<int>(0, 4));
  } catch (const c10::Error&) {
    return 0;  // refused options (or a step they make fail): nothing more to check
  } catch (const std::invalid_argument&) {
    return 0;
  }
  std::string bytes = saved(*source);
  // Damage the tensors' bytes (NaN, inf, garbage values), or cut the file.
  // Not the pickled records or the zip directory: a damaged size there makes
  // libtorch's own unpickler ask for gigabytes before our checks run (found
  // by this target; its input is kept in tests/fuzz/seeds/fuzz_checkpoint).
  const auto regions = tensor_payloads(bytes);
  const int damage = regions.empty() ? 0 : in.ConsumeIntegralInRange<int>(0, 4);
  for (int i = 0; i < damage; ++i) {
    const auto& [start, length] = regions[in.ConsumeIntegralInRange<size_t>(0, regions.size() - 1)];
    if (length == 0) continue;
    bytes[start + in.ConsumeIntegralInRange<size_t>(0, length - 1)] = static_cast<char>(in.ConsumeIntegral<uint8_t>());
  }
  if (in.ConsumeIntegralInRange<int>(0, 5) == 0) bytes.resize(in.ConsumeIntegralInRange<size_t>(0, bytes.size()));

  // The target: the same kind, maybe of other shapes, maybe stepped already.
  std::vector<torch::Tensor> target_params;
  if (in.ConsumeBool()) {
    for (const auto& p : source_params) target_params.push_back(torch::randn_like(p).requires_grad_());
  } else {
    target_params = make_params(in, seed + 1);
  }
  try {
    FuzzedDataProvider options_in(data, size);
    target = make(options_in, kind, target_params);
    train(*target, target_params, in.ConsumeIntegralInRange<int>(0, 2));
  } catch (const c10::Error&) {
    return 0;
  } catch (const std::invalid_argument&) {
    return 0;
  }
  std::vector<torch::Tensor> values;
  for (const auto& p : target_params) values.push_back(p.detach().clone());
  const std::string before = saved(*target);
  try {
    std::istringstream stream(bytes);
    torch::load(*target, stream);
  } catch (const c10::Error&) {
    for (size_t i = 0; i < values.size(); ++i) {
      if (!torch::equal(values[i], target_params[i])) std::abort();
    }
    if (saved(*target) != before) std::abort();  // a refused load changed the optimizer
    return 0;
  } catch (const std::exception&) {
    if (saved(*target) != before) std::abort();
    return 0;
  }
  // A load that succeeded: the next step works or refuses.
  try {
    train(*target, target_params, 1);
  } catch (const c10::Error&) {
  }
  return 0;
}
