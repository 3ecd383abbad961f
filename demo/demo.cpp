// `make demo`: the ten optimizers of holocron-optim beside LibTorch's Adam and
// AdamW on one small but real task, then on two classic 2-D test functions.
//
// 1. A small CNN classifies noisy 16x16 images of five shapes (disk, ring,
//    square, triangle, cross) generated here from a fixed seed: 8192 for
//    training, 1024 held out. Every optimizer gets the same initial weights,
//    the same batches and the same number of steps; only its learning rate
//    differs (see kTrainingRuns for how each was chosen).
// 2. Each optimizer descends the Rosenbrock and Rastrigin functions from a
//    fixed start with the learning rate that ends closest to the optimum,
//    picked by a sweep run here.
// 3. The eight algorithms again on the task of 1, each with float32, bfloat16
//    and 8-bit state (state_precision), over several seeds (initial weights
//    and batches): the mean held-out accuracy per precision. conv2's and fc1's
//    weights keep 8-bit moments; the smaller tensors keep float32 ones.
//
// Output: a progress bar per run, a summary table, and CSV files in --out
// (demo/plot.py turns them into PNGs).
//
// Usage: holocron_demo [--out DIR] [--steps N] [--threads N] [--only NAME] [--sweep] [--seeds N]
//   --only:  run one optimizer (a name as printed, e.g. --only LAMB)
//   --sweep: instead of the demo, train every optimizer with each learning
//            rate of a grid (this is how kTrainingRuns' rates were chosen).
//   --seeds: the seeds of part 3 (default 3; 0 skips it).

#include <ATen/Parallel.h>
#include <torch/nn.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>

#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>
#include <numeric>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <holocron/optim.h>

