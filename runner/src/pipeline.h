// The runner as a library, on the ExecuTorch Module API: what mdship/runtime.py (`mdship run`) does,
// plus the self-test and the benchmark. main.cpp is a thin CLI over it; an app (JNI, Objective-C++)
// calls the same functions.
//
// Generation: tokenize (the bundle's CLIP tokenizer, padded to the text encoder's input length),
// encode the prompt (and "" for classifier-free guidance), start from the portable
// SplitMix64/Box-Muller latent of the seed, run the sampler from scheduler.json with the UNet (CFG
// as one batch-2 call when the UNet program has batch 2, else two batch-1 calls), decode and
// convert to uint8.
//
// Every fault a user can cause throws a std::runtime_error (RunnerError, BundleError, ...) with a
// one-line message.
#pragma once

#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bundle.h"
#include "clip_tokenizer.h"
#include "sampler.h"

namespace mdship {

class RunnerError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Registers the ExecuTorch platform layer (its log lines are hidden unless `verbose`; the last
// error-level one is appended to the runner's error messages) and initialises the runtime; sets XNNPACK's
// weight cache (packed weights shared by the methods of a program) and one XNNPACK workspace shared by every program (they run one at a time).
void init_runtime(bool verbose, bool weight_cache = true);
// Resizes the ExecuTorch thread pool (threads <= 0: leave the default, one thread per core).
void set_threads(int threads);

// Opens a bundle to run it: its manifest against the integrity root (Bundle::open), a backend this
// binary links, then every file against its sha256. verify = false (benchmarks: hashing large
// programs takes seconds) only checks that the programs exist.
Bundle open_bundle(const std::string& dir, bool verify);

// One component's program, loaded through the ExecuTorch Module API (defined in pipeline.cpp, with
// HostTensor, the typed input buffers it takes).
class Program;

// An 8-bit RGB image, rows top to bottom, HWC interleaved.
struct Image {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> rgb;
};

// The text-to-image pipeline over a bundle from open_bundle (which must outlive it).
class Pipeline {
 public:
  // The pipeline at an image size (0: the bundle's default) for a guidance scale (NaN: the recipe's): the UNet
  // method of batch 2 when guidance runs and the bundle has one, else of batch 1, else what it has; the decoder
  // method of that size. A size the bundle does not serve throws RunnerError listing the ones it does.
  explicit Pipeline(const Bundle& bundle, int resolution = 0, double guidance = NAN);
  ~Pipeline();

  Program& program(const std::string& name) { return *programs_.at(name); }
  // The recipe's settings (manifest "sampler") overridden by the caller's: an empty sampler,
  // steps <= 0 or !guidance_given keep the recipe's. guidance_mode: "auto" (batched when the UNet
  // program has batch 2), "batch2" or "two_calls".
  SamplerSettings settings(const std::string& sampler, int steps, double guidance, bool guidance_given,
                           const std::string& guidance_mode = "auto") const;
  // The one-line warning about the prompt's words the bundle's tokenizer spells out ("" when none); the wording
  // of mdship/tokenizer.py unknown_words_warning.
  std::string unknown_words_warning(const std::string& prompt) const;
  // The image for a prompt and seed; `start_out` receives the initial latent.
  Image generate(const std::string& prompt, uint64_t seed, const SamplerSettings& settings,
                 std::vector<float>* start_out = nullptr);

 private:
  Program& text_encoder() { return program("text_encoder"); }
  Program& unet() { return program("unet"); }
  Program& vae_decoder() { return program("vae_decoder"); }
  std::vector<float> encode(const std::string& prompt);
  std::vector<float> call_unet(const std::vector<float>& sample, int batch, int64_t t,
                               const std::vector<float>& context);
  std::vector<float> latents(const std::string& prompt, uint64_t seed, const SamplerSettings& settings,
                             std::vector<float>* start_out);

  const Bundle& bundle_;
  std::unique_ptr<ClipTokenizer> tokenizer_;
  std::map<std::string, std::unique_ptr<Program>> programs_;
  size_t max_length_ = 77;
  int unet_batch_ = 1;
  int resolution_ = 0;  // the image size this pipeline generates
  std::vector<int64_t> latent_shape_;
};

// mdship/metrics.py tensor_psnr: peak = the reference's max - min; +inf capped at 200; a
// non-finite candidate scores -999.
double tensor_psnr(const std::vector<float>& ref, const std::vector<float>& cand);

// One component's self-test: its worst PSNR over the stored test vectors against its gate.
struct SelftestResult {
  std::string component;
  std::string method = "forward";
  double psnr_db = 0;
  double gate_db = 0;
  size_t vectors = 0;
  bool passed = false;
};

// Runs every component's test vectors (test_vectors/<component>.safetensors: "<i>/input/<name>",
// "<i>/expected"), components in pipeline order. A non-empty `etdump_dir` also writes each
// component's ETDump (its operators, the delegate's included, with their timings) to
// <etdump_dir>/<component>.etdp, for executorch.devtools.Inspector.
std::vector<SelftestResult> selftest(const Bundle& bundle, const std::string& etdump_dir = "");
// {"<component>": {"psnr_db", "gate_db", "vectors", "passed"}, ...}
nlohmann::ordered_json selftest_json(const std::vector<SelftestResult>& results);

struct BenchOptions {
  int runs = 5;
  int warmup = 1;
  std::string prompt = "a photo";
};

// The report of `mdship bench --json`: load_ms per component, per-component median_ms / p90_ms
// (inputs: test vector 0), end_to_end_one_step and end_to_end_<N>_step (seed 0), peak_rss_mb.
nlohmann::ordered_json bench(const Bundle& bundle, const BenchOptions& options);

}  // namespace mdship
