// An mdship bundle directory, as `mdship build` writes it (the format is mdship/bundle.py):
//
//   manifest.json         schema_version 2, resolution, sampler, target.backend, components{...},
//                         files{relative path: sha256} (every file but the two manifest files)
//   manifest.json.sha256  the integrity root: "<sha256 of manifest.json>  manifest.json\n"
//   scheduler.json        the checkpoint's scheduler config + "sampler" (the recipe's sampler settings)
//   <component>.pte       text_encoder, unet, vae_decoder ("forward" methods)
//   tokenizer/            CLIP tokenizer files
//   test_vectors/<component>.safetensors
//
// Only what the runner needs is parsed. Bundle::open checks manifest.json against its integrity
// root; verify_files() checks every other file against the manifest (as Python's Bundle.open /
// verify_files). Every fault a user can cause (missing directory or file, a changed byte, bad JSON,
// unsupported schema version, a missing key) throws BundleError with a one-line message naming the file.
#pragma once

#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "sampler.h"

namespace mdship {

class BundleError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

constexpr int kManifestSchemaVersion = 2;

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  std::string dtype;  // "float32", "int64", ... (torch dtype names without "torch.")
  int64_t numel() const;
  std::string describe() const;  // "name float32 [1, 8, 32, 32]"
};

struct Verification {
  std::string mode;        // e.g. "executed" / "simulated" / "structural"
  double psnr_db = 0;      // what the build measured
  double gate_db = 0;      // the pass threshold
  std::string vectors;     // path of the test vectors, relative to the bundle
};

// One method of a component's program: "forward" (the default image size and guidance mode), or a further
// size / UNet batch of a bundle built with several (manifest components.<name>.methods).
struct Method {
  std::string name;
  int resolution = 0;  // the image size it serves, in pixels
  int batch = 1;       // UNet batch: 2 = guidance as one call; 1 = two calls, or no guidance
  std::vector<TensorSpec> inputs;
  std::vector<TensorSpec> outputs;
  Verification verification;
};

struct Component {
  std::string name;
  std::string file;    // relative to the bundle
  std::string sha256;  // of `file`
  std::string precision;  // "fp32" / "fp16" (manifest components.<name>.precision; empty if absent)
  std::vector<TensorSpec> inputs;   // of the forward method
  std::vector<TensorSpec> outputs;  // of the forward method
  Verification verification;        // of the forward method
  std::vector<Method> methods;      // forward first, then any further ones
  const Method& method(const std::string& name) const;  // throws BundleError when absent
};

// scheduler.json's / manifest.json's "sampler" object.
struct SamplerDefaults {
  std::string kind = "ddim";  // "ddim" | "one_step"
  int steps = 8;
  double guidance = 1.0;
  std::string guidance_mode = "none";  // "batch2" | "two_calls" | "none"
};

class Bundle {
 public:
  // Checks DIR/manifest.json against DIR/manifest.json.sha256, then reads it and DIR/scheduler.json;
  // throws BundleError.
  static Bundle open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  const std::string& backend() const { return backend_; }
  int resolution() const { return resolution_; }  // the default image size (of the forward methods)
  // Every image size the bundle serves, the default first.
  std::vector<int> resolutions() const;
  const SchedulerConfig& scheduler() const { return scheduler_; }
  // The sampler settings recorded by the build (manifest "sampler", else scheduler.json "sampler").
  const SamplerDefaults& sampler() const { return sampler_; }
  const std::map<std::string, Component>& components() const { return components_; }
  const Component& component(const std::string& name) const;  // throws BundleError when absent
  std::string path(const std::string& relative) const;         // dir + "/" + relative

  // Whether a runner linking the delegates in `backends` (e.g. {"xnnpack", "portable"} on a Linux
  // host with the pip wheel) can execute this bundle's backend.
  bool runnable_with(const std::vector<std::string>& backends) const;
  // Throws BundleError with a one-line explanation when !runnable_with(backends).
  void require_runnable(const std::vector<std::string>& backends) const;
  // Throws BundleError when a component's .pte file is missing.
  void require_files() const;
  // Throws BundleError naming the first file (sorted by path) that is missing or whose sha256
  // differs from the manifest's: the `files` map and every component's program.
  void verify_files() const;
  // One file against its manifest sha256; BundleError naming it when missing or changed.
  void verify_file(const std::string& relative, const std::string& digest) const;

  // Component names in pipeline order: text_encoder, unet, vae_decoder (+ any others after).
  std::vector<std::string> component_order() const;

 private:
  std::string dir_;
  std::string backend_;
  int resolution_ = 0;
  SchedulerConfig scheduler_;
  SamplerDefaults sampler_;
  std::map<std::string, Component> components_;
  std::map<std::string, std::string> files_;  // relative path -> sha256
};

}  // namespace mdship
