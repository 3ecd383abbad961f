// AdamP: everything of the algorithm but its public header and its fused kernel
// (src/kernels/cpu/adamp.cpp): the reference math, the checks and the functional
// function, the C++ class, and the Python operator.

#include "algorithms/caution.h"
#include "algorithms/common.h"

// ---- What both backends share: the rows and the projection decision ---------------

namespace holocron::optim::functional::detail {
namespace {

using kernels::cpu::Sums;

constexpr double kCosineEps = 1e-8;  // torch.nn.functional.cosine_similarity's default

// What passes 1 and 2 take: each tensor whole, or, with channel_projection, each tensor of more
// than one dimension as its output channels (the rows of its row-major layout, timm's
// `x.reshape(x.size(0), -1)`), each with its own sums and coefficients. A shard holds parts of
// some of its whole tensor's rows (Sharding::ChannelLayout): its runs of elements within one row
// (segments) are summed on their own, and the sums of the whole rows are their all-reduce.
struct Segment {
  size_t tensor;
  int64_t start;  // the local element it starts at
  int64_t length;
  size_t row;     // among every tensor's rows
};

struct AdamPRows {
  std::vector<size_t> first;      // the rows of tensor i are [first[i], first[i + 1])
  std::vector<char> by_channel;   // tensor i is split into its output channels
  std::vector<Segment> segments;  // tensor by tensor, element by element; one per whole tensor
  std::vector<Sharding::ChannelLayout> layouts;  // of the tensors split into channels
  size_t count() const { return first.back(); }
  bool splits() const { return std::any_of(by_channel.begin(), by_channel.end(), [](char b) { return b != 0; }); }
  // Segments in increasing row order, as many as rows: each is its row.
  bool segments_are_rows() const { return segments.size() == count(); }
};

Sharding::ChannelLayout channel_layout(const Sharding& sharding, const at::Tensor& param, size_t i) {
  if (!sharding.channel_layouts.empty()) return sharding.channel_layouts[i];
  if (param.dim() < 2 || param.numel() == 0) return {};
  return {.channels = param.size(0), .first = 0, .width = param.numel() / param.size(0)};
}

AdamPRows adamp_rows(TensorList params, const AdamPHyper& h, const Sharding& sharding) {
  AdamPRows rows;
  rows.first.reserve(params.size() + 1);
  rows.first.push_back(0);
  rows.layouts.resize(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    const auto layout = h.channel_projection ? channel_layout(sharding, params[i], i) : Sharding::ChannelLayout{};
    const bool split = layout.channels > 0 && whole_numel(sharding, params, i) > 0;
    const size_t first = rows.first.back();
    const int64_t numel = params[i].numel();
    rows.by_channel.push_back(split);
    rows.first.push_back(first + static_cast<size_t>(split ? layout.channels : 1));
    if (!split) {
      rows.segments.push_back({.tensor = i, .start = 0, .length = numel, .row = first});
      continue;
    }
    rows.layouts[i] = layout;
    for (int64_t k = 0; k < numel;) {
      const int64_t row = (layout.first + k) / layout.width;
      const int64_t end = std::min(numel, (row + 1) * layout.width - layout.first);
      rows.segments.push_back({.tensor = i, .start = k, .length = end - k, .row = first + static_cast<size_t>(row)});
      k = end;
    }
  }
  return rows;
}

// |p.g'| / (max(||p||, eps) * max(||g'||, eps)) of one row's sums (p.g', ||p||^2, ||g'||^2, p.q),
// as torch's cosine_similarity(..., eps).abs().
double abs_cosine(const Sums::value_type& sums, double eps) {
  return std::abs(sums[0]) / (std::max(std::sqrt(sums[1]), eps) * std::max(std::sqrt(sums[2]), eps));
}

// c in q - c * p: q's component along p / (||p|| + eps).
double radial_coefficient(const Sums::value_type& sums, double eps) {
  const double norm = std::sqrt(sums[1]) + eps;
  return sums[3] / (norm * norm);
}

struct AdamPUpdate {
  std::vector<double> projection;  // per row: c in q - c * p, p before its decay
  std::vector<double> decay;       // per tensor: p = decay * p + step * q
  std::vector<char> per_channel;   // per tensor: projected channel by channel (rows differ)
};

struct WholeTensorUpdate {
  double projection;
  double decay;
};

// The projection and decay of a tensor taken whole (one row), from its sums over all shards and
// its whole size; `decay_factor` is split_weight_decay's. Called for one tensor at a time between
// the fused passes (a TensorPhase), so it must not throw.
WholeTensorUpdate whole_tensor_update(const AdamPHyper& h, double decay_factor, const Sums::value_type& sums,
                                      int64_t numel) {
  // timm projects only parameters of more than one dimension, split into channels.
  if (h.channel_projection) return {.projection = 0.0, .decay = decay_factor};
  // The reference's: the cosine without abs, torch's eps, and the projection of the decayed
  // parameter, whose sums are the parameter's times the factor (exact when 1).
  const double p_norm = std::sqrt(sums[1]) * std::abs(decay_factor);
  const double cosine =
      sums[0] * decay_factor / (std::max(p_norm, kCosineEps) * std::max(std::sqrt(sums[2]), kCosineEps));
  if (numel == 0 || !(cosine < adamp_threshold(h.delta, numel))) return {.projection = 0.0, .decay = decay_factor};
  // q - (n.q) n with n = f p / (||f p|| + eps), as a multiple of the undecayed p.
  return {.projection = sums[3] * decay_factor * decay_factor / ((p_norm + h.eps) * (p_norm + h.eps)),
          .decay = decay_factor};
}

// The projection of each row and the decay of each tensor, from the sums of pass 1 (over all
// shards).
AdamPUpdate adamp_update(const AdamPHyper& h, TensorList params, const AdamPRows& rows, const Sums& sums,
                         const Sharding& sharding) {
  AdamPUpdate update{std::vector<double>(rows.count(), 0.0), std::vector<double>(params.size(), 1.0),
                     std::vector<char>(params.size(), 0)};
  const auto decay = split_weight_decay(h.weight_decay, h.lr, h.decoupled_weight_decay);
  for (size_t i = 0; i < params.size(); ++i) {
    const size_t first = rows.first[i];
    if (!rows.by_channel[i]) {
      const auto whole = whole_tensor_update(h, decay.factor, sums[first], whole_numel(sharding, params, i));
      update.projection[first] = whole.projection;
      update.decay[i] = whole.decay;
      continue;
    }
    update.decay[i] = decay.factor;
    const size_t last = rows.first[i + 1];
    const int64_t numel = whole_numel(sharding, params, i);
    const int64_t channel_numel = numel / static_cast<int64_t>(last - first);
    bool projected = false;
    // Every channel below the threshold (timm's max < threshold: a NaN cosine fails it).
    const double channel_threshold = adamp_threshold(h.delta, channel_numel);
    bool every_channel_below = true;
    for (size_t r = first; r < last && every_channel_below; ++r) {
      every_channel_below = abs_cosine(sums[r], h.eps) < channel_threshold;
    }
    if (every_channel_below) {
      for (size_t r = first; r < last; ++r) update.projection[r] = radial_coefficient(sums[r], h.eps);
      projected = true;
      update.per_channel[i] = 1;
    } else {
      Sums::value_type layer{};
      for (size_t r = first; r < last; ++r) {
        for (size_t k = 0; k < 4; ++k) layer[k] += sums[r][k];
      }
      if (abs_cosine(layer, h.eps) < adamp_threshold(h.delta, numel)) {
        const double c = radial_coefficient(layer, h.eps);
        for (size_t r = first; r < last; ++r) update.projection[r] = c;
        projected = true;
      }
    }
    if (projected) {
      update.decay[i] = split_weight_decay(h.weight_decay * h.wd_ratio, h.lr, h.decoupled_weight_decay).factor;
    }
  }
  return update;
}

}  // namespace
}  // namespace holocron::optim::functional::detail

