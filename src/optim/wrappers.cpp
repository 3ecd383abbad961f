#include <c10/util/Exception.h>
#include <torch/utils.h>

#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

#include "holocron/optim/detail/optimizer_base.h"
#include "holocron/optim/wrapper.h"

#include "functional/common.h"

namespace holocron::optim {

namespace detail {

double BaseGroupOptions::get_lr() const {
  TORCH_CHECK(group_index_ < base_->param_groups().size(),
              "the wrapped optimizer has no parameter group ", group_index_);
  return base_->param_groups()[group_index_].options().get_lr();
}

void BaseGroupOptions::set_lr(const double lr) {
  TORCH_CHECK(group_index_ < base_->param_groups().size(),
              "the wrapped optimizer has no parameter group ", group_index_);
  base_->param_groups()[group_index_].options().set_lr(lr);
}

}  // namespace detail

namespace {

std::string slow_key(size_t group, size_t param) {
  return "slow/" + std::to_string(group) + "/" + std::to_string(param);
}

// What is wrong with `options`, or an empty string: the constructor throws it as
// std::invalid_argument, a checkpoint's load as c10::ValueError (wrapper.h).
std::string wrapper_options_problem(const char* name, const LookaheadOptions& options) {
  const double rate = options.sync_rate();
  if (!(rate >= 0.0 && rate <= 1.0)) return c10::str(name, ": sync_rate must be in [0, 1], got ", rate);
  if (options.sync_period() < 1) {
    return c10::str(name, ": sync_period must be an integer >= 1, got ", options.sync_period());
  }
  // Scout's adaptive rate reads statistics of every step of a period, of every parameter.
  if (options.slow_from_first_sync() && std::string(name) != "Lookahead") {
    return c10::str(name, ": slow_from_first_sync (timm's Lookahead) is Lookahead's only");
  }
  return {};
}

// A checkpoint's tensor of another floating-point dtype is converted to the one kept, as
// OptimizerBase's load converts its buffers (a float64 checkpoint loads into a float32 model);
// for a complex parameter only its own dtype is taken.
bool loads_into(const torch::Tensor& loaded, const torch::Tensor& param) {
  return loaded.layout() == at::kStrided &&
         (loaded.scalar_type() == param.scalar_type() || (loaded.is_floating_point() && param.is_floating_point()));
}

// The sync and Scout's statistics are defined for floating-point weights (a
// complex one through its real view). Checked before a group reaches the base
// optimizer, so a refused parameter never gets a base step the wrapper cannot
// follow.
void check_wrappable(const std::string& name, const std::vector<torch::Tensor>& params, size_t group_index) {
  for (size_t i = 0; i < params.size(); ++i) {
    TORCH_CHECK(params[i].defined() && (params[i].is_floating_point() || params[i].is_complex()), name,
                ": parameter ", i, " of group ", group_index, " has dtype ",
                params[i].defined() ? c10::toString(params[i].scalar_type()) : "undefined",
                "; only floating-point and complex parameters can be wrapped");
  }
}

}  // namespace

Lookahead::Lookahead(std::shared_ptr<torch::optim::Optimizer> base, LookaheadOptions options)
    : Lookahead(std::move(base), options, "Lookahead") {
  mirror_new_base_groups();
}

Lookahead::Lookahead(std::shared_ptr<torch::optim::Optimizer> base, LookaheadOptions options,
                     const char* name)
    : torch::optim::Optimizer(std::vector<torch::optim::OptimizerParamGroup>{},
                              std::make_unique<detail::BaseGroupOptions>(base, 0)),
      base_(std::move(base)),
      options_(options),
      name_(name) {
  if (!base_) throw std::invalid_argument(std::string(name) + ": the base optimizer is null");
  if (const auto problem = wrapper_options_problem(name, options_); !problem.empty()) {
    throw std::invalid_argument(problem);
  }
  // The groups are mirrored by the most-derived constructor, once the
  // add_group_state hook of that class is in place.
}

void Lookahead::mirror_new_base_groups() {
  const auto& base_groups = base_->param_groups();
  // Groups added through torch::optim::Optimizer::add_param_group (not
  // virtual) reach only one of the two optimizers.
  TORCH_CHECK(param_groups_.size() == slow_.size() && slow_.size() <= base_groups.size(), name_,
              ": the wrapper has ", param_groups_.size(), " parameter groups and the base ",
              base_groups.size(), "; add groups with ", name_, "::add_param_group");
  for (size_t gi = 0; gi < slow_.size(); ++gi) {
    TORCH_CHECK(base_groups[gi].params().size() == slow_[gi].size() &&
                    param_groups_[gi].params().size() == slow_[gi].size(),
                name_, ": parameter group ", gi, " changed size after it was wrapped");
  }
  for (size_t gi = param_groups_.size(); gi < base_groups.size(); ++gi) {
    check_wrappable(name_, base_groups[gi].params(), gi);
  }
  for (size_t gi = param_groups_.size(); gi < base_groups.size(); ++gi) {
    param_groups_.emplace_back(base_groups[gi].params(),
                               std::make_unique<detail::BaseGroupOptions>(base_, gi));
    auto& slow = slow_.emplace_back();
    const auto slow_dtype = base_state_dtype(gi);
    const auto& params = base_groups[gi].params();
    const auto compensation = options_.slow_from_first_sync() ? std::vector<torch::Tensor>() : base_compensation(params);
    for (size_t pi = 0; pi < params.size(); ++pi) {
      // The slow weights follow the base's state precision.
      slow.push_back(options_.slow_from_first_sync()
                         ? torch::Tensor()
                         : weight_of(params[pi], compensation, pi).to(slow_dtype.value_or(params[pi].scalar_type()),
                                                                       false, true));
      has_complex_ = has_complex_ || params[pi].is_complex();
    }
    group_start_.push_back(fast_steps_);
    add_group_state(gi);
  }
}

std::optional<at::ScalarType> Lookahead::base_state_dtype(size_t group_index) const {
  if (const auto* ours = dynamic_cast<const OptimizerBase*>(base_.get())) {
    return state_dtype(ours->group_state_precision(group_index));
  }
  if (const auto* wrapper = dynamic_cast<const Lookahead*>(base_.get())) return wrapper->base_state_dtype(group_index);
  return std::nullopt;
}

void Lookahead::zero_grad(bool set_to_none) {
  if (auto* wrapper = dynamic_cast<Lookahead*>(base_.get())) {
    wrapper->zero_grad(set_to_none);
  } else {
    base_->zero_grad(set_to_none);
  }
}

void Lookahead::add_param_group(const torch::optim::OptimizerParamGroup& param_group) {
  mirror_new_base_groups();
  check_wrappable(name_, param_group.params(), base_->param_groups().size());
  // The base function is not virtual: reach the override of a holocron base.
  if (auto* ours = dynamic_cast<OptimizerBase*>(base_.get())) {
    ours->add_param_group(param_group);
  } else if (auto* wrapper = dynamic_cast<Lookahead*>(base_.get())) {
    wrapper->add_param_group(param_group);
  } else {
    base_->add_param_group(param_group);
  }
  mirror_new_base_groups();
}

std::vector<torch::Tensor> Lookahead::fast_params() const {
  std::vector<torch::Tensor> out;
  for (const auto& group : param_groups_) {
    out.insert(out.end(), group.params().begin(), group.params().end());
  }
  return out;
}

std::vector<torch::Tensor> Lookahead::flat_slow_params() const {
  std::vector<torch::Tensor> out;
  for (const auto& group : slow_) out.insert(out.end(), group.begin(), group.end());
  return out;
}

std::vector<torch::Tensor> Lookahead::real_views(std::vector<torch::Tensor> tensors) const {
  if (has_complex_) {
    for (auto& t : tensors) {
      if (t.is_complex()) t = at::view_as_real(t);
    }
  }
  return tensors;
}

torch::Tensor Lookahead::step(const functional::GradScaling& scaling, LossClosure closure) {
  const auto inverse = functional::detail::grad_unscale(name_, scaling);
  if (!inverse) {
    if (!closure) return {};
    at::AutoGradMode enable_grad(true);
    return closure();
  }
  check_base();
  mirror_new_base_groups();
  return step_after_base([&] {
    if (auto* ours = dynamic_cast<OptimizerBase*>(base_.get())) return ours->step(scaling, closure);
    if (auto* wrapper = dynamic_cast<Lookahead*>(base_.get())) return wrapper->step(scaling, closure);
    torch::Tensor loss;
    if (closure) {
      at::AutoGradMode enable_grad(true);
      loss = closure();
    }
    if (*inverse != 1.0) {
      torch::NoGradGuard no_grad;
      for (const auto& p : fast_params()) {
        if (p.grad().defined()) p.mutable_grad().mul_(*inverse);
      }
    }
    base_->step();
    return loss;
  });
}

torch::Tensor Lookahead::step(LossClosure closure) {
  check_base();
  mirror_new_base_groups();
  return step_after_base([&] { return base_->step(closure); });
}

void Lookahead::check_copies_fit() {
  std::vector<Copy> copies;
  size_t flat = 0;
  for (size_t gi = 0; gi < param_groups_.size(); ++gi) {
    const auto& params = param_groups_[gi].params();
    for (size_t pi = 0; pi < params.size(); ++pi, ++flat) {
      copies.clear();
      copies_of(gi, pi, flat, copies);
      const auto& p = params[pi];
      for (const auto& copy : copies) {
        const auto& t = *copy.tensor;
        if (!t.defined() || (functional::detail::same_extents(t.sizes(), p.sizes()) && t.device() == p.device() &&
                             t.scalar_type() == copy.dtype.value_or(p.scalar_type()))) {
          continue;
        }
        if (fast_steps_ == 0) {
          slow_.clear();
          param_groups_.clear();
          group_start_.clear();
          has_complex_ = false;
          clear_group_states();
          mirror_new_base_groups();
          return;
        }
        TORCH_CHECK(false, name_, ": parameter ", pi, " of group ", gi, " is now ", p.sizes(), " ", p.scalar_type(),
                    " on ", p.device(), ", and its ", copy.what, " ", t.sizes(), " ", t.scalar_type(), " on ",
                    t.device(), " where ", copy.dtype.value_or(p.scalar_type()),
                    copy.dtype ? " (the group's state_precision)" : "", " is expected: neither a parameter's shape, ",
                    "dtype or device nor a group's state_precision can change after the wrapper's first step ",
                    "(convert or move the model before making its optimizers)");
      }
    }
  }
}

void Lookahead::copies_of(size_t group_index, size_t index, size_t, std::vector<Copy>& out) const {
  out.push_back({"slow weight", &slow_[group_index][index], base_state_dtype(group_index)});
}

void Lookahead::clear_group_states() {}

torch::Tensor Lookahead::step_after_base(const std::function<torch::Tensor()>& base_step) {
  check_copies_fit();
  auto loss = base_step();
  torch::NoGradGuard no_grad;
  const int64_t changes_before = fast_steps_ % options_.sync_period();
  after_base_step(changes_before);
  ++fast_steps_;
  if (options_.slow_from_first_sync()) {
    for (size_t gi = 0; gi < slow_.size(); ++gi) {
      if ((fast_steps_ - group_start_[gi]) % options_.sync_period() == 0) sync_group(gi, options_.sync_rate());
    }
    return loss;
  }
  if (fast_steps_ % options_.sync_period() == 0) {
    sync_params(rate_for_sync(changes_before + 1));
    after_sync();
  }
  return loss;
}

void Lookahead::sync_params(double sync_rate) {
  torch::NoGradGuard no_grad;
  if (options_.slow_from_first_sync()) {
    functional::detail::check_hyper(name_, "sync_rate", sync_rate, 0.0, true, 1.0, true);
    for (size_t gi = 0; gi < slow_.size(); ++gi) sync_group(gi, sync_rate);
    return;
  }
  const auto fast = fast_params();
  functional::lookahead_sync_(real_views(fast), real_views(flat_slow_params()), sync_rate, base_compensation(fast));
}

torch::Tensor Lookahead::weight_of(const torch::Tensor& param, const std::vector<torch::Tensor>& compensation,
                                   size_t index) {
  if (index >= compensation.size() || !compensation[index].defined()) return param.detach();
  return param.detach().to(at::kFloat) + compensation[index].to(at::kFloat);
}

std::vector<torch::Tensor> Lookahead::base_compensation(const std::vector<torch::Tensor>& fast) const {
  if (const auto* ours = dynamic_cast<const OptimizerBase*>(base_.get())) return ours->kahan_compensation(fast);
  if (const auto* wrapper = dynamic_cast<const Lookahead*>(base_.get())) return wrapper->base_compensation(fast);
  return {};
}

void Lookahead::sync_group(size_t group_index, double sync_rate) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> fast, slow;
  const auto& params = param_groups_[group_index].params();
  const auto compensation = base_compensation(params);
  for (size_t pi = 0; pi < params.size(); ++pi) {
    if (!params[pi].grad().defined()) continue;
    auto& slow_weight = slow_[group_index][pi];
    // A first sync moves nothing: slow == fast (as the base's state precision holds it).
    if (!slow_weight.defined()) {
      slow_weight = weight_of(params[pi], compensation, pi)
                        .to(base_state_dtype(group_index).value_or(params[pi].scalar_type()), false, true);
    }
    fast.push_back(params[pi]);
    slow.push_back(slow_weight);
  }
  if (!fast.empty()) functional::lookahead_sync_(real_views(fast), real_views(slow), sync_rate, base_compensation(fast));
}

