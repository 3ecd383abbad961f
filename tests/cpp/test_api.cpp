// Options and their validation, parameter groups (and timm's weight-decay groups), schedulers, step(closure),
// and steps that fail without changing anything.

#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/optim/schedulers/step_lr.h>
#include <torch/serialize.h>

#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <set>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "test_util.h"

namespace holocron_test {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

std::vector<torch::Tensor> some_params() {
  return {torch::ones({2, 2}, torch::kDouble).set_requires_grad(true)};
}

// ---- Options ------------------------------------------------------------------

TEST(Options, SettersChainAndDefaults) {
  auto lamb = ho::LAMBOptions(0.1).betas({0.8, 0.9}).eps(1e-6).weight_decay(0.2).scale_clip(
      std::make_tuple(0.5, 2.0));
  EXPECT_EQ(lamb.lr(), 0.1);
  EXPECT_EQ(lamb.betas(), std::make_tuple(0.8, 0.9));
  EXPECT_EQ(lamb.eps(), 1e-6);
  EXPECT_EQ(lamb.weight_decay(), 0.2);
  ASSERT_TRUE(lamb.scale_clip().has_value());
  EXPECT_EQ(*lamb.scale_clip(), std::make_tuple(0.5, 2.0));
  EXPECT_EQ(lamb.get_lr(), 0.1);
  lamb.set_lr(0.3);
  EXPECT_EQ(lamb.lr(), 0.3);

  auto lars = ho::LARSOptions(0.2).momentum(0.9).dampening(0.1).weight_decay(1e-4).nesterov(false);
  EXPECT_EQ(lars.momentum(), 0.9);
  EXPECT_EQ(lars.dampening(), 0.1);
  EXPECT_FALSE(lars.scale_clip().has_value());

  auto ralars = ho::RaLarsOptions(1.0).force_adaptive_momentum(true);
  EXPECT_TRUE(ralars.force_adaptive_momentum());
  auto tadam = ho::TAdamOptions(1.0).dof(2.5).amsgrad(true);
  ASSERT_TRUE(tadam.dof().has_value());
  EXPECT_EQ(*tadam.dof(), 2.5);
  EXPECT_TRUE(tadam.amsgrad());
  EXPECT_FALSE(ho::TAdamOptions(1.0).dof().has_value());
  EXPECT_EQ(ho::AdamPOptions(1.0).delta(0.3).delta(), 0.3);
  EXPECT_EQ(ho::AdanOptions().betas(), std::make_tuple(0.98, 0.92, 0.99));
  EXPECT_EQ(ho::AdEMAMixOptions().betas(), std::make_tuple(0.9, 0.999, 0.9999));
  EXPECT_EQ(ho::AdEMAMixOptions().alpha(), 5.0);
  EXPECT_EQ(ho::AdEMAMixOptions(2.0).alpha(3.0).alpha(), 3.0);
  EXPECT_EQ(ho::AdaBeliefOptions().lr(), 1e-3);
  EXPECT_EQ(ho::LARSOptions().lr(), 1e-3);

  auto la = ho::LookaheadOptions().sync_rate(0.3).sync_period(4);
  EXPECT_EQ(la.sync_rate(), 0.3);
  EXPECT_EQ(la.sync_period(), 4);
  EXPECT_EQ(ho::ScoutOptions().sync_rate(), 0.5);
  EXPECT_EQ(ho::ScoutOptions().sync_period(), 6);
}

template <typename Opt, typename Options>
void expect_bad(const Options& options, const std::string& name, const std::string& context) {
  expect_throw_naming([&] { Opt opt(some_params(), options); }, name, context);
}

TEST(Options, Validation) {
  const std::vector<double> non_finite = {kNaN, kInf, -kInf};

  // lr: negative or not finite, for all eight.
  for (double bad : {-1e-3, kNaN, kInf}) {
    const auto ctx = "lr=" + std::to_string(bad);
    expect_bad<ho::LARS>(ho::LARSOptions(bad), "lr", "LARS " + ctx);
    expect_bad<ho::LAMB>(ho::LAMBOptions(bad), "lr", "LAMB " + ctx);
    expect_bad<ho::RaLars>(ho::RaLarsOptions(bad), "lr", "RaLars " + ctx);
    expect_bad<ho::TAdam>(ho::TAdamOptions(bad), "lr", "TAdam " + ctx);
    expect_bad<ho::AdaBelief>(ho::AdaBeliefOptions(bad), "lr", "AdaBelief " + ctx);
    expect_bad<ho::AdamP>(ho::AdamPOptions(bad), "lr", "AdamP " + ctx);
    expect_bad<ho::Adan>(ho::AdanOptions(bad), "lr", "Adan " + ctx);
    expect_bad<ho::AdEMAMix>(ho::AdEMAMixOptions(bad), "lr", "AdEMAMix " + ctx);
  }
  // eps: negative or not finite.
  for (double bad : {-1e-8, kNaN, kInf}) {
    const auto ctx = "eps=" + std::to_string(bad);
    expect_bad<ho::LAMB>(ho::LAMBOptions().eps(bad), "eps", "LAMB " + ctx);
    expect_bad<ho::RaLars>(ho::RaLarsOptions().eps(bad), "eps", "RaLars " + ctx);
    expect_bad<ho::TAdam>(ho::TAdamOptions().eps(bad), "eps", "TAdam " + ctx);
    expect_bad<ho::AdaBelief>(ho::AdaBeliefOptions().eps(bad), "eps", "AdaBelief " + ctx);
    expect_bad<ho::AdamP>(ho::AdamPOptions().eps(bad), "eps", "AdamP " + ctx);
    expect_bad<ho::Adan>(ho::AdanOptions().eps(bad), "eps", "Adan " + ctx);
    expect_bad<ho::AdEMAMix>(ho::AdEMAMixOptions().eps(bad), "eps", "AdEMAMix " + ctx);
  }
  // weight_decay: never non-finite; negative refused where the reference refuses it.
  for (double bad : non_finite) {
    const auto ctx = "weight_decay=" + std::to_string(bad);
    expect_bad<ho::LARS>(ho::LARSOptions().weight_decay(bad), "weight_decay", "LARS " + ctx);
    expect_bad<ho::LAMB>(ho::LAMBOptions().weight_decay(bad), "weight_decay", "LAMB " + ctx);
    expect_bad<ho::RaLars>(ho::RaLarsOptions().weight_decay(bad), "weight_decay", "RaLars " + ctx);
    expect_bad<ho::TAdam>(ho::TAdamOptions().weight_decay(bad), "weight_decay", "TAdam " + ctx);
    expect_bad<ho::AdaBelief>(ho::AdaBeliefOptions().weight_decay(bad), "weight_decay",
                              "AdaBelief " + ctx);
    expect_bad<ho::AdamP>(ho::AdamPOptions().weight_decay(bad), "weight_decay", "AdamP " + ctx);
    expect_bad<ho::Adan>(ho::AdanOptions().weight_decay(bad), "weight_decay", "Adan " + ctx);
    expect_bad<ho::AdEMAMix>(ho::AdEMAMixOptions().weight_decay(bad), "weight_decay",
                             "AdEMAMix " + ctx);
  }
  expect_bad<ho::LARS>(ho::LARSOptions().weight_decay(-0.1), "weight_decay", "LARS wd<0");
  expect_bad<ho::TAdam>(ho::TAdamOptions().weight_decay(-0.1), "weight_decay", "TAdam wd<0");
  expect_bad<ho::AdaBelief>(ho::AdaBeliefOptions().weight_decay(-0.1), "weight_decay",
                            "AdaBelief wd<0");
  expect_bad<ho::AdamP>(ho::AdamPOptions().weight_decay(-0.1), "weight_decay", "AdamP wd<0");
  expect_bad<ho::Adan>(ho::AdanOptions().weight_decay(-0.1), "weight_decay", "Adan wd<0");

  // betas: outside [0, 1) or not finite, in every position.
  for (double bad : {1.0, 1.5, -0.1, kNaN, kInf}) {
    const auto ctx = "beta=" + std::to_string(bad);
    for (int pos = 0; pos < 2; ++pos) {
      auto b2 = pos == 0 ? std::make_tuple(bad, 0.999) : std::make_tuple(0.9, bad);
      const auto name = "betas[" + std::to_string(pos) + "]";
      expect_bad<ho::LAMB>(ho::LAMBOptions().betas(b2), name, "LAMB " + ctx);
      expect_bad<ho::RaLars>(ho::RaLarsOptions().betas(b2), name, "RaLars " + ctx);
      expect_bad<ho::TAdam>(ho::TAdamOptions().betas(b2), name, "TAdam " + ctx);
      expect_bad<ho::AdaBelief>(ho::AdaBeliefOptions().betas(b2), name, "AdaBelief " + ctx);
      expect_bad<ho::AdamP>(ho::AdamPOptions().betas(b2), name, "AdamP " + ctx);
    }
    for (int pos = 0; pos < 3; ++pos) {
      auto b3 = std::make_tuple(0.9, 0.9, 0.9);
      if (pos == 0) std::get<0>(b3) = bad;
      if (pos == 1) std::get<1>(b3) = bad;
      if (pos == 2) std::get<2>(b3) = bad;
      const auto name = "betas[" + std::to_string(pos) + "]";
      expect_bad<ho::Adan>(ho::AdanOptions().betas(b3), name, "Adan " + ctx);
      expect_bad<ho::AdEMAMix>(ho::AdEMAMixOptions().betas(b3), name, "AdEMAMix " + ctx);
    }
  }

  // LARS: momentum, Nesterov.
  expect_bad<ho::LARS>(ho::LARSOptions().momentum(-0.5), "momentum", "LARS momentum<0");
  expect_bad<ho::LARS>(ho::LARSOptions().momentum(kNaN), "momentum", "LARS momentum NaN");
  expect_bad<ho::LARS>(ho::LARSOptions().nesterov(true), "Nesterov", "LARS nesterov, momentum 0");
  expect_bad<ho::LARS>(ho::LARSOptions().nesterov(true).momentum(0.9).dampening(0.1), "Nesterov",
                       "LARS nesterov with dampening");
  // scale_clip: a bad range.
  expect_bad<ho::LAMB>(ho::LAMBOptions().scale_clip(std::make_tuple(2.0, 1.0)), "scale_clip",
                       "LAMB reversed clip");
  expect_bad<ho::LARS>(ho::LARSOptions().scale_clip(std::make_tuple(-1.0, 1.0)), "scale_clip",
                       "LARS negative clip");
  expect_bad<ho::TAdam>(ho::TAdamOptions().dof(kNaN), "dof", "TAdam dof NaN");
  // Refused although the reference accepts it: NaN on a step whose gradient equals the mean.
  expect_bad<ho::TAdam>(ho::TAdamOptions().dof(0.0), "dof", "TAdam dof zero");
  expect_bad<ho::AdEMAMix>(ho::AdEMAMixOptions().alpha(kInf), "alpha", "AdEMAMix alpha inf");
  expect_bad<ho::AdamP>(ho::AdamPOptions().delta(kNaN), "delta", "AdamP delta NaN");
  // Refused although the reference accepts it.
  expect_bad<ho::LAMB>(ho::LAMBOptions().weight_decay(-0.1), "weight_decay", "LAMB negative weight decay");
  expect_bad<ho::RaLars>(ho::RaLarsOptions().weight_decay(-0.1), "weight_decay", "RaLars negative weight decay");
  expect_bad<ho::AdEMAMix>(ho::AdEMAMixOptions().weight_decay(-0.1), "weight_decay",
                           "AdEMAMix negative weight decay");

  // Valid corner values are accepted.
  EXPECT_NO_THROW(ho::LAMB(some_params(), ho::LAMBOptions(0.0).betas({0.0, 0.0}).eps(0.0)));
  EXPECT_NO_THROW(ho::LARS(some_params(), ho::LARSOptions().nesterov(true).momentum(0.5)));
}

TEST(Options, InvalidGroupOptionsAndLaterChanges) {
  // A group's own options are checked too.
  std::vector<OptimizerParamGroup> groups;
  groups.emplace_back(some_params(), std::make_unique<ho::AdanOptions>(-1.0));
  expect_throw_naming([&] { ho::Adan opt(groups, ho::AdanOptions()); }, "lr", "group lr");

  // Options of another optimizer type are refused.
  std::vector<OptimizerParamGroup> wrong;
  wrong.emplace_back(some_params(), std::make_unique<ho::LAMBOptions>(1.0));
  EXPECT_THROW(ho::Adan(wrong, ho::AdanOptions()), std::invalid_argument);

  // An option made invalid after construction is caught by step, before any change.
  auto params = some_params();
  ho::AdaBelief opt(params, ho::AdaBeliefOptions(0.1));
  params[0].mutable_grad() = torch::ones_like(params[0]);
  static_cast<ho::AdaBeliefOptions&>(opt.param_groups()[0].options()).eps(kNaN);
  const auto before = params[0].detach().clone();
  expect_throw_naming([&] { opt.step(); }, "eps", "eps set to NaN after construction");
  EXPECT_TRUE(torch::equal(params[0], before));
  EXPECT_TRUE(opt.state().empty());
}

TEST(Options, WrapperValidation) {
  auto make_base = [] { return std::make_shared<ho::LAMB>(some_params(), ho::LAMBOptions()); };
  for (double bad : {-0.1, 1.1, kNaN, kInf}) {
    const auto ctx = "sync_rate=" + std::to_string(bad);
    expect_throw_naming([&] { ho::Lookahead(make_base(), ho::LookaheadOptions().sync_rate(bad)); },
                        "sync_rate", "Lookahead " + ctx);
    expect_throw_naming([&] { ho::Scout(make_base(), ho::ScoutOptions().sync_rate(bad)); },
                        "sync_rate", "Scout " + ctx);
  }
  for (int64_t bad : {0, -1}) {
    const auto ctx = "sync_period=" + std::to_string(bad);
    expect_throw_naming(
        [&] { ho::Lookahead(make_base(), ho::LookaheadOptions().sync_period(bad)); },
        "sync_period", "Lookahead " + ctx);
    expect_throw_naming([&] { ho::Scout(make_base(), ho::ScoutOptions().sync_period(bad)); },
                        "sync_period", "Scout " + ctx);
  }
  EXPECT_ANY_THROW(ho::Lookahead(nullptr, ho::LookaheadOptions()));
  EXPECT_NO_THROW(ho::Lookahead(make_base(), ho::LookaheadOptions().sync_rate(0.0).sync_period(1)));
  EXPECT_NO_THROW(ho::Scout(make_base(), ho::ScoutOptions().sync_rate(1.0)));
}

// ---- Typed tests over the eight algorithms --------------------------------------

template <typename T>
class EveryAlgorithm : public ::testing::Test {};
TYPED_TEST_SUITE(EveryAlgorithm, AllAlgorithms, TraitsName);

// The operator's schema and the functional hyper-parameters are one list: the op's kernel reads each
// field by its name (Arguments::hyper), so each must be an argument of the field's type, with the
// default the options and the struct give it where the schema has one; and each scalar argument
// of the schema that is not one every update op shares must be a field (none read by nothing).
struct SchemaCheck {
  const c10::FunctionSchema& schema;
  std::set<std::string>& read;
  const c10::Argument& argument(const std::string& name) const {
    const auto index = schema.argumentIndexWithName(name);
    if (!index) throw std::runtime_error(schema.name() + " has no argument " + name);
    read.insert(name);
    return schema.arguments()[*index];
  }
  void expect(const std::string& name, const c10::TypePtr& type) const {
    const auto& arg = argument(name);
    EXPECT_EQ(*arg.type(), *type) << schema.name() << ": " << name;
  }
  template <typename T>
  void expect_default(const std::string& name, const T& options_value, const T& struct_value) const {
    const auto& arg = argument(name);
    if (!arg.default_value()) return;
    c10::IValue expected;
    if constexpr (std::is_same_v<T, std::optional<double>>) {
      if (options_value) expected = *options_value;
    } else {
      expected = options_value;
    }
    EXPECT_EQ(*arg.default_value(), expected) << schema.name() << ": the default of " << name;
    EXPECT_TRUE(options_value == struct_value) << schema.name() << ": " << name
                                               << " defaults differently in the options and the struct";
  }
};

// Visits the struct's defaults (`Hyper{}`), each compared with the options' (`from_options`).
template <typename Hyper>
struct HyperAgainstSchema {
  const SchemaCheck& check;
  const Hyper& from_options;
  template <typename T>
  T options_value(const char* name) const {
    T found{};
    auto pick = [&](const char* field, const auto& value) {
      if constexpr (std::is_same_v<std::decay_t<decltype(value)>, T>) {
        if (std::strcmp(field, name) == 0) found = value;
      }
    };
    ho::detail::visit_fields<Hyper>(from_options, pick);
    return found;
  }
  template <typename T>
  void operator()(const char* name, const T& struct_value) const {
    if constexpr (std::is_same_v<T, double>) {
      check.expect(name, c10::FloatType::get());
      if (std::strcmp(name, "lr") != 0) check.expect_default<double>(name, options_value<double>(name), struct_value);
    } else if constexpr (std::is_same_v<T, bool>) {
      check.expect(name, c10::BoolType::get());
      check.expect_default<bool>(name, options_value<bool>(name), struct_value);
    } else if constexpr (std::is_same_v<T, std::optional<double>>) {
      check.expect(name, c10::OptionalType::create(c10::FloatType::get()));
      check.expect_default<std::optional<double>>(name, options_value<T>(name), struct_value);
    } else if constexpr (std::is_same_v<T, ho::functional::ScaleClip>) {
      check.expect("clip_low", c10::FloatType::get());
      check.expect("clip_high", c10::FloatType::get());
    } else if constexpr (std::is_same_v<T, std::optional<ho::functional::ScaleClip>>) {
      check.expect(name, c10::ListType::create(c10::FloatType::get()));
    } else {
      static_assert(!sizeof(T), "a hyper-parameter type that Arguments::hyper does not read");
    }
  }
};

TYPED_TEST(EveryAlgorithm, HyperParametersAreTheOperatorsArguments) {
  using Options = typename TypeParam::Options;
  using Hyper = decltype(Options().hyper());
  std::string op = std::string("holocron::") + TypeParam::name + "_";
  std::transform(op.begin(), op.end(), op.begin(), [](unsigned char c) { return std::tolower(c); });
  const auto& schema = c10::Dispatcher::singleton().findSchemaOrThrow(op.c_str(), "").schema();
  std::set<std::string> read;
  const SchemaCheck check{schema, read};
  const Hyper from_options = Options().hyper();
  const Hyper from_struct{};
  HyperAgainstSchema<Hyper> visit{check, from_options};
  ho::detail::visit_fields<Hyper>(from_struct, visit);
  // What update ops take besides their tensors and hyper-parameters: step counters, LARS' new
  // buffers, GradScaling's maximize, the clipping's bound, the sharding's layout, state lists
  // handed as pinned tensors and the dtype rule they come with (HOLOCRON_PINNED).
  const std::set<std::string> not_hyper = {"steps",  "buffer_is_new", "maximize",       "max_grad_norm",
                                           "numels", "shard_groups",  "channel_layouts", "pinned_state",
                                           "pinned_lists", "pinned_at", "state_as_param", "param_refs"};
  const auto tensors = c10::TensorType::get();
  bool defaulted = false;
  for (const auto& arg : schema.arguments()) {
    const auto& type = arg.type();
    const bool holds_tensors = type->isSubtypeOf(*c10::OptionalType::create(tensors)) ||
                               type->isSubtypeOf(*c10::OptionalType::create(c10::ListType::create(tensors)));
    if (!holds_tensors && !not_hyper.count(arg.name())) {
      EXPECT_TRUE(read.count(arg.name())) << op << ": argument " << arg.name() << " is no hyper-parameter";
    }
    // Arguments added later go last, each with the default that keeps older callers' meaning (a
    // default check above skips an argument without one; torch refuses a positional one without,
    // not one after `*`).
    if (defaulted) {
      EXPECT_TRUE(arg.default_value().has_value()) << op << ": " << arg.name() << " has no default";
    }
    defaulted = defaulted || arg.default_value().has_value();
  }
}

// Two groups with their own lr behave as two single-group optimizers.
TYPED_TEST(EveryAlgorithm, GroupsKeepTheirOptions) {
  using Opt = typename TypeParam::Opt;
  using Options = typename TypeParam::Options;
  auto a = TinyModel::make(1);
  auto b = a.clone();
  std::vector<OptimizerParamGroup> groups;
  groups.emplace_back(std::vector<torch::Tensor>{a.weight},
                      std::make_unique<Options>(TypeParam::options(0.1)));
  groups.emplace_back(std::vector<torch::Tensor>{a.bias, a.scale},
                      std::make_unique<Options>(TypeParam::options(0.01)));
  Opt both(groups, TypeParam::options(0.5));
  ASSERT_EQ(both.param_groups().size(), 2u);
  EXPECT_EQ(both.param_groups()[0].options().get_lr(), 0.1);
  EXPECT_EQ(both.param_groups()[1].options().get_lr(), 0.01);
  EXPECT_EQ(both.defaults().get_lr(), 0.5);

  Opt first(std::vector<torch::Tensor>{b.weight}, TypeParam::options(0.1));
  Opt second(std::vector<torch::Tensor>{b.bias, b.scale}, TypeParam::options(0.01));
  for (int k = 0; k < 4; ++k) {
    a.backward(k);
    b.backward(k);
    both.step();
    first.step();
    second.step();
  }
  EXPECT_TRUE(all_equal(a.params(), b.params()));
  // And not what the defaults' lr would give.
  auto c = TinyModel::make(1);
  Opt defaults_only(c.params(), TypeParam::options(0.5));
  for (int k = 0; k < 4; ++k) {
    c.backward(k);
    defaults_only.step();
  }
  EXPECT_FALSE(torch::equal(a.bias, c.bias));
}

TYPED_TEST(EveryAlgorithm, AddParamGroupKeepsItsOptions) {
  using Opt = typename TypeParam::Opt;
  using Options = typename TypeParam::Options;
  auto a = TinyModel::make(2);
  auto b = a.clone();
  Opt opt(std::vector<torch::Tensor>{a.weight}, TypeParam::options(0.1));
  opt.add_param_group(OptimizerParamGroup(std::vector<torch::Tensor>{a.bias},
                                          std::make_unique<Options>(TypeParam::options(0.02))));
  opt.add_param_group(OptimizerParamGroup(std::vector<torch::Tensor>{a.scale}));
  ASSERT_EQ(opt.param_groups().size(), 3u);
  EXPECT_EQ(opt.param_groups()[1].options().get_lr(), 0.02);
  EXPECT_EQ(opt.param_groups()[2].options().get_lr(), 0.1);  // the defaults

  Opt r0(std::vector<torch::Tensor>{b.weight}, TypeParam::options(0.1));
  Opt r1(std::vector<torch::Tensor>{b.bias}, TypeParam::options(0.02));
  Opt r2(std::vector<torch::Tensor>{b.scale}, TypeParam::options(0.1));
  for (int k = 0; k < 3; ++k) {
    a.backward(k);
    b.backward(k);
    opt.step();
    r0.step();
    r1.step();
    r2.step();
  }
  EXPECT_TRUE(all_equal(a.params(), b.params()));

  // A parameter already in a group is refused, and one listed twice in the new group, each by its words.
  EXPECT_THROW(opt.add_param_group(OptimizerParamGroup(std::vector<torch::Tensor>{a.bias})),
               std::invalid_argument);
  expect_throw_naming([&] { opt.add_param_group(OptimizerParamGroup(std::vector<torch::Tensor>{a.bias})); },
                      "appear in more than one parameter group", "a parameter of another group");
  const auto extra = torch::zeros({2}, torch::kFloat64).requires_grad_();
  EXPECT_THROW(opt.add_param_group(OptimizerParamGroup(std::vector<torch::Tensor>{extra, extra})),
               std::invalid_argument);
  expect_throw_naming([&] { opt.add_param_group(OptimizerParamGroup(std::vector<torch::Tensor>{extra, extra})); },
                      "parameter 1 appears twice in the group", "a parameter listed twice");
  EXPECT_EQ(opt.param_groups().size(), 3u);
}

// StepLR changes the lr the next step uses.
TYPED_TEST(EveryAlgorithm, StepLRChangesTheNextStep) {
  using Opt = typename TypeParam::Opt;
  auto a = TinyModel::make(3);
  auto c = a.clone();
  Opt scheduled(a.params(), TypeParam::plain(0.1));
  Opt constant(c.params(), TypeParam::plain(0.1));
  // StepLR decays on its calls number step_size, 2*step_size, ... (not the 0th).
  torch::optim::StepLR scheduler(scheduled, /*step_size=*/1, /*gamma=*/0.25);
  for (int k = 0; k < 2; ++k) {
    a.backward(k);
    c.backward(k);
    scheduled.step();
    constant.step();
    scheduler.step();
  }
  EXPECT_TRUE(all_equal(a.params(), c.params()));
  EXPECT_DOUBLE_EQ(scheduled.param_groups()[0].options().get_lr(), 0.025);
  EXPECT_DOUBLE_EQ(constant.param_groups()[0].options().get_lr(), 0.1);

  // Same state and gradients; the update is a quarter of the constant one.
  std::vector<torch::Tensor> before;
  for (const auto& p : a.params()) before.push_back(p.detach().clone());
  a.backward(2);
  c.backward(2);
  scheduled.step();
  constant.step();
  for (size_t i = 0; i < before.size(); ++i) {
    const auto du = a.params()[i].detach() - before[i];
    const auto dc = c.params()[i].detach() - before[i];
    ASSERT_GT(dc.abs().max().item<double>(), 0.0);
    EXPECT_TRUE(torch::allclose(du, dc * 0.25, 1e-8, 1e-15)) << "param " << i;
  }
}

// step(closure): the closure runs with grad enabled and its loss is returned.
TYPED_TEST(EveryAlgorithm, StepWithClosure) {
  using Opt = typename TypeParam::Opt;
  auto a = TinyModel::make(4);
  auto b = a.clone();
  Opt with_closure(a.params(), TypeParam::options(0.05));
  Opt plain(b.params(), TypeParam::options(0.05));
  for (int k = 0; k < 3; ++k) {
    int calls = 0;
    double inner_loss = 0.0;
    torch::Tensor loss;
    {
      torch::NoGradGuard no_grad;  // the step must enable grad for the closure
      loss = with_closure.step([&] {
        ++calls;
        EXPECT_TRUE(torch::GradMode::is_enabled());
        with_closure.zero_grad();
        auto l = a.loss(k);
        l.backward();
        inner_loss = l.item<double>();
        return l;
      });
    }
    EXPECT_EQ(calls, 1);
    ASSERT_TRUE(loss.defined());
    EXPECT_EQ(loss.item<double>(), inner_loss);
    b.backward(k);
    EXPECT_FALSE(plain.step().defined());
  }
  EXPECT_TRUE(all_equal(a.params(), b.params()));
}

// Parameters whose grad is undefined are skipped and get no state.
TYPED_TEST(EveryAlgorithm, ParamsWithoutGradAreSkipped) {
  using Opt = typename TypeParam::Opt;
  auto a = TinyModel::make(5);
  auto unused = torch::randn({4}, torch::kDouble).set_requires_grad(true);
  const auto unused0 = unused.detach().clone();
  auto params = a.params();
  params.push_back(unused);
  Opt opt(params, TypeParam::options(0.05));
  for (int k = 0; k < 3; ++k) {
    opt.zero_grad();
    opt.step([&] {
      auto l = a.loss(k);
      l.backward();
      return l;
    });
  }
  EXPECT_FALSE(unused.grad().defined());
  EXPECT_TRUE(torch::equal(unused, unused0));
  EXPECT_EQ(opt.state().count(unused.unsafeGetTensorImpl()), 0u);
  EXPECT_EQ(opt.state().count(a.weight.unsafeGetTensorImpl()), 1u);
  // With no gradient at all, a step changes nothing.
  opt.zero_grad();
  const auto before = snapshot<typename TypeParam::State>(opt);
  opt.step();
  expect_same(before, snapshot<typename TypeParam::State>(opt), "step without gradients");
}

// A step that fails (a bad gradient in the second group) changes nothing,
// not even in the first group.
// maximize reads -g: ascending on g is descending on -g, to the bit; p.grad is not written.
TYPED_TEST(EveryAlgorithm, MaximizeDescendsTheNegatedGradient) {
  using Opt = typename TypeParam::Opt;
  auto a = TinyModel::make(8);
  auto b = a.clone();
  Opt ascend(a.params(), TypeParam::options(0.05).maximize(true));
  Opt descend(b.params(), TypeParam::options(0.05));
  for (int k = 0; k < 5; ++k) {
    b.backward(k);
    const auto params_a = a.params(), params_b = b.params();
    for (size_t i = 0; i < params_a.size(); ++i) params_a[i].mutable_grad() = -params_b[i].grad();
    const auto grad = params_a[0].grad().clone();
    ascend.step();
    descend.step();
    EXPECT_TRUE(torch::equal(params_a[0].grad(), grad));
  }
  const auto params_a = a.params(), params_b = b.params();
  for (size_t i = 0; i < params_a.size(); ++i) EXPECT_TRUE(torch::equal(params_a[i], params_b[i])) << i;
  EXPECT_FALSE(torch::equal(params_a[0], TinyModel::make(8).weight));
}

TYPED_TEST(EveryAlgorithm, FailedStepChangesNothing) {
  using Opt = typename TypeParam::Opt;
  using Options = typename TypeParam::Options;
  auto a = TinyModel::make(6);
  std::vector<OptimizerParamGroup> groups;
  groups.emplace_back(std::vector<torch::Tensor>{a.weight, a.scale},
                      std::make_unique<Options>(TypeParam::options(0.1)));
  groups.emplace_back(std::vector<torch::Tensor>{a.bias},
                      std::make_unique<Options>(TypeParam::options(0.05)));
  Opt opt(groups, TypeParam::options(0.1));
  for (int k = 0; k < 2; ++k) {
    a.backward(k);
    opt.step();
  }
  const auto before = snapshot<typename TypeParam::State>(opt);

  const std::vector<std::pair<std::string, torch::Tensor>> bad_grads = {
      {"shape", torch::ones({4}, torch::kDouble)},
      {"dtype", torch::ones({3}, torch::kFloat)},
      {"sparse", torch::ones({3}, torch::kDouble).to_sparse()},
  };
  for (const auto& [what, bad] : bad_grads) {
    a.backward(2);
    a.bias.mutable_grad() = bad;
    EXPECT_ANY_THROW(opt.step()) << what;
    expect_same(before, snapshot<typename TypeParam::State>(opt), "bad gradient " + what);
  }
  // And after the failures the optimizer still works as if they never happened.
  auto b = TinyModel::make(6);
  std::vector<OptimizerParamGroup> groups_b;
  groups_b.emplace_back(std::vector<torch::Tensor>{b.weight, b.scale},
                        std::make_unique<Options>(TypeParam::options(0.1)));
  groups_b.emplace_back(std::vector<torch::Tensor>{b.bias},
                        std::make_unique<Options>(TypeParam::options(0.05)));
  Opt ref(groups_b, TypeParam::options(0.1));
  for (int k = 0; k < 3; ++k) {
    b.backward(k);
    ref.step();
  }
  a.backward(2);
  opt.step();
  EXPECT_TRUE(all_equal(a.params(), b.params()));
}

// The failure of a new parameter's first step leaves it without state.
TYPED_TEST(EveryAlgorithm, FailedFirstStepCreatesNoState) {
  using Opt = typename TypeParam::Opt;
  auto a = TinyModel::make(7);
  Opt opt(a.params(), TypeParam::options(0.1));
  a.backward(0);
  a.scale.mutable_grad() = torch::ones({1, 1}, torch::kDouble);
  const auto before = snapshot<typename TypeParam::State>(opt);
  EXPECT_ANY_THROW(opt.step());
  expect_same(before, snapshot<typename TypeParam::State>(opt), "first step");
  EXPECT_TRUE(opt.state().empty());
}

// What ATen would refuse only in the middle of an update (a parameter whose elements share memory,
// an inference tensor), a meta tensor (no values for the host's norms) and a parameter listed in
// two groups, in a group put straight into param_groups(): refused before the first group is written.
TYPED_TEST(EveryAlgorithm, UnwritableOrTwiceListedParameterChangesNothing) {
  using Opt = typename TypeParam::Opt;
  using State = typename TypeParam::State;
  const auto dense = torch::TensorOptions().dtype(torch::kDouble);
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"expanded", "share memory"}, {"inference", "inference tensor"}, {"meta", "meta device"},
      {"listed twice", "parameter 1 in group 0 is also parameter 0 in group 1"}};
  for (const auto& [what, words] : cases) {
    auto a = TinyModel::make(8);
    Opt opt(a.params(), TypeParam::options(0.1));
    a.backward(0);
    opt.step();
    torch::Tensor bad;
    if (what == "expanded") {
      bad = torch::empty_strided({3}, {0}, dense).fill_(1.0).requires_grad_();
    } else if (what == "inference") {
      c10::InferenceMode inference;
      bad = torch::ones({3}, dense);
    } else if (what == "meta") {
      bad = torch::empty({3}, dense.device(torch::kMeta)).requires_grad_();
    } else {
      bad = a.bias;
    }
    opt.param_groups().emplace_back(std::vector<torch::Tensor>{bad});  // past add_param_group's checks
    a.backward(1);
    if (what != "listed twice") bad.mutable_grad() = torch::ones({3}, dense.device(bad.device()));
    std::vector<torch::Tensor> params_before;
    std::vector<StateSnapshot> states_before;
    for (const auto& p : a.params()) {
      params_before.push_back(p.detach().clone());
      states_before.push_back(snapshot_state<State>(*opt.state().at(p.unsafeGetTensorImpl())));
    }
    expect_throw_naming([&] { opt.step(); }, words, what);
    EXPECT_TRUE(all_equal(a.params(), params_before)) << what;
    EXPECT_EQ(opt.state().size(), a.params().size()) << what;
    for (size_t i = 0; i < params_before.size(); ++i) {
      expect_same_snapshot(states_before[i], snapshot_state<State>(*opt.state().at(a.params()[i].unsafeGetTensorImpl())),
                           what);
    }
  }
}

}  // namespace
}  // namespace holocron_test

