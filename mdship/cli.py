"""The `mdship` command line. Each command is a thin shell over a module that does the work.

Errors a user can cause are `UserError`s: printed as one line on stderr, exit code 2, never a traceback.
A result that misses a quality gate is a `VerificationError`: one line, exit code 1.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from mdship import __version__, inputs
from mdship.capabilities import BACKENDS
from mdship.errors import UserError, VerificationError
from mdship.models.presets import PRESET_NAMES
from mdship.quiet import quiet_toolchain
from mdship.schedulers import SAMPLERS
from mdship.tune import OBJECTIVES


class Checked(click.ParamType):
    """A click type whose value is checked by `mdship.inputs` (the checks the recipe schema shares). A bad value
    raises UserError: one line, exit code 2."""

    def __init__(self, base: click.ParamType, check):
        self.base, self.check = base, check
        self.name = base.name

    def convert(self, value, param, ctx):
        value = self.base.convert(value, param, ctx)
        return self.check(value, f"--{param.name.replace('_', '-')}" if param and param.param_type_name == "option"
                          else (param.human_readable_name if param else "value"))


STEPS = Checked(click.INT, inputs.check_steps)
GUIDANCE = Checked(click.FLOAT, inputs.check_guidance)
SEED = Checked(click.INT, inputs.check_seed)
PROMPT = Checked(click.STRING, inputs.check_prompt)
OUT_FILE = Checked(click.STRING, inputs.check_output_file)
OUT_DIR = Checked(click.STRING, inputs.check_output_dir)
IMAGE_SIDE = Checked(click.INT, inputs.check_image_side)
DEVICE_HELP = ("Where to run: host (this machine), arm64-qemu (the arm64 C++ runner under qemu: `make runner-arm64`; "
               "verify runs every CPU model of the matrix, run the pinned phone model) or arm64-qemu:MODEL "
               "(one qemu -cpu model). arm64 results are emulated, not device measurements.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mdship")
@click.option("--verbose", is_flag=True, help="Show third-party log lines and warnings (ExecuTorch, torch).")
def cli(verbose):
    """mdship: ship MobileDiffusion checkpoints as quantized, verified ExecuTorch bundles.

    \b
    Typical flow:
      mdship init-checkpoint ckpt --preset tiny        # or use builtin:shapes
      mdship generate ckpt --prompt "a red circle" --out img.png
    """


# ---------------------------------------------------------------------------------------------- checkpoints
@cli.command("init-checkpoint")
@click.argument("path", type=OUT_DIR)
@click.option("--preset", type=click.Choice(PRESET_NAMES), required=True, help="Model size.")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True, help="Seed for the random weights.")
def init_checkpoint(path, preset, seed):
    """Write a random-init checkpoint of a preset to PATH (diffusers-style directory, safetensors)."""
    from mdship.checkpoint import Checkpoint

    ckpt = Checkpoint.from_preset(preset, seed)
    ckpt.save_pretrained(path)
    click.echo(f"wrote {path} (preset {preset}, seed {seed}, hash {ckpt.hash[:12]})")


@cli.command()
@click.argument("target")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def inspect(target, as_json):
    """Parameter counts and sizes of a checkpoint PATH or of `preset:NAME` (built on the meta device)."""
    from mdship.inspect import inspect_target

    report = inspect_target(target)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"{target}")
    for name, c in report["components"].items():
        click.echo(f"  {name:<14} {c['parameters'] / 1e6:9.2f}M params  {c['bytes_fp32'] / 2**20:9.1f} MiB fp32")
    click.echo(f"  {'total':<14} {report['total_parameters'] / 1e6:9.2f}M params")
    if report["hash"]:
        click.echo(f"  hash {report['hash']}")


@cli.command()
@click.argument("checkpoint")
@click.option("--prompt", type=PROMPT, required=True, help="Text prompt.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--steps", type=STEPS, default=None, help="Sampling steps (default: the checkpoint's).")
@click.option("--guidance", type=GUIDANCE, default=None, help="Classifier-free guidance scale; 1 turns it off.")
@click.option("--sampler", type=click.Choice(SAMPLERS), default=None, help="Default: the checkpoint's.")
@click.option("--out", required=True, type=OUT_FILE, help="PNG to write.")
def generate(checkpoint, prompt, seed, steps, guidance, sampler, out):
    """Generate an image with the eager fp32 reference pipeline (CHECKPOINT: path, builtin:NAME or preset:NAME)."""
    from mdship.checkpoint import Checkpoint
    from mdship.pipeline import SamplerSettings, eager_generator, save_png

    from mdship.tokenizer import unknown_words_warning

    ckpt = Checkpoint.open(checkpoint)
    settings = SamplerSettings.resolve(ckpt.scheduler, sampler, steps, guidance)
    _warn(unknown_words_warning(ckpt.tokenizer, prompt))
    image = eager_generator(ckpt)(prompt, seed, settings)
    save_png(image, out)
    click.echo(f"wrote {out} ({ckpt.resolution}x{ckpt.resolution}, {settings.sampler}, {settings.steps} steps, "
               f"guidance {settings.guidance}, seed {seed})")


@cli.command()
@click.argument("target")
@click.option("--prompts", "prompts_file", required=True, type=click.Path(dir_okay=False),
              help="Prompt file, one shapes caption per line (e.g. calibration/shapes-eval.txt).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Prompt i uses seed + i.")
@click.option("--steps", type=STEPS, default=None)
@click.option("--guidance", type=GUIDANCE, default=None)
@click.option("--sampler", type=click.Choice(SAMPLERS), default=None)
@click.option("--grid", type=OUT_FILE, default=None, help="Also save a grid of the first images.")
@click.option("--json", "as_json", is_flag=True)
def adherence(target, prompts_file, seed, steps, guidance, sampler, grid, as_json):
    """Prompt adherence of a shapes model: TARGET is a checkpoint (eager fp32) or a bundle directory."""
    from pathlib import Path

    from mdship.adherence import evaluate, read_prompts

    prompts = read_prompts(prompts_file)
    from mdship.shapes.data import parse_caption
    for i, p in enumerate(prompts, 1):
        try:
            parse_caption(p)
        except ValueError as e:
            raise UserError(f"{prompts_file}:{i}: not a shapes caption ({e})") from None
    if (Path(target) / "manifest.json").is_file():
        from mdship.runtime import Runner

        runner = Runner.open(target)
        generator, settings = runner.generator(), runner.settings(sampler, steps, guidance)
    else:
        from mdship.checkpoint import Checkpoint
        from mdship.pipeline import SamplerSettings, eager_generator

        ckpt = Checkpoint.open(target)
        generator, settings = eager_generator(ckpt), SamplerSettings.resolve(ckpt.scheduler, sampler, steps, guidance)
    result, grid_image = evaluate(generator, prompts, seed, settings)
    if grid:
        grid_image.save(grid)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"accuracy {result['accuracy']:.3f} over {result['n']} prompts (exact match {result['exact_match']:.3f})")
    for attr, acc in result["per_attribute"].items():
        click.echo(f"  {attr:<11} {acc:.3f}")


# ---------------------------------------------------------------------------------------------- recipes
@cli.command("ls")
@click.option("--dir", "directory", default="recipes", show_default=True, type=click.Path(file_okay=False),
              help="Folder of recipes.")
def ls_recipes(directory):
    """List the shipped recipes with their one-line descriptions."""
    from pathlib import Path

    from mdship.recipe import list_recipes

    if not Path(directory).is_dir():
        raise UserError(f"{directory}: recipe folder not found (run from the project root or pass --dir)")
    rows = list_recipes(directory)
    width = max((len(n) for n, _ in rows), default=0)
    for name, description in rows:
        click.echo(f"{name:<{width}}  {description}")


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
def validate(recipe, overrides):
    """Check a RECIPE (with optional key=value OVERRIDES) without building anything."""
    from mdship.recipe import load_recipe

    from mdship.capabilities import device_caveats
    from mdship.recipe.schema import COMPONENT_NAMES

    r = load_recipe(recipe, list(overrides))
    targets = ", ".join(f"{t.name} ({t.backend})" for t in r.targets)
    click.echo(f"{recipe}: ok (checkpoint {r.checkpoint}, targets {targets}, hash {r.recipe_hash()[:12]})")
    for t in r.targets:
        for name in COMPONENT_NAMES:
            for line in device_caveats(t.backend, r.component(name), t.options.model_dump() if t.options else None):
                click.echo(f"caveat: {t.name}/{name}: {line}")


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--force", is_flag=True, help="Rebuild every stage instead of reusing the cache.")
@click.option("--target", "targets", multiple=True, metavar="NAME",
              help="Build only this target (repeatable; default: every target). `mdship ci-matrix` lists them.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary.")
def build(recipe, overrides, force, targets, as_json):
    """Build RECIPE into one verified bundle per target. OVERRIDES are key=value, e.g. output=/tmp/x.

    MDSHIP_CACHE_URL (s3://bucket/prefix or a directory) adds a shared remote stage cache behind the local one."""
    from mdship.build import build as run_build
    from mdship.cache import Cache
    from mdship.recipe import load_recipe
    from mdship.report import format_summary, summary_rows

    r = load_recipe(recipe, list(overrides))
    cache = Cache(enabled=not force)
    results = run_build(r, force=force, progress=not as_json, cache=cache, targets=list(targets))
    if as_json:
        click.echo(json.dumps({"bundles": [str(x.bundle) for x in results], "components": summary_rows(results),
                               "cache": {"remote": cache.remote_url, **cache.stats, "built_stages": cache.built}},
                              indent=2))
    else:
        click.echo(format_summary(results))
        if cache.summary():
            click.echo(cache.summary())


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--force", is_flag=True, help="Record again instead of reusing the cache.")
def calibrate(recipe, overrides, force):
    """Run the fp32 pipeline over RECIPE's calibration prompts and record every component's inputs.

    `mdship build` does this itself when a component needs it (static int8, fp16 guard); the recording is cached
    by checkpoint, prompts and sampler settings, so a later build reuses it.
    """
    from mdship.build import Builder
    from mdship.cache import Cache
    from mdship.recipe import load_recipe

    r = load_recipe(recipe, list(overrides))
    builder = Builder(r, cache=Cache(enabled=not force))
    prompts = builder.calibration_prompts()
    recording = builder.calibration_recording()
    path = recording.path
    s = builder.settings
    click.echo(f"recorded {len(prompts)} prompts from {r.calibration.prompts} ({s.sampler}, {s.steps} steps, "
               f"guidance {s.guidance}, {builder.resolution} px)")
    for name, calls in recording.calls.items():
        click.echo(f"  {name:<13} {len(calls):5d} calls")
    click.echo(f"recording: {path}")


# ---------------------------------------------------------------------------------------------- bundles
@cli.command()
@click.argument("bundle", type=click.Path())
@click.option("--prompt", type=PROMPT, required=True, help="Text prompt.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--steps", type=STEPS, default=None, help="Sampling steps (default: the bundle's recipe).")
@click.option("--guidance", type=GUIDANCE, default=None, help="Classifier-free guidance scale; 1 turns it off.")
@click.option("--sampler", type=click.Choice(SAMPLERS), default=None)
@click.option("--out", required=True, type=OUT_FILE, help="PNG to write.")
@click.option("--width", type=IMAGE_SIDE, default=None, help="Image width in pixels (default: the bundle's).")
@click.option("--height", type=IMAGE_SIDE, default=None, help="Image height: the same as --width.")
@click.option("--no-verify", is_flag=True, help="Skip the sha256 check of the bundle's files before running.")
@click.option("--device", default="host", show_default=True, help=DEVICE_HELP)
def run(bundle, prompt, seed, steps, guidance, sampler, out, width, height, no_verify, device):
    """Generate an image from a BUNDLE with the ExecuTorch runtime (the Python host runner, or --device)."""
    from mdship.pipeline import save_png
    from mdship.runtime import Runner
    from mdship.tokenizer import unknown_words_warning

    resolution = inputs.square_size(width, height)
    if device != "host":
        if resolution is not None:
            raise UserError(f"--width / --height with --device {device}: not supported yet; run at the bundle's "
                            f"default size there")
        _run_on_device(bundle, device, prompt, seed, steps, guidance, sampler, out, no_verify)
        return
    runner = Runner.open(bundle, verify=not no_verify)
    settings = runner.settings(sampler, steps, guidance, resolution)
    _warn(unknown_words_warning(runner.tokenizer, prompt))
    save_png(runner.generator(resolution, settings.guidance)(prompt, seed, settings), out)
    click.echo(f"wrote {out} ({runner.bundle.backend} bundle, {settings.sampler}, {settings.steps} steps, "
               f"guidance {settings.guidance}, seed {seed})")


def _device_for(bundle: str, spec: str):
    """The device of `--device`, ready to run BUNDLE (its lane installed, the bundle's backend runnable there)."""
    from mdship import devices
    from mdship.bundle import Bundle
    from mdship.errors import BundleError

    dev = devices.get(spec)
    dev.require()
    opened = Bundle.open(bundle)
    if not devices.runs(dev, opened.backend):
        raise BundleError(f"{bundle}: a {opened.backend} bundle cannot run on {dev.name}")
    return dev


def _run_on_device(bundle, spec, prompt, seed, steps, guidance, sampler, out, no_verify) -> None:
    from mdship import devices

    dev = _device_for(bundle, spec)
    cpu = dev.cpu or devices.PHONE_MODEL
    dev.generate(Path(bundle), cpu, prompt, seed, Path(out), sampler, steps, guidance, verify=not no_verify)
    click.echo(f"wrote {out} ({dev.name}, CPU model {cpu}, emulated: {dev.emulator()}; seed {seed})")


def _verify_on_device(bundle: str, spec: str, as_json: bool) -> None:
    result = _device_for(bundle, spec).verify(bundle)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(f"{result['device']}: {result['note']} ({result['emulator']})")
        for cpu, m in result["models"].items():
            scores = "  ".join(f"{n} {c['psnr_db']:.1f} dB" for n, c in m.get("components", {}).items())
            verdict = "ok" if m["passed"] else "FAILED" + (f" ({m['error']})" if m.get("error") else "")
            click.echo(f"{cpu:<12} {scores or '-'}  {verdict}" + (f"  [excluded: {m['excluded']}]" if m["excluded"]
                                                                    else ""))
    if not result["passed"]:
        failed = [c for c, m in result["models"].items() if not m["passed"] and not m["excluded"]]
        raise VerificationError(f"{bundle}: fails on {result['device']} (emulated) on CPU model(s) "
                                f"{', '.join(failed) or 'none counted'}")


@cli.command("verify")
@click.argument("bundle", type=click.Path())
@click.option("--json", "as_json", is_flag=True)
@click.option("--device", default="host", show_default=True, help=DEVICE_HELP)
def verify_cmd(bundle, as_json, device):
    """Check every file of a BUNDLE against its manifest and re-run the stored test vectors (on --device)."""
    from mdship.runtime import verify

    if device != "host":
        _verify_on_device(bundle, device, as_json)
        return
    results = verify(bundle)
    failed = [n for n, r in results.items() if not r["passed"]]
    if as_json:
        click.echo(json.dumps(results, indent=2))
    else:
        for name, r in results.items():
            score = f"{r['psnr_db']:.1f} dB (gate {r['gate_db']:.0f})" if "psnr_db" in r else r.get("note", "")
            click.echo(f"{name:<13} {r['mode']:<10} {score}  {'ok' if r['passed'] else 'FAILED'}")
    if failed:
        raise VerificationError(f"{bundle}: test vectors below their gate: {', '.join(failed)}")


@cli.command()
@click.argument("bundle", type=click.Path())
@click.option("--runs", type=click.IntRange(1), default=5, show_default=True)
@click.option("--warmup", type=click.IntRange(0), default=1, show_default=True)
@click.option("--threads", type=click.IntRange(1), default=None, help="ExecuTorch threadpool size.")
@click.option("--profile", is_flag=True,
              help="Also run each component with ETDump tracing and list its most expensive operators "
                   "(the .etdp files go to BUNDLE-profile/).")
@click.option("--json", "as_json", is_flag=True)
@click.option("--no-verify", is_flag=True, help="Skip the sha256 check of the bundle's files before the runs.")
def bench(bundle, runs, warmup, threads, profile, as_json, no_verify):
    """Benchmark a BUNDLE: load time, per-component and end-to-end latency, peak RSS."""
    from mdship.runtime import bench as run_bench
    from mdship.runtime import profile as run_profile

    report = run_bench(bundle, runs, warmup, threads, verify=not no_verify)
    if profile:
        # After the timed runs: tracing slows every operator a little, so it never mixes with the latencies.
        report["profile"] = run_profile(bundle, runs, warmup, threads)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for name, ms in report["load_ms"].items():
        c = report["components"][name]
        click.echo(f"{name:<13} load {ms:8.1f} ms   median {c['median_ms']:9.2f} ms   p90 {c['p90_ms']:9.2f} ms")
    for key in [k for k in report if k.startswith("end_to_end_")]:
        e = report[key]
        click.echo(f"{key:<24} median {e['median_ms']:9.1f} ms   p90 {e['p90_ms']:9.1f} ms ({e['unet_calls']} UNet calls)")
    click.echo(f"peak RSS {report['peak_rss_mb']} MiB")
    if profile:
        _print_profile(report["profile"])


def _print_profile(prof: dict) -> None:
    click.echo(f"\nper-operator profile (ETDump, median of {prof['runs']} runs; .etdp files in {prof['dir']})")
    for name, c in prof["components"].items():
        share = c["delegated_ms"] / c["method_ms"] if c["method_ms"] else 0.0
        click.echo(f"{name}: {c['method_ms']:.2f} ms per call, {share:.1%} in delegated operators")
        for op in c["top_ops"]:
            click.echo(f"  {op['op']:<44} {op['where']:<8} {op['calls']:5d} calls {op['ms']:10.3f} ms "
                       f"{op['share']:6.1%}")


@cli.command()
@click.argument("bundles", nargs=-1, type=click.Path())
@click.option("--baseline", type=click.Path(), default=None,
              help="Bundle the size ratio is taken against (default: the first all-fp32 bundle given).")
@click.option("--out", type=OUT_FILE, default=None, help="Also write the report to this file.")
@click.option("--json", "as_json", is_flag=True)
def report(bundles, baseline, out, as_json):
    """Compare BUNDLES from their manifests: size per component, ratio to fp32, PSNR / SSIM, delegate coverage."""
    from mdship import report as reports
    from mdship.atomic import atomic_file

    text = (json.dumps(reports.to_json(list(bundles), baseline), indent=2) + "\n" if as_json
            else reports.markdown(list(bundles), baseline))
    click.echo(text, nl=False)
    if out:
        with atomic_file(out) as tmp:
            tmp.write_text(text)
        click.echo(f"wrote {out}", err=True)


@cli.command()
@click.argument("items", nargs=-1, metavar="BUNDLE_OR_RECIPE...")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override applied to every recipe argument (repeatable); {recipe} in a value is the recipe's "
                   "name, e.g. --set output=artifacts/shapes/{recipe}.")