void Lookahead::after_base_step(int64_t) {}
double Lookahead::rate_for_sync(int64_t) { return options_.sync_rate(); }
void Lookahead::after_sync() {}
void Lookahead::add_group_state(size_t) {}
void Lookahead::save_extra(torch::serialize::OutputArchive&) const {}
std::function<void()> Lookahead::load_extra(torch::serialize::InputArchive&) { return [] {}; }

void Lookahead::save(torch::serialize::OutputArchive& archive) const {
  // Version 2 only where an older build would lose timm's schedule (see kCheckpointFormatVersion).
  archive.write("holocron/format_version", options_.slow_from_first_sync() ? int64_t{2} : int64_t{1});
  archive.write("holocron/optimizer", std::string(name_));
  archive.write("fast_steps", fast_steps_);
  archive.write("sync_rate", options_.sync_rate());
  archive.write("sync_period", options_.sync_period());
  archive.write("slow_from_first_sync", options_.slow_from_first_sync());
  archive.write("groups/size", static_cast<int64_t>(slow_.size()));
  for (size_t gi = 0; gi < slow_.size(); ++gi) {
    archive.write("groups/" + std::to_string(gi) + "/size", static_cast<int64_t>(slow_[gi].size()));
    archive.write("groups/" + std::to_string(gi) + "/start", group_start_[gi]);
    // Slow weights not taken yet (slow_from_first_sync) are left out.
    for (size_t pi = 0; pi < slow_[gi].size(); ++pi) {
      if (slow_[gi][pi].defined()) archive.write(slow_key(gi, pi), slow_[gi][pi]);
    }
  }
  save_extra(archive);
  torch::serialize::OutputArchive base_archive(archive.compilation_unit());
  base_->save(base_archive);
  archive.write("base", base_archive);
}