// Gradients are only read, by global clipping's norm too: an expanded one is taken.
namespace holocron_test {
namespace {

TEST(Clipping, AnExpandedGradientIsRead) {
  namespace ho = holocron::optim;
  auto p = torch::linspace(-1, 1, 12, torch::kDouble).reshape({4, 3}).requires_grad_();
  auto q = p.detach().clone().requires_grad_();
  ho::LAMB expanded({p}, ho::LAMBOptions(0.01).max_grad_norm(0.5));
  ho::LAMB dense({q}, ho::LAMBOptions(0.01).max_grad_norm(0.5));
  p.mutable_grad() = torch::ones({1}, torch::kDouble).expand({4, 3});
  q.mutable_grad() = torch::ones({4, 3}, torch::kDouble);
  expanded.step();
  dense.step();
  EXPECT_TRUE(torch::allclose(p, q, 1e-12, 1e-15));
}

}  // namespace
}  // namespace holocron_test

// LibTorch's own optimizer tests compare options and states with ==.
namespace holocron_test {
namespace {

TEST(Equality, OptionsAndStatesCompareByValue) {
  namespace ho = holocron::optim;
  EXPECT_TRUE(ho::LAMBOptions(0.1) == ho::LAMBOptions(0.1));
  EXPECT_FALSE(ho::LAMBOptions(0.1) == ho::LAMBOptions(0.2));
  EXPECT_TRUE(ho::LAMBOptions(0.1).scale_clip(std::make_tuple(0.0, 1.0)) !=
              ho::LAMBOptions(0.1));
  EXPECT_TRUE(ho::TAdamOptions().dof(2.0) == ho::TAdamOptions().dof(2.0));

  auto p = torch::randn({3}, torch::kDouble).requires_grad_();
  ho::AdamP opt({p}, ho::AdamPOptions(0.1));
  p.mutable_grad() = torch::ones_like(p);
  opt.step();
  const auto& state = static_cast<ho::AdamPParamState&>(*opt.state().at(p.unsafeGetTensorImpl()));
  auto copy = static_cast<const torch::optim::OptimizerParamState&>(state).clone();
  EXPECT_TRUE(state == static_cast<ho::AdamPParamState&>(*copy));
  static_cast<ho::AdamPParamState&>(*copy).exp_avg(state.exp_avg() + 1);
  EXPECT_FALSE(state == static_cast<ho::AdamPParamState&>(*copy));
  EXPECT_TRUE(static_cast<const ho::AdamPOptions&>(opt.defaults()) == ho::AdamPOptions(0.1));
}

}  // namespace
}  // namespace holocron_test

