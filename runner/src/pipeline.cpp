#include "pipeline.h"

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <sstream>

#include <executorch/devtools/etdump/etdump_flatcc.h>

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>
#include <executorch/runtime/backend/interface.h>
#include <executorch/runtime/backend/options.h>
#include <executorch/runtime/core/exec_aten/util/scalar_type_util.h>
#include <executorch/runtime/platform/platform.h>
#include <executorch/runtime/platform/runtime.h>

#include "safetensors.h"

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

namespace mdship {

using executorch::aten::ScalarType;
using executorch::extension::Module;
using executorch::extension::TensorPtr;
using executorch::runtime::Error;
using executorch::runtime::EValue;
using OrderedJson = nlohmann::ordered_json;

namespace {

using Clock = std::chrono::steady_clock;

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

// " [executorch: <last error message>]" when the runtime logged one, else "".
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

int thread_count() {
  auto* pool = executorch::extension::threadpool::get_threadpool();
  return pool ? static_cast<int>(pool->get_thread_count()) : 1;
}

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// Report numbers keep `digits` decimals, as `mdship bench` prints them.
double rounded(double v, int digits) {
  const double scale = std::pow(10.0, digits);
  return std::round(v * scale) / scale;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

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

}  // namespace

// ---------------------------------------------------------------------------------------------
// Runtime and bundle
// ---------------------------------------------------------------------------------------------
void init_runtime(bool verbose, bool weight_cache) {
  g_verbose = verbose;
  executorch::runtime::register_pal(executorch::runtime::PalImpl::create(emit_log, __FILE__));
  executorch::runtime::runtime_init();
  // XNNPACK (backends/xnnpack/runtime/XNNPACKBackend.h, options present in the 1.5.1 wheel's library):
  // the weight cache packs each weight once for every method of a program that is loaded (a bundle with
  // several sizes), and Global (2) gives every delegate call of every program one workspace: the runner runs
  // one program at a time, so the peak is the largest program's working set (the decoder's at 512 px), not
  // the sum of all three (paper-scale w8a8: peak RSS 984 -> 972 MB; BENCHMARKS.md).
  executorch::runtime::BackendOptions<2> options;
  options.set_option("weight_cache_enabled", weight_cache);
  options.set_option("workspace_sharing_mode", 2);
  const Error err = executorch::runtime::set_option("XnnpackBackend", options.view());
  if (err != Error::Ok)
    throw RunnerError("cannot set the XNNPACK backend's options (" + std::string(executorch::runtime::to_string(err)) +
                      ")" + et_detail());
}

void set_threads(int threads) {
  if (threads <= 0) return;
  auto* pool = executorch::extension::threadpool::get_threadpool();
  if (!pool || !pool->_unsafe_reset_threadpool(static_cast<uint32_t>(threads)))
    throw RunnerError("cannot set the ExecuTorch thread pool to " + std::to_string(threads) + " threads");
}

Bundle open_bundle(const std::string& dir, bool verify) {
  Bundle bundle = Bundle::open(dir);
  bundle.require_runnable(runnable_backends());  // before hashing: a device-only bundle is refused at once
  if (verify) bundle.verify_files();
  else bundle.require_files();
  // XNNPACK's weight cache (executorch 1.5.1) crashes creating the runtime of an fp16 subgraph (a call through a
  // null pointer in xnn_subgraph_alias_fp32_fallback_data), so a bundle with an fp16 component runs without it.
  for (const auto& entry : bundle.components())
    if (entry.second.precision == "fp16") {
      executorch::runtime::BackendOptions<1> options;
      options.set_option("weight_cache_enabled", false);
      const Error err = executorch::runtime::set_option("XnnpackBackend", options.view());
      if (err != Error::Ok)
        throw RunnerError("cannot turn the XNNPACK weight cache off (" +
                          std::string(executorch::runtime::to_string(err)) + ")" + et_detail());
      break;
    }
  return bundle;
}

// ---------------------------------------------------------------------------------------------
// HostTensor and Program: the ExecuTorch Module glue
// ---------------------------------------------------------------------------------------------
// A typed host buffer that becomes an ExecuTorch input tensor (the data outlives the call).
struct HostTensor {
  ScalarType type;
  std::vector<int64_t> shape;
  std::vector<float> f32;
  std::vector<int64_t> i64;
  std::vector<int32_t> i32;
  std::vector<executorch::aten::Half> f16;

