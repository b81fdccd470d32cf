// mdship-runner: the C++ text-to-image runner for mdship bundles, on the ExecuTorch Module API.
//
//   mdship-runner BUNDLE --prompt TEXT [--seed N] [--steps N] [--guidance G]
//                 [--sampler ddim|one_step] [--threads N] --out PNG
//   mdship-runner BUNDLE --selftest [--threads N]
//   mdship-runner BUNDLE --bench [--runs N] [--warmup N] [--threads N] [--prompt TEXT]
//
// Generation does what mdship/runtime.py (`mdship run`) does: tokenize (the bundle's CLIP
// tokenizer, padded to the text encoder's input length), encode the prompt (and "" for
// classifier-free guidance), start from the portable SplitMix64/Box-Muller latent of the seed,
// run the sampler from scheduler.json with the UNet (CFG as one batch-2 call when the UNet
// program has batch 2, else two batch-1 calls), decode, convert to uint8 and write a PNG.
//
// Exit codes: 0 ok; 1 --selftest found a component below its gate; 2 any error (one line on
// stderr: missing bundle or file, bad manifest, a backend this machine cannot run, bad option).
#include <sys/resource.h>
#include <sys/stat.h>

#include <cerrno>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>
#include <executorch/runtime/core/exec_aten/util/scalar_type_util.h>
#include <executorch/runtime/platform/platform.h>
#include <executorch/runtime/platform/runtime.h>

#include "bundle.h"
#include "clip_tokenizer.h"
#include "json.h"
#include "png.h"
#include "safetensors.h"
#include "sampler.h"