namespace holocron_test {
namespace {

TEST(Groups, GroupPushedWithoutOptionsGetsTheDefaults) {
  namespace ho = holocron::optim;
  auto p = torch::randn({3}, torch::kDouble).requires_grad_();
  auto q = torch::randn({2}, torch::kDouble).requires_grad_();
  ho::LAMB opt({p}, ho::LAMBOptions(0.1));
  opt.param_groups().emplace_back(OptimizerParamGroup({q}));
  q.mutable_grad() = torch::ones_like(q);
  const auto before = q.detach().clone();
  opt.step();
  EXPECT_FALSE(torch::equal(q, before));
  EXPECT_EQ(opt.param_groups()[1].options().get_lr(), 0.1);
}


// ---- Parameter groups (param_groups_weight_decay, as timm's) ---------------------

namespace param_groups {

struct Affine : torch::nn::Module {
  Affine() {
    weight = register_parameter("weight", torch::ones({2, 3}));
    bias = register_parameter("bias", torch::zeros({2, 3}));  // 2-d, out of decay by its name
  }
  torch::Tensor weight, bias;
};

struct Net : torch::nn::Module {
  Net() {
    pos_embed = register_parameter("pos_embed", torch::zeros({1, 5, 4}));
    fc = register_module("fc", torch::nn::Linear(4, 3));
    norm = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({3})));
    affine = register_module("affine", std::make_shared<Affine>());
    frozen = register_parameter("frozen", torch::zeros({2, 2}), /*requires_grad=*/false);
  }
  torch::Tensor pos_embed, frozen;
  torch::nn::Linear fc{nullptr};
  torch::nn::LayerNorm norm{nullptr};
  std::shared_ptr<Affine> affine;
};

// The same parameters, fc's also registered under a second name.
struct TiedNet : Net {
  TiedNet() { again = register_module("again", fc); }
  torch::nn::Linear again{nullptr};
};

std::vector<std::vector<std::string>> names_of(const std::vector<torch::optim::OptimizerParamGroup>& groups,
                                               const torch::nn::Module& module) {
  std::vector<std::vector<std::string>> out;
  const auto named = module.named_parameters();
  for (const auto& group : groups) {
    auto& names = out.emplace_back();
    for (const auto& p : group.params()) {
      for (const auto& item : named) {
        if (item.value().is_same(p)) {
          names.push_back(item.key());  // its first name
          break;
        }
      }
    }
  }
  return out;
}

using Names = std::vector<std::vector<std::string>>;

TEST(ParamGroups, WeightDecayGroupsAsTimm) {
  Net net;
  const auto groups = ho::param_groups_weight_decay(net, 0.05, {}, ho::LAMBOptions(1e-2));
  EXPECT_EQ(names_of(groups, net),
            (Names{{"fc.bias", "norm.weight", "norm.bias", "affine.bias"}, {"pos_embed", "fc.weight", "affine.weight"}}));
  ASSERT_EQ(groups.size(), 2u);
  TiedNet tied;  // a shared parameter once, under its first name, as Python lists it
  EXPECT_EQ(names_of(ho::param_groups_weight_decay(tied, 0.05, {}, ho::LAMBOptions(1e-2)), tied),
            (Names{{"fc.bias", "norm.weight", "norm.bias", "affine.bias"}, {"pos_embed", "fc.weight", "affine.weight"}}));
  ho::LAMB{ho::param_groups_weight_decay(tied, 0.05, {}, ho::LAMBOptions(1e-2))};  // no duplicate
  const auto& without = static_cast<const ho::LAMBOptions&>(groups[0].options());
  const auto& with = static_cast<const ho::LAMBOptions&>(groups[1].options());
  EXPECT_EQ(without.weight_decay(), 0.0);
  EXPECT_EQ(with.weight_decay(), 0.05);
  EXPECT_EQ(without.lr(), 1e-2);
  EXPECT_EQ(with.lr(), 1e-2);

  // Patterns, no exclusion of one-dimensional parameters, no weight decay at all.
  EXPECT_EQ(names_of(ho::param_groups_weight_decay(net, 0.05, {"pos_*", "*.weight"}, ho::LAMBOptions()), net),
            (Names{{"pos_embed", "fc.weight", "fc.bias", "norm.weight", "norm.bias", "affine.weight", "affine.bias"}}));
  EXPECT_EQ(names_of(ho::param_groups_weight_decay(net, 0.05, {}, ho::LAMBOptions(), /*exclude_1d=*/false), net),
            (Names{{"pos_embed", "fc.weight", "fc.bias", "norm.weight", "norm.bias", "affine.weight", "affine.bias"}}));
  const auto none = ho::param_groups_weight_decay(net, 0.0, {}, ho::AdanOptions());
  ASSERT_EQ(none.size(), 1u);
  EXPECT_EQ(static_cast<const ho::AdanOptions&>(none[0].options()).weight_decay(), 0.0);

  // An optimizer of that type takes the groups and steps them with their own weight decay.
  ho::LAMB optimizer(ho::param_groups_weight_decay(net, 0.05, {}, ho::LAMBOptions(1e-2)));
  for (auto& p : net.parameters()) p.mutable_grad() = torch::ones_like(p);
  optimizer.step();
  EXPECT_EQ(optimizer.param_groups().size(), 2u);
  for (const auto& group : optimizer.param_groups()) {
    for (const auto& p : group.params()) EXPECT_FALSE(p.is_same(net.frozen));  // requires no grad
  }
  EXPECT_EQ(optimizer.state().size(), 7u);
}

TEST(ParamGroups, BadWeightDecayIsRefusedByName) {
  Net net;
  for (double bad : {-0.1, kNaN, kInf}) {
    try {
      ho::param_groups_weight_decay(net, bad, {}, ho::LAMBOptions());
      ADD_FAILURE() << bad << " accepted";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("weight_decay"), std::string::npos) << e.what();
    }
  }
}

