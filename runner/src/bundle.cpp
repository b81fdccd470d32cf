#include "bundle.h"

#include <algorithm>

#include <sstream>

#include "files.h"
#include "json_io.h"
#include "sha256.h"

namespace mdship {

namespace {

constexpr const char* kManifest = "manifest.json";
constexpr const char* kIntegrity = "manifest.json.sha256";

// An optional member of the given type, else nullptr.
const Json* member(const Json& obj, const char* key, Json::value_t type) {
  const Json* v = json_member(obj, key);
  return v && v->type() == type ? v : nullptr;
}

// Typed field access with one-line errors naming the file and the key path.
class Reader {
 public:
  explicit Reader(std::string file) : file_(std::move(file)) {}

  [[noreturn]] void fail(const std::string& key, const std::string& what) const {
    throw BundleError(file_ + ": " + (key.empty() ? "" : "'" + key + "' ") + what);
  }
  const Json& need(const Json& obj, const std::string& key, const std::string& path) const {
    const Json* v = json_member(obj, key);
    if (!v) fail(path, "is missing");
    return *v;
  }
  const Json& object(const Json& obj, const std::string& key, const std::string& path) const {
    const Json& v = need(obj, key, path);
    if (!v.is_object()) fail(path, std::string("must be an object, not ") + v.type_name());
    return v;
  }
  std::string string(const Json& obj, const std::string& key, const std::string& path) const {
    const Json& v = need(obj, key, path);
    if (!v.is_string()) fail(path, std::string("must be a string, not ") + v.type_name());
    return v.get<std::string>();
  }
  double number(const Json& obj, const std::string& key, const std::string& path) const {
    const Json& v = need(obj, key, path);
    if (!v.is_number()) fail(path, std::string("must be a number, not ") + v.type_name());
    return v.get<double>();
  }
  int64_t integer(const Json& obj, const std::string& key, const std::string& path) const {
    const std::optional<int64_t> v = json_int64(need(obj, key, path));
    if (!v) fail(path, "must be an integer");
    return *v;
  }
  std::vector<int64_t> integers(const Json& list, const std::string& path, bool non_negative) const {
    const char* what = non_negative ? "must be a list of non-negative integers" : "must be a list of integers";
    if (!list.is_array()) fail(path, what);
    std::vector<int64_t> out;
    for (const Json& e : list) {
      const std::optional<int64_t> v = json_int64(e);
      if (!v || (non_negative && *v < 0)) fail(path, what);
      out.push_back(*v);
    }
    return out;
  }

  std::vector<TensorSpec> specs(const Json& obj, const std::string& key, const std::string& path) const {
    const Json& list = need(obj, key, path);
    if (!list.is_array()) fail(path, "must be a list of tensor specs");
    std::vector<TensorSpec> out;
    for (size_t i = 0; i < list.size(); ++i) {
      const Json& e = list[i];
      const std::string p = path + "[" + std::to_string(i) + "]";
      if (!e.is_object()) fail(p, "must be an object {name, shape, dtype}");
      TensorSpec s;
      s.name = string(e, "name", p + ".name");
      s.dtype = string(e, "dtype", p + ".dtype");
      s.shape = integers(need(e, "shape", p + ".shape"), p + ".shape", true);
      out.push_back(std::move(s));
    }
    return out;
  }

  SamplerDefaults sampler(const Json& obj, const std::string& path) const {
    SamplerDefaults s;
    s.kind = string(obj, "kind", path + ".kind");
    s.steps = static_cast<int>(integer(obj, "steps", path + ".steps"));
    s.guidance = number(obj, "guidance", path + ".guidance");
    if (const Json* m = member(obj, "guidance_mode", Json::value_t::string)) s.guidance_mode = m->get<std::string>();
    return s;
  }