  HostTensor(ScalarType type, std::vector<int64_t> shape) : type(type), shape(std::move(shape)) {}
  static HostTensor floats(std::vector<float> data, std::vector<int64_t> shape) {
    HostTensor t(ScalarType::Float, std::move(shape));
    t.f32 = std::move(data);
    return t;
  }
  static HostTensor longs(std::vector<int64_t> data, std::vector<int64_t> shape) {
    HostTensor t(ScalarType::Long, std::move(shape));
    t.i64 = std::move(data);
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
    HostTensor t(want, shape);
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

// One component program ("forward" method) loaded through the Module API; `trace`: with an ETDump
// event tracer (operator timings, the XNNPACK delegate's operators by name).
class Program {
 public:
  // One method of a component's program. `module`: a Module of that program shared with its other loaded
  // methods (XNNPACK's weight cache then packs their weights once); null: a Module of its own.
  Program(const Bundle& bundle, const std::string& name, const std::string& method = "forward", bool trace = false,
          std::shared_ptr<Module> module = nullptr)
      : spec_(bundle.component(name).method(method)), path_(bundle.path(bundle.component(name).file)) {
    const auto start = Clock::now();
    std::unique_ptr<executorch::runtime::EventTracer> tracer;
    if (trace) tracer = std::make_unique<executorch::etdump::ETDumpGen>();
    module_ = module ? std::move(module) : std::make_shared<Module>(path_, Module::LoadMode::Mmap, std::move(tracer));
    const Error err = module_->load_method(spec_.name);
    if (err != Error::Ok)
      throw RunnerError(path_ + ": the ExecuTorch runtime cannot load method '" + spec_.name + "' (" +
                        executorch::runtime::to_string(err) + ")" + et_detail());
    read_input_meta();
    load_ms_ = ms_since(start);
  }

  const Method& spec() const { return spec_; }
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
    auto result = module_->execute(spec_.name, values);
    if (!result.ok())
      throw RunnerError(path_ + ": execution failed (" + executorch::runtime::to_string(result.error()) + ")" +
                        et_detail());
    if (result->empty() || !result->at(0).isTensor()) throw RunnerError(path_ + ": the program returned no tensor");
    const executorch::aten::Tensor out = result->at(0).toTensor();
    if (out_shape) out_shape->assign(out.sizes().begin(), out.sizes().end());
    return to_float_vector(out, path_);  // the output lives in the method's planned memory: copy it now
  }

  // The ETDump of every call so far (a Program constructed with trace = true), written to `file`.
  void write_etdump(const std::string& file) {
    auto* gen = static_cast<executorch::etdump::ETDumpGen*>(module_->event_tracer());
    if (!gen) throw RunnerError(path_ + ": loaded without an ETDump tracer");
    const executorch::etdump::ETDumpResult dump = gen->get_etdump_data();
    std::FILE* f = std::fopen(file.c_str(), "wb");
    const bool ok = f && dump.buf && std::fwrite(dump.buf, 1, dump.size, f) == dump.size;
    std::free(dump.buf);
    if (!f || std::fclose(f) != 0 || !ok) throw RunnerError(file + ": cannot write the ETDump");
  }

 private:
  // The inputs as the program was exported (shapes, dtypes), checked against the manifest.
  void read_input_meta() {
    auto meta = module_->method_meta(spec_.name);
    if (!meta.ok()) throw RunnerError(path_ + ": cannot read the method's metadata");
    if (meta->num_inputs() != spec_.inputs.size())
      throw RunnerError(path_ + ": the program takes " + std::to_string(meta->num_inputs()) +
                        " inputs but the manifest lists " + std::to_string(spec_.inputs.size()));
    for (size_t i = 0; i < meta->num_inputs(); ++i) {
      auto info = meta->input_tensor_meta(i);
      if (!info.ok()) throw RunnerError(path_ + ": input " + std::to_string(i) + " is not a tensor");
      input_shapes_.emplace_back(info->sizes().begin(), info->sizes().end());
      input_types_.push_back(info->scalar_type());
    }
  }

  const Method& spec_;
  std::string path_;
  std::shared_ptr<Module> module_;
  std::vector<std::vector<int64_t>> input_shapes_;
  std::vector<ScalarType> input_types_;
  double load_ms_ = 0;
};

// ---------------------------------------------------------------------------------------------
// The pipeline
// ---------------------------------------------------------------------------------------------
namespace {

// The method of `name` for an image size and guidance (see Pipeline's constructor).
const Method& pick_method(const Bundle& bundle, const std::string& name, int resolution, double guidance) {
  const Component& c = bundle.component(name);
  std::vector<const Method*> fits;
  for (const Method& m : c.methods)
    if (name == "text_encoder" || m.resolution == resolution) fits.push_back(&m);
  if (fits.empty()) {
    std::string sizes;
    for (int s : bundle.resolutions()) sizes += (sizes.empty() ? "" : ", ") + std::to_string(s) + "x" + std::to_string(s);
    throw RunnerError(bundle.dir() + ": no " + std::to_string(resolution) + " px programs; this bundle serves " +
                      sizes + " (--width / --height)");
  }
  const int want = guidance != 1.0 ? 2 : 1;
  for (const Method* m : fits)
    if (m->batch == want) return *m;
  return *fits.front();
}

}  // namespace

Pipeline::Pipeline(const Bundle& bundle, int resolution, double guidance) : bundle_(bundle) {
  try {
    tokenizer_ = std::make_unique<ClipTokenizer>(ClipTokenizer::from_directory(bundle.path("tokenizer")));
  } catch (const TokenizerError& e) {
    throw RunnerError(e.what());
  }
  resolution_ = resolution > 0 ? resolution : bundle.resolution();
  if (std::isnan(guidance)) guidance = bundle.sampler().guidance;
  for (const char* name : {"text_encoder", "unet", "vae_decoder"})
    programs_.emplace(name, std::make_unique<Program>(bundle, name, pick_method(bundle, name, resolution_, guidance).name));
  max_length_ = static_cast<size_t>(text_encoder().input_shape(0).at(1));
  const auto& s = unet().input_shape(0);
  unet_batch_ = static_cast<int>(s.at(0));
  latent_shape_ = {1, s.at(1), s.at(2), s.at(3)};
}

Pipeline::~Pipeline() = default;

SamplerSettings Pipeline::settings(const std::string& sampler, int steps, double guidance, bool guidance_given,
                                   const std::string& guidance_mode) const {
  const SamplerDefaults& rec = bundle_.sampler();
  const bool batched = guidance_mode == "auto" ? unet_batch_ == 2 : guidance_mode == "batch2";
  if (batched && unet_batch_ != 2)
    throw RunnerError("guidance mode batch2 needs a batch-2 UNet program; this one has batch " +
                      std::to_string(unet_batch_));
  return resolve_settings(bundle_.scheduler(), sampler.empty() ? rec.kind : sampler, steps > 0 ? steps : rec.steps,
                          guidance_given ? guidance : rec.guidance, batched);
}

std::string Pipeline::unknown_words_warning(const std::string& prompt) const {
  std::vector<std::string> words;
  for (const std::string& w : tokenizer_->unknown_words(prompt))
    if (std::find(words.begin(), words.end(), w) == words.end()) words.push_back(w);
  if (words.empty()) return "";
  std::string shown;
  for (const std::string& w : words) shown += (shown.empty() ? "'" : ", '") + w + "'";
  return "warning: the tokenizer does not know " + shown +
         ": spelled out letter by letter, so the model has not learned what " +
         (words.size() > 1 ? "they mean" : "it means");
}

std::vector<float> Pipeline::encode(const std::string& prompt) {
  const std::vector<int32_t> ids = tokenizer_->encode_padded(prompt, max_length_);
  std::vector<HostTensor> in;
  in.push_back(HostTensor::longs({ids.begin(), ids.end()}, {1, static_cast<int64_t>(max_length_)}));
  return text_encoder().run(std::move(in));
}

// unet(sample [batch,...], t, context [batch,...]); a program with a larger batch runs the input
// repeated and keeps the last `batch` results (as mdship/runtime.py does).
std::vector<float> Pipeline::call_unet(const std::vector<float>& sample, int batch, int64_t t,
                                       const std::vector<float>& context) {
  const int reps = batch > 0 ? unet_batch_ / batch : 0;
  if (batch > unet_batch_ || reps * batch != unet_batch_)
    throw RunnerError("the UNet program has batch " + std::to_string(unet_batch_) + ", which cannot run batch " +
                      std::to_string(batch));
  std::vector<float> s, c;
  for (int r = 0; r < reps; ++r) {
    s.insert(s.end(), sample.begin(), sample.end());
    c.insert(c.end(), context.begin(), context.end());
  }
  std::vector<HostTensor> in;
  in.push_back(HostTensor::floats(std::move(s), unet().input_shape(0)));
  in.push_back(HostTensor::longs({t}, unet().input_shape(1)));
  in.push_back(HostTensor::floats(std::move(c), unet().input_shape(2)));
  std::vector<float> out = unet().run(std::move(in));
  const size_t keep = sample.size();
  if (out.size() < keep) throw RunnerError("the UNet returned fewer values than its input");
  return std::vector<float>(out.end() - static_cast<std::ptrdiff_t>(keep), out.end());
}

std::vector<float> Pipeline::latents(const std::string& prompt, uint64_t seed, const SamplerSettings& settings,
                                     std::vector<float>* start_out) {
  const std::vector<float> context = encode(prompt);
  const std::vector<float> uncond = settings.guidance != 1.0 ? encode("") : std::vector<float>{};
  std::vector<float> start = initial_latent(seed, resolution_);
  if (start.size() != static_cast<size_t>(latent_shape_[1] * latent_shape_[2] * latent_shape_[3]))
    throw RunnerError("the initial latent for resolution " + std::to_string(resolution_) +
                      " does not match the UNet's sample shape " + shape_str(unet().input_shape(0)));
  if (start_out) *start_out = start;
  const UNetFn fn = [this](const std::vector<float>& s, int batch, int64_t t, const std::vector<float>& c) {
    return call_unet(s, batch, t, c);
  };
  return sample(bundle_.scheduler(), fn, start, context, uncond, settings);
}

Image Pipeline::generate(const std::string& prompt, uint64_t seed, const SamplerSettings& settings,
                         std::vector<float>* start_out) {
  std::vector<HostTensor> in;
  in.push_back(HostTensor::floats(latents(prompt, seed, settings, start_out), vae_decoder().input_shape(0)));
  std::vector<int64_t> shape;
  const std::vector<float> decoded = vae_decoder().run(std::move(in), &shape);
  if (shape.size() != 4 || shape[0] != 1) throw RunnerError("the VAE decoder did not return [1, C, H, W]");
  Image image;
  image.height = static_cast<int>(shape[2]);
  image.width = static_cast<int>(shape[3]);
  image.rgb = to_uint8_hwc(decoded.data(), static_cast<int>(shape[1]), image.height, image.width);
  return image;
}

// ---------------------------------------------------------------------------------------------
// Metrics and test vectors
// ---------------------------------------------------------------------------------------------
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

namespace {

// A component's stored test vectors and their indices (the "<i>" of "<i>/input/<name>").
struct Vectors {
  SafetensorsFile file;
  std::vector<int> indices;
};

Vectors read_vectors(const Bundle& bundle, const Method& spec) {
  Vectors v;
  try {
    v.file = SafetensorsFile::read(bundle.path(spec.verification.vectors));
  } catch (const SafetensorsError& e) {
    throw RunnerError(std::string("unreadable test vectors: ") + e.what());
  }
  for (const auto& [key, t] : v.file.tensors()) {
    const std::string head = key.substr(0, key.find('/'));
    if (head.size() == key.size() || head.empty() || head.find_first_not_of("0123456789") != std::string::npos)
      continue;
    v.indices.push_back(std::atoi(head.c_str()));
  }
  std::sort(v.indices.begin(), v.indices.end());
  v.indices.erase(std::unique(v.indices.begin(), v.indices.end()), v.indices.end());
  if (v.indices.empty()) throw RunnerError(v.file.path() + ": no test vectors in the file");
  return v;
}

std::vector<HostTensor> vector_inputs(const SafetensorsFile& f, const Method& spec, int i) {
  std::vector<HostTensor> in;
  for (const TensorSpec& s : spec.inputs) {
    const StTensor& t = f.at(std::to_string(i) + "/input/" + s.name);
    if (t.dtype == "F32" || t.dtype == "F64") in.push_back(HostTensor::floats(t.to_float(), t.shape));
    else in.push_back(HostTensor::longs(t.to_int64(), t.shape));
  }
  return in;
}

SelftestResult score(Program& program, const Bundle& bundle, const std::string& name, const Method& spec,
                     const std::string& etdump_dir) {
  const Vectors vectors = read_vectors(bundle, spec);
  SelftestResult r;
  r.component = name;
  r.method = spec.name;
  r.psnr_db = 1e300;
  for (int i : vectors.indices) {
    const std::vector<float> got = program.run(vector_inputs(vectors.file, spec, i));
    const std::vector<float> expected = vectors.file.at(std::to_string(i) + "/expected").to_float();
    r.psnr_db = std::min(r.psnr_db, tensor_psnr(expected, got));
  }
  if (!etdump_dir.empty())
    program.write_etdump(etdump_dir + "/" + name + (spec.name == "forward" ? "" : "." + spec.name) + ".etdp");
  r.gate_db = spec.verification.gate_db;
  r.vectors = vectors.indices.size();
  r.passed = r.psnr_db >= r.gate_db;
  return r;
}

}  // namespace

std::vector<SelftestResult> selftest(const Bundle& bundle, const std::string& etdump_dir) {
  if (!etdump_dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(etdump_dir, ec);
    if (ec) throw RunnerError(etdump_dir + ": cannot create the ETDump directory (" + ec.message() + ")");
  }
  std::vector<SelftestResult> results;
  for (const std::string& name : bundle.component_order()) {
    // Every method of a component loaded together, as an app serving several sizes keeps them (one Module:
    // its weights mapped once, packed once with the weight cache); with --etdump, a Module (trace) each.
    const Component& c = bundle.component(name);
    auto shared = etdump_dir.empty() ? std::make_shared<Module>(bundle.path(c.file), Module::LoadMode::Mmap) : nullptr;
    std::vector<std::unique_ptr<Program>> loaded;
    for (const Method& m : c.methods) {
      loaded.push_back(std::make_unique<Program>(bundle, name, m.name, !etdump_dir.empty(), shared));
      results.push_back(score(*loaded.back(), bundle, name, m, etdump_dir));
    }
  }
  return results;
}

OrderedJson selftest_json(const std::vector<SelftestResult>& results) {
  OrderedJson out = OrderedJson::object();
  for (const SelftestResult& r : results) {  // a component's worst method, and each method when it has several
    const OrderedJson one = {{"psnr_db", r.psnr_db}, {"gate_db", r.gate_db}, {"vectors", r.vectors},
                             {"passed", r.passed}};
    if (!out.contains(r.component)) {
      out[r.component] = one;
    } else {
      auto& c = out[r.component];
      c["psnr_db"] = std::min(c["psnr_db"].get<double>(), r.psnr_db);
      c["vectors"] = c["vectors"].get<size_t>() + r.vectors;
      c["passed"] = c["passed"].get<bool>() && r.passed;
    }
  }
  for (const SelftestResult& r : results)  // per method too, for a component with several
    if (r.method != "forward") {
      for (const SelftestResult& f : results)
        if (f.component == r.component && f.method == "forward")
          out[r.component]["methods"]["forward"] = {{"psnr_db", f.psnr_db}, {"gate_db", f.gate_db},
                                                    {"vectors", f.vectors}, {"passed", f.passed}};
      out[r.component]["methods"][r.method] = {{"psnr_db", r.psnr_db}, {"gate_db", r.gate_db},
                                               {"vectors", r.vectors}, {"passed", r.passed}};
    }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Benchmark
// ---------------------------------------------------------------------------------------------
namespace {

// median and p90 of timings in ms, computed as mdship/runtime.py does.
OrderedJson stats(std::vector<double> samples) {
  std::sort(samples.begin(), samples.end());
  const size_t n = samples.size();
  const double median = n % 2 ? samples[n / 2] : (samples[n / 2 - 1] + samples[n / 2]) / 2;
  const size_t p90 = std::min(n - 1, static_cast<size_t>(std::nearbyint(0.9 * static_cast<double>(n - 1))));
  return {{"median_ms", rounded(median, 3)}, {"p90_ms", rounded(samples[p90], 3)}, {"runs", n}};
}

// `warmup` untimed calls of `fn`, then the timings of `runs` calls.
template <typename Fn>
OrderedJson time_calls(const BenchOptions& o, Fn fn) {
  for (int i = 0; i < o.warmup; ++i) fn();
  std::vector<double> samples;
  for (int i = 0; i < o.runs; ++i) {
    const auto start = Clock::now();
    fn();
    samples.push_back(ms_since(start));
  }
  return stats(std::move(samples));
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

const char* const kPipelineComponents[] = {"text_encoder", "unet", "vae_decoder"};

// Per-component latency on test vector 0.
OrderedJson bench_components(const Bundle& bundle, Pipeline& pipe, const BenchOptions& o) {
  OrderedJson out = OrderedJson::object();
  for (const char* name : kPipelineComponents) {
    Program& program = pipe.program(name);
    const Vectors vectors = read_vectors(bundle, program.spec());
    const std::vector<HostTensor> inputs = vector_inputs(vectors.file, program.spec(), vectors.indices.front());
    out[name] = time_calls(o, [&] { program.run(inputs); });
  }
  return out;
}

// Whole generations (seed 0) with `settings`.
OrderedJson bench_end_to_end(Pipeline& pipe, const SamplerSettings& settings, const BenchOptions& o) {
  OrderedJson out = time_calls(o, [&] { pipe.generate(o.prompt, 0, settings); });
  out["unet_calls"] = settings.unet_calls();
  out["sampler"] = settings.sampler;
  out["guidance"] = settings.guidance;
  out["batched_guidance"] = settings.batched_guidance;
  return out;
}

}  // namespace

OrderedJson bench(const Bundle& bundle, const BenchOptions& o) {
  Pipeline pipe(bundle);
  OrderedJson report = {{"bundle", bundle.dir()}, {"backend", bundle.backend()}, {"runner", "cpp"},
                        {"threads", thread_count()}, {"runs", o.runs}, {"warmup", o.warmup}};
  report["load_ms"] = OrderedJson::object();
  for (const char* name : kPipelineComponents) report["load_ms"][name] = rounded(pipe.program(name).load_ms(), 3);
  report["components"] = bench_components(bundle, pipe, o);
  const SamplerSettings full = pipe.settings("", 0, 0, false);
  report["end_to_end_one_step"] = bench_end_to_end(pipe, pipe.settings("one_step", 0, 1.0, true), o);
  report["end_to_end_" + std::to_string(full.steps) + "_step"] = bench_end_to_end(pipe, full, o);
  report["peak_rss_mb"] = rounded(peak_rss_mb(), 1);
  return report;
}

}  // namespace mdship