TEST(ParamGroups, NamesMatchAsPythonsFnmatch) {
  // Expected values are Python's fnmatch.fnmatch on Linux.
  // Generated with Python 3.11: fnmatch.fnmatch(name, pattern).
  const std::vector<std::tuple<std::string, std::string, bool>> cases = {
      {"blocks.1.attn.weight", "blocks.*", true},
      {"blocks.1.attn.weight", "*attn*", true},
      {"a.b", "a?b", true},
      {"x", "[!x]", false},
      {"y", "[!x]", true},
      {"a\\b", "a\\b", true},
      {"a/b.c", "a*c", true},
      {".hidden", "*hidden", true},
      {"pos_embed", "pos_embed", true},
      {"pos_embed2", "pos_embed", false},
      {"[x", "[x", true},
      {"ab", "a[]b", false},
      {"b", "[^a]", false},
      {"^", "[^a]", true},
      {"5", "[[:digit:]]", false},
      {"d]", "[[:digit:]]", true},
      {"a", "[[.a.]]", false},
      {"b", "[a-c]", true},
      {"d", "[a-c]", false},
      {"-", "[a-]", true},
      {"b", "[z-a]", false},
      {"q", "[!z-a]", true},
      {"]", "[]a]", true},
      {"a", "[!]a]", false},
      {"x", "[!]a]", true},
      {"b", "[c-a-b]", true},
      {"a+b", "a+b", true},
      {"a(b)", "a(b)", true},
      {"ab", "a{1}b", false},
      {"a{1}b", "a{1}b", true},
      {"a|b", "a|b", true},
      {"a", "a|b", false},
      {"a&b", "a[&]b", true},
      {"a~b", "a[~]b", true},
      {"$x", "$x", true},
      {"blocks.10.mlp.0.weight", "blocks.[0-9]*.mlp.*", true},
      {"", "*", true},
      {"", "?", false},
      {"abc", "a**c", true},
      {"a-b", "a[--/]b", true},
      {"a.b", "a[--/]b", true},
      {"x", "[!--/]", true},
      {"\\", "[\\]", true},
  };
  for (const auto& [name, pattern, expected] : cases) {
    EXPECT_EQ(ho::name_matches(name, pattern), expected) << name << " ~ " << pattern;
  }
}

}  // namespace param_groups

}  // namespace
}  // namespace holocron_test

