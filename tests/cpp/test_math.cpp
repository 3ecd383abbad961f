// The math of the eight algorithms, checked against naive element loops in
// double written from docs/algorithms.md (not from the implementation).

#include <algorithm>
#include <cmath>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "test_util.h"

namespace holocron_test {
namespace {

using Vec = std::vector<double>;

// Naive per-parameter state.
struct NState {
  int64_t t = 0;
  std::map<std::string, Vec> b;  // buffers, by the reference's state key
  double scalar = 0.0;           // local_lr (LARS/LAMB/RaLars) or W_t (TAdam)
  bool has_scalar = false;
  // AdamP: how many steps projected / did not.
  int projected = 0;
  int not_projected = 0;
};

Vec& buf(NState& s, const std::string& key, size_t n) {
  auto& v = s.b[key];
  if (v.empty()) v.assign(n, 0.0);
  return v;
}

double norm(const Vec& x) {
  double acc = 0.0;
  for (double e : x) acc += e * e;
  return std::sqrt(acc);
}
double dot(const Vec& x, const Vec& y) {
  double acc = 0.0;
  for (size_t i = 0; i < x.size(); ++i) acc += x[i] * y[i];
  return acc;
}
double clamp(double x, double lo, double hi) { return std::min(std::max(x, lo), hi); }

using NaiveFn = std::function<void(Vec& p, const Vec& g, NState& s)>;
using GradFn = std::function<torch::Tensor(int, size_t, const torch::Tensor&, at::Generator&)>;
using StateCheck =
    std::function<void(const torch::optim::OptimizerParamState&, const NState&, const std::string&)>;
using Factory =
    std::function<std::unique_ptr<torch::optim::Optimizer>(std::vector<torch::Tensor>)>;

const std::vector<double> kGradScale = {1.0, 3.0, 0.2, 0.5, 2.0, 0.1, 1.0, 0.7};

// Runs `steps` steps of the optimizer and of the naive update on four
// parameters: 0-d, [1] (the 0-d one's value and gradients), [3,4,5], [2,3].
std::vector<NState> run_case(const Factory& make, const NaiveFn& naive, const StateCheck& check,
                             int steps = 7, const GradFn& grad_fn = {}, double param_scale = 1.0,
                             uint64_t seed = 7) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const auto opts = torch::TensorOptions().dtype(torch::kDouble);
  auto p0 = at::randn({}, gen, opts).mul_(param_scale);
  auto p1 = p0.reshape({1}).clone();
  auto p2 = at::randn({3, 4, 5}, gen, opts).mul_(param_scale);
  auto p3 = at::randn({2, 3}, gen, opts).mul_(param_scale);
  std::vector<torch::Tensor> params = {p0, p1, p2, p3};
  for (auto& p : params) p.set_requires_grad(true);

  std::vector<Vec> naive_p;
  for (const auto& p : params) naive_p.push_back(to_vec(p));
  std::vector<NState> states(params.size());