 private:
  std::string file_;
};

bool is_hex_digest(const std::string& s) {
  return s.size() == 64 && s.find_first_not_of("0123456789abcdef") == std::string::npos;
}

// manifest.json.sha256 holds exactly "<64 lowercase hex>  manifest.json\n" (sha256sum's format),
// and that digest is manifest.json's: one digest then covers every byte of the bundle.
void check_integrity(const std::string& dir, const std::string& manifest_bytes) {
  const std::string path = join_path(dir, kIntegrity);
  std::string text;
  if (!is_file(path))
    throw BundleError(path + ": missing (the bundle's integrity root); rebuild the bundle, or fetch it again");
  if (!read_file(path, text)) throw BundleError(path + ": unreadable; rebuild the bundle, or fetch it again");
  const std::string digest = text.substr(0, 64);
  if (!is_hex_digest(digest) || text.substr(64) != std::string("  ") + kManifest + "\n")
    throw BundleError(path + ": expected exactly one line '<sha256>  " + kManifest + "'; the bundle is damaged");
  if (sha256_hex(manifest_bytes) != digest)
    throw BundleError(join_path(dir, kManifest) + ": sha256 does not match " + kIntegrity +
                      " (tampered with or truncated)");
}

// manifest.json, checked against the integrity root and for its schema version.
Json read_manifest(const std::string& dir) {
  const std::string path = join_path(dir, kManifest);
  std::string bytes;
  if (!is_file(path)) throw BundleError(dir + ": no manifest.json; not a bundle, or a build that did not finish");
  if (!read_file(path, bytes)) throw BundleError(path + ": cannot read");
  check_integrity(dir, bytes);
  Json manifest = parse_json<BundleError>(bytes, path);
  if (!manifest.is_object()) Reader(path).fail("", "must be a JSON object");
  const Json* v = json_member(manifest, "schema_version");
  const std::optional<int64_t> version = v ? json_int64(*v) : std::nullopt;
  if (version != kManifestSchemaVersion) {
    const std::string shown = !v ? "None" : version ? std::to_string(*version) : "(not an integer)";
    throw BundleError(path + ": schema_version " + shown + " is not supported by this runner (expected " +
                      std::to_string(kManifestSchemaVersion) + "); rebuild the bundle with a matching mdship");
  }
  return manifest;
}

Component read_component(const Reader& m, const std::string& name, const Json& c) {
  const std::string p = "components." + name;
  if (!c.is_object()) m.fail(p, "must be an object");
  Component comp;
  comp.name = name;
  comp.file = m.string(c, "file", p + ".file");
  comp.sha256 = m.string(c, "sha256", p + ".sha256");
  if (const Json* x = member(c, "precision", Json::value_t::string)) comp.precision = x->get<std::string>();
  comp.inputs = m.specs(c, "inputs", p + ".inputs");
  comp.outputs = m.specs(c, "outputs", p + ".outputs");
  if (const Json* v = member(c, "verification", Json::value_t::object)) {
    if (const Json* mode = member(*v, "mode", Json::value_t::string)) comp.verification.mode = mode->get<std::string>();
    comp.verification.gate_db = m.number(*v, "gate_db", p + ".verification.gate_db");
    if (const Json* x = json_member(*v, "psnr_db"); x && x->is_number()) comp.verification.psnr_db = x->get<double>();
    if (const Json* x = member(*v, "vectors", Json::value_t::string)) comp.verification.vectors = x->get<std::string>();
  }
  if (comp.verification.vectors.empty()) comp.verification.vectors = "test_vectors/" + name + ".safetensors";
  return comp;
}

// The forward method (from the component's own fields, at the manifest's resolution) and any further methods.
void read_methods(const Reader& m, const Json& c, int resolution, Component& comp) {
  const std::string p = "components." + comp.name;
  Method forward{"forward", resolution, 1, comp.inputs, comp.outputs, comp.verification};
  if (comp.name == "unet" && !comp.inputs.empty() && !comp.inputs[0].shape.empty())
    forward.batch = static_cast<int>(comp.inputs[0].shape[0]);
  comp.methods.push_back(std::move(forward));
  const Json* list = member(c, "methods", Json::value_t::array);
  if (!list) return;
  for (size_t i = 0; i < list->size(); ++i) {
    const Json& e = list->at(i);
    const std::string q = p + ".methods[" + std::to_string(i) + "]";
    if (!e.is_object()) m.fail(q, "must be an object");
    Method method;
    method.name = m.string(e, "name", q + ".name");
    method.resolution = static_cast<int>(m.integer(e, "resolution", q + ".resolution"));
    method.batch = static_cast<int>(m.integer(e, "batch", q + ".batch"));
    method.inputs = m.specs(e, "inputs", q + ".inputs");
    method.outputs = m.specs(e, "outputs", q + ".outputs");
    const Json* v = member(e, "verification", Json::value_t::object);
    if (!v) m.fail(q + ".verification", "is missing");
    method.verification.gate_db = m.number(*v, "gate_db", q + ".verification.gate_db");
    if (const Json* x = json_member(*v, "psnr_db"); x && x->is_number()) method.verification.psnr_db = x->get<double>();
    method.verification.vectors = m.string(*v, "vectors", q + ".verification.vectors");
    if (method.inputs.size() != comp.inputs.size() || method.resolution <= 0 || method.resolution % kVaeScale)
      m.fail(q, "must take the component's inputs at a positive multiple of 8 pixels");
    comp.methods.push_back(std::move(method));
  }
}

// Basic shape sanity, so that later indexing cannot go out of bounds.
void check_component_shapes(const Reader& m, const std::map<std::string, Component>& components) {
  for (const char* required : {"text_encoder", "unet", "vae_decoder"})
    if (!components.count(required)) m.fail("components", std::string("has no '") + required + "' component");
  const Component& te = components.at("text_encoder");
  const Component& unet = components.at("unet");
  const Component& vae = components.at("vae_decoder");
  if (te.inputs.size() != 1 || te.inputs[0].shape.size() != 2 || te.outputs.size() != 1 ||
      te.outputs[0].shape.size() != 3)
    m.fail("components.text_encoder", "must take input_ids [1, L] and return hidden states [1, L, D]");
  if (unet.inputs.size() != 3 || unet.inputs[0].shape.size() != 4 || unet.inputs[2].shape.size() != 3 ||
      unet.outputs.size() != 1)
    m.fail("components.unet", "must take sample [B,C,h,w], timestep [1], context [B,L,D]");
  if (vae.inputs.size() != 1 || vae.inputs[0].shape.size() != 4 || vae.outputs.size() != 1 ||
      vae.outputs[0].shape.size() != 4)
    m.fail("components.vae_decoder", "must take latent [1,C,h,w] and return image [1,3,H,W]");
}

// The manifest's `files` map (optional, as in Python) plus every component's program.
std::map<std::string, std::string> expected_files(const Reader& m, const Json& manifest,
                                                  const std::map<std::string, Component>& components) {
  std::map<std::string, std::string> files;
  if (manifest.contains("files"))
    for (const auto& [rel, digest] : m.object(manifest, "files", "files").items()) {
      if (!digest.is_string()) m.fail("files." + rel, "must be a sha256 string");
      files[rel] = digest.get<std::string>();
    }
  for (const auto& [name, c] : components) files.emplace(c.file, c.sha256);  // `files` wins, as setdefault
  return files;
}

Json read_scheduler_json(const std::string& dir) {
  const std::string path = join_path(dir, "scheduler.json");
  std::string text;
  if (!is_file(path) || !read_file(path, text)) throw BundleError(path + ": missing from the bundle");
  Json sched = parse_json<BundleError>(text, path);
  if (!sched.is_object()) Reader(path).fail("", "must be a JSON object");
  return sched;
}

SchedulerConfig read_scheduler(const Reader& s, const Json& sched) {
  SchedulerConfig cfg;
  cfg.num_train_timesteps = static_cast<int>(s.integer(sched, "num_train_timesteps", "num_train_timesteps"));
  cfg.beta_schedule = s.string(sched, "beta_schedule", "beta_schedule");
  cfg.beta_start = s.number(sched, "beta_start", "beta_start");
  cfg.beta_end = s.number(sched, "beta_end", "beta_end");
  cfg.prediction_type = s.string(sched, "prediction_type", "prediction_type");
  if (sched.contains("default_sampler")) cfg.default_sampler = s.string(sched, "default_sampler", "default_sampler");
  if (sched.contains("default_steps"))
    cfg.default_steps = static_cast<int>(s.integer(sched, "default_steps", "default_steps"));
  if (sched.contains("default_guidance"))
    cfg.default_guidance = s.number(sched, "default_guidance", "default_guidance");
  if (sched.contains("default_timesteps"))
    cfg.default_timesteps = s.integers(sched.at("default_timesteps"), "default_timesteps", false);
  const std::vector<std::string> problems = cfg.validate();
  if (!problems.empty()) s.fail("", problems.front());
  return cfg;
}

}  // namespace

int64_t TensorSpec::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string TensorSpec::describe() const {
  std::ostringstream os;
  os << name << " " << dtype << " [";
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << "]";
  return os.str();
}

Bundle Bundle::open(const std::string& dir_in) {
  std::string dir = dir_in;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  if (!is_dir(dir))
    throw BundleError(dir + ": bundle directory not found (expected the output of `mdship build`, e.g. "
                      "artifacts/default/xnnpack)");
  const Json manifest = read_manifest(dir);
  const Reader m(join_path(dir, kManifest));
  Bundle b;
  b.dir_ = dir;
  b.resolution_ = static_cast<int>(m.integer(manifest, "resolution", "resolution"));
  if (b.resolution_ <= 0 || b.resolution_ % kVaeScale != 0)
    m.fail("resolution", "must be a positive multiple of " + std::to_string(kVaeScale));
  b.backend_ = m.string(m.object(manifest, "target", "target"), "backend", "target.backend");
  for (const auto& [name, c] : m.object(manifest, "components", "components").items())
    read_methods(m, c, b.resolution_, b.components_.emplace(name, read_component(m, name, c)).first->second);
  check_component_shapes(m, b.components_);
  b.files_ = expected_files(m, manifest, b.components_);

  // scheduler.json is parsed here, so it is checked here, even under --no-verify: a changed byte is reported as
  // the changed file it is, not as the JSON error it may cause.
  if (const auto it = b.files_.find("scheduler.json"); it != b.files_.end()) b.verify_file(it->first, it->second);
  const Json sched = read_scheduler_json(dir);
  const Reader s(join_path(dir, "scheduler.json"));
  b.scheduler_ = read_scheduler(s, sched);
  // The build's sampler settings: manifest "sampler" (what `mdship run` reads), else scheduler.json's.
  if (const Json* ms = member(manifest, "sampler", Json::value_t::object)) {
    b.sampler_ = m.sampler(*ms, "sampler");
  } else if (const Json* ss = member(sched, "sampler", Json::value_t::object)) {
    b.sampler_ = s.sampler(*ss, "sampler");
  } else {
    b.sampler_.kind = b.scheduler_.default_sampler;
    b.sampler_.steps = b.scheduler_.default_steps;
    b.sampler_.guidance = b.scheduler_.default_guidance;
  }
  return b;
}

std::vector<int> Bundle::resolutions() const {
  std::vector<int> sizes;
  for (const auto& [name, c] : components_)
    for (const Method& m : c.methods)
      if (std::find(sizes.begin(), sizes.end(), m.resolution) == sizes.end()) sizes.push_back(m.resolution);
  std::stable_partition(sizes.begin(), sizes.end(), [this](int s) { return s == resolution_; });
  return sizes;
}

const Method& Component::method(const std::string& wanted) const {
  for (const Method& m : methods)
    if (m.name == wanted) return m;
  throw BundleError(name + " has no method '" + wanted + "'");
}

const Component& Bundle::component(const std::string& name) const {
  auto it = components_.find(name);
  if (it == components_.end()) throw BundleError(dir_ + "/manifest.json: no component '" + name + "'");
  return it->second;
}

std::string Bundle::path(const std::string& relative) const { return join_path(dir_, relative); }

bool Bundle::runnable_with(const std::vector<std::string>& backends) const {
  for (const std::string& b : backends)
    if (b == backend_) return true;
  return false;
}

void Bundle::require_runnable(const std::vector<std::string>& backends) const {
  if (runnable_with(backends)) return;
  std::string list;
  for (const std::string& b : backends) list += (list.empty() ? "" : ", ") + b;
  throw BundleError(dir_ + ": a " + backend_ + " bundle cannot run here (this runner was built with the " + list +
                    " backends); run it on a device with a runner built for " + backend_ +
                    " (runner/README.md), or check it with `mdship verify`");
}

void Bundle::require_files() const {
  for (const auto& [name, c] : components_)
    if (!is_file(path(c.file))) throw BundleError(path(c.file) + ": missing from the bundle (the manifest lists it)");
}

void Bundle::verify_file(const std::string& rel, const std::string& digest) const {
  const std::string file = path(rel);
  if (!is_file(file)) throw BundleError(file + ": missing from the bundle (the manifest lists it)");
  if (sha256_file(file) != digest)
    throw BundleError(file + ": sha256 does not match the manifest (tampered with or truncated)");
}

void Bundle::verify_files() const {
  for (const auto& [rel, digest] : files_) verify_file(rel, digest);
}

std::vector<std::string> Bundle::component_order() const {
  std::vector<std::string> out = {"text_encoder", "unet", "vae_decoder"};
  for (const auto& [name, c] : components_)
    if (name != "text_encoder" && name != "unet" && name != "vae_decoder") out.push_back(name);
  return out;
}

}  // namespace mdship