// ---- timm's and apex's LAMB options ---------------------------------------------

namespace holocron_test {
namespace {

TEST(LambOptions, ACheckpointFromBeforeTheOptionsLoadsWithTheirDefaults) {
  // The options archive as checkpoints wrote it before bias_correction and the others existed.
  torch::serialize::OutputArchive old_options;
  ho::detail::FieldWriter write{old_options};
  write("lr", 0.02);
  write("betas", ho::betas2_t{0.8, 0.99});
  write("eps", 1e-6);
  write("weight_decay", 0.01);
  write("scale_clip", ho::scale_clip_t{});
  std::stringstream bytes;
  old_options.save_to(bytes);
  torch::serialize::InputArchive in;
  in.load_from(bytes);
  ho::LAMBOptions loaded(0.0);
  loaded.serialize(in);
  EXPECT_EQ(loaded.lr(), 0.02);
  EXPECT_EQ(loaded.eps(), 1e-6);
  EXPECT_FALSE(loaded.bias_correction());
  EXPECT_TRUE(loaded.grad_averaging());
  EXPECT_FALSE(loaded.max_grad_norm().has_value());
  EXPECT_FALSE(loaded.trust_clip());
  EXPECT_TRUE(loaded.always_adapt());

  // An option that has always been written is still required.
  torch::serialize::OutputArchive lacking_eps;
  ho::detail::FieldWriter write_lacking{lacking_eps};
  write_lacking("lr", 0.02);
  write_lacking("betas", ho::betas2_t{0.8, 0.99});
  std::stringstream lacking_bytes;
  lacking_eps.save_to(lacking_bytes);
  torch::serialize::InputArchive lacking_in;
  lacking_in.load_from(lacking_bytes);
  expect_throw_naming([&] { ho::LAMBOptions(0.0).serialize(lacking_in); }, "eps", "a field always written");
}

TEST(LambOptions, RoundTripAndBadMaxGradNorm) {
  auto params = some_params();
  const auto options = ho::LAMBOptions(0.01).bias_correction(true).grad_averaging(false).max_grad_norm(0.5)
                           .trust_clip(true).always_adapt(false);
  ho::LAMB saved(params, options);
  std::stringstream bytes;
  torch::save(saved, bytes);
  ho::LAMB loaded(some_params());
  torch::load(loaded, bytes);
  EXPECT_TRUE(static_cast<const ho::LAMBOptions&>(loaded.param_groups()[0].options()) == options);
  for (const double bad : {0.0, -1.0, kNaN, kInf}) {
    expect_throw_naming([&] { ho::LAMB(some_params(), ho::LAMBOptions().max_grad_norm(bad)); },
                        "max_grad_norm", "a bad max_grad_norm");
  }
}

// timm's corrected_weight_decay: the decoupled decay times lr / max_lr, max_lr the constructor's lr
// unless given.
TEST(LambOptions, CorrectedWeightDecayFollowsTheLrBelowItsPeak) {
  const auto corrected = ho::LAMBOptions(0.05).weight_decay(0.1).decoupled_weight_decay(true)
                             .corrected_weight_decay(true);
  auto p = torch::ones({3}, torch::kDouble).set_requires_grad(true);
  auto q = torch::ones({2}, torch::kDouble).set_requires_grad(true);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(std::vector<torch::Tensor>{p});
  // A group's own options without max_lr take the constructor's lr too (timm's snapshot).
  groups.emplace_back(std::vector<torch::Tensor>{q}, std::make_unique<ho::LAMBOptions>(ho::LAMBOptions(corrected).lr(0.02)));
  ho::LAMB optimizer(groups, corrected);
  for (auto& group : optimizer.param_groups()) {
    EXPECT_EQ(static_cast<const ho::LAMBOptions&>(group.options()).max_lr(), 0.05);
    group.options().set_lr(0.01);  // a schedule below its peak
  }
  // A zero gradient: the step is the decay alone.
  p.mutable_grad() = torch::zeros_like(p);
  q.mutable_grad() = torch::zeros_like(q);
  optimizer.step();
  const double decayed = 1.0 - 0.01 * 0.01 / 0.05 * 0.1;
  EXPECT_TRUE(torch::allclose(p, torch::full_like(p, decayed), 0.0, 1e-15)) << p;
  EXPECT_TRUE(torch::allclose(q, torch::full_like(q, decayed), 0.0, 1e-15)) << q;

  // Saved and loaded with the rest of the options.
  std::stringstream bytes;
  torch::save(optimizer, bytes);
  std::vector<torch::optim::OptimizerParamGroup> fresh;
  fresh.emplace_back(std::vector<torch::Tensor>{torch::ones({3}, torch::kDouble).set_requires_grad(true)});
  fresh.emplace_back(std::vector<torch::Tensor>{torch::ones({2}, torch::kDouble).set_requires_grad(true)});
  ho::LAMB loaded(fresh);
  torch::load(loaded, bytes);
  const auto& options = static_cast<const ho::LAMBOptions&>(loaded.param_groups()[1].options());
  EXPECT_TRUE(options.corrected_weight_decay());
  EXPECT_EQ(options.max_lr(), 0.05);

  // A group added later must say its peak; nothing is added when it does not.
  auto later = torch::ones({2}, torch::kDouble).set_requires_grad(true);
  expect_throw_naming([&] {
    optimizer.add_param_group(torch::optim::OptimizerParamGroup(
        {later}, std::make_unique<ho::LAMBOptions>(ho::LAMBOptions(0.01).decoupled_weight_decay(true)
                                                       .corrected_weight_decay(true))));
  }, "max_lr", "a group without max_lr");
  EXPECT_EQ(optimizer.param_groups().size(), 2u);
  for (const double bad : {0.0, -1.0, kNaN, kInf}) {
    expect_throw_naming([&] { ho::LAMB(some_params(), ho::LAMBOptions(corrected).max_lr(bad)); }, "max_lr",
                        "a bad max_lr");
    expect_throw_naming([&] { ho::LAMB(some_params(), ho::LAMBOptions().max_lr(bad)); }, "max_lr",
                        "a bad max_lr without the correction");
  }

  // The trust ratio's gate reads the option's decay (timm's), not the corrected one, 0 at lr 0.
  std::vector<double> ratios;
  for (const bool with_correction : {true, false}) {
    auto w = torch::linspace(0.5, 2.0, 6, torch::kDouble).reshape({2, 3}).set_requires_grad(true);
    ho::LAMB lamb({w}, ho::LAMBOptions(corrected).always_adapt(false).corrected_weight_decay(with_correction));
    static_cast<ho::LAMBOptions&>(lamb.param_groups()[0].options()).lr(0.0);
    w.mutable_grad() = torch::linspace(-1.0, 1.0, 6, torch::kDouble).reshape({2, 3});
    lamb.step();
    ratios.push_back(static_cast<const ho::LAMBParamState&>(
                         *lamb.state().at(w.unsafeGetTensorImpl())).local_lr());
  }
  EXPECT_EQ(ratios[0], ratios[1]);
  EXPECT_NE(ratios[0], 1.0);
}

// Each bound clips by the norm over the groups holding it; none does not clip.
TEST(LambOptions, GroupsWithDifferentMaxGradNormsAreClippedApart) {
  torch::manual_seed(3);
  std::vector<torch::Tensor> init;
  for (const auto& shape : std::vector<std::vector<int64_t>>{{4, 3}, {5}, {2, 2}, {3}}) {
    init.push_back(torch::randn(shape, torch::kDouble));
  }
  const auto copy = [&] {
    std::vector<torch::Tensor> out;
    for (const auto& t : init) out.push_back(t.clone().requires_grad_());
    return out;
  };
  auto together = copy(), apart = copy();
  const auto base = ho::LAMBOptions(0.01).bias_correction(true);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  const std::vector<std::optional<double>> bounds = {1.0, 1.0, 0.5, std::nullopt};
  for (size_t i = 0; i < together.size(); ++i) {
    groups.emplace_back(std::vector<torch::Tensor>{together[i]},
                        std::make_unique<ho::LAMBOptions>(ho::LAMBOptions(base).max_grad_norm(bounds[i])));
  }
  ho::LAMB one(groups, base);
  ho::LAMB first({apart[0], apart[1]}, ho::LAMBOptions(base).max_grad_norm(1.0));
  ho::LAMB second({apart[2]}, ho::LAMBOptions(base).max_grad_norm(0.5));
  ho::LAMB third({apart[3]}, base);
  for (int step = 0; step < 5; ++step) {
    for (size_t i = 0; i < init.size(); ++i) {
      const auto g = torch::randn(init[i].sizes(), torch::kDouble) * 4;
      together[i].mutable_grad() = g.clone();
      apart[i].mutable_grad() = g.clone();
    }
    one.step();
    first.step();
    second.step();
    third.step();
  }
  for (size_t i = 0; i < init.size(); ++i) EXPECT_TRUE(torch::equal(together[i], apart[i])) << i;
}

}  // namespace
}  // namespace holocron_test