// ---- Reference math (ATen ops) ----------------------------------------------

namespace holocron::optim::kernels::reference {

using namespace functional;
using namespace functional::detail;

// Only this file's functional function calls them.
namespace {

void adamp_moments(at::Tensor& m, at::Tensor& v, const at::Tensor& g, const AdamPHyper& h) {
  m.mul_(h.beta1).add_(g, 1.0 - h.beta1);
  v.mul_(h.beta2).addcmul_(g, g, 1.0 - h.beta2);
}

// Adam's step m_hat / (sqrt(v_hat) + eps), given the denominator; with caution m only where it
// agrees in sign with g, rescaled; with Nesterov from beta1 * m + (1 - beta1) * g.
at::Tensor adamp_direction(const at::Tensor& m, const at::Tensor& g, const at::Tensor& denominator, int64_t step,
                           const AdamPHyper& h, double caution_scale) {
  const auto kept = h.caution ? at::where(m * g > 0, m * caution_scale, at::zeros_like(m)) : m;
  const auto first = h.nesterov ? kept * h.beta1 + g * (1.0 - h.beta1) : kept;
  return (first / bias_correction(h.beta1, step)).div_(denominator);
}

// The local rows of tensor i's split: its elements, padded with zeros before and after to whole
// rows, as [rows, width]; the first is row `first` of its whole tensor.
struct LocalRows {
  int64_t first;
  int64_t count;
  int64_t lead;  // padding before the first local element
  int64_t width;
};

LocalRows local_rows(const AdamPRows& rows, size_t i, int64_t numel) {
  const auto& layout = rows.layouts[i];
  const int64_t lead = layout.first % layout.width;
  return {.first = layout.first / layout.width, .count = (lead + numel + layout.width - 1) / layout.width,
          .lead = lead, .width = layout.width};
}

// Whether the local elements are whole rows (a whole tensor, or FSDP2's shard): no padding.
bool whole_rows(const LocalRows& local, int64_t numel) { return local.lead == 0 && local.count * local.width == numel; }

at::Tensor as_rows(const at::Tensor& flat, const LocalRows& local) {
  const int64_t numel = flat.size(0);
  if (whole_rows(local, numel)) return flat.view({local.count, local.width});
  return at::constant_pad_nd(flat, {local.lead, local.count * local.width - local.lead - numel})
      .view({local.count, local.width});
}

Sums adamp_sums(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
                TensorList max_exp_avg_sqs, c10::ArrayRef<int64_t> steps, const AdamPHyper& h,
                const AdamPRows& rows, c10::ArrayRef<double> caution_scales) {
  Sums sums(rows.count(), Sums::value_type{});
  const auto decay = split_weight_decay(h.weight_decay, h.lr, h.decoupled_weight_decay);
  for (size_t i = 0; i < params.size(); ++i) {
    if (params[i].numel() == 0) continue;
    ComputeScope scope(params[i]);
    auto p = scope.in(params[i]);
    auto g = decayed_grad(scope.in(grads[i]), p, decay.coupled);
    auto m = scope.in(exp_avgs[i]).clone();
    auto v = scope.in(exp_avg_sqs[i]).clone();
    adamp_moments(m, v, g, h);
    // This phase writes nothing: the running maximum too is taken aside.
    auto second = h.amsgrad ? at::maximum(scope.in(max_exp_avg_sqs[i]), v) : v;
    auto q = adamp_direction(m, g, denominator_of(second, bias_correction(h.beta2, steps[i]), h.eps),
                             steps[i], h, caution_scales[i]);
    // In double, as the fused kernels sum.
    const auto pd = p.reshape(-1).to(at::kDouble);
    const auto gd = g.reshape(-1).to(at::kDouble);
    const auto qd = q.reshape(-1).to(at::kDouble);
    const auto products = std::array<at::Tensor, 4>{pd * gd, pd * pd, gd * gd, pd * qd};
    const auto local = rows.by_channel[i] ? local_rows(rows, i, pd.size(0))
                                          : LocalRows{.first = 0, .count = 1, .lead = 0, .width = pd.size(0)};
    std::vector<at::Tensor> columns;
    for (const auto& product : products) columns.push_back(as_rows(product, local).sum(1));
    const auto row_sums = at::stack(columns, 1).to(at::kCPU).contiguous();
    const auto* values = row_sums.data_ptr<double>();
    for (int64_t r = 0; r < local.count; ++r) {
      auto& row = sums[rows.first[i] + static_cast<size_t>(local.first + r)];
      for (int64_t k = 0; k < 4; ++k) row[static_cast<size_t>(k)] = values[r * 4 + k];
    }
  }
  return sums;
}

void adamp(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
           TensorList max_exp_avg_sqs, c10::ArrayRef<int64_t> steps, const AdamPHyper& h, const AdamPRows& rows,
           const AdamPUpdate& update, c10::ArrayRef<double> caution_scales) {
  const auto decay = split_weight_decay(h.weight_decay, h.lr, h.decoupled_weight_decay);
  for (size_t i = 0; i < params.size(); ++i) {
    if (params[i].numel() == 0) continue;
    ComputeScope scope(params[i]);
    auto p = scope.inout(params[i]);
    auto g = decayed_grad(scope.in(grads[i]), p, decay.coupled);
    auto m = scope.inout(exp_avgs[i]);
    auto v = scope.inout(exp_avg_sqs[i]);
    adamp_moments(m, v, g, h);
    auto q = adamp_direction(m, g, adam_denominator(scope, v, h.amsgrad, max_exp_avg_sqs, i,
                                                    bias_correction(h.beta2, steps[i]), h.eps),
                             steps[i], h, caution_scales[i]);
    // Where the weight is nearly orthogonal to its gradient (scale-invariant weights), the radial
    // part of the update is removed: q - c p, c per row, p before its decay.
    const size_t first = rows.first[i];
    if (!update.per_channel[i]) {
      if (update.projection[first] != 0.0) q.sub_(p, update.projection[first]);
    } else if (p.numel() > 0) {
      const auto local = local_rows(rows, i, p.numel());
      const auto begin = update.projection.begin() + static_cast<std::ptrdiff_t>(first + static_cast<size_t>(local.first));
      const std::vector<double> coefficients(begin, begin + local.count);
      const auto per_row = at::tensor(coefficients, at::TensorOptions().dtype(at::kDouble)).to(p.options());
      if (whole_rows(local, p.numel())) {
        q.sub_((p.reshape({local.count, local.width}) * per_row.view({local.count, 1})).view(p.sizes()));
      } else {
        q.sub_(p * per_row.repeat_interleave(local.width).narrow(0, local.lead, p.numel()).view(p.sizes()));
      }
    }
    if (update.decay[i] != 1.0) p.mul_(update.decay[i]);
    p.add_(q, -h.lr);
    scope.commit();
  }
}

}  // namespace

}  // namespace holocron::optim::kernels::reference