void Lookahead::load(torch::serialize::InputArchive& archive) {
  mirror_new_base_groups();
  c10::IValue value;
  TORCH_CHECK(archive.try_read("holocron/format_version", value), name_,
              ": not a holocron-optim checkpoint (no format version)");
  TORCH_CHECK(value.toInt() >= 1 && value.toInt() <= kCheckpointFormatVersion, name_,
              ": checkpoint format version ", value.toInt(), " is not supported");
  TORCH_CHECK(archive.try_read("holocron/optimizer", value), name_,
              ": checkpoint does not name its optimizer");
  TORCH_CHECK(value.toStringRef() == name_, name_, ": checkpoint was written by ",
              value.toStringRef(), ", not ", name_);

  LookaheadOptions options;
  TORCH_CHECK(archive.try_read("sync_rate", value), name_, ": checkpoint lacks sync_rate");
  options.sync_rate(value.toDouble());
  TORCH_CHECK(archive.try_read("sync_period", value), name_, ": checkpoint lacks sync_period");
  options.sync_period(value.toInt());
  // Written before the option existed: false.
  if (archive.try_read("slow_from_first_sync", value)) options.slow_from_first_sync(value.toBool());
  const auto problem = wrapper_options_problem(name_, options);
  TORCH_CHECK_VALUE(problem.empty(), problem, " (in the checkpoint)");
  TORCH_CHECK(archive.try_read("fast_steps", value), name_, ": checkpoint lacks fast_steps");
  const int64_t fast_steps = value.toInt();
  TORCH_CHECK(fast_steps >= 0, name_, ": checkpoint has a negative step count");

  TORCH_CHECK(archive.try_read("groups/size", value), name_, ": checkpoint lacks groups/size");
  TORCH_CHECK(static_cast<size_t>(value.toInt()) == slow_.size(), name_, ": checkpoint has ",
              value.toInt(), " parameter groups, the optimizer has ", slow_.size());
  std::vector<std::vector<torch::Tensor>> slow(slow_.size());
  std::vector<int64_t> group_start(slow_.size(), 0);
  for (size_t gi = 0; gi < slow_.size(); ++gi) {
    if (archive.try_read("groups/" + std::to_string(gi) + "/start", value)) group_start[gi] = value.toInt();
    TORCH_CHECK(group_start[gi] >= 0 && group_start[gi] <= fast_steps, name_, ": group ", gi,
                " of the checkpoint starts at step ", group_start[gi], ", after its ", fast_steps, " steps");
    const auto& params = param_groups_[gi].params();
    TORCH_CHECK(archive.try_read("groups/" + std::to_string(gi) + "/size", value), name_,
                ": checkpoint lacks the size of group ", gi);
    TORCH_CHECK(static_cast<size_t>(value.toInt()) == params.size(), name_, ": group ", gi,
                " of the checkpoint has ", value.toInt(), " parameters, the optimizer's has ",
                params.size());
    for (size_t pi = 0; pi < params.size(); ++pi) {
      torch::Tensor t;
      if (!archive.try_read(slow_key(gi, pi), t)) {
        TORCH_CHECK(options.slow_from_first_sync(), name_, ": checkpoint lacks slow weight ", pi, " of group ", gi);
        slow[gi].emplace_back();  // not taken yet
        continue;
      }
      // Slow weights of another floating-point dtype are converted to the base's state precision.
      TORCH_CHECK(t.sizes().equals(params[pi].sizes()) && loads_into(t, params[pi]),
                  name_, ": slow weight ", pi, " of group ", gi, " (", t.sizes(), ", ",
                  t.scalar_type(), ") does not fit its parameter (", params[pi].sizes(), ", ",
                  params[pi].scalar_type(), "; slow weights of another floating-point dtype are converted)");
      slow[gi].push_back(t.to(params[pi].device(), base_state_dtype(gi).value_or(params[pi].scalar_type())));
    }
  }
  auto commit_extra = load_extra(archive);

  torch::serialize::InputArchive base_archive;
  TORCH_CHECK(archive.try_read("base", base_archive), name_,
              ": checkpoint lacks the base optimizer's state");
  base_->load(base_archive);  // checks its own part; throws before we change anything

  options_ = options;
  fast_steps_ = fast_steps;
  slow_ = std::move(slow);
  group_start_ = std::move(group_start);
  commit_extra();
}