// ---- create_optimizer ----------------------------------------------------------------

namespace holocron_test {
namespace {

struct Net : torch::nn::Module {
  Net() {
    register_module("fc", torch::nn::Linear(4, 3));
    register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({3})));
    register_parameter("pos", torch::zeros({2, 3}));
  }
};

TEST(Factory, TimmNamesGiveTimmsOptionsAndGroups) {
  Net net;
  ho::FactoryOptions options;
  options.lr = 0.02;
  options.weight_decay = 0.05;
  options.no_weight_decay_names = {"pos"};
  auto lamb = ho::create_optimizer("lambc", net, options);
  ASSERT_EQ(lamb->param_groups().size(), 2u);
  const auto& no_decay = static_cast<const ho::LAMBOptions&>(lamb->param_groups()[0].options());
  const auto& decay = static_cast<const ho::LAMBOptions&>(lamb->param_groups()[1].options());
  EXPECT_EQ(lamb->param_groups()[0].params().size(), 4u);  // fc.bias, norm.weight, norm.bias, pos
  EXPECT_EQ(no_decay.weight_decay(), 0.0);
  EXPECT_EQ(decay.weight_decay(), 0.05);
  EXPECT_TRUE(decay == ho::LAMBOptions(0.02)
                           .weight_decay(0.05)
                           .bias_correction(true)
                           .eps(1e-6)
                           .max_grad_norm(1.0)
                           .always_adapt(false)
                           .trust_clip(true)
                           .scale_clip(std::make_tuple(0.0, kInf)));

  options.lr.reset();
  auto nlarc = ho::create_optimizer("NLARC", net, options);
  const auto& lars = static_cast<const ho::LARSOptions&>(nlarc->param_groups()[1].options());
  EXPECT_TRUE(lars == ho::LARSOptions(1.0)
                          .momentum(0.9)
                          .nesterov(true)
                          .weight_decay(0.05)
                          .trust_coeff(1e-3)
                          .eps(1e-8)
                          .trust_clip(true)
                          .always_adapt(false)
                          .trust_on_gradient(true));
  auto scout = ho::create_optimizer("scout_ralars", {torch::optim::OptimizerParamGroup(some_params())});
  EXPECT_NE(dynamic_cast<ho::Scout*>(scout.get()), nullptr);
  EXPECT_EQ(ho::list_optimizers(),
            (std::vector<std::string>{"adabelief", "adamp", "adan", "adanw", "ademamix", "cadan", "cadanw", "clamb", "clambw",
                                      "lamb", "lambc", "lambcw", "lambw", "larc", "lars", "nlarc", "nlars", "radabelief",
                                      "ralars", "tadam"}));
}

TEST(Factory, NamesNotReproducedAreRefused) {
  Net net;
  EXPECT_THROW(ho::create_optimizer("nope", net), std::invalid_argument);
  EXPECT_THROW(ho::create_optimizer("foo_lamb", net), std::invalid_argument);
  EXPECT_THROW(ho::create_optimizer("cadamp", net), c10::NotImplementedError);
  EXPECT_THROW(ho::create_optimizer("lookahead_cadamw", net), c10::NotImplementedError);
  EXPECT_THROW(ho::create_optimizer("lookahead_scout_lamb", net), std::invalid_argument);
  ho::FactoryOptions bad;
  bad.lr = -1.0;
  expect_throw_naming([&] { ho::create_optimizer("lamb", net, bad); }, "lr", "a negative lr");
}

}  // namespace
}  // namespace holocron_test