// ---- Checks and the functional function -------------------------------------

namespace holocron::optim::functional {

using namespace detail;
namespace cpu = kernels::cpu;

namespace {

// The group `whole` as the slots `segments` say: every array of AdamP's passes has the
// parameter's row-major layout (checked by the caller), and the parameter's dtype or, for state,
// the slot's state dtype.
void slots_of(const cpu::Group& whole, const std::vector<Segment>& segments, cpu::Group& out) {
  constexpr unsigned kState = state_lists<cpu::protocol::adamp::Arrays>();
  out.tensors.clear();
  out.tensors.reserve(segments.size());
  for (const auto& segment : segments) {
    auto slot = whole.tensors[segment.tensor];
    const auto state_dtype = slot.state_dtype == at::ScalarType::Undefined ? slot.dtype : slot.state_dtype;
    slot.numel = segment.length;
    for (size_t j = 0; j < slot.data.size(); ++j) {
      if (slot.data[j] == nullptr) continue;
      const auto dtype = ((kState >> j) & 1u) ? state_dtype : slot.dtype;
      slot.data[j] = static_cast<char*>(slot.data[j]) + segment.start * static_cast<int64_t>(c10::elementSize(dtype));
    }
    // A Kahan compensation (TensorSlot::compensation) has the parameter's dtype and layout.
    if (slot.compensation != nullptr) {
      slot.compensation =
          static_cast<char*>(slot.compensation) + segment.start * static_cast<int64_t>(c10::elementSize(slot.dtype));
    }
    out.tensors.push_back(slot);
  }
}

// Reused across steps: their sizes follow the rows, not the elements.
struct AdamPScratch {
  Sums row_sums;
  std::vector<Segment> applied;
};
AdamPScratch& adamp_scratch() {
  thread_local AdamPScratch scratch;
  return scratch;
}

}  // namespace

void check(const AdamPHyper& h) {
  check_adam_like("AdamP", h.lr, {h.beta1, h.beta2}, h.eps, h.weight_decay);
  check_hyper("AdamP", "delta", h.delta, -INFINITY, false, INFINITY, false);
  check_hyper("AdamP", "wd_ratio", h.wd_ratio, 0.0, true, INFINITY, false);
  TORCH_CHECK_VALUE(h.wd_ratio == 1.0 || (h.channel_projection && h.decoupled_weight_decay),
                    "AdamP: wd_ratio=", h.wd_ratio, " scales the decoupled decay of the parameters timm's "
                    "projection projects; it needs channel_projection=True and decoupled_weight_decay=True, got ",
                    h.channel_projection ? "True" : "False", " and ", h.decoupled_weight_decay ? "True" : "False");
}

void adamp_(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
            TensorList max_exp_avg_sqs, c10::ArrayRef<int64_t> steps, const AdamPHyper& h,
            const GradScaling& scaling, const Sharding& sharding) {
  check(h);
  // 8-bit codes are taken for the moments (signed maps for the signed ones).
  const BlockwiseState blockwise_state("AdamP", {{"exp_avgs", exp_avgs, true},
                                                 {"exp_avg_sqs", exp_avg_sqs, false},
                                                 {"max_exp_avg_sqs", if_used(h.amsgrad, max_exp_avg_sqs), false}}, scaling);
  check_group("AdamP", params, grads, {{"exp_avgs", exp_avgs}, {"exp_avg_sqs", exp_avg_sqs}});
  if (h.amsgrad) check_group("AdamP", params, grads, {{"max_exp_avg_sqs", max_exp_avg_sqs}});
  check_steps("AdamP", steps, params.size());
  check_sharding("AdamP", sharding, params);
  // A sharded caller says where each shard's elements lie among the channels.
  const bool sharded = sharding.all_reduce || !sharding.numels.empty() || !sharding.channel_layouts.empty();
  TORCH_CHECK_NOT_IMPLEMENTED(!h.channel_projection || !sharded ||
                                  (!sharding.channel_layouts.empty() && !sharding.numels.empty()),
                              "AdamP: channel_projection (timm's per-channel cosines) on sharded parameters "
                              "needs their whole sizes and channel layouts (Sharding::numels and "
                              "Sharding::channel_layouts), which the caller did not both give");
  const TensorList maxima = if_used(h.amsgrad, max_exp_avg_sqs);
  const CompensatedWeights compensated_weights("AdamP", params, scaling);
  const auto inv_grad_scale = grad_unscale("AdamP", scaling);
  if (!inv_grad_scale) return;
  const auto decay = split_weight_decay(h.weight_decay, h.lr, h.decoupled_weight_decay);
  // Counted first: the count pass uses the scratch the passes below take.
  const auto caution_scales =
      h.caution ? caution_scales_of("AdamP", CautionScale::kPytorchOptimizer, params, grads, exp_avgs, h.beta1,
                                    1.0 - h.beta1, decay.coupled, *inv_grad_scale, sharding)
                : std::vector<double>(params.size(), 1.0);
  auto& scratch = fused_scratch();
  auto& own = adamp_scratch();
  namespace adamp = cpu::protocol::adamp;
  const auto rows = adamp_rows(params, h, sharding);
  bool fused = fused_group(scratch.group, params,
                           adamp::Arrays<TensorList>{.param = params,
                                                     .grad = grads,
                                                     .exp_avg = exp_avgs,
                                                     .exp_avg_sq = exp_avg_sqs,
                                                     .max_exp_avg_sq = maxima});
  const bool splits = rows.splits();
  for (size_t i = 0; fused && splits && i < params.size(); ++i) {
    if (rows.by_channel[i] && !params[i].is_contiguous()) fused = false;  // rows are not contiguous
    // 8-bit codes: a row's slot would count its blocks from the row, not from the tensor (whose
    // blocks own the scales), so split tensors with codes take the ATen path.
    if (rows.by_channel[i] && scratch.group.tensors[i].state_dtype == at::kByte) fused = false;
  }
  if (fused && splits) slots_of(scratch.group, rows.segments, scratch.second_group);
  const auto& group = splits ? scratch.second_group : scratch.group;
  const auto reference_grads = fused ? std::vector<at::Tensor>{} : unscaled_grads(grads, *inv_grad_scale);
  auto& args = scratch.fresh_args(rows.segments.size());
  args.inv_grad_scale = *inv_grad_scale;
  args.constants.set(adamp::Constants{.beta1 = h.beta1,
                                      .beta2 = h.beta2,
                                      .eps = h.eps,
                                      .weight_decay = decay.coupled,
                                      .amsgrad = h.amsgrad,
                                      .nesterov = h.nesterov,
                                      .caution = h.caution});
  // The step, the projection and the decay are known after pass 1.
  const auto coefficients_of = [&](size_t i) {
    return adamp::PerTensor{.inv_bc1 = 1.0 / bias_correction(h.beta1, steps[i]),
                            .inv_sqrt_bc2 = inverse_sqrt_bias_correction(h.beta2, steps[i]),
                            .step = 0.0,
                            .projection = 0.0,
                            .decay = 1.0,
                            .caution_scale = caution_scales[i]};
  };
  for (size_t s = 0; s < rows.segments.size(); ++s) args.per_tensor[s].set(coefficients_of(rows.segments[s].tensor));
  const auto apply = h.nesterov || h.caution ? cpu::Pass::AdamPApplyReadingGrad : cpu::Pass::AdamPApply;
  if (fused && !splits) {
    // Each tensor is one row, whose step follows from its own sums: a tensor of one chunk takes
    // both passes in one sweep (two_passes), as LAMB's do.
    two_passes("AdamP", sharding, 4, {cpu::Pass::AdamPMoments, group, args}, {apply, group, args}, scratch.sums,
               [&](int64_t t, Sums::value_type& row) {
                 const auto whole = whole_tensor_update(h, decay.factor, row,
                                                        whole_numel(sharding, params, static_cast<size_t>(t)));
                 auto coefficients = args.per_tensor[t].get<adamp::PerTensor>();
                 coefficients.step = -h.lr;
                 coefficients.projection = whole.projection;
                 coefficients.decay = whole.decay;
                 args.per_tensor[t].set(coefficients);
               });
    mark_written({params, exp_avgs, exp_avg_sqs, maxima});
    return;
  }
  // p.g, |p|^2, |g|^2, p.q per row
  Sums* sums = &scratch.sums;
  if (!fused) {
    *sums = kernels::reference::adamp_sums(params, reference_grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps,
                                           h, rows, caution_scales);
  } else {
    cpu::run(cpu::Pass::AdamPMoments, group, args, &scratch.sums);
    if (!rows.segments_are_rows()) {
      // A shard's parts of rows: a row has one segment here at most (a shard's elements of a row
      // are contiguous), or none.
      own.row_sums.assign(rows.count(), Sums::value_type{});
      for (size_t s = 0; s < rows.segments.size(); ++s) own.row_sums[rows.segments[s].row] = scratch.sums[s];
      sums = &own.row_sums;
    }
  }
  all_reduce_sums("AdamP", sharding, *sums, 4);
  const auto update = adamp_update(h, params, rows, *sums, sharding);
  if (!fused) {
    kernels::reference::adamp(params, reference_grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, h, rows,
                              update, caution_scales);
    return;
  }
  // Pass 2 takes a tensor's segments only where it is projected channel by channel: elsewhere one
  // coefficient serves the whole tensor, which the driver then takes in full chunks.
  const std::vector<Segment>* applied = &rows.segments;
  if (splits) {
    own.applied.clear();
    for (const auto& segment : rows.segments) {
      const size_t i = segment.tensor;
      if (!rows.by_channel[i] || update.per_channel[i]) {
        own.applied.push_back(segment);
      } else if (own.applied.empty() || own.applied.back().tensor != i) {
        own.applied.push_back({.tensor = i, .start = 0, .length = params[i].numel(), .row = rows.first[i]});
      }
    }
    slots_of(scratch.group, own.applied, scratch.second_group);
    applied = &own.applied;
  }
  args.per_tensor.resize(applied->size());
  for (size_t s = 0; s < applied->size(); ++s) {
    const auto& segment = (*applied)[s];
    auto coefficients = coefficients_of(segment.tensor);
    coefficients.step = -h.lr;
    coefficients.projection = update.projection[segment.row];
    coefficients.decay = update.decay[segment.tensor];
    args.per_tensor[s].set(coefficients);
  }
  cpu::run(apply, group, args);
  mark_written({params, exp_avgs, exp_avg_sqs, maxima});
}

}  // namespace holocron::optim::functional