// The wheel ships the thread pool library but not its header (extension/threadpool/threadpool.h).
// These two members are all the runner needs; their signatures are those of ExecuTorch 1.5.
namespace executorch::extension::threadpool {
class ThreadPool {
 public:
  size_t get_thread_count() const;
  bool _unsafe_reset_threadpool(uint32_t num_threads);
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool

namespace {

using executorch::aten::ScalarType;
using executorch::extension::Module;
using executorch::extension::TensorPtr;
using executorch::runtime::Error;
using executorch::runtime::EValue;
using Clock = std::chrono::steady_clock;
namespace json = mdship::json;

constexpr const char* kVersion = "mdship-runner 0.1.0";

class RunnerError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// ExecuTorch log messages. By default they are not printed (the runner's own errors are one line);
// the last error-level message is kept and appended to the runner's error. --verbose prints all.
bool g_verbose = false;
std::string g_last_et_error;

void emit_log(et_timestamp_t, et_pal_log_level_t level, const char* filename, const char*, size_t line,
              const char* message, size_t length) {
  std::string msg(message, length);
  while (!msg.empty() && (msg.back() == '\n' || msg.back() == '\r')) msg.pop_back();
  if (level == kError || level == kFatal) g_last_et_error = msg;
  if (g_verbose || level == kFatal)
    std::fprintf(stderr, "executorch %c %s:%zu] %s\n", static_cast<char>(level), filename ? filename : "?", line,
                 msg.c_str());
}

// " (executorch: <last error message>)" when the runtime logged one, else "".
std::string et_detail() {
  if (g_last_et_error.empty()) return "";
  std::string d = " [executorch: " + g_last_et_error + "]";
  g_last_et_error.clear();
  return d;
}

// The backends this binary can execute, set by CMake from the delegates it links.
#ifndef MDSHIP_RUNNABLE_BACKENDS
#define MDSHIP_RUNNABLE_BACKENDS "xnnpack,portable"
#endif
std::vector<std::string> runnable_backends() {
  std::vector<std::string> out;
  std::stringstream ss(MDSHIP_RUNNABLE_BACKENDS);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// A typed host buffer that becomes an ExecuTorch input tensor (the data outlives the call).
struct HostTensor {
  ScalarType type = ScalarType::Float;
  std::vector<int64_t> shape;
  std::vector<float> f32;
  std::vector<int64_t> i64;
  std::vector<int32_t> i32;
  std::vector<executorch::aten::Half> f16;

  static HostTensor floats(std::vector<float> data, std::vector<int64_t> shape) {
    HostTensor t;
    t.type = ScalarType::Float;
    t.f32 = std::move(data);
    t.shape = std::move(shape);
    return t;
  }
  static HostTensor longs(std::vector<int64_t> data, std::vector<int64_t> shape) {
    HostTensor t;
    t.type = ScalarType::Long;
    t.i64 = std::move(data);
    t.shape = std::move(shape);
    return t;
  }
  size_t numel() const {
    size_t n = 1;
    for (int64_t d : shape) n *= static_cast<size_t>(d);
    return n;
  }
  double get(size_t i) const {
    switch (type) {
      case ScalarType::Float: return f32[i];
      case ScalarType::Long: return static_cast<double>(i64[i]);
      case ScalarType::Int: return i32[i];
      case ScalarType::Half: return static_cast<float>(f16[i]);
      default: throw RunnerError("unsupported host tensor type");
    }
  }
  // Converts to the dtype the program takes (e.g. float32 -> float16 for an fp16 program whose
  // inputs are half, int64 -> int32 token ids).
  HostTensor as(ScalarType want) const {
    if (want == type) return *this;
    HostTensor t;
    t.type = want;
    t.shape = shape;
    const size_t n = numel();
    for (size_t i = 0; i < n; ++i) {
      const double v = get(i);
      switch (want) {
        case ScalarType::Float: t.f32.push_back(static_cast<float>(v)); break;
        case ScalarType::Long: t.i64.push_back(static_cast<int64_t>(v)); break;
        case ScalarType::Int: t.i32.push_back(static_cast<int32_t>(v)); break;
        case ScalarType::Half: t.f16.emplace_back(static_cast<float>(v)); break;
        default:
          throw RunnerError(std::string("program input dtype ") + executorch::runtime::toString(want) +
                            " is not supported by this runner (float32, float16, int64, int32)");
      }
    }
    return t;
  }
  TensorPtr make() {
    std::vector<executorch::aten::SizesType> sizes(shape.begin(), shape.end());
    void* data = nullptr;
    switch (type) {
      case ScalarType::Float: data = f32.data(); break;
      case ScalarType::Long: data = i64.data(); break;
      case ScalarType::Int: data = i32.data(); break;
      case ScalarType::Half: data = f16.data(); break;
      default: throw RunnerError("unsupported host tensor type");
    }
    return executorch::extension::from_blob(data, std::move(sizes), type);
  }
};

// float32 copy of an output tensor (float32, float16 or bfloat16).
std::vector<float> to_float_vector(const executorch::aten::Tensor& out, const std::string& where) {
  const size_t n = static_cast<size_t>(out.numel());
  std::vector<float> copy(n);
  switch (out.scalar_type()) {
    case ScalarType::Float:
      std::memcpy(copy.data(), out.const_data_ptr<float>(), n * sizeof(float));
      break;
    case ScalarType::Half: {
      const auto* p = out.const_data_ptr<executorch::aten::Half>();
      for (size_t i = 0; i < n; ++i) copy[i] = static_cast<float>(p[i]);
      break;
    }
    case ScalarType::BFloat16: {
      const auto* p = out.const_data_ptr<executorch::aten::BFloat16>();
      for (size_t i = 0; i < n; ++i) copy[i] = static_cast<float>(p[i]);
      break;
    }
    default:
      throw RunnerError(where + ": output dtype " + executorch::runtime::toString(out.scalar_type()) +
                        " is not a floating type");
  }
  return copy;
}

// One component program ("forward" method) loaded through the Module API.
class Component {
 public:
  Component(const mdship::Bundle& bundle, const std::string& name) : spec_(bundle.component(name)) {
    path_ = bundle.path(spec_.file);
    const auto start = Clock::now();
    module_ = std::make_unique<Module>(path_, Module::LoadMode::Mmap);
    const Error err = module_->load_method("forward");
    if (err != Error::Ok)
      throw RunnerError(path_ + ": the ExecuTorch runtime cannot load method 'forward' (" +
                        executorch::runtime::to_string(err) + ")" + et_detail());
    auto meta = module_->method_meta("forward");
    if (!meta.ok()) throw RunnerError(path_ + ": cannot read the method's metadata");
    if (meta->num_inputs() != spec_.inputs.size())
      throw RunnerError(path_ + ": the program takes " + std::to_string(meta->num_inputs()) +
                        " inputs but the manifest lists " + std::to_string(spec_.inputs.size()));
    for (size_t i = 0; i < meta->num_inputs(); ++i) {
      auto info = meta->input_tensor_meta(i);
      if (!info.ok()) throw RunnerError(path_ + ": input " + std::to_string(i) + " is not a tensor");
      std::vector<int64_t> shape(info->sizes().begin(), info->sizes().end());
      input_shapes_.push_back(shape);
      input_types_.push_back(info->scalar_type());
    }
    load_ms_ = ms_since(start);
  }

  const std::string& name() const { return spec_.name; }
  const mdship::Component& spec() const { return spec_; }
  double load_ms() const { return load_ms_; }
  // The program's own input shape (what it was exported with).
  const std::vector<int64_t>& input_shape(size_t i) const { return input_shapes_.at(i); }

  // Runs "forward" and returns the first output as float32, with its shape.
  std::vector<float> run(std::vector<HostTensor> inputs, std::vector<int64_t>* out_shape = nullptr) {
    if (inputs.size() != input_shapes_.size())
      throw RunnerError(path_ + ": " + std::to_string(inputs.size()) + " inputs given, the program takes " +
                        std::to_string(input_shapes_.size()));
    std::vector<TensorPtr> keep;
    std::vector<EValue> values;
    for (size_t i = 0; i < inputs.size(); ++i) {
      if (inputs[i].shape != input_shapes_[i])
        throw RunnerError(path_ + ": input " + std::to_string(i) + " has shape " + shape_str(inputs[i].shape) +
                          ", the program takes " + shape_str(input_shapes_[i]));
      inputs[i] = inputs[i].as(input_types_[i]);
      keep.push_back(inputs[i].make());
      values.emplace_back(*keep.back());
    }
    auto result = module_->execute("forward", values);
    if (!result.ok())
      throw RunnerError(path_ + ": execution failed (" + executorch::runtime::to_string(result.error()) + ")" +
                        et_detail());
    if (result->empty() || !result->at(0).isTensor()) throw RunnerError(path_ + ": the program returned no tensor");
    const executorch::aten::Tensor out = result->at(0).toTensor();
    if (out_shape) out_shape->assign(out.sizes().begin(), out.sizes().end());
    return to_float_vector(out, path_);  // the output lives in the method's planned memory: copy it now
  }

 private:
  const mdship::Component& spec_;
  std::string path_;
  std::unique_ptr<Module> module_;
  std::vector<std::vector<int64_t>> input_shapes_;
  std::vector<ScalarType> input_types_;
  double load_ms_ = 0;
};

// ---------------------------------------------------------------------------------------------
// The pipeline over a loaded bundle
// ---------------------------------------------------------------------------------------------
class Pipeline {
 public:
  explicit Pipeline(const mdship::Bundle& bundle) : bundle_(bundle) {
    bundle.require_runnable(runnable_backends());
    bundle.require_files();
    try {
      tokenizer_ = std::make_unique<mdship::ClipTokenizer>(
          mdship::ClipTokenizer::from_directory(bundle.path("tokenizer")));
    } catch (const mdship::TokenizerError& e) {
      throw RunnerError(e.what());
    }
    for (const char* name : {"text_encoder", "unet", "vae_decoder"})
      components_.emplace(name, std::make_unique<Component>(bundle, name));
    max_length_ = static_cast<size_t>(text_encoder().input_shape(0).at(1));
    unet_batch_ = static_cast<int>(unet().input_shape(0).at(0));
    const auto& s = unet().input_shape(0);
    latent_shape_ = {1, s.at(1), s.at(2), s.at(3)};
  }

  Component& text_encoder() { return *components_.at("text_encoder"); }
  Component& unet() { return *components_.at("unet"); }
  Component& vae_decoder() { return *components_.at("vae_decoder"); }
  Component& component(const std::string& name) { return *components_.at(name); }
  int unet_batch() const { return unet_batch_; }

  // The recipe's settings (manifest "sampler") overridden by the user's. Guidance runs batched when
  // the UNet program has batch 2 (guidance_mode "auto"); "two_calls" forces two batch-1 calls.
  mdship::SamplerSettings settings(const std::string& sampler, int steps, double guidance, bool guidance_given,
                                   const std::string& guidance_mode = "auto") const {
    const mdship::SamplerDefaults& rec = bundle_.sampler();
    const bool batched = guidance_mode == "auto" ? unet_batch_ == 2 : guidance_mode == "batch2";
    if (batched && unet_batch_ != 2)
      throw RunnerError("guidance mode batch2 needs a batch-2 UNet program; this one has batch " +
                        std::to_string(unet_batch_));
    return mdship::resolve_settings(bundle_.scheduler(), sampler.empty() ? rec.kind : sampler,
                                    steps > 0 ? steps : rec.steps, guidance_given ? guidance : rec.guidance, batched);
  }

  std::vector<float> encode(const std::string& prompt) {
    const std::vector<int32_t> ids = tokenizer_->encode_padded(prompt, max_length_);
    std::vector<int64_t> ids64(ids.begin(), ids.end());
    std::vector<HostTensor> in;
    in.push_back(HostTensor::longs(std::move(ids64), {1, static_cast<int64_t>(max_length_)}));
    return text_encoder().run(std::move(in));
  }

  // unet(sample [batch,...], t, context [batch,...]); a program with a larger batch runs the
  // input repeated and keeps the last `batch` results (as mdship/runtime.py does).
  std::vector<float> call_unet(const std::vector<float>& sample, int batch, int64_t t,
                               const std::vector<float>& context) {
    if (batch > unet_batch_)
      throw RunnerError("the UNet program has batch " + std::to_string(unet_batch_) + ", asked for " +
                        std::to_string(batch));
    const int reps = unet_batch_ / batch;
    if (reps * batch != unet_batch_)
      throw RunnerError("the UNet program's batch " + std::to_string(unet_batch_) + " is not a multiple of " +
                        std::to_string(batch));
    std::vector<float> s, c;
    for (int r = 0; r < reps; ++r) {
      s.insert(s.end(), sample.begin(), sample.end());
      c.insert(c.end(), context.begin(), context.end());
    }
    std::vector<HostTensor> in;
    const auto& shape = unet().input_shape(0);
    in.push_back(HostTensor::floats(std::move(s), shape));
    in.push_back(HostTensor::longs({t}, unet().input_shape(1)));
    in.push_back(HostTensor::floats(std::move(c), unet().input_shape(2)));
    std::vector<float> out = unet().run(std::move(in));
    const size_t keep = sample.size();
    if (out.size() < keep) throw RunnerError("the UNet returned fewer values than its input");
    return std::vector<float>(out.end() - static_cast<std::ptrdiff_t>(keep), out.end());
  }

  std::vector<float> latents(const std::string& prompt, uint64_t seed, const mdship::SamplerSettings& settings,
                             std::vector<float>* start_out = nullptr) {
    const std::vector<float> context = encode(prompt);
    const std::vector<float> uncond = settings.guidance != 1.0 ? encode("") : std::vector<float>{};
    std::vector<float> start = mdship::initial_latent(seed, bundle_.resolution());
    if (start.size() != static_cast<size_t>(latent_shape_[1] * latent_shape_[2] * latent_shape_[3]))
      throw RunnerError("the initial latent for resolution " + std::to_string(bundle_.resolution()) +
                        " does not match the UNet's sample shape " + shape_str(unet().input_shape(0)));
    if (start_out) *start_out = start;
    mdship::UNetFn fn = [this](const std::vector<float>& s, int batch, int64_t t, const std::vector<float>& c) {
      return call_unet(s, batch, t, c);
    };
    return mdship::sample(bundle_.scheduler(), fn, start, context, uncond, settings);
  }

  // uint8 HWC image and its size.
  std::vector<uint8_t> generate(const std::string& prompt, uint64_t seed, const mdship::SamplerSettings& settings,
                                int* width, int* height, std::vector<float>* start_out = nullptr) {
    std::vector<float> latent = latents(prompt, seed, settings, start_out);
    std::vector<HostTensor> in;
    in.push_back(HostTensor::floats(std::move(latent), vae_decoder().input_shape(0)));
    std::vector<int64_t> shape;
    const std::vector<float> image = vae_decoder().run(std::move(in), &shape);
    if (shape.size() != 4 || shape[0] != 1) throw RunnerError("the VAE decoder did not return [1, C, H, W]");
    *height = static_cast<int>(shape[2]);
    *width = static_cast<int>(shape[3]);
    return mdship::to_uint8_hwc(image.data(), static_cast<int>(shape[1]), *height, *width);
  }

 private:
  const mdship::Bundle& bundle_;
  std::unique_ptr<mdship::ClipTokenizer> tokenizer_;
  std::map<std::string, std::unique_ptr<Component>> components_;
  size_t max_length_ = 77;
  int unet_batch_ = 1;
  std::vector<int64_t> latent_shape_;
};

// ---------------------------------------------------------------------------------------------
// Metrics and vectors
// ---------------------------------------------------------------------------------------------
// mdship/metrics.py tensor_psnr: peak = the reference's max - min; +inf capped at 200; a
// non-finite candidate scores -999.
double tensor_psnr(const std::vector<float>& ref, const std::vector<float>& cand) {
  if (ref.size() != cand.size())
    throw RunnerError("shape mismatch: reference has " + std::to_string(ref.size()) + " values, candidate " +
                      std::to_string(cand.size()));
  for (float v : cand)
    if (!std::isfinite(v)) return -999.0;
  double mse = 0, lo = INFINITY, hi = -INFINITY;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double r = ref[i], d = r - static_cast<double>(cand[i]);
    mse += d * d;
    lo = std::min(lo, r);
    hi = std::max(hi, r);
  }
  mse /= static_cast<double>(ref.size() ? ref.size() : 1);
  double peak = hi - lo;
  if (!(peak > 0)) peak = 1.0;
  if (mse == 0) return 200.0;
  return std::min(200.0, 10 * std::log10(peak * peak / mse));
}

std::vector<int> vector_indices(const mdship::SafetensorsFile& f) {
  std::vector<int> out;
  for (const auto& [key, t] : f.tensors()) {
    const size_t slash = key.find('/');
    if (slash == std::string::npos) continue;
    const std::string head = key.substr(0, slash);
    if (head.empty() || head.find_first_not_of("0123456789") != std::string::npos) continue;
    const int i = std::atoi(head.c_str());
    if (std::find(out.begin(), out.end(), i) == out.end()) out.push_back(i);
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<HostTensor> vector_inputs(const mdship::SafetensorsFile& f, const mdship::Component& spec, int i) {
  std::vector<HostTensor> in;
  for (const mdship::TensorSpec& s : spec.inputs) {
    const mdship::StTensor& t = f.at(std::to_string(i) + "/input/" + s.name);
    if (t.dtype == "F32" || t.dtype == "F64") in.push_back(HostTensor::floats(t.to_float(), t.shape));
    else in.push_back(HostTensor::longs(t.to_int64(), t.shape));
  }
  return in;
}

mdship::SafetensorsFile read_vectors(const mdship::Bundle& bundle, const mdship::Component& spec) {
  const std::string path = bundle.path(spec.verification.vectors);
  try {
    return mdship::SafetensorsFile::read(path);
  } catch (const mdship::SafetensorsError& e) {
    throw RunnerError(std::string("unreadable test vectors: ") + e.what());
  }
}

// ---------------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------------
struct Options {
  std::string bundle;
  std::string prompt;
  bool prompt_given = false;
  std::string seed = "0";
  int steps = 0;
  double guidance = 1.0;
  bool guidance_given = false;
  std::string sampler;
  std::string out;
  std::string dump_latent;
  std::string guidance_mode = "auto";
  bool selftest = false;
  bool bench = false;
  bool as_json = false;
  bool verbose = false;
  int runs = 5;
  int warmup = 1;
  int threads = 0;
};

uint64_t parse_seed(const std::string& text) {
  // Python: int(seed) & (2**64 - 1); negative seeds wrap as two's complement.
  errno = 0;
  char* end = nullptr;
  if (!text.empty() && text[0] == '-') {
    const long long v = std::strtoll(text.c_str(), &end, 10);
    if (errno || !end || *end || end == text.c_str()) throw RunnerError("--seed '" + text + "' is not an integer in int64 range");
    return static_cast<uint64_t>(v);
  }
  const unsigned long long v = std::strtoull(text.c_str(), &end, 10);
  if (errno || !end || *end || end == text.c_str()) throw RunnerError("--seed '" + text + "' is not an integer in 0..2^64-1");
  return static_cast<uint64_t>(v);
}

void set_threads(int threads) {
  if (threads <= 0) return;
  auto* pool = executorch::extension::threadpool::get_threadpool();
  if (!pool || !pool->_unsafe_reset_threadpool(static_cast<uint32_t>(threads)))
    throw RunnerError("cannot set the ExecuTorch thread pool to " + std::to_string(threads) + " threads");
}

int thread_count() {
  auto* pool = executorch::extension::threadpool::get_threadpool();
  return pool ? static_cast<int>(pool->get_thread_count()) : 1;
}

// mkdir -p of a file's directory (as mdship's save_png does).
void make_parent_dirs(const std::string& file) {
  for (size_t pos = file.find('/', 1); pos != std::string::npos; pos = file.find('/', pos + 1)) {
    const std::string dir = file.substr(0, pos);
    struct stat st {};
    if (::stat(dir.c_str(), &st) == 0) continue;
    if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) throw RunnerError("cannot create directory " + dir);
  }
}

int cmd_generate(const Options& o) {
  const mdship::Bundle bundle = mdship::Bundle::open(o.bundle);
  bundle.require_runnable(runnable_backends());
  bundle.require_files();
  const uint64_t seed = parse_seed(o.seed);
  set_threads(o.threads);
  Pipeline pipe(bundle);
  const mdship::SamplerSettings settings = pipe.settings(o.sampler, o.steps, o.guidance, o.guidance_given, o.guidance_mode);
  int width = 0, height = 0;
  std::vector<float> start;
  const std::vector<uint8_t> image = pipe.generate(o.prompt, seed, settings, &width, &height, &start);
  if (!o.dump_latent.empty()) {
    std::FILE* f = std::fopen(o.dump_latent.c_str(), "wb");
    if (!f || std::fwrite(start.data(), sizeof(float), start.size(), f) != start.size())
      throw RunnerError("cannot write " + o.dump_latent);
    std::fclose(f);
  }
  make_parent_dirs(o.out);
  mdship::png::write_file(o.out, image.data(), width, height, 3);
  std::cout << o.out << std::endl;
  return 0;
}

int cmd_selftest(const Options& o) {
  const mdship::Bundle bundle = mdship::Bundle::open(o.bundle);
  bundle.require_runnable(runnable_backends());
  bundle.require_files();
  set_threads(o.threads);
  bool all_passed = true;
  std::ostringstream js;
  js << "{";
  bool first = true;
  for (const std::string& name : bundle.component_order()) {
    const mdship::Component& spec = bundle.component(name);
    Component comp(bundle, name);
    const mdship::SafetensorsFile vectors = read_vectors(bundle, spec);
    const std::vector<int> indices = vector_indices(vectors);
    if (indices.empty()) throw RunnerError(vectors.path() + ": no test vectors in the file");
    double worst = 1e300;
    std::vector<double> scores;
    for (int i : indices) {
      std::vector<float> got = comp.run(vector_inputs(vectors, spec, i));
      const std::vector<float> expected = vectors.at(std::to_string(i) + "/expected").to_float();
      const double psnr = tensor_psnr(expected, got);
      scores.push_back(psnr);
      worst = std::min(worst, psnr);
    }
    const double gate = spec.verification.gate_db;
    const bool passed = worst >= gate;
    all_passed = all_passed && passed;
    if (o.as_json) {
      js << (first ? "" : ",") << json::quote(name) << ":{\"psnr_db\":" << json::number(worst)
         << ",\"gate_db\":" << json::number(gate) << ",\"vectors\":" << indices.size()
         << ",\"passed\":" << (passed ? "true" : "false") << "}";
    } else {
      char line[256];
      std::snprintf(line, sizeof line, "%-13s %7.2f dB (gate %.0f, %zu vectors)  %s", name.c_str(), worst, gate,
                    indices.size(), passed ? "ok" : "FAILED");
      std::cout << line << "\n";
    }
    first = false;
  }
  if (o.as_json) std::cout << js.str() << "}" << std::endl;
  std::cout.flush();
  return all_passed ? 0 : 1;
}

std::string stats_json(std::vector<double> samples) {
  std::sort(samples.begin(), samples.end());
  const size_t n = samples.size();
  const double median = n % 2 ? samples[n / 2] : (samples[n / 2 - 1] + samples[n / 2]) / 2;
  const size_t p90_index = std::min(n - 1, static_cast<size_t>(std::nearbyint(0.9 * static_cast<double>(n - 1))));
  char buf[160];
  std::snprintf(buf, sizeof buf, "\"median_ms\": %.3f, \"p90_ms\": %.3f, \"runs\": %zu", median, samples[p90_index], n);
  return buf;
}

// Peak resident set size of this process in MiB. Linux: VmHWM from /proc/self/status (getrusage's
// ru_maxrss survives execve, so it would report the launching process's peak, e.g. a Python parent).
double peak_rss_mb() {
  if (std::FILE* f = std::fopen("/proc/self/status", "r")) {
    char line[256];
    double kb = -1;
    while (std::fgets(line, sizeof line, f))
      if (std::strncmp(line, "VmHWM:", 6) == 0) kb = std::strtod(line + 6, nullptr);
    std::fclose(f);
    if (kb >= 0) return kb / 1024.0;
  }
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
#ifdef __APPLE__
  return static_cast<double>(ru.ru_maxrss) / (1024.0 * 1024.0);  // bytes on macOS
#else
  return static_cast<double>(ru.ru_maxrss) / 1024.0;  // KiB elsewhere
#endif
}

int cmd_bench(const Options& o) {
  const mdship::Bundle bundle = mdship::Bundle::open(o.bundle);
  bundle.require_runnable(runnable_backends());
  bundle.require_files();
  set_threads(o.threads);
  Pipeline pipe(bundle);
  std::ostringstream js;
  js << "{\n  \"bundle\": " << json::quote(bundle.dir()) << ",\n  \"backend\": " << json::quote(bundle.backend())
     << ",\n  \"runner\": \"cpp\",\n  \"threads\": " << thread_count() << ",\n  \"runs\": " << o.runs
     << ",\n  \"warmup\": " << o.warmup << ",\n  \"load_ms\": {";
  const std::vector<std::string> names = {"text_encoder", "unet", "vae_decoder"};
  for (size_t i = 0; i < names.size(); ++i) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.3f", pipe.component(names[i]).load_ms());
    js << (i ? ", " : "") << json::quote(names[i]) << ": " << buf;
  }
  js << "},\n  \"components\": {";
  for (size_t k = 0; k < names.size(); ++k) {
    Component& comp = pipe.component(names[k]);
    const mdship::SafetensorsFile vectors = read_vectors(bundle, comp.spec());
    const std::vector<int> indices = vector_indices(vectors);
    if (indices.empty()) throw RunnerError(vectors.path() + ": no test vectors in the file");
    const std::vector<HostTensor> inputs = vector_inputs(vectors, comp.spec(), indices.front());
    for (int i = 0; i < o.warmup; ++i) comp.run(inputs);
    std::vector<double> samples;
    for (int i = 0; i < o.runs; ++i) {
      const auto start = Clock::now();
      comp.run(inputs);
      samples.push_back(ms_since(start));
    }
    js << (k ? "," : "") << "\n    " << json::quote(names[k]) << ": {" << stats_json(samples) << "}";
  }
  js << "\n  }";
  const std::string prompt = o.prompt_given ? o.prompt : "a photo";
  const mdship::SamplerSettings one = pipe.settings("one_step", 0, 1.0, true);
  const mdship::SamplerSettings full = pipe.settings("", 0, 0, false);
  const std::vector<std::pair<std::string, mdship::SamplerSettings>> runs = {
      {"one_step", one}, {std::to_string(full.steps) + "_step", full}};
  for (const auto& [label, s] : runs) {
    int w = 0, h = 0;
    for (int i = 0; i < o.warmup; ++i) pipe.generate(prompt, 0, s, &w, &h);
    std::vector<double> samples;
    for (int i = 0; i < o.runs; ++i) {
      const auto start = Clock::now();
      pipe.generate(prompt, 0, s, &w, &h);
      samples.push_back(ms_since(start));
    }
    js << ",\n  \"end_to_end_" << label << "\": {" << stats_json(samples) << ", \"unet_calls\": " << s.unet_calls()
       << ", \"sampler\": " << json::quote(s.sampler) << ", \"guidance\": " << json::number(s.guidance)
       << ", \"batched_guidance\": " << (s.batched_guidance ? "true" : "false") << "}";
  }
  char rss[64];
  std::snprintf(rss, sizeof rss, "%.1f", peak_rss_mb());
  js << ",\n  \"peak_rss_mb\": " << rss << "\n}";
  std::cout << js.str() << std::endl;
  return 0;
}

const char* kUsage =
    "usage: mdship-runner BUNDLE --prompt TEXT [--seed N] [--steps N] [--guidance G]\n"
    "                     [--sampler ddim|one_step] [--threads N] --out PNG\n"
    "       mdship-runner BUNDLE --selftest [--json] [--threads N]\n"
    "       mdship-runner BUNDLE --bench [--runs N] [--warmup N] [--threads N] [--prompt TEXT]\n"
    "\n"
    "Generates an image from an mdship bundle (the output of `mdship build`) with the ExecuTorch\n"
    "runtime. Defaults for --steps, --guidance and --sampler come from the bundle's recipe.\n"
    "  --selftest  re-run every component's stored test vectors; print PSNR per component;\n"
    "              exit 1 if any is below its manifest gate\n"
    "  --bench     JSON: load time, per-component latency (median/p90), end-to-end latency\n"
    "  --threads   ExecuTorch thread pool size (default: the number of cores)\n"
    "  --verbose   print the ExecuTorch runtime's log messages\n"
    "Exit codes: 0 ok, 1 self-test failed, 2 error.\n";

int parse_int(const std::string& flag, const std::string& v, int lo) {
  char* end = nullptr;
  errno = 0;
  const long x = std::strtol(v.c_str(), &end, 10);
  if (errno || !end || *end || end == v.c_str() || x < lo || x > 1000000)
    throw RunnerError(flag + " '" + v + "' must be an integer >= " + std::to_string(lo));
  return static_cast<int>(x);
}

Options parse_args(int argc, char** argv, bool* help) {
  Options o;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](const std::string& flag) -> std::string {
      if (i + 1 >= argc) throw RunnerError(flag + " needs a value");
      return argv[++i];
    };
    if (a == "-h" || a == "--help") {
      *help = true;
      return o;
    } else if (a == "--version") {
      std::cout << kVersion << std::endl;
      std::exit(0);
    } else if (a == "--prompt") {
      o.prompt = value(a);
      o.prompt_given = true;
    } else if (a == "--seed") {
      o.seed = value(a);
    } else if (a == "--steps") {
      o.steps = parse_int(a, value(a), 1);
    } else if (a == "--guidance") {
      const std::string v = value(a);
      char* end = nullptr;
      o.guidance = std::strtod(v.c_str(), &end);
      if (!end || *end || end == v.c_str() || !std::isfinite(o.guidance))
        throw RunnerError("--guidance '" + v + "' is not a number");
      o.guidance_given = true;
    } else if (a == "--sampler") {
      o.sampler = value(a);
      if (o.sampler != "ddim" && o.sampler != "one_step")
        throw RunnerError("--sampler '" + o.sampler + "' is unknown: expected ddim or one_step");
    } else if (a == "--out") {
      o.out = value(a);
    } else if (a == "--dump-latent") {  // hidden: raw float32 initial latent, for parity tests
      o.dump_latent = value(a);
    } else if (a == "--guidance-mode") {  // hidden: auto (from the UNet's batch) | batch2 | two_calls
      o.guidance_mode = value(a);
      if (o.guidance_mode != "auto" && o.guidance_mode != "batch2" && o.guidance_mode != "two_calls")
        throw RunnerError("--guidance-mode '" + o.guidance_mode + "' is unknown: expected auto, batch2 or two_calls");
    } else if (a == "--selftest") {
      o.selftest = true;
    } else if (a == "--bench") {
      o.bench = true;
    } else if (a == "--verbose") {
      o.verbose = true;
    } else if (a == "--json") {
      o.as_json = true;
    } else if (a == "--runs") {
      o.runs = parse_int(a, value(a), 1);
    } else if (a == "--warmup") {
      o.warmup = parse_int(a, value(a), 0);
    } else if (a == "--threads") {
      o.threads = parse_int(a, value(a), 1);
    } else if (a.size() > 1 && a[0] == '-' && a != "-") {
      throw RunnerError("unknown option " + a + " (see --help)");
    } else {
      positional.push_back(a);
    }
  }
  if (positional.size() != 1)
    throw RunnerError(positional.empty() ? "missing BUNDLE argument (see --help)"
                                         : "expected one BUNDLE argument, got " + std::to_string(positional.size()));
  o.bundle = positional[0];
  if (o.selftest && o.bench) throw RunnerError("--selftest and --bench are exclusive");
  if (!o.selftest && !o.bench) {
    if (!o.prompt_given) throw RunnerError("--prompt is required to generate an image (or use --selftest / --bench)");
    if (o.out.empty()) throw RunnerError("--out PNG is required to generate an image");
  }
  return o;
}

std::string one_line(std::string s) {
  for (char& c : s)
    if (c == '\n' || c == '\r') c = ' ';
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    bool help = false;
    const Options o = parse_args(argc, argv, &help);
    if (help) {
      std::cout << kUsage;
      return 0;
    }
    g_verbose = o.verbose;
    executorch::runtime::register_pal(executorch::runtime::PalImpl::create(emit_log, __FILE__));
    executorch::runtime::runtime_init();
    if (o.selftest) return cmd_selftest(o);
    if (o.bench) return cmd_bench(o);
    return cmd_generate(o);
  } catch (const std::exception& e) {
    std::cout.flush();
    std::cerr << "mdship-runner: error: " << one_line(e.what()) << std::endl;
    return 2;
  }
}