// ---- Scout ----------------------------------------------------------------

Scout::Scout(std::shared_ptr<torch::optim::Optimizer> base, ScoutOptions options)
    : Lookahead(std::move(base), options, "Scout"),
      last_sync_rate_(std::numeric_limits<double>::quiet_NaN()) {
  mirror_new_base_groups();
}

const Scout::Stats& Scout::functional_stats(Stats& scratch) const {
  if (!wraps_complex()) return stats_;
  scratch = {real_views(stats_.prev), real_views(stats_.mean), real_views(stats_.m2), real_views(stats_.max),
             real_views(stats_.min)};
  return scratch;
}

functional::ScoutStats Scout::view(const Stats& stats) {
  return {stats.prev, stats.mean, stats.m2, stats.max, stats.min};
}

void Scout::add_group_state(size_t group_index) {
  const auto base_dtype = base_state_dtype(group_index);
  for (const auto& p : param_groups()[group_index].params()) {
    // The base's state precision; for its parameters' own, float32 for reduced-precision ones.
    const auto stats_dtype = base_dtype.value_or(at::isReducedFloatingType(p.scalar_type()) ? at::kFloat : p.scalar_type());
    const auto options = p.options().dtype(stats_dtype);
    stats_.prev.push_back(p.detach().clone());
    stats_.mean.push_back(torch::zeros(p.sizes(), options));
    stats_.m2.push_back(torch::zeros(p.sizes(), options));
    stats_.max.push_back(torch::zeros(p.sizes(), options));
    stats_.min.push_back(torch::zeros(p.sizes(), options));
  }
}