// ---- The C++ class -------------------------------------------------------------

namespace holocron::optim {

using namespace detail;

AdamPOptions::AdamPOptions(double lr) : lr_(lr) {}

functional::AdamPHyper AdamPOptions::hyper() const {
  return hyper_of<functional::AdamPHyper>(*this);
}

AdamP::AdamP(const std::vector<OptimizerParamGroup>& param_groups, AdamPOptions defaults)
    : Algorithm(param_groups, defaults, "AdamP") {}
AdamP::AdamP(TensorVector params, AdamPOptions defaults)
    : AdamP({OptimizerParamGroup(std::move(params))}, std::move(defaults)) {}

void AdamP::init_state(AdamPParamState& state, const torch::Tensor& param,
                       const AdamPOptions& options) const {
  detail::ensure_buffer(state.exp_avg(), param, options);
  detail::ensure_buffer(state.exp_avg_sq(), param, options);
  if (options.amsgrad()) detail::ensure_buffer(state.max_exp_avg_sq(), param, options);
}

void AdamP::update(const AdamPOptions& options, const TensorVector& params,
                   const TensorVector& grads, const std::vector<AdamPParamState*>& states) {
  auto steps = next_steps(states);
  functional::adamp_(
      params, grads, gather(states, [](auto& s) { return s.exp_avg(); }),
      gather(states, [](auto& s) { return s.exp_avg_sq(); }),
      options.amsgrad() ? gather(states, [](auto& s) { return s.max_exp_avg_sq(); }) : functional::detail::HeldTensors{},
      steps, options.hyper(), grad_scaling());
  store_steps(states, steps);
}

}  // namespace holocron::optim

