// See sampler.h. Compile with -ffp-contract=off (CMakeLists.txt sets it for this file).
#include "sampler.h"

#include <algorithm>
#include <cmath>

namespace mdship {

namespace {

constexpr double kPi = 3.141592653589793;  // == Python's math.pi

uint64_t splitmix64(uint64_t& state) {
  state += 0x9E3779B97F4A7C15ull;
  uint64_t z = state;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

bool is_sampler(const std::string& s) { return s == "ddim" || s == "one_step"; }

// torch.linspace(start, end, steps, dtype=float64) on CPU: the first half counts up from start,
// the second half counts down from end (scalar kernel; the vectorised kernel can differ by an ulp).
std::vector<double> linspace(double start, double end, int steps) {
  std::vector<double> out(static_cast<size_t>(steps));
  if (steps == 1) {
    out[0] = start;
    return out;
  }
  const double step = (end - start) / (steps - 1);
  const int halfway = steps / 2;
  for (int i = 0; i < steps; ++i)
    out[i] = i < halfway ? start + step * i : end - step * (steps - i - 1);
  return out;
}

}  // namespace

std::vector<std::string> SchedulerConfig::validate() const {
  std::vector<std::string> problems;
  if (prediction_type != "epsilon" && prediction_type != "v_prediction" && prediction_type != "sample")
    problems.push_back("prediction_type '" + prediction_type + "' is not one of epsilon, v_prediction, sample");
  if (beta_schedule != "scaled_linear" && beta_schedule != "linear" && beta_schedule != "squaredcos_cap_v2")
    problems.push_back("beta_schedule '" + beta_schedule + "' is not one of scaled_linear, linear, squaredcos_cap_v2");
  if (num_train_timesteps < 1) problems.push_back("num_train_timesteps must be positive");
  if (!is_sampler(default_sampler))
    problems.push_back("default_sampler '" + default_sampler + "' is not one of ddim, one_step");
  if (default_steps < 1 || default_steps > num_train_timesteps)
    problems.push_back("default_steps " + std::to_string(default_steps) + " is not in 1.." +
                       std::to_string(num_train_timesteps));
  if (default_guidance < 1.0) problems.push_back("default_guidance is below 1.0");
  for (int64_t t : default_timesteps)
    if (t < 0 || t >= num_train_timesteps) {
      problems.push_back("default_timesteps must lie in 0.." + std::to_string(num_train_timesteps - 1));
      break;
    }
  return problems;
}

std::vector<double> SchedulerConfig::alphas_cumprod() const {
  const int T = num_train_timesteps;
  std::vector<double> betas(static_cast<size_t>(T));
  if (beta_schedule == "scaled_linear") {
    betas = linspace(std::pow(beta_start, 0.5), std::pow(beta_end, 0.5), T);
    for (double& b : betas) b = b * b;  // torch's pow(x, 2) is x * x
  } else if (beta_schedule == "linear") {
    betas = linspace(beta_start, beta_end, T);
  } else if (beta_schedule == "squaredcos_cap_v2") {
    auto alpha_bar = [](double t) {
      const double c = std::cos((t + 0.008) / 1.008 * kPi / 2);
      return c * c;  // Python's x ** 2 on a float is pow(x, 2.0), exact as x * x
    };
    for (int i = 0; i < T; ++i) {
      const double b = 1 - alpha_bar(static_cast<double>(i + 1) / T) / alpha_bar(static_cast<double>(i) / T);
      betas[i] = std::min(b, 0.999);
    }
  } else {
    throw SamplerError("beta_schedule '" + beta_schedule + "' is not one of scaled_linear, linear, squaredcos_cap_v2");
  }
  std::vector<double> out(static_cast<size_t>(T));
  double acc = 1.0;
  for (int i = 0; i < T; ++i) {
    acc *= 1.0 - betas[i];
    out[i] = acc;
  }
  return out;
}

std::vector<int64_t> SchedulerConfig::timesteps(int steps) const {
  if (!default_timesteps.empty() && static_cast<size_t>(steps) == default_timesteps.size()) return default_timesteps;
  const int T = num_train_timesteps;
  std::vector<int64_t> out;
  out.reserve(static_cast<size_t>(steps));
  for (int i = 0; i < steps; ++i) {
    // int(round(T - i * T / steps)) - 1; Python's round() is half-to-even, as nearbyint by default.
    const double v = static_cast<double>(T) - static_cast<double>(static_cast<int64_t>(i) * T) / steps;
    out.push_back(static_cast<int64_t>(std::nearbyint(v)) - 1);
  }
  return out;
}

std::vector<float> initial_latent(uint64_t seed, int resolution, int batch) {
  const int size = resolution / kVaeScale;
  const size_t count = static_cast<size_t>(batch) * kLatentChannels * size * size;
  std::vector<float> out;
  out.reserve(count + 1);
  uint64_t state = seed;
  while (out.size() < count) {
    const uint64_t a = splitmix64(state);
    const uint64_t b = splitmix64(state);
    const double u1 = 1.0 - static_cast<double>(a >> 11) * (1.0 / 9007199254740992.0);  // (0, 1]
    const double u2 = static_cast<double>(b >> 11) * (1.0 / 9007199254740992.0);
    const double radius = std::sqrt(-2.0 * std::log(u1));
    const double angle = 2.0 * kPi * u2;
    out.push_back(static_cast<float>(radius * std::cos(angle)));
    out.push_back(static_cast<float>(radius * std::sin(angle)));
  }
  out.resize(count);
  return out;
}

std::vector<uint8_t> to_uint8_hwc(const float* chw, int channels, int height, int width) {
  const size_t plane = static_cast<size_t>(height) * width;
  std::vector<uint8_t> out(plane * channels);
  for (int c = 0; c < channels; ++c)
    for (size_t p = 0; p < plane; ++p) {
      float x = chw[c * plane + p];
      if (std::isnan(x)) x = -1.0f;  // torch leaves NaN to an undefined uint8 cast; pick black
      x = std::min(1.0f, std::max(-1.0f, x));
      const float v = std::nearbyint((x + 1.0f) * 127.5f);
      out[p * channels + c] = static_cast<uint8_t>(v);
    }
  return out;
}

SamplerSettings resolve_settings(const SchedulerConfig& cfg, const std::string& sampler, int steps, double guidance,
                                 bool batched_guidance) {
  SamplerSettings s;
  s.sampler = sampler.empty() ? cfg.default_sampler : sampler;
  s.steps = steps > 0 ? steps : cfg.default_steps;
  s.guidance = guidance;
  s.batched_guidance = batched_guidance;
  if (!is_sampler(s.sampler)) throw SamplerError("sampler '" + s.sampler + "' is unknown: expected one of ddim, one_step");
  if (s.sampler == "one_step") s.steps = 1;
  if (s.steps < 1 || s.steps > cfg.num_train_timesteps)
    throw SamplerError("--steps " + std::to_string(s.steps) + " is out of range: expected 1.." +
                       std::to_string(cfg.num_train_timesteps));
  if (!(s.guidance >= 1.0))
    throw SamplerError("--guidance " + std::to_string(s.guidance) +
                       " is below 1.0 (1.0 turns classifier-free guidance off)");
  return s;
}

std::vector<float> guided_prediction(const UNetFn& unet, const std::vector<float>& latent, int64_t t,
                                     const std::vector<float>& context, const std::vector<float>& uncond,
                                     double guidance, bool batched) {
  if (guidance == 1.0 || uncond.empty()) return unet(latent, 1, t, context);
  std::vector<float> pred_uncond, pred_cond;
  if (batched) {
    std::vector<float> both_latent(latent);
    both_latent.insert(both_latent.end(), latent.begin(), latent.end());
    std::vector<float> both_context(uncond);
    both_context.insert(both_context.end(), context.begin(), context.end());
    std::vector<float> both = unet(both_latent, 2, t, both_context);
    if (both.size() != 2 * latent.size())
      throw SamplerError("the UNet returned " + std::to_string(both.size()) + " values for a batch of 2, expected " +
                         std::to_string(2 * latent.size()));
    pred_uncond.assign(both.begin(), both.begin() + static_cast<std::ptrdiff_t>(latent.size()));
    pred_cond.assign(both.begin() + static_cast<std::ptrdiff_t>(latent.size()), both.end());
  } else {
    pred_uncond = unet(latent, 1, t, uncond);
    pred_cond = unet(latent, 1, t, context);
  }
  const float g = static_cast<float>(guidance);
  std::vector<float> out(latent.size());
  for (size_t i = 0; i < out.size(); ++i) {
    const float diff = pred_cond[i] - pred_uncond[i];
    const float scaled = g * diff;
    out[i] = pred_uncond[i] + scaled;
  }
  return out;
}

std::vector<float> sample(const SchedulerConfig& cfg, const UNetFn& unet, const std::vector<float>& latent,
                          const std::vector<float>& context, const std::vector<float>& uncond,
                          const SamplerSettings& settings, const std::function<void()>& progress) {
  const std::vector<double> alphas = cfg.alphas_cumprod();
  const std::vector<int64_t> timesteps = settings.sampler == "one_step"
                                             ? std::vector<int64_t>{cfg.num_train_timesteps - 1}
                                             : cfg.timesteps(settings.steps);
  const size_t n = latent.size();
  std::vector<float> x(latent), x0(n), eps(n);
  for (size_t i = 0; i < timesteps.size(); ++i) {
    const int64_t t = timesteps[i];
    if (t < 0 || t >= static_cast<int64_t>(alphas.size()))
      throw SamplerError("timestep " + std::to_string(t) + " is outside the schedule");
    const std::vector<float> pred =
        guided_prediction(unet, x, t, context, uncond, settings.guidance, settings.batched_guidance);
    if (pred.size() != n)
      throw SamplerError("the UNet returned " + std::to_string(pred.size()) + " values, expected " + std::to_string(n));
    // predicted_clean_and_noise: scalars in double, rounded to float where they meet the tensors.
    const double alpha_bar = alphas[static_cast<size_t>(t)];
    const double a = std::pow(alpha_bar, 0.5), s = std::pow(1.0 - alpha_bar, 0.5);
    const float fa = static_cast<float>(a), fs = static_cast<float>(s);
    if (cfg.prediction_type == "epsilon") {
      for (size_t k = 0; k < n; ++k) {
        eps[k] = pred[k];
        const float se = fs * eps[k];
        const float num = x[k] - se;
        x0[k] = num / fa;
      }
    } else if (cfg.prediction_type == "v_prediction") {
      for (size_t k = 0; k < n; ++k) {
        const float ax = fa * x[k], sp = fs * pred[k];
        x0[k] = ax - sp;
        const float sx = fs * x[k], ap = fa * pred[k];
        eps[k] = sx + ap;
      }
    } else if (cfg.prediction_type == "sample") {
      for (size_t k = 0; k < n; ++k) {
        x0[k] = pred[k];
        if (s > 0) {
          const float ax = fa * x0[k];
          const float num = x[k] - ax;
          eps[k] = num / fs;
        } else {
          eps[k] = 0.0f;
        }
      }
    } else {
      throw SamplerError("prediction_type '" + cfg.prediction_type + "' is not one of epsilon, v_prediction, sample");
    }
    if (i + 1 == timesteps.size()) {
      x = x0;
    } else {
      const double a_prev = alphas[static_cast<size_t>(timesteps[i + 1])];
      const float ca = static_cast<float>(std::pow(a_prev, 0.5));
      const float ce = static_cast<float>(std::pow(1.0 - a_prev, 0.5));
      for (size_t k = 0; k < n; ++k) {
        const float p = ca * x0[k];
        const float q = ce * eps[k];
        x[k] = p + q;
      }
    }
    if (progress) progress();
  }
  return x;
}

}  // namespace mdship
