#include "bundle.h"

#include <sys/stat.h>

#include <sstream>

#include "json.h"

namespace mdship {

namespace {

bool is_dir(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool is_file(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string join(const std::string& dir, const std::string& rel) {
  if (dir.empty()) return rel;
  return dir.back() == '/' ? dir + rel : dir + "/" + rel;
}

// Typed field access with one-line errors naming the file and the key path.
class Reader {
 public:
  explicit Reader(std::string file) : file_(std::move(file)) {}

  [[noreturn]] void fail(const std::string& key, const std::string& what) const {
    throw BundleError(file_ + ": " + (key.empty() ? "" : "'" + key + "' ") + what);
  }
  const json::Value& need(const json::Value& obj, const std::string& key, const std::string& path) const {
    const json::Value* v = obj.get(key);
    if (!v) fail(path, "is missing");
    return *v;
  }
  const json::Value& object(const json::Value& obj, const std::string& key, const std::string& path) const {
    const json::Value& v = need(obj, key, path);
    if (!v.is_object()) fail(path, std::string("must be an object, not ") + json::type_name(v.type));
    return v;
  }
  std::string string(const json::Value& obj, const std::string& key, const std::string& path) const {
    const json::Value& v = need(obj, key, path);
    if (!v.is_string()) fail(path, std::string("must be a string, not ") + json::type_name(v.type));
    return v.string;
  }
  double number(const json::Value& obj, const std::string& key, const std::string& path) const {
    const json::Value& v = need(obj, key, path);
    if (!v.is_number()) fail(path, std::string("must be a number, not ") + json::type_name(v.type));
    return v.number;
  }
  int64_t integer(const json::Value& obj, const std::string& key, const std::string& path) const {
    const json::Value& v = need(obj, key, path);
    if (!v.is_number() || !v.is_integer) fail(path, "must be an integer");
    return v.integer;
  }

  std::vector<TensorSpec> specs(const json::Value& obj, const std::string& key, const std::string& path) const {
    const json::Value& list = need(obj, key, path);
    if (!list.is_array()) fail(path, "must be a list of tensor specs");
    std::vector<TensorSpec> out;
    for (size_t i = 0; i < list.array.size(); ++i) {
      const json::Value& e = list.array[i];
      const std::string p = path + "[" + std::to_string(i) + "]";
      if (!e.is_object()) fail(p, "must be an object {name, shape, dtype}");
      TensorSpec s;
      s.name = string(e, "name", p + ".name");
      s.dtype = string(e, "dtype", p + ".dtype");
      const json::Value& shape = need(e, "shape", p + ".shape");
      if (!shape.is_array()) fail(p + ".shape", "must be a list of integers");
      for (const json::Value& d : shape.array) {
        if (!d.is_integer || d.integer < 0) fail(p + ".shape", "must be a list of non-negative integers");
        s.shape.push_back(d.integer);
      }
      out.push_back(std::move(s));
    }
    return out;
  }

  SamplerDefaults sampler(const json::Value& obj, const std::string& path) const {
    SamplerDefaults s;
    s.kind = string(obj, "kind", path + ".kind");
    s.steps = static_cast<int>(integer(obj, "steps", path + ".steps"));
    s.guidance = number(obj, "guidance", path + ".guidance");
    if (const json::Value* m = obj.get("guidance_mode"); m && m->is_string()) s.guidance_mode = m->string;
    return s;
  }

 private:
  std::string file_;
};

json::Value read_json(const std::string& path) {
  try {
    return json::parse_file(path);
  } catch (const json::JsonError& e) {
    throw BundleError(e.what());
  }
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
  const std::string manifest_path = join(dir, "manifest.json");
  if (!is_file(manifest_path))
    throw BundleError(dir + ": no manifest.json; not a bundle, or a build that did not finish");
  const json::Value manifest = read_json(manifest_path);
  Reader m(manifest_path);
  if (!manifest.is_object()) m.fail("", "must be a JSON object");
  const json::Value* version = manifest.get("schema_version");
  if (!version || !version->is_integer || version->integer != kManifestSchemaVersion) {
    std::string shown = !version ? "None" : version->is_integer ? std::to_string(version->integer) : "(not an integer)";
    throw BundleError(manifest_path + ": schema_version " + shown + " is not supported by this runner (expected " +
                      std::to_string(kManifestSchemaVersion) + "); rebuild the bundle with a matching mdship");
  }

  Bundle b;
  b.dir_ = dir;
  b.resolution_ = static_cast<int>(m.integer(manifest, "resolution", "resolution"));
  if (b.resolution_ <= 0 || b.resolution_ % kVaeScale != 0)
    m.fail("resolution", "must be a positive multiple of " + std::to_string(kVaeScale));
  const json::Value& target = m.object(manifest, "target", "target");
  b.backend_ = m.string(target, "backend", "target.backend");

  const json::Value& components = m.object(manifest, "components", "components");
  for (const auto& [name, c] : components.object) {
    const std::string p = "components." + name;
    if (!c.is_object()) m.fail(p, "must be an object");
    Component comp;
    comp.name = name;
    comp.file = m.string(c, "file", p + ".file");
    comp.inputs = m.specs(c, "inputs", p + ".inputs");
    comp.outputs = m.specs(c, "outputs", p + ".outputs");
    if (const json::Value* v = c.get("verification"); v && v->is_object()) {
      const std::string vp = p + ".verification";
      if (const json::Value* mode = v->get("mode"); mode && mode->is_string()) comp.verification.mode = mode->string;
      comp.verification.gate_db = m.number(*v, "gate_db", vp + ".gate_db");
      if (const json::Value* x = v->get("psnr_db"); x && x->is_number()) comp.verification.psnr_db = x->number;
      if (const json::Value* x = v->get("vectors"); x && x->is_string()) comp.verification.vectors = x->string;
    }
    if (comp.verification.vectors.empty()) comp.verification.vectors = "test_vectors/" + name + ".safetensors";
    b.components_.emplace(name, std::move(comp));
  }
  for (const char* required : {"text_encoder", "unet", "vae_decoder"})
    if (!b.components_.count(required)) m.fail("components", std::string("has no '") + required + "' component");

  // Basic shape sanity, so that later indexing cannot go out of bounds.
  const Component& te = b.components_.at("text_encoder");
  const Component& unet = b.components_.at("unet");
  const Component& vae = b.components_.at("vae_decoder");
  if (te.inputs.size() != 1 || te.inputs[0].shape.size() != 2 || te.outputs.size() != 1 ||
      te.outputs[0].shape.size() != 3)
    m.fail("components.text_encoder", "must take input_ids [1, L] and return hidden states [1, L, D]");
  if (unet.inputs.size() != 3 || unet.inputs[0].shape.size() != 4 || unet.inputs[2].shape.size() != 3 ||
      unet.outputs.size() != 1)
    m.fail("components.unet", "must take sample [B,C,h,w], timestep [1], context [B,L,D]");
  if (vae.inputs.size() != 1 || vae.inputs[0].shape.size() != 4 || vae.outputs.size() != 1 ||
      vae.outputs[0].shape.size() != 4)
    m.fail("components.vae_decoder", "must take latent [1,C,h,w] and return image [1,3,H,W]");

  // scheduler.json
  const std::string sched_path = join(dir, "scheduler.json");
  if (!is_file(sched_path)) throw BundleError(sched_path + ": missing from the bundle");
  const json::Value sched = read_json(sched_path);
  Reader s(sched_path);
  if (!sched.is_object()) s.fail("", "must be a JSON object");
  SchedulerConfig& cfg = b.scheduler_;
  cfg.num_train_timesteps = static_cast<int>(s.integer(sched, "num_train_timesteps", "num_train_timesteps"));
  cfg.beta_schedule = s.string(sched, "beta_schedule", "beta_schedule");
  cfg.beta_start = s.number(sched, "beta_start", "beta_start");
  cfg.beta_end = s.number(sched, "beta_end", "beta_end");
  cfg.prediction_type = s.string(sched, "prediction_type", "prediction_type");
  if (sched.get("default_sampler")) cfg.default_sampler = s.string(sched, "default_sampler", "default_sampler");
  if (sched.get("default_steps")) cfg.default_steps = static_cast<int>(s.integer(sched, "default_steps", "default_steps"));
  if (sched.get("default_guidance")) cfg.default_guidance = s.number(sched, "default_guidance", "default_guidance");
  if (const json::Value* ts = sched.get("default_timesteps")) {
    if (!ts->is_array()) s.fail("default_timesteps", "must be a list of integers");
    for (const json::Value& t : ts->array) {
      if (!t.is_integer) s.fail("default_timesteps", "must be a list of integers");
      cfg.default_timesteps.push_back(t.integer);
    }
  }
  const std::vector<std::string> problems = cfg.validate();
  if (!problems.empty()) s.fail("", problems.front());

  // The build's sampler settings: manifest "sampler" (what `mdship run` reads), else scheduler.json's.
  if (const json::Value* ms = manifest.get("sampler"); ms && ms->is_object()) {
    b.sampler_ = m.sampler(*ms, "sampler");
  } else if (const json::Value* ss = sched.get("sampler"); ss && ss->is_object()) {
    b.sampler_ = s.sampler(*ss, "sampler");
  } else {
    b.sampler_.kind = cfg.default_sampler;
    b.sampler_.steps = cfg.default_steps;
    b.sampler_.guidance = cfg.default_guidance;
  }
  return b;
}

const Component& Bundle::component(const std::string& name) const {
  auto it = components_.find(name);
  if (it == components_.end()) throw BundleError(dir_ + "/manifest.json: no component '" + name + "'");
  return it->second;
}

std::string Bundle::path(const std::string& relative) const { return join(dir_, relative); }

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

std::vector<std::string> Bundle::component_order() const {
  std::vector<std::string> out = {"text_encoder", "unet", "vae_decoder"};
  for (const auto& [name, c] : components_)
    if (name != "text_encoder" && name != "unet" && name != "vae_decoder") out.push_back(name);
  return out;
}

}  // namespace mdship
