// mdship-runner: the command line of the C++ runner for mdship bundles (the runner itself is the
// library in pipeline.h).
//
//   mdship-runner BUNDLE --prompt TEXT [--seed N] [--steps N] [--guidance G]
//                 [--sampler ddim|one_step] [--threads N] [--no-verify] --out PNG
//   mdship-runner BUNDLE --selftest [--json] [--etdump DIR] [--threads N] [--no-verify]
//   mdship-runner BUNDLE --bench [--runs N] [--warmup N] [--threads N] [--prompt TEXT] [--no-verify]
//
// Exit codes: 0 ok; 1 --selftest found a component below its gate; 2 any error (one line on
// stderr: bad option, missing bundle or file, a file that differs from the manifest's sha256, bad
// manifest, a backend this machine cannot run).
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "image_file.h"
#include "pipeline.h"

namespace {

constexpr const char* kVersion = "mdship-runner 0.1.0";

constexpr const char* kDescription =
    "Generates an image from an mdship bundle (the output of `mdship build`) with the ExecuTorch runtime.\n"
    "  mdship-runner BUNDLE --prompt TEXT [--seed N] [--steps N] [--guidance G] [--sampler S] --out PNG\n"
    "  mdship-runner BUNDLE --selftest [--json]\n"
    "  mdship-runner BUNDLE --bench [--runs N] [--warmup N] [--prompt TEXT]\n"
    "Defaults for --steps, --guidance and --sampler come from the bundle's recipe. Every file of the\n"
    "bundle is checked against the sha256 in its manifest before anything runs (--no-verify skips it).";

// A usage error found after parsing (CLI11 reports the others as CLI::ParseError).
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

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
  std::string etdump_dir;
  std::string guidance_mode = "auto";
  bool selftest = false;
  bool bench = false;
  bool as_json = false;
  bool verbose = false;
  bool no_verify = false;
  int runs = 5;
  int warmup = 1;
  int threads = 0;
  int width = 0;
  int height = 0;
  std::string weight_cache = "on";
};

const CLI::Validator kFinite(
    [](const std::string& v) {
      return std::isfinite(std::strtod(v.c_str(), nullptr)) ? std::string() : "'" + v + "' is not a finite number";
    },
    "");

void add_options(CLI::App& app, Options& o) {
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);  // a repeated option: the last wins
  app.add_option("BUNDLE", o.bundle, "bundle directory (e.g. artifacts/default/xnnpack)")->required();
  app.add_option("--prompt", o.prompt, "text prompt (--bench: default \"a photo\")");
  app.add_option("--seed", o.seed, "integer seed; negative seeds wrap modulo 2^64 as in Python")->type_name("INT");
  app.add_option("--steps", o.steps, "sampler steps")->check(CLI::Range(1, 1000000));
  app.add_option("--guidance", o.guidance, "classifier-free guidance scale")->check(kFinite);
  app.add_option("--sampler", o.sampler, "sampler")->check(CLI::IsMember({"ddim", "one_step"}));
  app.add_option("--width", o.width, "image width in pixels (default: the bundle's; it must be a size it serves)")
      ->check(CLI::Range(1, 1000000));
  app.add_option("--height", o.height, "image height in pixels (square images: equal to --width)")
      ->check(CLI::Range(1, 1000000));
  app.add_option("--out", o.out, "PNG to write (parent directories are created)");
  app.add_flag("--selftest", o.selftest,
               "re-run every component's stored test vectors; print PSNR per component; exit 1 if any is below "
               "its manifest gate");
  app.add_flag("--json", o.as_json, "--selftest: print JSON");
  app.add_option("--etdump", o.etdump_dir,
                 "--selftest: also write each component's ETDump (the operators that ran, the delegate's by name, "
                 "with timings) to DIR/<component>.etdp")
      ->type_name("DIR");
  app.add_flag("--bench", o.bench, "JSON: load time, per-component latency (median/p90), end-to-end latency")
      ->excludes("--selftest");
  app.add_option("--runs", o.runs, "--bench: timed runs")->check(CLI::Range(1, 1000000));
  app.add_option("--warmup", o.warmup, "--bench: untimed runs first")->check(CLI::Range(0, 1000000));
  app.add_option("--threads", o.threads, "ExecuTorch thread pool size (default: the number of cores)")
      ->check(CLI::Range(1, 1000000));
  app.add_flag("--no-verify", o.no_verify,
               "skip the sha256 check of the bundle's files (for benchmarks; manifest.json is still checked)");
  app.add_flag("--verbose", o.verbose, "print the ExecuTorch runtime's log messages");
  // Hidden, for the tests: the raw float32 initial latent; how CFG calls the UNet.
  app.add_option("--dump-latent", o.dump_latent)->group("");
  app.add_option("--xnnpack-weight-cache", o.weight_cache)->check(CLI::IsMember({"on", "off"}))->group("");
  app.add_option("--guidance-mode", o.guidance_mode)->check(CLI::IsMember({"auto", "batch2", "two_calls"}))->group("");
  app.set_version_flag("--version", kVersion);
}