  auto opt = make(params);
  for (int k = 0; k < steps; ++k) {
    std::vector<torch::Tensor> grads(params.size());
    for (size_t i = 0; i < params.size(); ++i) {
      if (i == 1) {
        grads[1] = grads[0].reshape({1}).clone();
        continue;
      }
      grads[i] = grad_fn ? grad_fn(k, i, params[i].detach(), gen)
                         : at::randn(params[i].sizes(), gen, opts)
                               .mul_(kGradScale[static_cast<size_t>(k) % kGradScale.size()]);
    }
    std::vector<torch::Tensor> grad_copies;
    for (size_t i = 0; i < params.size(); ++i) {
      params[i].mutable_grad() = grads[i];
      grad_copies.push_back(grads[i].clone());
    }
    opt->step();
    for (size_t i = 0; i < params.size(); ++i) {
      // The caller's gradients are never written (pylocron's LARS writes them).
      EXPECT_TRUE(params[i].grad().is_same(grads[i]));
      EXPECT_TRUE(torch::equal(params[i].grad(), grad_copies[i])) << "grad of param " << i;
      naive(naive_p[i], to_vec(grads[i]), states[i]);
      const std::string what =
          "step " + std::to_string(k + 1) + " param " + std::to_string(i);
      expect_close(params[i], naive_p[i], what);
      auto it = opt->state().find(params[i].unsafeGetTensorImpl());
      EXPECT_TRUE(it != opt->state().end()) << what;
      if (it != opt->state().end() && check) check(*it->second, states[i], what);
    }
  }
  // A 0-d parameter behaves as the same value in a one-element tensor.
  EXPECT_TRUE(torch::equal(params[0].detach().reshape({1}), params[1].detach()));
  return states;
}

// ---- LARS -------------------------------------------------------------------

struct LarsCfg {
  double lr, momentum, dampening, wd;
  bool nesterov;
  std::optional<std::pair<double, double>> clip;
};

NaiveFn naive_lars(LarsCfg c) {
  return [c](Vec& p, const Vec& g, NState& s) {
    const size_t n = p.size();
    const double pn = norm(p);
    const double denom = norm(g) + c.wd * pn;
    const double phi = c.clip ? clamp(pn, c.clip->first, c.clip->second) : pn;
    const double local = (phi == 0.0 || denom == 0.0) ? 1.0 : phi / denom;
    Vec d(n), u(n);
    for (size_t i = 0; i < n; ++i) d[i] = g[i] + c.wd * p[i];
    if (c.momentum != 0.0) {
      auto& b = s.b["momentum_buffer"];
      if (b.empty()) {
        b = d;
      } else {
        for (size_t i = 0; i < n; ++i) b[i] = c.momentum * b[i] + (1.0 - c.dampening) * d[i];
      }
      for (size_t i = 0; i < n; ++i) u[i] = c.nesterov ? d[i] + c.momentum * b[i] : b[i];
    } else {
      u = d;
    }
    for (size_t i = 0; i < n; ++i) p[i] -= c.lr * local * u[i];
    s.scalar = local;
  };
}

void lars_case(LarsCfg c) {
  auto options = ho::LARSOptions(c.lr)
                     .momentum(c.momentum)
                     .dampening(c.dampening)
                     .weight_decay(c.wd)
                     .nesterov(c.nesterov);
  if (c.clip) options.scale_clip(std::make_tuple(c.clip->first, c.clip->second));
  run_case(
      [options](auto params) { return std::make_unique<ho::LARS>(params, options); },
      naive_lars(c),
      [c](const torch::optim::OptimizerParamState& st, const NState& ns, const std::string& what) {
        const auto& s = static_cast<const ho::LARSParamState&>(st);
        expect_close_scalar(s.local_lr(), ns.scalar, what + " local_lr");
        if (c.momentum != 0.0) {
          expect_close(s.momentum_buffer(), ns.b.at("momentum_buffer"), what + " momentum_buffer");
        } else {
          EXPECT_FALSE(s.momentum_buffer().defined()) << what;
        }
      });
}

TEST(Math, LarsNesterovClipWeightDecay) {
  lars_case({0.1, 0.9, 0.0, 1e-2, true, std::make_pair(0.5, 2.0)});
}
TEST(Math, LarsDampening) { lars_case({0.05, 0.8, 0.3, 0.0, false, std::nullopt}); }
TEST(Math, LarsNoMomentum) { lars_case({0.1, 0.0, 0.0, 5e-3, false, std::nullopt}); }

// ---- LAMB -------------------------------------------------------------------

struct LambCfg {
  double lr, b1, b2, eps, wd;
  std::optional<std::pair<double, double>> clip;  // none: (0, 10)
};

NaiveFn naive_lamb(LambCfg c) {
  return [c](Vec& p, const Vec& g, NState& s) {
    const size_t n = p.size();
    s.t += 1;
    auto& m = buf(s, "exp_avg", n);
    auto& v = buf(s, "exp_avg_sq", n);
    Vec u(n);
    for (size_t i = 0; i < n; ++i) {
      m[i] = c.b1 * m[i] + (1 - c.b1) * g[i];
      v[i] = c.b2 * v[i] + (1 - c.b2) * g[i] * g[i];
      u[i] = m[i] / (std::sqrt(v[i]) + c.eps) + c.wd * p[i];
    }
    const auto clip = c.clip.value_or(std::make_pair(0.0, 10.0));
    const double phi = clamp(norm(p), clip.first, clip.second);
    const double un = norm(u);
    const double local = (phi == 0.0 || un == 0.0) ? 1.0 : phi / un;
    for (size_t i = 0; i < n; ++i) p[i] -= c.lr * local * u[i];
    s.scalar = local;
  };
}

void lamb_case(LambCfg c, double param_scale) {
  auto options = ho::LAMBOptions(c.lr).betas({c.b1, c.b2}).eps(c.eps).weight_decay(c.wd);
  if (c.clip) options.scale_clip(std::make_tuple(c.clip->first, c.clip->second));
  run_case(
      [options](auto params) { return std::make_unique<ho::LAMB>(params, options); },
      naive_lamb(c),
      [](const torch::optim::OptimizerParamState& st, const NState& ns, const std::string& what) {
        const auto& s = static_cast<const ho::LAMBParamState&>(st);
        EXPECT_EQ(s.step(), ns.t) << what;
        expect_close_scalar(s.local_lr(), ns.scalar, what + " local_lr");
        expect_close(s.exp_avg_sq(), ns.b.at("exp_avg_sq"), what + " exp_avg_sq");
      },
      7, {}, param_scale);
}

TEST(Math, LambClipWeightDecay) {
  lamb_case({0.05, 0.8, 0.95, 1e-6, 1e-2, std::make_pair(0.5, 3.0)}, 1.0);
}
// Large parameters: the default clip (0, 10) bounds ||p||.
TEST(Math, LambDefaultClip) { lamb_case({0.02, 0.9, 0.999, 1e-8, 0.0, std::nullopt}, 3.0); }

// ---- RaLars -----------------------------------------------------------------

struct RaLarsCfg {
  double lr, b1, b2, eps, wd;
  bool force;
  std::optional<std::pair<double, double>> clip;
};

NaiveFn naive_ralars(RaLarsCfg c, int* rectified) {
  return [c, rectified](Vec& p, const Vec& g, NState& s) {
    const size_t n = p.size();
    s.t += 1;
    const double t = static_cast<double>(s.t);
    auto& m = buf(s, "exp_avg", n);
    auto& v = buf(s, "exp_avg_sq", n);
    for (size_t i = 0; i < n; ++i) {
      m[i] = c.b1 * m[i] + (1 - c.b1) * g[i];
      v[i] = c.b2 * v[i] + (1 - c.b2) * g[i] * g[i];
    }
    const double bc1 = 1 - std::pow(c.b1, t);
    const double bc2 = 1 - std::pow(c.b2, t);
    const double sma_inf = 2 / (1 - c.b2) - 1;
    const double sma_t = sma_inf - 2 * t * std::pow(c.b2, t) / bc2;
    Vec u(n);
    for (size_t i = 0; i < n; ++i) {
      const double adaptive = (m[i] / bc1) / (std::sqrt(v[i] / bc2) + c.eps);
      if (sma_t > 4) {
        const double r = std::sqrt((sma_t - 4) * (sma_t - 2) * sma_inf /
                                   ((sma_inf - 4) * (sma_inf - 2) * sma_t));
        u[i] = r * adaptive;
      } else {
        u[i] = c.force ? adaptive : m[i] / bc1;
      }
      u[i] += c.wd * p[i];
    }
    if (sma_t > 4) ++*rectified;
    const auto clip = c.clip.value_or(std::make_pair(0.0, 10.0));
    const double phi = clamp(norm(p), clip.first, clip.second);
    const double un = norm(u);
    const double local = (phi == 0.0 || un == 0.0) ? 1.0 : phi / un;
    for (size_t i = 0; i < n; ++i) p[i] -= c.lr * local * u[i];
    s.scalar = local;
  };
}

void ralars_case(RaLarsCfg c) {
  auto options = ho::RaLarsOptions(c.lr)
                     .betas({c.b1, c.b2})
                     .eps(c.eps)
                     .weight_decay(c.wd)
                     .force_adaptive_momentum(c.force);
  if (c.clip) options.scale_clip(std::make_tuple(c.clip->first, c.clip->second));
  int rectified = 0;
  run_case(
      [options](auto params) { return std::make_unique<ho::RaLars>(params, options); },
      naive_ralars(c, &rectified),
      [](const torch::optim::OptimizerParamState& st, const NState& ns, const std::string& what) {
        const auto& s = static_cast<const ho::RaLarsParamState&>(st);
        EXPECT_EQ(s.step(), ns.t) << what;
        expect_close_scalar(s.local_lr(), ns.scalar, what + " local_lr");
        expect_close(s.exp_avg(), ns.b.at("exp_avg"), what + " exp_avg");
      });
  // Both branches (rectified or not) were exercised.
  EXPECT_GT(rectified, 0);
  EXPECT_LT(rectified, 7 * 4);
}

TEST(Math, RaLarsWeightDecay) { ralars_case({0.05, 0.9, 0.9, 1e-8, 2e-2, false, std::nullopt}); }
TEST(Math, RaLarsForceAdaptiveClip) {
  ralars_case({0.05, 0.8, 0.9, 1e-6, 0.0, true, std::make_pair(0.1, 1.0)});
}
TEST(Math, RaLarsDefaultBetas) { ralars_case({0.05, 0.9, 0.999, 1e-8, 0.0, false, std::nullopt}); }

// ---- TAdam ------------------------------------------------------------------

struct TAdamCfg {
  double lr, b1, b2, eps, wd;
  bool amsgrad;
  std::optional<double> dof;
};

NaiveFn naive_tadam(TAdamCfg c) {
  return [c](Vec& p, const Vec& g, NState& s) {
    const size_t n = p.size();
    if (s.t == 0) s.scalar = c.b1 / (1 - c.b1);
    s.t += 1;
    const double t = static_cast<double>(s.t);
    auto& m = buf(s, "exp_avg", n);
    auto& v = buf(s, "exp_avg_sq", n);
    auto& vmax = buf(s, "max_exp_avg_sq", n);
    Vec gd(n);
    for (size_t i = 0; i < n; ++i) gd[i] = g[i] + c.wd * p[i];
    const double d = static_cast<double>(n);
    const double dof = c.dof.value_or(d);
    double maha = 0.0;
    for (size_t i = 0; i < n; ++i) maha += (gd[i] - m[i]) * (gd[i] - m[i]) / (v[i] + c.eps);
    const double w = (dof + d) / (dof + maha);
    double& W = s.scalar;
    for (size_t i = 0; i < n; ++i) m[i] = W / (W + w) * m[i] + w / (W + w) * gd[i];
    W = W * (2 * c.b1 - 1) / c.b1 + w;
    const double bc1 = 1 - std::pow(c.b1, t);
    const double bc2 = 1 - std::pow(c.b2, t);
    for (size_t i = 0; i < n; ++i) {
      v[i] = c.b2 * v[i] + (1 - c.b2) * gd[i] * gd[i];
      vmax[i] = std::max(vmax[i], v[i]);
      const double denom = std::sqrt(c.amsgrad ? vmax[i] : v[i]) / std::sqrt(bc2) + c.eps;
      p[i] -= (c.lr / bc1) * m[i] / denom;
    }
  };
}

void tadam_case(TAdamCfg c) {
  auto options = ho::TAdamOptions(c.lr)
                     .betas({c.b1, c.b2})
                     .eps(c.eps)
                     .weight_decay(c.wd)
                     .amsgrad(c.amsgrad)
                     .dof(c.dof);
  run_case(
      [options](auto params) { return std::make_unique<ho::TAdam>(params, options); },
      naive_tadam(c),
      [c](const torch::optim::OptimizerParamState& st, const NState& ns, const std::string& what) {
        const auto& s = static_cast<const ho::TAdamParamState&>(st);
        EXPECT_EQ(s.step(), ns.t) << what;
        expect_close_scalar(s.W_t(), ns.scalar, what + " W_t");
        expect_close(s.exp_avg(), ns.b.at("exp_avg"), what + " exp_avg");
        if (c.amsgrad) {
          expect_close(s.max_exp_avg_sq(), ns.b.at("max_exp_avg_sq"), what + " max_exp_avg_sq");
        } else {
          EXPECT_FALSE(s.max_exp_avg_sq().defined()) << what;
        }
      });
}

TEST(Math, TAdamAmsgradDofWeightDecay) { tadam_case({0.05, 0.85, 0.99, 1e-8, 1e-2, true, 3.0}); }
TEST(Math, TAdamDefaultDof) { tadam_case({0.1, 0.9, 0.999, 1e-6, 0.0, false, std::nullopt}); }

// ---- AdaBelief --------------------------------------------------------------

struct AdamCfg {
  double lr, b1, b2, eps, wd;
  bool amsgrad;
};

NaiveFn naive_adabelief(AdamCfg c) {
  return [c](Vec& p, const Vec& g, NState& s) {
    const size_t n = p.size();
    s.t += 1;
    const double t = static_cast<double>(s.t);
    auto& m = buf(s, "exp_avg", n);
    auto& sq = buf(s, "exp_avg_sq", n);
    auto& smax = buf(s, "max_exp_avg_sq", n);
    const double bc1 = 1 - std::pow(c.b1, t);
    const double bc2 = 1 - std::pow(c.b2, t);
    for (size_t i = 0; i < n; ++i) {
      const double gd = g[i] + c.wd * p[i];
      m[i] = c.b1 * m[i] + (1 - c.b1) * gd;
      sq[i] = c.b2 * sq[i] + (1 - c.b2) * (gd - m[i]) * (gd - m[i]);
      smax[i] = std::max(smax[i], sq[i]);
      const double denom = std::sqrt(c.amsgrad ? smax[i] : sq[i]) / std::sqrt(bc2) + c.eps;
      p[i] -= (c.lr / bc1) * m[i] / denom;
    }
  };
}

void adabelief_case(AdamCfg c) {
  auto options = ho::AdaBeliefOptions(c.lr)
                     .betas({c.b1, c.b2})
                     .eps(c.eps)
                     .weight_decay(c.wd)
                     .amsgrad(c.amsgrad);
  run_case(
      [options](auto params) { return std::make_unique<ho::AdaBelief>(params, options); },
      naive_adabelief(c),
      [c](const torch::optim::OptimizerParamState& st, const NState& ns, const std::string& what) {
        const auto& s = static_cast<const ho::AdaBeliefParamState&>(st);
        EXPECT_EQ(s.step(), ns.t) << what;
        expect_close(s.exp_avg_sq(), ns.b.at("exp_avg_sq"), what + " exp_avg_sq");
        if (c.amsgrad) {
          expect_close(s.max_exp_avg_sq(), ns.b.at("max_exp_avg_sq"), what + " max_exp_avg_sq");
        }
      });
}

TEST(Math, AdaBeliefAmsgradWeightDecay) { adabelief_case({0.05, 0.8, 0.9, 1e-6, 1e-2, true}); }
TEST(Math, AdaBeliefDefaults) { adabelief_case({0.1, 0.9, 0.999, 1e-8, 0.0, false}); }

// ---- AdamP ------------------------------------------------------------------

NaiveFn naive_adamp(AdamCfg c, double delta, int* projected, int* kept) {
  return [c, delta, projected, kept](Vec& p, const Vec& g, NState& s) {
    const size_t n = p.size();
    s.t += 1;
    const double t = static_cast<double>(s.t);
    auto& m = buf(s, "exp_avg", n);
    auto& v = buf(s, "exp_avg_sq", n);
    auto& vmax = buf(s, "max_exp_avg_sq", n);
    const double bc1 = 1 - std::pow(c.b1, t);
    const double bc2 = 1 - std::pow(c.b2, t);
    Vec gd(n), q(n);
    for (size_t i = 0; i < n; ++i) {
      gd[i] = g[i] + c.wd * p[i];
      m[i] = c.b1 * m[i] + (1 - c.b1) * gd[i];
      v[i] = c.b2 * v[i] + (1 - c.b2) * gd[i] * gd[i];
      vmax[i] = std::max(vmax[i], v[i]);
      const double denom = std::sqrt(c.amsgrad ? vmax[i] : v[i]) / std::sqrt(bc2) + c.eps;
      q[i] = (m[i] / bc1) / denom;
    }
    const double cosine =
        dot(p, gd) / (std::max(norm(p), 1e-8) * std::max(norm(gd), 1e-8));
    if (cosine < delta / std::sqrt(static_cast<double>(n))) {
      ++*projected;
      const double pn = norm(p) + c.eps;
      Vec unit(n);
      for (size_t i = 0; i < n; ++i) unit[i] = p[i] / pn;
      const double nq = dot(unit, q);
      for (size_t i = 0; i < n; ++i) q[i] -= nq * unit[i];
    } else {
      ++*kept;
    }
    for (size_t i = 0; i < n; ++i) p[i] -= c.lr * q[i];
  };
}

// Gradients that make both branches happen: the [3,4,5] parameter gets a
// gradient orthogonal to it, the [2,3] one a gradient along it.
torch::Tensor adamp_grad(int k, size_t i, const torch::Tensor& p, at::Generator& gen) {
  auto noise = at::randn(p.sizes(), gen, p.options())
                   .mul_(kGradScale[static_cast<size_t>(k) % kGradScale.size()]);
  if (i == 2) return noise - p * ((noise * p).sum() / (p * p).sum());
  if (i == 3) return p * 0.7 + noise * 0.1;
  return noise;
}

void adamp_case(AdamCfg c, double delta) {
  auto options = ho::AdamPOptions(c.lr)
                     .betas({c.b1, c.b2})
                     .eps(c.eps)
                     .weight_decay(c.wd)
                     .amsgrad(c.amsgrad)
                     .delta(delta);
  int projected = 0;
  int kept = 0;
  run_case(
      [options](auto params) { return std::make_unique<ho::AdamP>(params, options); },
      naive_adamp(c, delta, &projected, &kept),
      [c](const torch::optim::OptimizerParamState& st, const NState& ns, const std::string& what) {
        const auto& s = static_cast<const ho::AdamPParamState&>(st);
        EXPECT_EQ(s.step(), ns.t) << what;
        expect_close(s.exp_avg(), ns.b.at("exp_avg"), what + " exp_avg");
        if (c.amsgrad) {
          expect_close(s.max_exp_avg_sq(), ns.b.at("max_exp_avg_sq"), what + " max_exp_avg_sq");
        }
      },
      7, adamp_grad);
  EXPECT_GT(projected, 0);
  EXPECT_GT(kept, 0);
}

TEST(Math, AdamPDefaults) { adamp_case({0.05, 0.9, 0.999, 1e-8, 0.0, false}, 0.1); }
TEST(Math, AdamPAmsgradWeightDecayDelta) { adamp_case({0.05, 0.85, 0.95, 1e-6, 1e-2, true}, 0.5); }

// ---- Adan -------------------------------------------------------------------

struct AdanCfg {
  double lr, b1, b2, b3, eps, wd;
  bool amsgrad;
};

NaiveFn naive_adan(AdanCfg c) {
  return [c](Vec& p, const Vec& g, NState& s) {
    const size_t n = p.size();
    s.t += 1;
    const double t = static_cast<double>(s.t);
    auto& m = buf(s, "exp_avg", n);
    auto& v = buf(s, "exp_avg_sq", n);
    auto& nn = buf(s, "exp_avg_delta", n);
    auto& nmax = buf(s, "max_exp_avg_delta", n);
    auto& prev = buf(s, "prev_grad", n);
    const double bc1 = 1 - std::pow(c.b1, t);
    const double bc2 = 1 - std::pow(c.b2, t);
    const double bc3 = 1 - std::pow(c.b3, t);
    for (size_t i = 0; i < n; ++i) {
      const double gd = g[i] + c.wd * p[i];
      // Unlike pylocron: the first difference is zero, later ones use the previous g'.
      const double diff = s.t == 1 ? 0.0 : gd - prev[i];
      m[i] = c.b1 * m[i] + (1 - c.b1) * gd;
      v[i] = c.b2 * v[i] + (1 - c.b2) * diff;
      const double corrected = gd + c.b2 * diff;
      nn[i] = c.b3 * nn[i] + (1 - c.b3) * corrected * corrected;
      nmax[i] = std::max(nmax[i], nn[i]);
      prev[i] = gd;
      const double denom = std::sqrt(c.amsgrad ? nmax[i] : nn[i]) / std::sqrt(bc3) + c.eps;
      p[i] -= c.lr * (m[i] / bc1 + c.b2 * v[i] / bc2) / denom;
      if (c.wd != 0.0) p[i] /= 1 + c.wd * c.lr;
    }
  };
}

void adan_case(AdanCfg c) {
  auto options = ho::AdanOptions(c.lr)
                     .betas({c.b1, c.b2, c.b3})
                     .eps(c.eps)
                     .weight_decay(c.wd)
                     .amsgrad(c.amsgrad);
  run_case(
      [options](auto params) { return std::make_unique<ho::Adan>(params, options); },
      naive_adan(c),
      [c](const torch::optim::OptimizerParamState& st, const NState& ns, const std::string& what) {
        const auto& s = static_cast<const ho::AdanParamState&>(st);
        EXPECT_EQ(s.step(), ns.t) << what;
        expect_close(s.prev_grad(), ns.b.at("prev_grad"), what + " prev_grad");
        expect_close(s.exp_avg_sq(), ns.b.at("exp_avg_sq"), what + " exp_avg_sq");
        expect_close(s.exp_avg_delta(), ns.b.at("exp_avg_delta"), what + " exp_avg_delta");
        if (c.amsgrad) {
          expect_close(s.max_exp_avg_delta(), ns.b.at("max_exp_avg_delta"),
                       what + " max_exp_avg_delta");
        }
      });
}

TEST(Math, AdanAmsgradWeightDecay) { adan_case({0.05, 0.9, 0.8, 0.95, 1e-8, 2e-2, true}); }
TEST(Math, AdanDefaults) { adan_case({0.1, 0.98, 0.92, 0.99, 1e-8, 0.0, false}); }

// ---- AdEMAMix ---------------------------------------------------------------

struct AdEMAMixCfg {
  double lr, b1, b2, b3, alpha, eps, wd;
};

NaiveFn naive_ademamix(AdEMAMixCfg c) {
  return [c](Vec& p, const Vec& g, NState& s) {
    const size_t n = p.size();
    s.t += 1;
    const double t = static_cast<double>(s.t);
    auto& m1 = buf(s, "exp_avg", n);
    auto& m2 = buf(s, "exp_avg_slow", n);
    auto& nu = buf(s, "exp_avg_sq", n);
    const double bc1 = 1 - std::pow(c.b1, t);
    const double bc2 = 1 - std::pow(c.b2, t);
    for (size_t i = 0; i < n; ++i) {
      const double gd = g[i] + c.wd * p[i];
      m1[i] = c.b1 * m1[i] + (1 - c.b1) * gd;
      nu[i] = c.b2 * nu[i] + (1 - c.b2) * gd * gd;
      m2[i] = c.b3 * m2[i] + (1 - c.b3) * gd;
      p[i] -= c.lr * (m1[i] / bc1 + c.alpha * m2[i]) / (std::sqrt(nu[i]) / std::sqrt(bc2) + c.eps);
    }
  };
}

void ademamix_case(AdEMAMixCfg c) {
  auto options = ho::AdEMAMixOptions(c.lr)
                     .betas({c.b1, c.b2, c.b3})
                     .alpha(c.alpha)
                     .eps(c.eps)
                     .weight_decay(c.wd);
  run_case(
      [options](auto params) { return std::make_unique<ho::AdEMAMix>(params, options); },
      naive_ademamix(c),
      [](const torch::optim::OptimizerParamState& st, const NState& ns, const std::string& what) {
        const auto& s = static_cast<const ho::AdEMAMixParamState&>(st);
        EXPECT_EQ(s.step(), ns.t) << what;
        expect_close(s.exp_avg_slow(), ns.b.at("exp_avg_slow"), what + " exp_avg_slow");
        expect_close(s.exp_avg_sq(), ns.b.at("exp_avg_sq"), what + " exp_avg_sq");
      });
}

TEST(Math, AdEMAMixAlphaWeightDecay) { ademamix_case({0.05, 0.8, 0.9, 0.99, 2.0, 1e-6, 1e-2}); }
TEST(Math, AdEMAMixDefaults) { ademamix_case({0.02, 0.9, 0.999, 0.9999, 5.0, 1e-8, 0.0}); }

// ---- float32 parameters follow the same math ----------------------------------

// The same LAMB run in float32 stays within float accuracy of the double one.
TEST(Math, Float32MatchesDouble) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
  auto pd = at::randn({4, 5}, gen, torch::kDouble).set_requires_grad(true);
  auto pf = pd.detach().to(torch::kFloat).set_requires_grad(true);
  ho::LAMB od({pd}, ho::LAMBOptions(0.05).weight_decay(1e-2));
  ho::LAMB of({pf}, ho::LAMBOptions(0.05).weight_decay(1e-2));
  for (int k = 0; k < 5; ++k) {
    auto g = at::randn({4, 5}, gen, torch::kDouble);
    pd.mutable_grad() = g;
    pf.mutable_grad() = g.to(torch::kFloat);
    od.step();
    of.step();
  }
  EXPECT_EQ(pf.scalar_type(), torch::kFloat);
  EXPECT_TRUE(torch::allclose(pf.detach().to(torch::kDouble), pd.detach(), 1e-4, 1e-5));
}

}  // namespace
}  // namespace holocron_test
