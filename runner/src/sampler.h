// Initial noise, noise schedule and samplers: the C++ twin of mdship/pipeline.py (initial_latent,
// to_uint8) and mdship/schedulers.py (SchedulerConfig.alphas_cumprod / timesteps,
// predicted_clean_and_noise, guided_prediction, sample).
//
// Arithmetic follows the Python reference operation by operation: the schedule in double
// precision (as the float64 torch tensors), scalars as double then rounded to float where torch
// multiplies a float32 tensor by a Python float, latent updates in float32. This file must be
// compiled without floating-point contraction (-ffp-contract=off) so that no FMA changes a
// rounding. The initial latent is bit-identical to Python's on the same C library (Python's math
// module calls it); another libm may differ in a double's last bit, which after rounding to float32
// changes at most a rare value by one ulp.
#pragma once

#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

namespace mdship {

class SamplerError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

constexpr int kLatentChannels = 8;
constexpr int kVaeScale = 8;

struct SchedulerConfig {
  int num_train_timesteps = 1000;
  std::string beta_schedule = "scaled_linear";  // "scaled_linear" | "linear" | "squaredcos_cap_v2"
  double beta_start = 0.00085;
  double beta_end = 0.012;
  std::string prediction_type = "epsilon";  // "epsilon" | "v_prediction" | "sample"
  std::string default_sampler = "ddim";
  int default_steps = 8;
  double default_guidance = 1.0;
  std::vector<int64_t> default_timesteps;  // empty: trailing spacing

  // Problems with this config, one message each (empty when valid).
  std::vector<std::string> validate() const;
  // Cumulative product of (1 - beta_t), double precision, length num_train_timesteps.
  std::vector<double> alphas_cumprod() const;
  // Sampling timesteps, highest first ("trailing" spacing, or default_timesteps when
  // steps == default_timesteps.size()).
  std::vector<int64_t> timesteps(int steps) const;
};

// SplitMix64 -> 53-bit uniforms -> Box-Muller (double) -> float32, [batch, 8, res/8, res/8].
std::vector<float> initial_latent(uint64_t seed, int resolution, int batch = 1);

// [1,3,H,W] in [-1,1] (CHW planes) -> uint8 HWC: clamp, (x+1)*127.5, round half to even.
std::vector<uint8_t> to_uint8_hwc(const float* chw, int channels, int height, int width);

struct SamplerSettings {
  std::string sampler = "ddim";  // "ddim" | "one_step"
  int steps = 8;
  double guidance = 1.0;
  bool batched_guidance = true;  // CFG as one batch-2 call (true) or two batch-1 calls (false)
  int unet_calls() const { return steps * (guidance == 1.0 ? 1 : 2); }
};

// Like pipeline.SamplerSettings.resolve: validates and fills one_step's single step.
// `steps` <= 0 means "use default_steps". Throws SamplerError with a user-facing message.
SamplerSettings resolve_settings(const SchedulerConfig& cfg, const std::string& sampler, int steps, double guidance,
                                 bool batched_guidance);

// The UNet as a callable: batch samples [batch, C, h, w] at integer timestep t with contexts
// [batch, L, D] -> predictions [batch, C, h, w] (all contiguous float32).
using UNetFn = std::function<std::vector<float>(const std::vector<float>& sample, int batch, int64_t timestep,
                                                const std::vector<float>& context)>;

// One (optionally classifier-free guided) UNet evaluation; uncond may be empty when guidance == 1.
std::vector<float> guided_prediction(const UNetFn& unet, const std::vector<float>& latent, int64_t t,
                                     const std::vector<float>& context, const std::vector<float>& uncond,
                                     double guidance, bool batched);

// Runs the sampler from `latent` (batch 1) to the clean latent (see schedulers.sample).
// `progress` (optional) is called after each step.
std::vector<float> sample(const SchedulerConfig& cfg, const UNetFn& unet, const std::vector<float>& latent,
                          const std::vector<float>& context, const std::vector<float>& uncond,
                          const SamplerSettings& settings, const std::function<void()>& progress = nullptr);

}  // namespace mdship
