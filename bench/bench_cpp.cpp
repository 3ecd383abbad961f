// Times one optimizer's step on parameters of given shapes, through the C++ API.
//
//   holocron_bench --shapes FILE [--dtype float32|bfloat16] [--threads N]
//                  --optimizer NAME [--steps N] [--warmup W] [--group G]
//                  [--peak-steps K] [--lr X] [--weight-decay X] [--seed S]
//                  [--evict-bytes B]
//
// FILE: one parameter shape per line, dimensions separated by spaces (`64 3 7 7`);
// blank lines and lines starting with '#' are skipped.
// NAME: LARS (momentum 0.9), LAMB, RaLars, TAdam, AdaBelief, AdamP, Adan, AdEMAMix
// (holocron::optim, default options but lr and weight_decay), Adam
// (torch::optim::Adam), Lookahead or Scout (holocron::optim, around torch::optim::Adam);
// or several, comma-separated (`Adam,Lookahead,Scout`): each is then an optimizer of its
// own over the same parameters, and their samples are taken in turns (rotating order).
//
// Parameters and gradients are drawn once from a fixed seed; the gradients are
// set once and reused by every step. After W warmup steps, N samples are timed,
// each the mean time per step over G consecutive steps (G = 1: single steps; the
// wrappers' sync period for Lookahead and Scout, so that every sample holds one
// sync). With B > 0, a buffer of B bytes is read and written before each sample (untimed):
// past the last-level cache, each sample starts cold, as a step of a training loop does
// after the forward and backward passes (and as the Python classes' steps in bench.py,
// taken in turns with other optimizers and a bandwidth sample). Then K more steps measure the extra peak memory of a step (Linux: '5'
// written to /proc/self/clear_refs resets VmHWM; extra = VmHWM after the step -
// VmRSS before it; with glibc, blocks of 64 KiB and more are mapped on their own from
// then on and the allocator's free memory is given back before each measured step, so
// that the temporaries of a step show). Prints one JSON line per optimizer.

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/zeros.h>
#include <torch/optim/adam.h>

#include <holocron/optim.h>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

namespace ho = holocron::optim;

struct Args {
  std::string shapes;
  std::string dtype = "float32";
  int threads = 2;
  std::string optimizer;
  int steps = 20;
  int warmup = 3;
  int group = 1;
  int peak_steps = 3;
  int64_t evict_bytes = 0;
  double lr = 1e-3;
  double weight_decay = 0.01;
  uint64_t seed = 0;
};

[[noreturn]] void usage(const char* argv0, const std::string& why) {
  std::fprintf(stderr,
               "%s\nusage: %s --shapes FILE [--dtype float32|bfloat16] [--threads N] "
               "--optimizer NAME [--steps N] [--warmup W] [--group G] [--peak-steps K] [--lr X] "
               "[--weight-decay X] [--seed S]\n",
               why.c_str(), argv0);
  std::exit(2);
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string key = argv[i];
    if (i + 1 >= argc) usage(argv[0], "missing value for " + key);
    const std::string value = argv[++i];
    try {
      if (key == "--shapes") a.shapes = value;
      else if (key == "--dtype") a.dtype = value;
      else if (key == "--threads") a.threads = std::stoi(value);
      else if (key == "--optimizer") a.optimizer = value;
      else if (key == "--steps") a.steps = std::stoi(value);
      else if (key == "--warmup") a.warmup = std::stoi(value);
      else if (key == "--group") a.group = std::stoi(value);
      else if (key == "--peak-steps") a.peak_steps = std::stoi(value);
      else if (key == "--evict-bytes") a.evict_bytes = std::stoll(value);
      else if (key == "--lr") a.lr = std::stod(value);
      else if (key == "--weight-decay") a.weight_decay = std::stod(value);
      else if (key == "--seed") a.seed = std::stoull(value);
      else usage(argv[0], "unknown argument " + key);
    } catch (const std::logic_error&) {
      usage(argv[0], "bad value for " + key + ": " + value);
    }
  }
  if (a.shapes.empty()) usage(argv[0], "--shapes is required");
  if (a.optimizer.empty()) usage(argv[0], "--optimizer is required");
  if (a.dtype != "float32" && a.dtype != "bfloat16") usage(argv[0], "bad --dtype " + a.dtype);
  if (a.threads < 1 || a.steps < 1 || a.group < 1 || a.warmup < 0 || a.peak_steps < 0) {
    usage(argv[0], "--threads, --steps and --group must be >= 1, --warmup and --peak-steps >= 0");
  }
  return a;
}