// Throws CLI::ParseError (CLI::Success for --help / --version) or UsageError.
Options parse_args(CLI::App& app, int argc, char** argv) {
  Options o;
  add_options(app, o);
  app.parse(argc, argv);
  o.prompt_given = app.count("--prompt") > 0;
  o.guidance_given = app.count("--guidance") > 0;
  if (o.width && o.height && o.width != o.height)
    throw UsageError("--width " + std::to_string(o.width) + " --height " + std::to_string(o.height) +
                     ": MobileDiffusion bundles make square images; give equal sizes");
  if (!o.width) o.width = o.height;
  if (!o.selftest && !o.bench) {
    if (!o.prompt_given) throw UsageError("--prompt is required to generate an image (or use --selftest / --bench)");
    if (o.out.empty()) throw UsageError("--out PNG is required to generate an image");
  }
  return o;
}

uint64_t parse_seed(const std::string& text) {
  // Python: int(seed) & (2**64 - 1); negative seeds wrap as two's complement.
  errno = 0;
  char* end = nullptr;
  const bool negative = !text.empty() && text[0] == '-';
  const uint64_t v = negative ? static_cast<uint64_t>(std::strtoll(text.c_str(), &end, 10))
                              : std::strtoull(text.c_str(), &end, 10);
  if (errno || !end || *end || end == text.c_str())
    throw UsageError("--seed '" + text + "' is not an integer in " + (negative ? "int64 range" : "0..2^64-1"));
  return v;
}

void write_floats(const std::string& path, const std::vector<float>& values) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  const bool ok = f && std::fwrite(values.data(), sizeof(float), values.size(), f) == values.size();
  if (!f || std::fclose(f) != 0 || !ok) throw std::runtime_error("cannot write " + path);
}

int cmd_generate(const Options& o) {
  const uint64_t seed = parse_seed(o.seed);
  const mdship::Bundle bundle = mdship::open_bundle(o.bundle, !o.no_verify);
  mdship::set_threads(o.threads);
  mdship::Pipeline pipe(bundle, o.width, o.guidance_given ? o.guidance : NAN);
  const mdship::SamplerSettings settings =
      pipe.settings(o.sampler, o.steps, o.guidance, o.guidance_given, o.guidance_mode);
  const std::string warning = pipe.unknown_words_warning(o.prompt);
  if (!warning.empty()) std::cerr << warning << std::endl;
  std::vector<float> start;
  const mdship::Image image = pipe.generate(o.prompt, seed, settings, &start);
  if (!o.dump_latent.empty()) write_floats(o.dump_latent, start);
  mdship::write_png(o.out, image.rgb.data(), image.width, image.height, 3);
  std::cout << o.out << std::endl;
  return 0;
}

int cmd_selftest(const Options& o) {
  const mdship::Bundle bundle = mdship::open_bundle(o.bundle, !o.no_verify);
  mdship::set_threads(o.threads);
  const std::vector<mdship::SelftestResult> results = mdship::selftest(bundle, o.etdump_dir);
  bool all_passed = true;
  for (const mdship::SelftestResult& r : results) {
    all_passed = all_passed && r.passed;
    if (o.as_json) continue;
    const std::string label = r.method == "forward" ? r.component : r.component + "." + r.method;
    std::printf("%-13s %7.2f dB (gate %.0f, %zu vectors)  %s\n", label.c_str(), r.psnr_db, r.gate_db, r.vectors,
                r.passed ? "ok" : "FAILED");
  }
  if (o.as_json) std::printf("%s\n", mdship::selftest_json(results).dump().c_str());
  std::fflush(stdout);
  return all_passed ? 0 : 1;
}

int cmd_bench(const Options& o) {
  const mdship::Bundle bundle = mdship::open_bundle(o.bundle, !o.no_verify);
  mdship::set_threads(o.threads);
  mdship::BenchOptions options;
  options.runs = o.runs;
  options.warmup = o.warmup;
  if (o.prompt_given) options.prompt = o.prompt;
  std::cout << mdship::bench(bundle, options).dump(2) << std::endl;
  return 0;
}

std::string one_line(std::string s) {
  for (char& c : s)
    if (c == '\n' || c == '\r') c = ' ';
  return s;
}

int fail(const std::string& message) {
  std::cout.flush();
  std::cerr << "mdship-runner: error: " << one_line(message) << std::endl;
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app(kDescription, "mdship-runner");
  app.footer("Exit codes: 0 ok, 1 self-test failed, 2 error (one line on stderr).");
  try {
    const Options o = parse_args(app, argc, argv);
    mdship::init_runtime(o.verbose, o.weight_cache == "on");
    if (o.selftest) return cmd_selftest(o);
    if (o.bench) return cmd_bench(o);
    return cmd_generate(o);
  } catch (const CLI::Success& e) {
    return app.exit(e);  // --help / --version: printed on stdout, exit 0
  } catch (const CLI::ParseError& e) {
    return fail(std::string(e.what()) + " (see --help)");
  } catch (const std::exception& e) {
    return fail(e.what());
  }
}