void Scout::clear_group_states() { stats_ = {}; }

void Scout::copies_of(size_t group_index, size_t index, size_t flat, std::vector<Copy>& out) const {
  Lookahead::copies_of(group_index, index, flat, out);
  // The previous weights are the parameters' own dtype, whatever the precision: a parameter
  // converted in place is seen there; the other statistics have their shape.
  out.push_back({"previous weight (Scout's statistics)", &stats_.prev[flat], std::nullopt});
}

void Scout::check_base() const {
  // Scout's statistics take the weights' changes from copies in the weights' dtype, which cannot
  // hold a Kahan-compensated weight's (p + c): its adaptive rate would see only the rounded moves,
  // and its sync would leave the compensations stale. Through wrappers too.
  const torch::optim::Optimizer* base = &base_optimizer();
  while (const auto* wrapper = dynamic_cast<const Lookahead*>(base)) base = &wrapper->base_optimizer();
  if (const auto* ours = dynamic_cast<const OptimizerBase*>(base)) {
    for (size_t gi = 0; gi < ours->param_groups().size(); ++gi) {
      TORCH_CHECK(!ours->group_kahan_summation(gi), "Scout: group ", gi, " of its base ", ours->name(),
                  " has kahan_summation, which Scout does not support (its statistics would see only the ",
                  "rounded weights' moves); Lookahead does");
    }
  }
}