// ---- The operator (torch.ops.holocron) ------------------------------------------

namespace holocron::optim::ops {
namespace {

c10::IValue adamp(const Arguments& a) {
  const auto params = a.params();
  const StepCounters counters("AdamP", a.integers("steps"), a.optional_tensors("step_tensors"),
                              params.size());
  F::adamp_(params, a.grads("AdamP", params), a.state("exp_avgs"), a.state("exp_avg_sqs"),
            a.state("max_exp_avg_sqs"), counters.steps(),
            a.hyper<F::AdamPHyper>("AdamP"),
            a.scaling(), a.sharding(params));
  counters.store(a.found_inf());
  return {};
}

}  // namespace

HOLOCRON_OPTIM_OP(
    "adamp_(Tensor(a!)[] params, Tensor[]? grads, Tensor(b!)[] exp_avgs, "
    "Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] max_exp_avg_sqs, int[] steps, float lr, "
    "float beta1, float beta2, float eps, float weight_decay, bool amsgrad, float delta, "
     HOLOCRON_SCALING ", " HOLOCRON_SHARDING ", Tensor(s!)[]? step_tensors=None, " HOLOCRON_MAXIMIZE
     ", bool decoupled_weight_decay=False, bool nesterov=False, float wd_ratio=1.0, "
    "bool channel_projection=False, bool caution=False, " HOLOCRON_CHANNEL_LAYOUTS ", " HOLOCRON_KAHAN ", " HOLOCRON_BLOCKWISE ", " HOLOCRON_LR_TENSOR ", " HOLOCRON_PINNED ") -> ()",
    &adamp)

}  // namespace holocron::optim::ops