@click.option("--reference", default=None, metavar="CHECKPOINT",
              help="Checkpoint of the fp32 reference (default: the bundles' own; must be the same weights).")
@click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False), default=None,
              help="Prompt file, one per line (default: the eval prompts the bundles' builds used).")
@click.option("--num-prompts", type=click.IntRange(1), default=None, help="Use the first N prompts.")
@click.option("--seeds", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Images per prompt: prompt i, repeat k uses seed i + k * prompts.")
@click.option("--bench", is_flag=True, help="Also time every executed bundle (per component and end to end).")
@click.option("--bench-json", multiple=True, type=click.Path(dir_okay=False),
              help="Recorded latencies: `mdship bench --json` output or tools/bench.py's results.json.")
@click.option("--image-psnr-gate", type=click.FloatRange(0, 200, min_open=True), default=None,
              help="Gate on the worst image's PSNR in dB (default: the gate each build judged, if any).")
@click.option("--image-ssim-gate", type=click.FloatRange(0, 1), default=None,
              help="Gate on the worst image's SSIM (default: the gate each build judged, if any).")
@click.option("--clip", type=click.Path(file_okay=False), default=None,
              help="Local transformers CLIP model directory: adds CLIP score (never downloaded).")
@click.option("--lpips", type=click.Path(dir_okay=False), default=None,
              help="Local state dict of lpips.LPIPS(net='alex'): adds LPIPS (never downloaded).")
@click.option("--diff-gain", type=click.IntRange(0, 255), default=8, show_default=True,
              help="Amplification of the difference rows in the image grid; 0 leaves them out.")
@click.option("--out", required=True, type=OUT_DIR, help="Report directory (report.html, report.md, report.json).")
@click.option("--gate", is_flag=True, help="Exit 1 when any bundle misses a gate (for CI).")
def compare(items, overrides, reference, prompts_file, num_prompts, seeds, bench, bench_json, image_psnr_gate,
            image_ssim_gate, clip, lpips, diff_gain, out, gate):
    """Which bundle to ship: run BUNDLES (and RECIPES, built first) against the fp32 reference on the same prompts,
    seeds and latents, and write a report with tables, plots, an image grid and a recommendation."""
    from mdship import compare as comparing
    from mdship import compare_report

    compare_report.check_out_dir(out)
    c = comparing.compare(list(items), list(overrides), reference, prompts_file, num_prompts, seeds, bench,
                          list(bench_json), image_psnr_gate, image_ssim_gate, clip, lpips)
    compare_report.write(c, out, diff_gain)
    for title, table in compare_report.headlines(c):
        click.echo(f"{title}\n" + "\n".join(table.markdown()) + "\n")
    click.echo(comparing.recommendation(c))
    click.echo(f"report: {out / 'report.html'} (also report.md, report.json)")
    if gate:
        comparing.check_gates(c)


# ---------------------------------------------------------------------------------------------- releases
ENDPOINT_HELP = ("S3-compatible server URL (default: AWS, or $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL); credentials "
                 "from the usual AWS environment variables.")


@cli.command()
@click.argument("bundles", nargs=-1, type=click.Path(), metavar="BUNDLE...")
@click.option("--to", "dest", required=True, metavar="DEST", help="A directory or s3://bucket/prefix.")
@click.option("--version", "version", default=None, metavar="V",
              help="Release version (default: `git describe --tags --always --dirty`).")
@click.option("--allow-failed", is_flag=True,
              help="Publish bundles whose build recorded failed verification or gates (marked so in the index).")
@click.option("--endpoint-url", default=None, help=ENDPOINT_HELP)
def publish(bundles, dest, version, allow_failed, endpoint_url):
    """Publish BUNDLEs to DEST: every file stored once by sha256, each read back and hashed, then the release index
    replaced (conditionally). Re-running uploads nothing; an interrupted publish leaves the previous index."""
    from mdship import publish as publishing
    from mdship.store import open_store

    result = publishing.publish(list(bundles), open_store(dest, endpoint_url), version, allow_failed)
    click.echo(result.summary())


@cli.command()
@click.argument("dest")
@click.argument("spec", metavar="RECIPE[@VERSION]")
@click.option("--out", required=True, type=OUT_DIR,
              help="Directory to create (one bundle per target inside); a previous pull there is replaced.")
@click.option("--endpoint-url", default=None, help=ENDPOINT_HELP)
def pull(dest, spec, out, endpoint_url):
    """Fetch RECIPE (its newest version, or @VERSION) from DEST into --out, checking every file's sha256; a
    corrupted blob is refused and nothing is left behind."""
    from mdship import publish as publishing
    from mdship.store import open_store

    result = publishing.pull(open_store(dest, endpoint_url, what="DEST", existing=True), spec, out)
    for r in result.releases:
        if not r["passed"]:
            _warn(f"warning: {r['recipe']}@{r['version']}/{r['target']} was published with --allow-failed: "
                  f"{'; '.join(r['failures'])}")
    click.echo(result.summary())


@cli.command("ci-matrix")
@click.argument("recipes", nargs=-1, type=click.Path(dir_okay=False), metavar="[RECIPE...]")
@click.option("--dir", "directory", default="recipes", show_default=True, type=click.Path(file_okay=False),
              help="Folder of recipes used when none are given.")
def ci_matrix(recipes, directory):
    """Print a GitHub Actions matrix (JSON) of recipe x target, for `strategy.matrix: ${{ fromJSON(...) }}`."""
    from mdship.publish import ci_matrix as matrix

    click.echo(json.dumps(matrix(list(recipes), directory)))


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--budget", "budget", multiple=True, metavar="KEY=VALUE",
              help="Quality budget: image_psnr_db=N (required) and image_ssim=S on the worst eval prompt, "
                   "adherence=A where the checkpoint has a judge.")