void Scout::after_base_step(int64_t changes_before) {
  Stats scratch;
  functional::scout_accumulate_(real_views(fast_params()), view(functional_stats(scratch)), changes_before);
}

double Scout::rate_for_sync(int64_t changes_in_period) {
  Stats scratch;
  const double coherence = functional::scout_coherence(view(functional_stats(scratch)), changes_in_period);
  last_sync_rate_ = std::max(1.0 - coherence, options().sync_rate());
  return last_sync_rate_;
}

void Scout::after_sync() {
  const auto fast = fast_params();
  for (size_t i = 0; i < fast.size(); ++i) stats_.prev[i].copy_(fast[i]);
}

namespace {

constexpr const char* kStatNames[] = {"prev", "mean", "m2", "max", "min"};

}  // namespace

void Scout::save_extra(torch::serialize::OutputArchive& archive) const {
  const std::vector<torch::Tensor>* lists[] = {&stats_.prev, &stats_.mean, &stats_.m2,
                                               &stats_.max, &stats_.min};
  archive.write("scout/size", static_cast<int64_t>(stats_.prev.size()));
  archive.write("scout/last_sync_rate", last_sync_rate_);
  for (size_t k = 0; k < 5; ++k) {
    for (size_t i = 0; i < lists[k]->size(); ++i) {
      archive.write("scout/" + std::to_string(i) + "/" + kStatNames[k], (*lists[k])[i]);
    }
  }
}

std::function<void()> Scout::load_extra(torch::serialize::InputArchive& archive) {
  const auto fast = fast_params();
  c10::IValue value;
  TORCH_CHECK(archive.try_read("scout/size", value), name(), ": checkpoint lacks Scout's statistics");
  TORCH_CHECK(static_cast<size_t>(value.toInt()) == fast.size(), name(), ": checkpoint has ",
              "statistics for ", value.toInt(), " parameters, the optimizer has ", fast.size());
  double last_rate = std::numeric_limits<double>::quiet_NaN();
  if (archive.try_read("scout/last_sync_rate", value)) last_rate = value.toDouble();
  Stats loaded;
  std::vector<torch::Tensor>* lists[] = {&loaded.prev, &loaded.mean, &loaded.m2, &loaded.max,
                                         &loaded.min};
  const std::vector<torch::Tensor>* current[] = {&stats_.prev, &stats_.mean, &stats_.m2,
                                                 &stats_.max, &stats_.min};
  for (size_t k = 0; k < 5; ++k) {
    for (size_t i = 0; i < fast.size(); ++i) {
      torch::Tensor t;
      const auto key = "scout/" + std::to_string(i) + "/" + kStatNames[k];
      TORCH_CHECK(archive.try_read(key, t), name(), ": checkpoint lacks ", key);
      const auto& expected = (*current[k])[i];
      // Of another floating-point dtype (another state precision, a float64 run), converted.
      TORCH_CHECK(t.sizes().equals(expected.sizes()) && loads_into(t, expected), name(), ": ", key, " (",
                  t.sizes(), ", ", t.scalar_type(), ") does not fit its parameter (", fast[i].sizes(), ", ",
                  fast[i].scalar_type(), "; another floating-point dtype is converted)");
      lists[k]->push_back(t.to(expected.device(), expected.scalar_type()));
    }
  }
  return [this, loaded = std::move(loaded), last_rate]() mutable {
    stats_ = std::move(loaded);
    last_sync_rate_ = last_rate;
  };
}

}  // namespace holocron::optim
