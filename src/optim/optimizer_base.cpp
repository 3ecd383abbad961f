#include "holocron/optim/detail/optimizer_base.h"

#include "functional/common.h"

#include <ATen/core/ivalue.h>
#include <c10/util/Exception.h>
#include <torch/utils.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <stdexcept>
#include <typeinfo>
#include <type_traits>
#include <unordered_set>
#include <variant>

namespace holocron::optim {

const char* to_string(StatePrecision precision) {
  switch (precision) {
    case StatePrecision::param:
      return "param";
    case StatePrecision::float32:
      return "float32";
    case StatePrecision::bfloat16:
      return "bfloat16";
    case StatePrecision::blockwise8:
      return "8bit";
  }
  C10_THROW_ERROR(ValueError, c10::str("state_precision ", static_cast<int>(precision), " is not a StatePrecision"));
}

namespace {
constexpr StatePrecision kStatePrecisions[] = {StatePrecision::param, StatePrecision::float32,
                                               StatePrecision::bfloat16, StatePrecision::blockwise8};
}  // namespace

StatePrecision state_precision_from_string(const std::string& name) {
  for (const auto precision : kStatePrecisions) {
    if (name == to_string(precision)) return precision;
  }
  C10_THROW_ERROR(ValueError,
                  c10::str("state_precision must be 'param', 'float32', 'bfloat16' or '8bit', got '", name, "'"));
}

std::optional<at::ScalarType> state_dtype(StatePrecision precision) {
  switch (precision) {
    case StatePrecision::float32:
    case StatePrecision::blockwise8:  // what it keeps beside the codes
      return at::kFloat;
    case StatePrecision::bfloat16:
      return at::kBFloat16;
    case StatePrecision::param:
      break;
  }
  return std::nullopt;
}

at::ScalarType state_dtype(StatePrecision precision, const at::Tensor& param) {
  return state_dtype(precision).value_or(param.scalar_type());
}

namespace detail {

namespace {

c10::IValue read_ivalue(torch::serialize::InputArchive& archive, const std::string& key) {
  c10::IValue value;
  TORCH_CHECK(archive.try_read(key, value), "checkpoint lacks the field '", key, "'");
  return value;
}

std::vector<double> read_doubles(torch::serialize::InputArchive& archive, const char* name,
                                 size_t expected) {
  auto values = read_ivalue(archive, name).toDoubleVector();
  TORCH_CHECK(values.size() == expected, "checkpoint field '", name, "' holds ", values.size(),
              " values, expected ", expected);
  return values;
}

}  // namespace

void FieldWriter::operator()(const char* name, const torch::Tensor& t) const {
  if (t.defined()) archive.write(name, t);
}
void FieldWriter::operator()(const char* name, int64_t v) const { archive.write(name, v); }
void FieldWriter::operator()(const char* name, double v) const { archive.write(name, v); }
void FieldWriter::operator()(const char* name, bool v) const { archive.write(name, v); }
void FieldWriter::operator()(const char* name, const betas2_t& v) const {
  archive.write(name, std::vector<double>{std::get<0>(v), std::get<1>(v)});
}
void FieldWriter::operator()(const char* name, const betas3_t& v) const {
  archive.write(name, std::vector<double>{std::get<0>(v), std::get<1>(v), std::get<2>(v)});
}
void FieldWriter::operator()(const char* name, const scale_clip_t& v) const {
  // An absent optional is an empty list.
  archive.write(name, v ? std::vector<double>{std::get<0>(*v), std::get<1>(*v)}
                        : std::vector<double>{});
}
void FieldWriter::operator()(const char* name, const dof_t& v) const {
  archive.write(name, v ? std::vector<double>{*v} : std::vector<double>{});
}

void FieldWriter::operator()(const char* name, StatePrecision v) const {
  archive.write(name, std::string(to_string(v)));
}

void FieldReader::operator()(const char* name, torch::Tensor& t) const {
  torch::Tensor value;
  t = archive.try_read(name, value) ? value : torch::Tensor();
}
bool FieldReader::keeps_value(const char* name) const {
  if (std::find(added_later.begin(), added_later.end(), name) == added_later.end()) return false;
  c10::IValue value;
  return !archive.try_read(name, value);
}

void FieldReader::operator()(const char* name, int64_t& v) const {
  if (keeps_value(name)) return;
  v = read_ivalue(archive, name).toInt();
}
void FieldReader::operator()(const char* name, double& v) const {
  if (keeps_value(name)) return;
  v = read_ivalue(archive, name).toDouble();
}
void FieldReader::operator()(const char* name, bool& v) const {
  if (keeps_value(name)) return;
  v = read_ivalue(archive, name).toBool();
}
void FieldReader::operator()(const char* name, betas2_t& v) const {
  if (keeps_value(name)) return;
  auto d = read_doubles(archive, name, 2);
  v = {d[0], d[1]};
}
void FieldReader::operator()(const char* name, betas3_t& v) const {
  if (keeps_value(name)) return;
  auto d = read_doubles(archive, name, 3);
  v = {d[0], d[1], d[2]};
}
void FieldReader::operator()(const char* name, scale_clip_t& v) const {
  if (keeps_value(name)) return;
  auto d = read_ivalue(archive, name).toDoubleVector();
  TORCH_CHECK(d.empty() || d.size() == 2, "checkpoint field '", name, "' holds ", d.size(),
              " values, expected 0 or 2");
  v = d.empty() ? scale_clip_t{} : scale_clip_t{std::make_tuple(d[0], d[1])};
}
void FieldReader::operator()(const char* name, dof_t& v) const {
  if (keeps_value(name)) return;
  auto d = read_ivalue(archive, name).toDoubleVector();
  TORCH_CHECK(d.size() <= 1, "checkpoint field '", name, "' holds ", d.size(),
              " values, expected 0 or 1");
  v = d.empty() ? dof_t{} : dof_t{d[0]};
}

void FieldReader::operator()(const char* name, StatePrecision& v) const {
  if (keeps_value(name)) return;
  const auto value = read_ivalue(archive, name);
  TORCH_CHECK_VALUE(value.isString(), "checkpoint field '", name, "' holds ", value.tagKind(),
                    ", expected a string");
  // A load gives each group its own precision back (OptimizerBase::load), so a name this build
  // does not know (a later build's) changes nothing and is not refused, as in Python.
  const auto& text = value.toStringRef();
  for (const auto precision : kStatePrecisions) {
    if (text == to_string(precision)) v = precision;
  }
}

bool same_values(const std::vector<FieldValue>& lhs, const std::vector<FieldValue>& rhs) {
  if (lhs.size() != rhs.size()) return false;
  for (size_t i = 0; i < lhs.size(); ++i) {
    if (lhs[i].index() != rhs[i].index()) return false;
    if (const auto* a = std::get_if<torch::Tensor>(&lhs[i])) {
      const auto& b = std::get<torch::Tensor>(rhs[i]);
      if (a->defined() != b.defined()) return false;
      if (a->defined() && !(a->sizes().equals(b.sizes()) && a->scalar_type() == b.scalar_type() &&
                            torch::equal(*a, b))) {
        return false;
      }
    } else {
      const bool equal = std::visit(
          [&rhs, i](const auto& a) {
            using T = std::decay_t<decltype(a)>;
            if constexpr (std::is_same_v<T, torch::Tensor>) {
              return false;  // handled above
            } else {
              return a == std::get<T>(rhs[i]);
            }
          },
          lhs[i]);
      if (!equal) return false;
    }
  }
  return true;
}

}  // namespace detail

namespace {

std::string group_key(size_t group_index) { return "param_groups/" + std::to_string(group_index); }

}  // namespace

OptimizerBase::OptimizerBase(std::unique_ptr<torch::optim::OptimizerOptions> defaults,
                             const char* name)
    : torch::optim::Optimizer(std::vector<torch::optim::OptimizerParamGroup>{},
                              std::move(defaults)),
      name_(name) {}

void OptimizerBase::add_param_group(const torch::optim::OptimizerParamGroup& param_group) {
  std::unique_ptr<torch::optim::OptimizerOptions> options;
  if (param_group.has_options()) {
    const auto& given = param_group.options();
    if (typeid(given) != typeid(*defaults_)) {
      throw std::invalid_argument(std::string(name()) + ": a parameter group's options must be " +
                                  "of this optimizer's options type");
    }
    options = given.clone();
  } else {
    options = defaults_->clone();
  }
  check_options(*options);

  std::unordered_set<const void*> in_groups;
  for (const auto& group : param_groups_) {
    for (const auto& p : group.params()) in_groups.insert(p.unsafeGetTensorImpl());
  }
  std::unordered_set<const void*> in_this_group;
  for (size_t i = 0; i < param_group.params().size(); ++i) {
    const auto& p = param_group.params()[i];
    if (!p.defined()) throw std::invalid_argument(std::string(name()) + ": a parameter is undefined");
    if (!p.is_leaf()) {
      throw std::invalid_argument(std::string(name()) + ": can't optimize a non-leaf Tensor");
    }
    if (in_groups.count(p.unsafeGetTensorImpl()) != 0) {
      throw std::invalid_argument(std::string(name()) +
                                  ": some parameters appear in more than one parameter group");
    }
    // torch.optim's words (it only warns, then steps such a parameter twice).
    if (!in_this_group.insert(p.unsafeGetTensorImpl()).second) {
      throw std::invalid_argument(c10::str(name(), ": parameter ", i,
                                           " appears twice in the group: a parameter group has duplicate parameters"));
    }
  }
  param_groups_.emplace_back(param_group.params(), std::move(options));
}

bool OptimizerBase::group_kahan_summation(size_t group_index) const {
  TORCH_CHECK(group_index < param_groups_.size(), name(), ": no parameter group ", group_index, " (it has ",
              param_groups_.size(), ")");
  const auto& group = param_groups_[group_index];
  return kahan_summation(group.has_options() ? group.options() : *defaults_);
}

namespace {
bool is_compensation(const char* buffer) { return std::strcmp(buffer, detail::kKahanCompensation) == 0; }

// The dtype state buffer `buffer` of `param` keeps: a Kahan compensation its parameter's, any other
// the one its group's state precision says.
at::ScalarType buffer_dtype(const char* buffer, StatePrecision precision, const at::Tensor& param) {
  return is_compensation(buffer) ? param.scalar_type() : state_dtype(precision, param);
}
}  // namespace

const detail::CodedMoment* OptimizerBase::coded(const char* name, StatePrecision precision,
                                                  const torch::Tensor& param) const {
  if (precision != StatePrecision::blockwise8 || param.numel() < detail::kBlockwiseMinNumel) return nullptr;
  for (const auto& moment : coded_moments()) {
    if (std::strcmp(moment.name, name) == 0) return &moment;
  }
  return nullptr;
}

namespace {
// The coded moment whose scales field is `name`, or null.
const detail::CodedMoment* scales_of(c10::ArrayRef<detail::CodedMoment> moments, const char* name) {
  for (const auto& moment : moments) {
    if (std::strcmp(moment.absmax, name) == 0) return &moment;
  }
  return nullptr;
}
}  // namespace

std::vector<torch::Tensor> OptimizerBase::kahan_compensation(const std::vector<torch::Tensor>& params) const {
  std::map<const c10::TensorImpl*, bool> compensated;
  for (size_t gi = 0; gi < param_groups_.size(); ++gi) {
    const bool kahan = group_kahan_summation(gi);
    for (const auto& p : param_groups_[gi].params()) compensated.emplace(p.unsafeGetTensorImpl(), kahan);
  }
  if (std::none_of(compensated.begin(), compensated.end(), [](const auto& entry) { return entry.second; })) return {};
  std::vector<torch::Tensor> out(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    auto* key = params[i].unsafeGetTensorImpl();
    const auto group = compensated.find(key);
    const auto state = state_.find(key);
    if (group == compensated.end() || !group->second || state == state_.end() ||
        !at::isReducedFloatingType(params[i].scalar_type())) {
      continue;
    }
    visit_fields(*state->second, [&](const char* name, const torch::Tensor& t) {
      if (is_compensation(name)) out[i] = t;
    }, [](const char*, int64_t) {});
  }
  return out;
}

StatePrecision OptimizerBase::group_state_precision(size_t group_index) const {
  TORCH_CHECK(group_index < param_groups_.size(), name(), ": no parameter group ", group_index, " (it has ",
              param_groups_.size(), ")");
  const auto& group = param_groups_[group_index];
  return state_precision(group.has_options() ? group.options() : *defaults_);
}

void OptimizerBase::check_state_fits(const torch::optim::OptimizerParamState& state,
                                     const torch::Tensor& param, StatePrecision precision,
                                     size_t group_index, size_t param_index) const {
  const auto check_counter = [&](const char* counter, int64_t value) {
    TORCH_CHECK(value >= 0, name(), ": state '", counter, "' of parameter ", param_index,
                " in group ", group_index, " is ", value, "; counters cannot be negative");
  };
  auto& fields = const_cast<torch::optim::OptimizerParamState&>(state);
  visit_fields(state, [&](const char* buffer, const torch::Tensor& t) {
    // 8-bit state: codes where the group keeps them (the parameter's shape, contiguous), with
    // their scales (float32, one per block); floats anywhere else.
    if (const auto* moment = scales_of(coded_moments(), buffer)) {
      const auto* codes = tensor_field(fields, moment->name);
      const int64_t blocks = (param.numel() + functional::kQuantizationBlock - 1) / functional::kQuantizationBlock;
      TORCH_CHECK(codes != nullptr && codes->defined() && codes->scalar_type() == at::kByte, name(), ": state '",
                  buffer, "' of parameter ", param_index, " in group ", group_index, " holds scales, but '",
                  moment->name, "' holds no 8-bit codes");
      TORCH_CHECK(t.scalar_type() == at::kFloat && t.dim() == 1 && t.numel() == blocks && t.is_contiguous() &&
                      t.device() == param.device(),
                  name(), ": state '", buffer, "' of parameter ", param_index, " in group ", group_index, " (",
                  t.scalar_type(), " ", t.sizes(), ") must be a contiguous float32 tensor of ", blocks,
                  " scales (one per block of ", functional::kQuantizationBlock, ") on ", param.device());
      return;
    }
    const auto* moment = coded(buffer, precision, param);
    TORCH_CHECK((moment != nullptr) == (t.scalar_type() == at::kByte), name(), ": state '", buffer,
                "' of parameter ", param_index, " in group ", group_index, " has dtype ", t.scalar_type(),
                " but its group's state_precision ", to_string(precision), " keeps it as ",
                moment != nullptr ? "8-bit codes (Byte)" : "floats",
                moment != nullptr || precision == StatePrecision::blockwise8
                    ? c10::str(" (codes are kept for the moments of tensors of at least ", detail::kBlockwiseMinNumel,
                               " elements)")
                    : std::string());
    if (moment != nullptr) {
      TORCH_CHECK(t.sizes().equals(param.sizes()) && t.is_contiguous() && t.device() == param.device(), name(),
                  ": the 8-bit codes '", buffer, "' of parameter ", param_index, " in group ", group_index, " (",
                  t.sizes(), " on ", t.device(), ") must be contiguous, of the parameter's shape ", param.sizes(),
                  " on ", param.device());
      TORCH_CHECK(tensor_field(fields, moment->absmax) != nullptr && tensor_field(fields, moment->absmax)->defined(),
                  name(), ": the 8-bit codes '", buffer, "' of parameter ", param_index, " in group ", group_index,
                  " lack their scales '", moment->absmax, "'");
      return;
    }
    const bool compensation = is_compensation(buffer);
    const auto dtype = buffer_dtype(buffer, precision, param);
    TORCH_CHECK(functional::detail::same_extents(t.sizes(), param.sizes()),
                name(), ": state '", buffer, "' of parameter ", param_index, " in group ",
                group_index, " has shape ", t.sizes(), " but the parameter has shape ",
                param.sizes());
    TORCH_CHECK(!compensation || t.scalar_type() == dtype, name(), ": state '", buffer, "' of parameter ",
                param_index, " in group ", group_index, " has dtype ", t.scalar_type(),
                " but a Kahan compensation has its parameter's, ", dtype);
    TORCH_CHECK(t.scalar_type() == dtype, name(), ": state '", buffer, "' of parameter ", param_index,
                " in group ", group_index, " has dtype ", t.scalar_type(), " but its group's state_precision ",
                to_string(precision), " keeps ", dtype, " for the parameter's ", param.scalar_type());
    TORCH_CHECK(t.device() == param.device(), name(), ": state '", buffer, "' of parameter ",
                param_index, " in group ", group_index, " is on ", t.device(),
                " but the parameter is on ", param.device());
  }, check_counter);
}

torch::Tensor OptimizerBase::step(const functional::GradScaling& scaling, LossClosure closure) {
  torch::Tensor loss;
  if (closure) {
    at::AutoGradMode enable_grad(true);
    loss = closure();
  }
  if (!functional::detail::grad_unscale(name(), scaling)) return loss;
  grad_scaling_ = scaling;
  try {
    step(nullptr);
  } catch (...) {
    grad_scaling_ = {};
    throw;
  }
  grad_scaling_ = {};
  return loss;
}

torch::Tensor OptimizerBase::step(LossClosure closure) {
  torch::NoGradGuard no_grad;
  torch::Tensor loss;
  if (closure) {
    at::AutoGradMode enable_grad(true);
    loss = closure();
  }

  // A group pushed straight into param_groups() may lack options: it gets
  // the defaults, as add_param_group would have given it.
  for (auto& group : param_groups_) {
    if (!group.has_options()) group.set_options(defaults_->clone());
  }

  // Everything is checked before anything is written, so a step that throws
  // leaves parameters and state as they were. The check also gathers what the
  // updates take: each gradient and state is looked up once (a parameter's
  // autograd metadata and its state's entry are cache misses after the last
  // step swept every buffer).
  struct GroupWork {
    functional::detail::HeldTensors params;
    functional::detail::HeldTensors grads;
    std::vector<torch::optim::OptimizerParamState*> states;  // null: made by this step
  };
  std::vector<GroupWork> work(param_groups_.size());
  // Holds no gradient past the gather, also where a check refuses the step.
  struct ForgetFound {
    std::vector<torch::Tensor>& grads;
    ~ForgetFound() { grads.clear(); }
  } forget_found{found_grads_};
  for (size_t gi = 0; gi < param_groups_.size(); ++gi) {
    const auto& group = param_groups_[gi];
    check_options(group.options());
    auto& gathered = work[gi];
    const size_t n = group.params().size();
    found_grads_.assign(n, torch::Tensor());
    found_states_.assign(n, nullptr);
    // Each parameter on its own (no state is made here): on the intra-op threads, where their
    // cache misses overlap, for long groups.
    functional::detail::check_each(n, [&](size_t pi) {
      functional::detail::prefetch_metadata(group.params(), pi);
      const auto& p = group.params()[pi];
      const auto& g = p.grad();
      if (!g.defined()) return;
      TORCH_CHECK(g.layout() == at::kStrided, name(), " does not support sparse gradients");
      TORCH_CHECK(at::isFloatingType(p.scalar_type()), name(), ": parameter ", pi, " in group ",
                  gi, " has dtype ", p.scalar_type(), "; only floating-point parameters can be "
                  "optimized");
      const char* unwritable = functional::detail::why_not_writable(p);
      TORCH_CHECK(unwritable == nullptr, name(), ": parameter ", pi, " in group ", gi, " ", unwritable);
      // The updates read norms and trust ratios on the host, which a meta tensor does not hold.
      TORCH_CHECK(!p.is_meta(), name(), ": parameter ", pi, " in group ", gi,
                  " is on the meta device, which holds no values to update");
      TORCH_CHECK(functional::detail::same_extents(g.sizes(), p.sizes()) && g.scalar_type() == p.scalar_type() &&
                      g.device() == p.device(),
                  name(), ": the gradient of parameter ", pi, " in group ", gi, " (", g.sizes(),
                  ", ", g.scalar_type(), ", ", g.device(), ") does not match the parameter (",
                  p.sizes(), ", ", p.scalar_type(), ", ", p.device(), ")");
      if (const auto it = state_.find(p.unsafeGetTensorImpl()); it != state_.end() && it->second) {
        check_state_fits(*it->second, p, state_precision(group.options()), gi, pi);
        found_states_[pi] = it->second.get();
      }
      found_grads_[pi] = g;
    });
    for (size_t pi = 0; pi < n; ++pi) {
      if (!found_grads_[pi].defined()) continue;
      gathered.params.push_back(group.params()[pi]);
      gathered.grads.push_back(std::move(found_grads_[pi]));
      gathered.states.push_back(found_states_[pi]);
    }
  }
  // A parameter listed twice (in two groups, which only LibTorch's add_param_group lets through,
  // or twice in a group put straight into param_groups()) would be updated twice with one state.
  listed_.clear();
  for (const auto& gathered : work) {
    for (const auto& p : gathered.params) listed_.push_back(p.unsafeGetTensorImpl());
  }
  std::sort(listed_.begin(), listed_.end());
  if (const auto twice = std::adjacent_find(listed_.begin(), listed_.end()); twice != listed_.end()) {
    std::vector<std::string> places;
    for (size_t gi = 0; gi < param_groups_.size(); ++gi) {
      for (size_t pi = 0; pi < param_groups_[gi].params().size(); ++pi) {
        if (param_groups_[gi].params()[pi].unsafeGetTensorImpl() == *twice) {
          places.push_back(c10::str("parameter ", pi, " in group ", gi));
        }
      }
    }
    TORCH_CHECK_VALUE(false, name(), ": ", places.at(0), " is also ", places.at(1),
                      "; a parameter listed twice would be updated twice with one state (list it once)");
  }

  // Global gradient-norm clipping: one norm over the gradients of every group
  // holding the same max_grad_norm, which those groups' updates divide by
  // (GradScaling); groups holding none are not clipped.
  const auto saved_scaling = grad_scaling_;
  struct RestoreScaling {
    functional::GradScaling& target;
    const functional::GradScaling& saved;
    ~RestoreScaling() { target = saved; }
  } restore{grad_scaling_, saved_scaling};
  const auto clip_norms = clipping_norms();
  for (size_t gi = 0; gi < param_groups_.size(); ++gi) {
    auto& group = param_groups_[gi];
    auto& gathered = work[gi];
    if (gathered.params.empty()) continue;
    for (size_t i = 0; i < gathered.params.size(); ++i) {
      functional::detail::prefetch_object(gathered.states, i);
      auto*& state = gathered.states[i];
      if (state == nullptr) {
        auto& slot = state_[gathered.params[i].unsafeGetTensorImpl()];
        if (!slot) slot = make_state();
        state = slot.get();
      }
      prepare_state(*state, gathered.params[i], group.options());
    }
    grad_scaling_ = saved_scaling;
    grad_scaling_.maximize = maximize(group.options());
    if (const auto bound = max_grad_norm(group.options())) {
      grad_scaling_.grad_norm = clip_norms.at(*bound);
      grad_scaling_.max_grad_norm = *bound;
    }
    update_group(group.options(), gathered.params, gathered.grads, gathered.states);
  }
  return loss;
}

std::map<double, torch::Tensor> OptimizerBase::clipping_norms() const {
  std::map<double, std::vector<torch::Tensor>> grads_by_bound;
  for (const auto& group : param_groups_) {
    const auto bound = max_grad_norm(group.options());
    if (!bound) continue;
    auto& grads = grads_by_bound[*bound];
    for (const auto& p : group.params()) {
      if (p.grad().defined()) grads.push_back(p.grad());
    }
  }
  std::map<double, torch::Tensor> norms;
  for (const auto& [bound, grads] : grads_by_bound) {
    // One float64 sum over every tensor, as the Python classes take it.
    const auto sums = functional::grad_squared_norms(grads, grad_scaling_);
    norms[bound] = torch::tensor(c10::ArrayRef<double>(sums), torch::kDouble).sum().sqrt();
  }
  return norms;
}

void OptimizerBase::save(torch::serialize::OutputArchive& archive) const {
  archive.write("holocron/format_version", int64_t{1});
  archive.write("holocron/optimizer", std::string(name()));
  archive.write("param_groups/size", static_cast<int64_t>(param_groups_.size()));
  for (size_t gi = 0; gi < param_groups_.size(); ++gi) {
    const auto& group = param_groups_[gi];
    torch::serialize::OutputArchive group_archive(archive.compilation_unit());
    torch::serialize::OutputArchive options_archive(archive.compilation_unit());
    (group.has_options() ? group.options() : *defaults_).serialize(options_archive);
    group_archive.write("options", options_archive);
    group_archive.write("params/size", static_cast<int64_t>(group.params().size()));
    for (size_t pi = 0; pi < group.params().size(); ++pi) {
      const auto& p = group.params()[pi];
      group_archive.write("params/" + std::to_string(pi) + "/shape", p.sizes().vec());
      auto it = state_.find(p.unsafeGetTensorImpl());
      if (it == state_.end()) continue;
      torch::serialize::OutputArchive state_archive(archive.compilation_unit());
      it->second->serialize(state_archive);
      group_archive.write("state/" + std::to_string(pi), state_archive);
    }
    archive.write(group_key(gi), group_archive);
  }
}

void OptimizerBase::convert_loaded(torch::optim::OptimizerParamState& state, const torch::Tensor& p,
                                   StatePrecision precision) const {
  // 8-bit moments first: decoded where the group keeps floats (with their scales dropped), or
  // floats encoded where it keeps codes; the checks after the conversion refuse what does not fit.
  for (const auto& moment : coded_moments()) {
    auto* buffer = tensor_field(state, moment.name);
    auto* absmax = tensor_field(state, moment.absmax);
    if (buffer == nullptr || !buffer->defined() || absmax == nullptr) continue;
    const bool is_codes = buffer->scalar_type() == at::kByte;
    const bool keeps_codes = coded(moment.name, precision, p) != nullptr;
    if (is_codes && !keeps_codes) {
      TORCH_CHECK(absmax->defined(), name(), ": the checkpoint's 8-bit '", moment.name, "' lacks its scales '",
                  moment.absmax, "'");
      *buffer = functional::dequantize_blockwise(*buffer, *absmax, moment.is_signed, at::kFloat);
      *absmax = torch::Tensor();
    } else if (!is_codes && keeps_codes && buffer->is_floating_point()) {
      auto encoded = functional::quantize_blockwise(*buffer, moment.is_signed);
      *buffer = std::move(encoded.codes);
      *absmax = std::move(encoded.absmax);
    }
  }
  // Buffers come back on the CPU; they live beside their parameter, in the dtype its group keeps:
  // floats of any dtype are converted, as torch.optim's (Python) load casts them (a float64
  // checkpoint loads into a float32 model), a compensation only from its weight's dtype, float32
  // or bfloat16; any other dtype is refused by the checks after this.
  visit_fields(
      state,
      [&](const char* buffer, const torch::Tensor& t) {
        const auto convertible = std::strcmp(buffer, "kahan_comp") != 0
                                     ? t.is_floating_point()
                                     : t.scalar_type() == p.scalar_type() || t.scalar_type() == at::kFloat ||
                                           t.scalar_type() == at::kBFloat16;
        const bool keeps = t.scalar_type() == at::kByte || scales_of(coded_moments(), buffer) != nullptr;
        // A freshly read state owns its tensors: move them in place.
        const_cast<torch::Tensor&>(t) = convertible && !keeps ? t.to(p.device(), buffer_dtype(buffer, precision, p))
                                                              : t.to(p.device());
      },
      [](const char*, int64_t) {});
}

void OptimizerBase::load(torch::serialize::InputArchive& archive) {
  c10::IValue value;
  TORCH_CHECK(archive.try_read("holocron/format_version", value), name(),
              ": not a holocron-optim checkpoint (no format version)");
  const auto version = value.toInt();
  TORCH_CHECK(version >= 1 && version <= kCheckpointFormatVersion, name(),
              ": checkpoint format version ", version, " is not supported (this build reads 1 to ",
              kCheckpointFormatVersion, ")");
  TORCH_CHECK(archive.try_read("holocron/optimizer", value), name(),
              ": checkpoint does not name its optimizer");
  TORCH_CHECK(value.toStringRef() == name(), name(), ": checkpoint was written by ",
              value.toStringRef(), ", not ", name());
  TORCH_CHECK(archive.try_read("param_groups/size", value), name(),
              ": checkpoint lacks param_groups/size");
  TORCH_CHECK(static_cast<size_t>(value.toInt()) == param_groups_.size(), name(),
              ": checkpoint has ", value.toInt(), " parameter groups, the optimizer has ",
              param_groups_.size());

  // Read and check everything first; replace only once all of it fits.
  std::vector<std::unique_ptr<torch::optim::OptimizerOptions>> new_options;
  std::vector<std::vector<std::unique_ptr<torch::optim::OptimizerParamState>>> new_states;
  for (size_t gi = 0; gi < param_groups_.size(); ++gi) {
    const auto& params = param_groups_[gi].params();
    torch::serialize::InputArchive group_archive;
    TORCH_CHECK(archive.try_read(group_key(gi), group_archive), name(),
                ": checkpoint lacks parameter group ", gi);
    torch::serialize::InputArchive options_archive;
    TORCH_CHECK(group_archive.try_read("options", options_archive), name(),
                ": checkpoint lacks the options of group ", gi);
    auto options = make_options();
    options->serialize(options_archive);
    // Each group keeps its state precision, as each parameter keeps its device: the loaded
    // buffers are converted to it below.
    const auto& current = param_groups_[gi];
    const auto precision = state_precision(current.has_options() ? current.options() : *defaults_);
    set_state_precision(*options, precision);
    check_options(*options);
    new_options.push_back(std::move(options));

    TORCH_CHECK(group_archive.try_read("params/size", value), name(),
                ": checkpoint lacks the parameter count of group ", gi);
    TORCH_CHECK(static_cast<size_t>(value.toInt()) == params.size(), name(), ": group ", gi,
                " of the checkpoint has ", value.toInt(), " parameters, the optimizer's has ",
                params.size());
    auto& group_states = new_states.emplace_back();
    for (size_t pi = 0; pi < params.size(); ++pi) {
      const auto& p = params[pi];
      TORCH_CHECK(group_archive.try_read("params/" + std::to_string(pi) + "/shape", value),
                  name(), ": checkpoint lacks the shape of parameter ", pi, " in group ", gi);
      const auto saved_shape = value.toIntVector();
      TORCH_CHECK(p.sizes().equals(saved_shape), name(), ": parameter ", pi, " in group ", gi,
                  " has shape ", p.sizes(), " in the checkpoint ", c10::IntArrayRef(saved_shape));
      torch::serialize::InputArchive state_archive;
      if (!group_archive.try_read("state/" + std::to_string(pi), state_archive)) {
        group_states.emplace_back();
        continue;
      }
      auto state = make_state();
      state->serialize(state_archive);
      // Buffers come back on the CPU; they live beside their parameter, in the dtype its group
      // keeps (a checkpoint's state of another precision is converted; any other dtype is
      // refused below).
      convert_loaded(*state, p, precision);
      check_state_fits(*state, p, precision, gi, pi);
      group_states.push_back(std::move(state));
    }
  }

  for (size_t gi = 0; gi < param_groups_.size(); ++gi) {
    auto& group = param_groups_[gi];
    group.set_options(std::move(new_options[gi]));
    for (size_t pi = 0; pi < group.params().size(); ++pi) {
      auto* key = group.params()[pi].unsafeGetTensorImpl();
      if (new_states[gi][pi]) {
        state_[key] = std::move(new_states[gi][pi]);
      } else {
        state_.erase(key);
      }
    }
  }
}

}  // namespace holocron::optim
