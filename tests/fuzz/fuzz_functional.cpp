// libFuzzer target: random bytes become one call of the functional layer
// (algorithm, options, shapes, dtypes, strides, state, loss scaling). The
// call may refuse its input, but then every tensor must be as it was; it may
// never crash or trip ASan/UBSan (the build has both).

#include <fuzzer/FuzzedDataProvider.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <memory>
#include <optional>
#include <stdexcept>
#include <vector>

#include "holocron/optim/functional.h"

namespace F = holocron::optim::functional;
using at::Tensor;

namespace {

// Hyper-parameters mostly valid, sometimes at or past an edge.
double hyper(FuzzedDataProvider& in, double low, double high) {
  switch (in.ConsumeIntegralInRange<int>(0, 15)) {
    case 0: return std::numeric_limits<double>::quiet_NaN();
    case 1: return std::numeric_limits<double>::infinity();
    case 2: return -in.ConsumeFloatingPointInRange<double>(0.0, 10.0);
    case 3: return low;
    case 4: return high;
    default: return in.ConsumeFloatingPointInRange<double>(low, high);
  }
}

at::ScalarType dtype_of(FuzzedDataProvider& in) {
  static const at::ScalarType kTypes[] = {at::kFloat, at::kDouble, at::kBFloat16, at::kHalf, at::kInt};
  const int i = in.ConsumeIntegralInRange<int>(0, 15);
  return i < 4 ? kTypes[i] : i == 15 ? at::kInt : at::kFloat;
}

std::vector<int64_t> shape_of(FuzzedDataProvider& in) {
  std::vector<int64_t> shape(static_cast<size_t>(in.ConsumeIntegralInRange<int>(0, 4)));
  for (auto& d : shape) d = in.ConsumeIntegralInRange<int64_t>(0, in.ConsumeBool() ? 3 : 40);
  return shape;
}

// A tensor of `shape`, filled from the input, sometimes as a strided or
// channels_last view, sometimes holding non-finite values.
Tensor tensor_like(FuzzedDataProvider& in, const std::vector<int64_t>& shape, at::ScalarType dtype) {
  Tensor t = at::randn(shape, at::TensorOptions().dtype(at::kDouble));
  if (t.numel() > 0 && in.ConsumeIntegralInRange<int>(0, 20) == 0) {
    t.view(-1)[0] = in.ConsumeBool() ? std::numeric_limits<double>::infinity()
                                     : std::numeric_limits<double>::quiet_NaN();
  }
  t = t.to(dtype);
  switch (in.ConsumeIntegralInRange<int>(0, 9)) {
    case 0:
      if (t.dim() >= 2) t = t.transpose(0, 1).contiguous().transpose(0, 1);
      break;
    case 1:
      if (t.dim() == 4) t = t.contiguous(at::MemoryFormat::ChannelsLast);
      break;
    default: break;
  }
  return t;
}

struct Group {
  std::vector<Tensor> params, grads;
  std::vector<std::vector<Tensor>> state;  // one list per state buffer
  std::vector<int64_t> steps;
};

Group make_group(FuzzedDataProvider& in, int buffers) {
  Group g;
  const int n = in.ConsumeIntegralInRange<int>(0, 4);
  g.state.resize(static_cast<size_t>(buffers));
  for (int i = 0; i < n; ++i) {
    const auto shape = shape_of(in);
    const auto dtype = dtype_of(in);
    g.params.push_back(tensor_like(in, shape, dtype));
    // Now and then a gradient or buffer that does not fit its parameter.
    const bool misfit = in.ConsumeIntegralInRange<int>(0, 25) == 0;
    g.grads.push_back(tensor_like(in, misfit ? shape_of(in) : shape, misfit ? dtype_of(in) : dtype));
    for (auto& list : g.state) {
      const bool bad = in.ConsumeIntegralInRange<int>(0, 40) == 0;
      Tensor b = tensor_like(in, bad ? shape_of(in) : shape, bad ? dtype_of(in) : dtype);
      list.push_back(b.abs());  // second moments are >= 0 in a real run
    }
    g.steps.push_back(in.ConsumeIntegralInRange<int64_t>(in.ConsumeBool() ? -2 : 1, 50));
  }
  // Now and then a list of another length.
  if (in.ConsumeIntegralInRange<int>(0, 30) == 0 && !g.grads.empty()) g.grads.pop_back();
  return g;
}

std::vector<Tensor> clones(const std::vector<Tensor>& list) {
  std::vector<Tensor> out;
  for (const auto& t : list) out.push_back(t.clone());
  return out;
}

bool same(const std::vector<Tensor>& a, const std::vector<Tensor>& b) {
  for (size_t i = 0; i < a.size(); ++i) {
    if (!a[i].is_floating_point()) {
      if (!at::equal(a[i], b[i])) return false;
      continue;
    }
    if (!at::equal(a[i].isnan(), b[i].isnan())) return false;
    if (!at::equal(at::nan_to_num(a[i]), at::nan_to_num(b[i]))) return false;
  }
  return true;
}

F::GradScaling scaling_of(FuzzedDataProvider& in) {
  F::GradScaling s;
  switch (in.ConsumeIntegralInRange<int>(0, 7)) {
    case 0: s.grad_scale = at::tensor(hyper(in, 1.0, 65536.0)); break;
    case 1: s.found_inf = at::tensor(in.ConsumeBool() ? 1.0 : 0.0); break;
    case 2:
      s.grad_scale = at::tensor(1024.0);
      s.found_inf = at::zeros({in.ConsumeIntegralInRange<int64_t>(0, 2)});
      break;
    default: break;
  }
  return s;
}

F::ScaleClip clip_of(FuzzedDataProvider& in) { return {hyper(in, 0.0, 1.0), hyper(in, 1.0, 20.0)}; }

void run_one(FuzzedDataProvider& in) {
  const int algorithm = in.ConsumeIntegralInRange<int>(0, 7);
  const int buffers = algorithm == 0 ? 1 : algorithm == 6 ? 5 : algorithm >= 3 ? 3 : 2;
  Group g = make_group(in, buffers);
  const auto scaling = scaling_of(in);
  const double lr = hyper(in, 0.0, 1.0), b1 = hyper(in, 0.0, 0.999), b2 = hyper(in, 0.0, 0.9999);
  const double eps = hyper(in, 0.0, 1e-3), wd = hyper(in, 0.0, 0.1);
  const bool flag = in.ConsumeBool();

  std::vector<Tensor> all = g.params;
  for (const auto& list : g.state) all.insert(all.end(), list.begin(), list.end());
  const auto before = clones(all);
  const auto grads_before = clones(g.grads);
  const auto& s = g.state;
  try {
    switch (algorithm) {
      case 0: {
        std::vector<char> is_new(g.params.size(), 0);
        for (auto& b : is_new) b = in.ConsumeBool();
        std::unique_ptr<bool[]> flags(new bool[is_new.size() + 1]());
        for (size_t i = 0; i < is_new.size(); ++i) flags[i] = is_new[i] != 0;
        std::optional<F::ScaleClip> clip;
        if (in.ConsumeBool()) clip = clip_of(in);
        F::lars_(g.params, g.grads, s[0], c10::ArrayRef<bool>(flags.get(), is_new.size()),
                 {lr, hyper(in, 0.0, 0.99), hyper(in, 0.0, 0.5), wd, flag, clip}, scaling);
        break;
      }
      case 1: F::lamb_(g.params, g.grads, s[0], s[1], {lr, b1, b2, eps, wd, clip_of(in)}, scaling); break;
      case 2:
        F::ralars_(g.params, g.grads, s[0], s[1], g.steps, {lr, b1, b2, eps, wd, flag, clip_of(in), std::nullopt},
                   scaling);
        break;
      case 3: {
        std::vector<double> weights(g.params.size());
        for (auto& w : weights) w = hyper(in, 0.0, 10.0);
        std::optional<double> dof;
        if (in.ConsumeBool()) dof = hyper(in, 0.0, 100.0);
        F::tadam_(g.params, g.grads, s[0], s[1], s[2], weights, g.steps, {lr, b1, b2, eps, wd, flag, dof}, scaling);
        break;
      }
      case 4: F::adabelief_(g.params, g.grads, s[0], s[1], s[2], g.steps, {lr, b1, b2, eps, wd, flag}, scaling); break;
      case 5:
        F::adamp_(g.params, g.grads, s[0], s[1], s[2], g.steps, {lr, b1, b2, eps, wd, flag, hyper(in, 0.0, 1.0)},
                  scaling);
        break;
      case 6:
        F::adan_(g.params, g.grads, s[0], s[1], s[2], s[3], s[4], g.steps,
                 {lr, b1, b2, hyper(in, 0.0, 0.999), eps, wd, flag}, scaling);
        break;
      default:
        F::ademamix_(g.params, g.grads, s[0], s[1], s[2], g.steps,
                     {lr, b1, b2, hyper(in, 0.0, 0.9999), hyper(in, 0.0, 10.0), eps, wd}, scaling);
        break;
    }
  } catch (const c10::Error&) {
    if (!same(all, before)) std::abort();  // a refused call changed something
  } catch (const std::invalid_argument&) {
    if (!same(all, before)) std::abort();
  }
  if (!same(g.grads, grads_before)) std::abort();  // gradients are never written
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const bool once = [] {
    at::set_num_threads(1);
    return true;
  }();
  (void)once;
  FuzzedDataProvider in(data, size);
  at::manual_seed(in.ConsumeIntegral<uint32_t>());
  run_one(in);
  return 0;
}