namespace {

namespace ho = holocron::optim;
using OptimizerPtr = std::shared_ptr<torch::optim::Optimizer>;
using MakeOptimizer = std::function<OptimizerPtr(std::vector<torch::Tensor>, double lr)>;

struct Candidate {
  std::string name;
  MakeOptimizer make;
};

// Every optimizer with the options a user would start from; only lr varies.
const std::vector<Candidate>& candidates() {
  static const std::vector<Candidate> all = {
      {"Adam (torch)",
       [](auto p, double lr) { return std::make_shared<torch::optim::Adam>(p, torch::optim::AdamOptions(lr)); }},
      {"AdamW (torch)",
       [](auto p, double lr) {
         return std::make_shared<torch::optim::AdamW>(p, torch::optim::AdamWOptions(lr).weight_decay(1e-2));
       }},
      {"LARS", [](auto p, double lr) { return std::make_shared<ho::LARS>(p, ho::LARSOptions(lr).momentum(0.9)); }},
      {"LAMB", [](auto p, double lr) { return std::make_shared<ho::LAMB>(p, ho::LAMBOptions(lr)); }},
      {"RaLars", [](auto p, double lr) { return std::make_shared<ho::RaLars>(p, ho::RaLarsOptions(lr)); }},
      {"TAdam", [](auto p, double lr) { return std::make_shared<ho::TAdam>(p, ho::TAdamOptions(lr)); }},
      {"AdaBelief", [](auto p, double lr) { return std::make_shared<ho::AdaBelief>(p, ho::AdaBeliefOptions(lr)); }},
      {"AdamP", [](auto p, double lr) { return std::make_shared<ho::AdamP>(p, ho::AdamPOptions(lr)); }},
      {"Adan", [](auto p, double lr) { return std::make_shared<ho::Adan>(p, ho::AdanOptions(lr)); }},
      {"AdEMAMix", [](auto p, double lr) { return std::make_shared<ho::AdEMAMix>(p, ho::AdEMAMixOptions(lr)); }},
      {"Lookahead(Adam)",
       [](auto p, double lr) {
         return std::make_shared<ho::Lookahead>(
             std::make_shared<torch::optim::Adam>(p, torch::optim::AdamOptions(lr)), ho::LookaheadOptions());
       }},
      // Scout's rate is max(1 - coherence, sync_rate), and over 6 steps the
      // coherence is at least sqrt(6)/5 = 0.49: with the default sync_rate
      // of 0.5 it would sync exactly as Lookahead does. A floor of 0.2 lets
      // the coherence choose.
      {"Scout(Adam)",
       [](auto p, double lr) {
         return std::make_shared<ho::Scout>(std::make_shared<torch::optim::Adam>(p, torch::optim::AdamOptions(lr)),
                                            ho::ScoutOptions().sync_rate(0.2));
       }},
  };
  return all;
}

// The eight algorithms with the options of candidates(), keeping their state in `precision`.
template <typename Opt, typename Options>
MakeOptimizer keeping(Options options, ho::StatePrecision precision) {
  return [options, precision](std::vector<torch::Tensor> p, double lr) -> OptimizerPtr {
    auto chosen = options;
    chosen.lr(lr).state_precision(precision);
    return std::make_shared<Opt>(std::move(p), chosen);
  };
}
Candidate with_state(const std::string& name, ho::StatePrecision precision) {
  const auto label = name + " (" + ho::to_string(precision == ho::StatePrecision::param ? ho::StatePrecision::float32
                                                                                         : precision) + ")";
  if (name == "LARS") return {label, keeping<ho::LARS>(ho::LARSOptions(0.0).momentum(0.9), precision)};
  if (name == "LAMB") return {label, keeping<ho::LAMB>(ho::LAMBOptions(0.0), precision)};
  if (name == "RaLars") return {label, keeping<ho::RaLars>(ho::RaLarsOptions(0.0), precision)};
  if (name == "TAdam") return {label, keeping<ho::TAdam>(ho::TAdamOptions(0.0), precision)};
  if (name == "AdaBelief") return {label, keeping<ho::AdaBelief>(ho::AdaBeliefOptions(0.0), precision)};
  if (name == "AdamP") return {label, keeping<ho::AdamP>(ho::AdamPOptions(0.0), precision)};
  if (name == "Adan") return {label, keeping<ho::Adan>(ho::AdanOptions(0.0), precision)};
  if (name == "AdEMAMix") return {label, keeping<ho::AdEMAMix>(ho::AdEMAMixOptions(0.0), precision)};
  throw std::invalid_argument("no state precision for '" + name + "'");
}
const char* const kAlgorithms[] = {"LARS", "LAMB", "RaLars", "TAdam", "AdaBelief", "AdamP", "Adan", "AdEMAMix"};

const Candidate& candidate(const std::string& name) {
  for (const auto& c : candidates())
    if (c.name == name) return c;
  throw std::invalid_argument("no optimizer named " + name);
}

// The training task's (peak) learning rates: the lowest mean held-out loss
// over the last 100 of 400 steps, on the grid of `holocron_demo --sweep`
// (1e-4 to 1 in steps of about 3x; its output is demo/lr_sweep.txt). LARS and the LAMB family scale each step by ||p||, so their
// rates are in other units than Adam's.
struct TrainingRun {
  std::string name;
  double lr;
};
const std::vector<TrainingRun> kTrainingRuns = {
    {"Adam (torch)", 3e-3}, {"AdamW (torch)", 3e-3}, {"LARS", 1e-2},          {"LAMB", 3e-2},
    {"RaLars", 3e-2},       {"TAdam", 3e-2},         {"AdaBelief", 3e-3},     {"AdamP", 3e-3},
    {"Adan", 3e-3},         {"AdEMAMix", 3e-3},      {"Lookahead(Adam)", 1e-2}, {"Scout(Adam)", 1e-2},
};
const std::vector<double> kSweepRates = {1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0};

// ---------------------------------------------------------------- the data --

constexpr int64_t kImageSize = 16;
constexpr int64_t kClasses = 5;
const char* const kClassNames[kClasses] = {"disk", "ring", "square", "triangle", "cross"};

struct Dataset {
  torch::Tensor images;  // (n, 1, 16, 16) float32
  torch::Tensor labels;  // (n,) int64
};

// Shapes of random size and position, random contrast, Gaussian noise: easy
// enough to learn in a few hundred steps, hard enough that optimizers differ.
Dataset make_shapes(int64_t count, uint64_t seed) {
  torch::manual_seed(seed);
  const auto labels = torch::randint(kClasses, {count}, torch::kInt64);
  const auto coords = torch::arange(kImageSize, torch::kFloat32);
  const auto y = coords.view({1, kImageSize, 1});
  const auto x = coords.view({1, 1, kImageSize});
  const auto cy = torch::empty({count, 1, 1}).uniform_(5.0, 11.0);
  const auto cx = torch::empty({count, 1, 1}).uniform_(5.0, 11.0);
  const auto r = torch::empty({count, 1, 1}).uniform_(2.5, 5.0);
  const auto dy = y - cy, dx = x - cx;
  const auto dist = torch::sqrt(dy * dy + dx * dx);
  const auto disk = dist <= r;
  const auto ring = (dist - r).abs() <= 0.8;
  const auto square = (dx.abs() <= 0.8 * r) & (dy.abs() <= 0.8 * r);
  const auto triangle = (dy >= -r) & (dy <= r) & (2.0 * dx.abs() <= dy + r);
  const auto cross = ((dx.abs() <= 0.8) & (dy.abs() <= r)) | ((dy.abs() <= 0.8) & (dx.abs() <= r));
  const auto masks = torch::stack({disk, ring, square, triangle, cross}, 1).to(torch::kFloat32);
  const auto shape = masks.index({torch::arange(count), labels});
  const auto contrast = torch::empty({count, 1, 1}).uniform_(0.6, 1.4);
  const auto images = shape * contrast + 0.35 * torch::randn({count, kImageSize, kImageSize});
  return {images.unsqueeze(1).contiguous(), labels};
}

// --------------------------------------------------------------- the model --

struct ShapesNetImpl : torch::nn::Module {
  ShapesNetImpl() {
    conv1 = register_module("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 16, 3).padding(1)));
    bn1 = register_module("bn1", torch::nn::BatchNorm2d(16));
    conv2 = register_module("conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(16, 32, 3).padding(1)));
    bn2 = register_module("bn2", torch::nn::BatchNorm2d(32));
    fc1 = register_module("fc1", torch::nn::Linear(32 * 4 * 4, 64));
    fc2 = register_module("fc2", torch::nn::Linear(64, kClasses));
  }
  torch::Tensor forward(torch::Tensor x) {
    x = torch::max_pool2d(torch::relu(bn1->forward(conv1->forward(x))), 2);
    x = torch::max_pool2d(torch::relu(bn2->forward(conv2->forward(x))), 2);
    return fc2->forward(torch::relu(fc1->forward(x.flatten(1))));
  }
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr};
  torch::nn::BatchNorm2d bn1{nullptr}, bn2{nullptr};
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(ShapesNet);

// ------------------------------------------------------------ the progress --

const bool kTerminal = isatty(fileno(stdout)) != 0;

// One line per run: redrawn in place on a terminal; on a pipe or a file,
// a plain line every quarter of the run.
class ProgressBar {
 public:
  ProgressBar(std::string label, int64_t total) : label_(std::move(label)), total_(total) {}

  void update(int64_t done, double loss) {
    const auto now = std::chrono::steady_clock::now();
    const double seconds = std::chrono::duration<double>(now - start_).count();
    const bool last = done == total_;
    if (kTerminal) {
      if (!last && std::chrono::duration<double>(now - drawn_).count() < 0.05) return;
      drawn_ = now;
      constexpr int kWidth = 28;
      const int filled = static_cast<int>(kWidth * done / total_);
      std::string bar(static_cast<size_t>(filled), '#');
      bar.resize(kWidth, '.');
      std::printf("\r  %-16s [%s] %4lld/%lld  loss %7.4f  %6.0f steps/s", label_.c_str(), bar.c_str(),
                  static_cast<long long>(done), static_cast<long long>(total_), loss, done / std::max(seconds, 1e-9));
      if (last) std::printf("\n");
      std::fflush(stdout);
    } else if (last || done * 4 / total_ != (done - 1) * 4 / total_) {
      std::printf("  %-16s step %4lld/%lld  loss %7.4f  %6.0f steps/s\n", label_.c_str(),
                  static_cast<long long>(done), static_cast<long long>(total_), loss,
                  done / std::max(seconds, 1e-9));
      std::fflush(stdout);
    }
  }

 private:
  std::string label_;
  int64_t total_;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point drawn_{};
};

// ------------------------------------------------------------ the training --

constexpr int64_t kBatch = 64;
constexpr int64_t kEvalEvery = 25;

struct TrainingResult {
  std::string name;
  double lr = 0.0;
  double initial_loss = 0.0;
  double train_loss = 0.0;  // mean over the last 50 steps
  double heldout_loss = 0.0;
  double heldout_accuracy = 0.0;
  double late_heldout_loss = 0.0;  // mean over the last 100 steps' evaluations: what the sweep ranks
  double optimizer_ms = 0.0;  // optimizer.step() alone, per step
  double total_ms = 0.0;      // forward, backward and step, per step
  std::vector<double> losses;
  std::vector<std::array<double, 3>> evaluations;  // step, held-out loss, accuracy
};

std::pair<double, double> evaluate(ShapesNet& net, const Dataset& data) {
  torch::NoGradGuard no_grad;
  net->eval();
  const auto logits = net->forward(data.images);
  net->train();
  const double loss = torch::cross_entropy_loss(logits, data.labels).item<double>();
  const double accuracy = logits.argmax(1).eq(data.labels).to(torch::kFloat64).mean().item<double>();
  return {loss, accuracy};
}

TrainingResult train(const Candidate& who, double lr, const Dataset& train_set, const Dataset& heldout,
                     int64_t steps, bool show_progress, uint64_t seed = 1) {
  torch::manual_seed(seed);  // the same initial weights and batches for everyone
  ShapesNet net;
  auto optimizer = who.make(net->parameters(), lr);
  TrainingResult result;
  result.name = who.name;
  result.lr = lr;
  result.initial_loss = evaluate(net, heldout).first;
  result.evaluations.push_back({0.0, result.initial_loss, evaluate(net, heldout).second});

  ProgressBar progress(who.name, steps);
  const int64_t n = train_set.labels.size(0);
  auto order = torch::randperm(n);
  int64_t cursor = 0;
  double optimizer_seconds = 0.0;
  const auto start = std::chrono::steady_clock::now();
  for (int64_t step = 1; step <= steps; ++step) {
    if (cursor + kBatch > n) {
      order = torch::randperm(n);
      cursor = 0;
    }
    const auto index = order.slice(0, cursor, cursor + kBatch);
    cursor += kBatch;
    // Cosine decay from lr to 0, as most real runs end: the last evaluations
    // then measure where each optimizer settled, not where a step landed.
    const double scheduled_lr = lr * 0.5 * (1.0 + std::cos(M_PI * static_cast<double>(step - 1) / steps));
    for (auto& group : optimizer->param_groups()) group.options().set_lr(scheduled_lr);
    optimizer->zero_grad();
    const auto loss = torch::cross_entropy_loss(net->forward(train_set.images.index_select(0, index)),
                                                train_set.labels.index_select(0, index));
    loss.backward();
    const auto before_step = std::chrono::steady_clock::now();
    optimizer->step();
    optimizer_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - before_step).count();
    result.losses.push_back(loss.item<double>());
    if (step % kEvalEvery == 0) {
      const auto [heldout_loss, accuracy] = evaluate(net, heldout);
      result.evaluations.push_back({static_cast<double>(step), heldout_loss, accuracy});
    }
    if (show_progress) progress.update(step, result.losses.back());
  }
  const double total_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const auto tail = std::min<size_t>(50, result.losses.size());
  result.train_loss =
      std::accumulate(result.losses.end() - static_cast<std::ptrdiff_t>(tail), result.losses.end(), 0.0) / tail;
  std::tie(result.heldout_loss, result.heldout_accuracy) = evaluate(net, heldout);
  const auto late = std::min<size_t>(4, result.evaluations.size());
  for (size_t i = result.evaluations.size() - late; i < result.evaluations.size(); ++i)
    result.late_heldout_loss += result.evaluations[i][1] / late;
  result.optimizer_ms = 1e3 * optimizer_seconds / steps;
  result.total_ms = 1e3 * total_seconds / steps;
  return result;
}

// -------------------------------------------------------- the 2-D functions --

struct TestFunction {
  std::string name;
  std::function<torch::Tensor(const torch::Tensor& xy)> value;
  std::array<double, 2> start, optimum;
  int64_t steps;
};

const std::vector<TestFunction>& test_functions() {
  static const std::vector<TestFunction> all = {
      {"rosenbrock",
       [](const torch::Tensor& p) {
         const auto x = p[0], y = p[1];
         return (1 - x).pow(2) + 100 * (y - x * x).pow(2);
       },
       {-2.0, 2.0},
       {1.0, 1.0},
       500},
      {"rastrigin",
       [](const torch::Tensor& p) {
         constexpr double kTwoPi = 2.0 * M_PI;
         return 20 + (p * p - 10 * torch::cos(kTwoPi * p)).sum();
       },
       {-2.0, 3.5},
       {0.0, 0.0},
       500},
  };
  return all;
}

std::vector<std::array<double, 2>> descend(const TestFunction& f, const Candidate& who, double lr) {
  auto xy = torch::tensor({f.start[0], f.start[1]}, torch::kFloat64).requires_grad_();
  auto optimizer = who.make({xy}, lr);
  std::vector<std::array<double, 2>> path = {f.start};
  for (int64_t i = 0; i < f.steps; ++i) {
    optimizer->zero_grad();
    f.value(xy).backward();
    optimizer->step();
    const auto point = xy.detach();
    path.push_back({point[0].item<double>(), point[1].item<double>()});
    if (!std::isfinite(path.back()[0]) || !std::isfinite(path.back()[1])) break;
  }
  return path;
}

double distance_to_optimum(const TestFunction& f, const std::array<double, 2>& point) {
  const double d = std::hypot(point[0] - f.optimum[0], point[1] - f.optimum[1]);
  return std::isfinite(d) ? d : std::numeric_limits<double>::infinity();
}

// ----------------------------------------------------------------- output --

void print_table(const std::vector<TrainingResult>& results) {
  double best_loss = std::numeric_limits<double>::infinity();
  for (const auto& r : results) best_loss = std::min(best_loss, r.heldout_loss);
  std::printf("\n%-16s %8s %11s %11s %13s %13s %9s %9s\n", "optimizer", "lr", "start loss", "train loss",
              "held-out loss", "held-out acc", "step ms", "total ms");
  std::printf("%s\n", std::string(98, '-').c_str());
  for (const auto& r : results) {
    std::printf("%-16s %8.0e %11.4f %11.4f %13.4f %12.1f%% %9.3f %9.3f%s\n", r.name.c_str(), r.lr, r.initial_loss,
                r.train_loss, r.heldout_loss, 100.0 * r.heldout_accuracy, r.optimizer_ms, r.total_ms,
                r.heldout_loss == best_loss ? "  <- best held-out loss" : "");
  }
  std::printf("train loss: mean of the last 50 batches; step ms: optimizer.step() alone; total ms: "
              "forward, backward and step\n");
}

void write_training_csv(const std::filesystem::path& dir, const std::vector<TrainingResult>& results) {
  std::ofstream losses(dir / "training_loss.csv"), evals(dir / "training_heldout.csv");
  losses << "optimizer,lr,step,loss\n";
  evals << "optimizer,lr,step,heldout_loss,heldout_accuracy\n";
  for (const auto& r : results) {
    for (size_t i = 0; i < r.losses.size(); ++i)
      losses << r.name << ',' << r.lr << ',' << i + 1 << ',' << r.losses[i] << '\n';
    for (const auto& e : r.evaluations)
      evals << r.name << ',' << r.lr << ',' << e[0] << ',' << e[1] << ',' << e[2] << '\n';
  }
}

int64_t parse_count(const char* text, const char* what) {
  char* end = nullptr;
  const long long value = std::strtoll(text, &end, 10);
  if (end == text || *end != '\0' || value < 1)
    throw std::invalid_argument(std::string(what) + " must be a positive integer, got '" + text + "'");
  return value;
}

int run_sweep(const Dataset& train_set, const Dataset& heldout, int64_t steps, const std::string& only) {
  std::printf("mean held-out loss over the last 100 of %lld steps, per learning rate\n%-16s", static_cast<long long>(steps), "");
  for (double lr : kSweepRates) std::printf(" %8.0e", lr);
  std::printf("   best\n");
  for (const auto& who : candidates()) {
    if (!only.empty() && who.name != only) continue;
    std::printf("%-16s", who.name.c_str());
    double best = std::numeric_limits<double>::infinity(), best_lr = 0.0;
    for (double lr : kSweepRates) {
      double loss = train(who, lr, train_set, heldout, steps, false).late_heldout_loss;
      if (!std::isfinite(loss)) loss = std::numeric_limits<double>::infinity();
      std::printf(" %8.4f", loss);
      std::fflush(stdout);
      if (loss < best) best = loss, best_lr = lr;
    }
    std::printf("   %.0e\n", best_lr);
  }
  return 0;
}

// Part 3: the eight algorithms with float32, bfloat16 and 8-bit state, `seeds` seeds each.
void run_state_precisions(const Dataset& train_set, const Dataset& heldout, int64_t steps, int64_t seeds,
                          const std::string& only, const std::filesystem::path& out) {
  constexpr ho::StatePrecision kPrecisions[] = {ho::StatePrecision::float32, ho::StatePrecision::bfloat16,
                                                ho::StatePrecision::blockwise8};
  std::printf("\nState precision on the same task: the eight algorithms with float32, bfloat16 and 8-bit state\n"
              "(conv2 and fc1 keep 8-bit moments, the smaller tensors float32 ones), %lld seeds each; mean held-out\n"
              "accuracy (%%), the lean precisions' difference from float32 state (points), and the standard\n"
              "deviation over seeds of float32 state's accuracy:\n\n",
              static_cast<long long>(seeds));
  std::printf("%-10s %9s %9s %9s %11s %11s %9s %9s\n", "optimizer", "float32", "bfloat16", "8bit", "bf16 - f32",
              "8bit - f32", "f32 sd", "seconds");
  std::printf("%s\n", std::string(84, '-').c_str());
  std::ofstream csv(out / "state_precision.csv");
  csv << "optimizer,precision,seed,heldout_accuracy,heldout_loss\n";
  for (const char* name : kAlgorithms) {
    if (!only.empty() && only != name) continue;
    const auto run = std::find_if(kTrainingRuns.begin(), kTrainingRuns.end(), [&](const auto& r) { return r.name == name; });
    const auto started = std::chrono::steady_clock::now();
    double mean[3] = {};
    std::vector<double> float32_accuracies;
    for (int k = 0; k < 3; ++k) {
      for (int64_t seed = 1; seed <= seeds; ++seed) {
        const auto result = train(with_state(name, kPrecisions[k]), run->lr, train_set, heldout, steps, false,
                                  static_cast<uint64_t>(seed));
        mean[k] += 100.0 * result.heldout_accuracy / static_cast<double>(seeds);
        if (k == 0) float32_accuracies.push_back(100.0 * result.heldout_accuracy);
        csv << name << ',' << ho::to_string(kPrecisions[k]) << ',' << seed << ',' << result.heldout_accuracy << ','
            << result.heldout_loss << '\n';
      }
    }
    // The seeds' spread with float32 state: what a difference between the columns is measured against.
    double spread = 0.0;
    for (double a : float32_accuracies) spread += (a - mean[0]) * (a - mean[0]);
    spread = seeds > 1 ? std::sqrt(spread / static_cast<double>(seeds - 1)) : 0.0;
    std::printf("%-10s %9.2f %9.2f %9.2f %+11.2f %+11.2f %9.2f %9.1f\n", name, mean[0], mean[1], mean[2],
                mean[1] - mean[0], mean[2] - mean[0], spread,
                std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
    std::fflush(stdout);
  }
}

}  // namespace

int main(int argc, char** argv) try {
  std::filesystem::path out = "demo-output";
  int64_t steps = 400;
  bool sweep = false;
  int64_t seeds = 3;
  std::string only;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const auto value = [&]() -> const char* {
      if (i + 1 >= argc) throw std::invalid_argument(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "--out") {
      out = value();
    } else if (arg == "--steps") {
      steps = parse_count(value(), "--steps");
    } else if (arg == "--threads") {
      at::set_num_threads(static_cast<int>(parse_count(value(), "--threads")));
    } else if (arg == "--only") {
      only = candidate(value()).name;
    } else if (arg == "--sweep") {
      sweep = true;
    } else if (arg == "--seeds") {
      const std::string text = value();
      seeds = text == "0" ? 0 : parse_count(text.c_str(), "--seeds");
    } else {
      throw std::invalid_argument("unknown argument '" + arg + "' (see the top of demo/demo.cpp)");
    }
  }

  const auto train_set = make_shapes(8192, 100);
  const auto heldout = make_shapes(1024, 200);
  if (sweep) return run_sweep(train_set, heldout, steps, only);
  std::filesystem::create_directories(out);

  std::printf("Task: classify noisy 16x16 images of a %s, %s, %s, %s or %s (8192 to train on, 1024 held out)\n",
              kClassNames[0], kClassNames[1], kClassNames[2], kClassNames[3], kClassNames[4]);
  std::printf("with a small CNN (two conv+BatchNorm layers, %d threads): %lld steps of batch %lld each.\n\n",
              at::get_num_threads(), static_cast<long long>(steps), static_cast<long long>(kBatch));
  std::vector<TrainingResult> results;
  for (const auto& run : kTrainingRuns)
    if (only.empty() || run.name == only)
      results.push_back(train(candidate(run.name), run.lr, train_set, heldout, steps, true));
  print_table(results);
  write_training_csv(out, results);

  for (const auto& f : test_functions()) {
    std::printf("\n%s from (%g, %g) to the optimum (%g, %g), %lld steps; lr by a sweep over 1e-4..2.5:\n",
                f.name.c_str(), f.start[0], f.start[1], f.optimum[0], f.optimum[1],
                static_cast<long long>(f.steps));
    std::ofstream csv(out / (f.name + "_trajectories.csv"));
    csv << "optimizer,lr,step,x,y\n";
    for (const auto& who : candidates()) {
      if (!only.empty() && who.name != only) continue;
      double best_distance = std::numeric_limits<double>::infinity(), best_lr = 0.0;
      std::vector<std::array<double, 2>> best_path;
      for (int e = -20; e <= 2; ++e) {  // 1e-4 to 2.5, 5 rates per decade
        const double lr = std::pow(10.0, e / 5.0);
        auto path = descend(f, who, lr);
        const double distance = distance_to_optimum(f, path.back());
        if (distance < best_distance) best_distance = distance, best_lr = lr, best_path = std::move(path);
      }
      std::printf("  %-16s lr %.2e  ends (%8.4f, %8.4f), %.2e from the optimum\n", who.name.c_str(), best_lr,
                  best_path.back()[0], best_path.back()[1], best_distance);
      for (size_t i = 0; i < best_path.size(); ++i)
        csv << who.name << ',' << best_lr << ',' << i << ',' << best_path[i][0] << ',' << best_path[i][1] << '\n';
    }
  }
  if (seeds > 0) run_state_precisions(train_set, heldout, steps, seeds, only, out);
  std::printf("\nCSV files written to %s\n", std::filesystem::absolute(out).c_str());
  return 0;
} catch (const std::exception& error) {
  std::fprintf(stderr, "holocron_demo: %s\n", error.what());
  return 2;
}