@click.option("--objective", type=click.Choice(OBJECTIVES), default="bytes", show_default=True,
              help="What to minimise: bundle bytes, or latency estimated from one-layer programs timed here.")
@click.option("--backend", type=click.Choice(BACKENDS), default=None,
              help="Target to tune for (default: the recipe's first target).")
@click.option("--out", required=True, type=OUT_FILE, help="The tuned recipe to write (.yaml); the report and plot go "
                                                         "beside it (.tune.json, .tune.png).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def tune(recipe, overrides, budget, objective, backend, out, as_json):
    """Choose a format per layer that minimises bytes (or latency) within a quality BUDGET, and write it as a recipe.

    \b
    mdship tune recipes/md-xnnpack-w8a8.yaml checkpoint=builtin:shapes ... --budget image_psnr_db=34 --out tuned.yaml
    """
    from mdship import tune as tuner

    log = (lambda line: click.echo(line, err=True)) if as_json else click.echo
    result = tuner.run(recipe, list(overrides), tuner.parse_budget(list(budget)), objective, backend, out, log=log)
    if as_json:
        click.echo(json.dumps(result.report, indent=2))
        return
    click.echo(tuner.summary(result))


def _warn(line: str | None) -> None:
    if line:
        click.echo(one_line(line), err=True)


def one_line(message: str) -> str:
    """A message as exactly one terminal line: control characters, line and paragraph separators and lone
    surrogates (bytes of a non-UTF-8 argument) that user input may carry are shown escaped."""
    import unicodedata

    def show(ch: str) -> str:
        if ch == " " or unicodedata.category(ch) not in ("Cc", "Cs", "Zl", "Zp") and ch not in "\x85":
            return ch
        return repr(ch)[1:-1] if unicodedata.category(ch) != "Cs" else f"\\x{ord(ch) - 0xDC00:02x}"

    return "".join(show(ch) for ch in " ".join(message.split("\n")))


def main(argv=None):
    """Console entry point: one-line errors, exit 2 for usage/input errors, 1 for failed gates."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--verbose" in args[: next((i for i, a in enumerate(args) if not a.startswith("-")), len(args))]:
        os.environ["MDSHIP_VERBOSE"] = "1"  # before any import that logs
    quiet_toolchain()
    try:
        cli.main(args=argv, prog_name="mdship", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.UsageError as e:
        cmd = e.ctx.command_path if e.ctx else "mdship"
        click.echo(one_line(f"error: {e.format_message()} (see '{cmd} --help')"), err=True)
        sys.exit(2)
    except click.ClickException as e:
        click.echo(one_line(f"error: {e.format_message()}"), err=True)
        sys.exit(e.exit_code)
    except UserError as e:
        click.echo(one_line(f"error: {e}"), err=True)
        sys.exit(2)
    except VerificationError as e:
        click.echo(one_line(f"verification failed: {e}"), err=True)
        sys.exit(1)
    except OSError as e:  # the environment refused: a full disk, an unwritable cache directory, ...
        where = f"{e.filename}: " if e.filename else ""
        click.echo(one_line(f"error: {where}{e.strerror or e}"), err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