std::vector<std::vector<int64_t>> read_shapes(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open shapes file " + path);
  std::vector<std::vector<int64_t>> shapes;
  std::string line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    const auto first = line.find_first_not_of(" \t\r");
    if (first == std::string::npos || line[first] == '#') continue;
    std::istringstream fields(line);
    std::vector<int64_t> shape;
    std::string field;
    while (fields >> field) {
      size_t used = 0;
      int64_t dim = -1;
      try {
        dim = std::stoll(field, &used);
      } catch (const std::logic_error&) {
        used = 0;
      }
      if (used != field.size() || dim < 0) {
        throw std::runtime_error(path + ":" + std::to_string(line_no) + ": bad dimension '" +
                                 field + "'");
      }
      shape.push_back(dim);
    }
    shapes.push_back(std::move(shape));
  }
  if (shapes.empty()) throw std::runtime_error("no shapes in " + path);
  return shapes;
}

std::vector<std::string> split(const std::string& list) {
  std::vector<std::string> out;
  std::istringstream in(list);
  std::string item;
  while (std::getline(in, item, ',')) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

std::shared_ptr<torch::optim::Optimizer> make(const std::string& name, const Args& a,
                                              const std::vector<at::Tensor>& p) {
  const double lr = a.lr;
  const double wd = a.weight_decay;
  if (name == "LARS") {
    return std::make_shared<ho::LARS>(p, ho::LARSOptions(lr).momentum(0.9).weight_decay(wd));
  }
  if (name == "LAMB") return std::make_shared<ho::LAMB>(p, ho::LAMBOptions(lr).weight_decay(wd));
  if (name == "RaLars") {
    return std::make_shared<ho::RaLars>(p, ho::RaLarsOptions(lr).weight_decay(wd));
  }
  if (name == "TAdam") return std::make_shared<ho::TAdam>(p, ho::TAdamOptions(lr).weight_decay(wd));
  if (name == "AdaBelief") {
    return std::make_shared<ho::AdaBelief>(p, ho::AdaBeliefOptions(lr).weight_decay(wd));
  }
  if (name == "AdamP") return std::make_shared<ho::AdamP>(p, ho::AdamPOptions(lr).weight_decay(wd));
  if (name == "Adan") return std::make_shared<ho::Adan>(p, ho::AdanOptions(lr).weight_decay(wd));
  if (name == "AdEMAMix") {
    return std::make_shared<ho::AdEMAMix>(p, ho::AdEMAMixOptions(lr).weight_decay(wd));
  }
  // torch::optim::Adam with its defaults but lr, as the Python side's fused Adam.
  auto adam = [&] { return std::make_shared<torch::optim::Adam>(p, torch::optim::AdamOptions(lr)); };
  if (name == "Adam") return adam();
  if (name == "Lookahead") return std::make_shared<ho::Lookahead>(adam(), ho::LookaheadOptions());
  if (name == "Scout") return std::make_shared<ho::Scout>(adam(), ho::ScoutOptions());
  throw std::invalid_argument("unknown optimizer " + name);
}

// A "VmXXX:  1234 kB" field of /proc/self/status, in bytes; -1 when unavailable.
int64_t status_bytes(const char* key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const std::string prefix = std::string(key) + ":";
  while (std::getline(in, line)) {
    if (line.compare(0, prefix.size(), prefix) == 0) {
      return std::stoll(line.substr(prefix.size())) * 1024;
    }
  }
  return -1;
}

// glibc: from now on, blocks of 64 KiB and more are mapped on their own and given back
// to the system when freed (glibc otherwise raises that threshold as it goes and keeps
// such blocks in its heap). The heap itself is not trimmed on every free (that would
// make a step of many small allocations pathologically slow), but before each
// measured step instead.
void measure_mode() {
#if defined(__GLIBC__)
  mallopt(M_MMAP_THRESHOLD, 64 * 1024);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
#endif
}

// Gives the free memory the allocator keeps back to the system, then resets VmHWM.
bool reset_peak() {
#if defined(__GLIBC__)
  malloc_trim(0);
#endif
  std::ofstream out("/proc/self/clear_refs");
  if (!out) return false;
  out << "5";
  out.flush();
  return static_cast<bool>(out);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

}  // namespace

int main(int argc, char** argv) {
  const Args a = parse(argc, argv);
  try {
    at::set_num_threads(a.threads);
    const auto shapes = read_shapes(a.shapes);
    const auto dtype = a.dtype == "bfloat16" ? at::kBFloat16 : at::kFloat;

    at::manual_seed(a.seed);
    std::vector<at::Tensor> params;
    int64_t elements = 0;
    params.reserve(shapes.size());
    for (const auto& shape : shapes) {
      auto p = at::randn(shape, at::TensorOptions().dtype(at::kFloat)).mul_(0.1).to(dtype);
      p.mutable_grad() = at::randn(shape, at::TensorOptions().dtype(at::kFloat)).mul_(0.01).to(dtype);
      elements += p.numel();
      params.push_back(std::move(p));
    }
    const int64_t param_bytes = elements * static_cast<int64_t>(at::elementSize(dtype));
    const auto names = split(a.optimizer);
    std::vector<std::shared_ptr<torch::optim::Optimizer>> optimizers;
    for (const auto& name : names) optimizers.push_back(make(name, a, params));
    const size_t n = optimizers.size();
    if (n == 0) throw std::invalid_argument("no optimizer named");

    for (auto& optimizer : optimizers) {
      for (int i = 0; i < a.warmup; ++i) optimizer->step();
    }
    std::vector<std::vector<double>> times(n);
    const auto evict = at::zeros({std::max<int64_t>(a.evict_bytes / 4, 1)}, at::kFloat);
    for (int i = 0; i < a.steps; ++i) {
      for (size_t k = 0; k < n; ++k) {
        const size_t o = (static_cast<size_t>(i) + k) % n;
        if (a.evict_bytes > 0) evict.add_(1.0);
        const auto t0 = std::chrono::steady_clock::now();
        for (int j = 0; j < a.group; ++j) optimizers[o]->step();
        const auto t1 = std::chrono::steady_clock::now();
        times[o].push_back(std::chrono::duration<double, std::milli>(t1 - t0).count() / a.group);
      }
    }
    std::vector<int64_t> peak_extra(n, -1);
    if (a.peak_steps > 0) measure_mode();
    for (size_t o = 0; o < n; ++o) {
      if (a.peak_steps > 0) optimizers[o]->step();  // settles the allocator in its new mode
      for (int i = 0; i < a.peak_steps; ++i) {
        if (!reset_peak()) break;
        const int64_t rss_before = status_bytes("VmRSS");
        optimizers[o]->step();
        const int64_t hwm = status_bytes("VmHWM");
        if (rss_before < 0 || hwm < 0) break;
        peak_extra[o] = std::max(peak_extra[o], std::max<int64_t>(hwm - rss_before, 0));
      }
    }

    for (size_t o = 0; o < n; ++o) {
      const auto& t = times[o];
      std::printf("{\"optimizer\": \"%s\", \"dtype\": \"%s\", \"threads\": %d, \"tensors\": %zu, "
                  "\"elements\": %lld, \"param_bytes\": %lld, \"warmup\": %d, \"steps\": %d, "
                  "\"group\": %d, \"median_ms\": %.6f, \"min_ms\": %.6f, \"mean_ms\": %.6f, ",
                  names[o].c_str(), a.dtype.c_str(), a.threads, params.size(),
                  static_cast<long long>(elements), static_cast<long long>(param_bytes), a.warmup,
                  a.steps, a.group, median(t), *std::min_element(t.begin(), t.end()),
                  std::accumulate(t.begin(), t.end(), 0.0) / static_cast<double>(t.size()));
      if (peak_extra[o] >= 0) {
        std::printf("\"peak_extra_bytes\": %lld, ", static_cast<long long>(peak_extra[o]));
      } else {
        std::printf("\"peak_extra_bytes\": null, ");
      }
      std::printf("\"times_ms\": [");
      for (size_t i = 0; i < t.size(); ++i) std::printf("%s%.6f", i ? ", " : "", t[i]);
      std::printf("]}\n");
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "holocron_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
