"""`mdship build` on the tiny preset: a complete verified bundle, cache reuse, and interrupted builds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from mdship.bundle import sha256_file

from mdship_testing import TINY_OVERRIDES, build_recipe

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fp32_bundle(tiny_bundle):
    return tiny_bundle


def test_bundle_is_complete_and_verified(fp32_bundle):
    manifest = json.loads((fp32_bundle / "manifest.json").read_text())
    assert manifest["schema_version"] == 2
    assert manifest["checkpoint"]["ref"] == "preset:tiny" and len(manifest["checkpoint"]["hash"]) == 64
    assert set(manifest["versions"]) >= {"mdship", "torch", "executorch", "torchao"}
    assert manifest["recipe"]["name"] == "default"
    for name in ("text_encoder", "unet", "vae_decoder"):
        c = manifest["components"][name]
        path = fp32_bundle / c["file"]
        assert path.stat().st_size == c["bytes"] and sha256_file(path) == c["sha256"]
        assert c["backend"] == "xnnpack" and c["precision"] == "fp32"
        assert c["verification"]["mode"] == "executed" and c["verification"]["psnr_db"] >= 60
        assert 1 <= c["partitions"] <= 6, (name, c["partitions"], c["fallback_ops"])
        assert c["inputs"][0]["shape"] and c["outputs"][0]["dtype"] == "float32"
        vectors = load_file(str(fp32_bundle / c["verification"]["vectors"]))
        assert any(k.endswith("/expected") for k in vectors)
    assert manifest["components"]["unet"]["inputs"][0]["shape"] == [2, 8, 8, 8]  # guidance 2.0 -> batch 2
    for rel, digest in manifest["files"].items():
        assert sha256_file(fp32_bundle / rel) == digest
    assert (fp32_bundle / "tokenizer" / "vocab.json").is_file() and (fp32_bundle / "scheduler.json").is_file()
    # how it was built: wall and CPU time, peak memory and the thread policy in force (mdship.threads)
    build = manifest["build"]
    assert build["seconds"] > 0 and build["cpu_seconds"] > 0 and build["peak_rss_mb"] > 0
    assert build["threads"]["threads"] >= 1 and build["threads"]["omp_wait_policy"] == os.environ.get(
        "OMP_WAIT_POLICY", "PASSIVE")


def test_rebuild_reuses_the_cache(fp32_bundle, build_cache):
    before = json.loads((fp32_bundle / "manifest.json").read_text())
    [result] = build_recipe("recipes/default.yaml", TINY_OVERRIDES + [f"output={fp32_bundle.parent}"], build_cache)
    assert all(c.cached for c in result.components.values())
    after = json.loads((fp32_bundle / "manifest.json").read_text())
    assert after["build"]["cached"] is True
    assert after["files"] == before["files"]


def kill_once_a_program_is_cached(cmd: list, env: dict, cache: Path, out: Path, timeout: int) -> None:
    """Run a build, SIGKILL it once its first program is in the cache; no complete-looking bundle may be left, and
    no build worker process (mdship.workers) may outlive it."""
    import psutil

    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    workers = []
    while time.time() < deadline and proc.poll() is None:
        workers = psutil.Process(proc.pid).children(recursive=True) or workers
        if list((cache / "program").glob("*/.complete")):
            break
        time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, f"build workers outlived the killed build: {alive}"
    assert not (out / "xnnpack" / "manifest.json").exists(), "a killed build must not leave a complete-looking bundle"


def test_interrupted_build_leaves_no_bundle_and_resumes_identically(fp32_bundle, tmp_path):
    """Kill a build once its first program is cached; the re-run finishes with the same sha256s. The re-run builds
    in one process (MDSHIP_BUILD_WORKERS=1) and the fixture with worker processes where the machine has two CPUs or
    more: a program is the same bytes wherever it is built."""
    cache, out = tmp_path / "cache", tmp_path / "out"
    cmd = [sys.executable, "-m", "mdship.cli", "build", "recipes/default.yaml", *TINY_OVERRIDES, f"output={out}"]
    env = {**os.environ, "MDSHIP_CACHE_DIR": str(cache)}
    kill_once_a_program_is_cached(cmd, env, cache, out, timeout=600)

    done = subprocess.run(cmd, cwd=ROOT, env={**env, "MDSHIP_BUILD_WORKERS": "1"}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    resumed = json.loads((out / "xnnpack" / "manifest.json").read_text())
    original = json.loads((fp32_bundle / "manifest.json").read_text())
    for name in ("text_encoder", "unet", "vae_decoder"):
        assert resumed["components"][name]["sha256"] == original["components"][name]["sha256"]


def test_fp16_bundle_meets_its_gate(tiny_fp16_bundle):
    manifest = json.loads((tiny_fp16_bundle / "manifest.json").read_text())
    for name, c in manifest["components"].items():
        assert c["precision"] == "fp16"
        assert c["verification"]["gate_db"] == 35 and 35 <= c["verification"]["psnr_db"] < 120, (name, c)


def test_failing_gate_fails_the_build_without_a_bundle(tmp_path, build_cache, monkeypatch):
    from mdship.build import build
    from mdship.errors import VerificationError
    from mdship.recipe import load_recipe

    monkeypatch.setenv("MDSHIP_CACHE_DIR", str(build_cache))
    recipe = load_recipe(ROOT / "recipes/md-xnnpack-fp16.yaml",
                         TINY_OVERRIDES + [f"output={tmp_path}", "gates.component_psnr_db=199"])
    with pytest.raises(VerificationError, match="below the gate 199.0 dB"):
        build(recipe, progress=False)
    assert not (tmp_path / "xnnpack").exists()


def test_cli_errors_are_one_line(run_cli, tmp_path):
    r = run_cli("build", tmp_path / "missing.yaml")
    assert r.exit_code == 2 and r.err.count("\n") == 1
    r = run_cli("build", ROOT / "recipes/default.yaml", "targts=[]")
    assert r.exit_code == 2 and "did you mean 'targets'" in r.err


def test_ls_and_validate(run_cli):
    os.chdir(ROOT)
    r = run_cli("ls")
    assert r.exit_code == 0 and "md-xnnpack-fp32" in r.out and "default" in r.out
    r = run_cli("validate", "recipes/md-xnnpack-8da4w.yaml", "output=/tmp/x")
    assert r.exit_code == 0 and ": ok" in r.out


def test_validate_labels_formats_with_published_ane_failures(run_cli):
    """A Core ML recipe whose int4 weights have a published Neural Engine failure validates, labelled; the same
    recipe on GPU and CPU compute units, or with 6-bit palettized weights, carries no label."""
    os.chdir(ROOT)
    r = run_cli("validate", "recipes/md-coreml-w4-fp16.yaml")
    assert r.exit_code == 0, r.err
    caveats = [line for line in r.out.splitlines() if line.startswith("caveat:")]
    assert caveats and all("ANE-unverified" in line and "apple/coremltools#2688" in line for line in caveats)
    assert any(line.startswith("caveat: coreml/unet: ANE-unverified: linear, conv, attention, pointwise weights "
                               "int4 per_group") for line in caveats), caveats
    r = run_cli("validate", "recipes/md-coreml-w4-fp16.yaml", "targets[0].coreml.compute_units=cpu_and_gpu")
    assert r.exit_code == 0 and "caveat:" not in r.out
    for recipe in ("md-coreml-lut6-fp16", "md-coreml-w8-fp16", "md-coreml-fp16"):
        r = run_cli("validate", f"recipes/{recipe}.yaml")
        assert r.exit_code == 0 and "caveat:" not in r.out, (recipe, r.out)
    r = run_cli("validate", "recipes/md-coreml-w8-fp16.yaml", "components.unet.linear.granularity=per_group")
    assert r.exit_code == 0 and "ANE-unverified: linear, attention weights int8 per_group" in r.out
    assert "apple/coreai-models#279" in r.out


def test_coverage_gate_fails_the_build_naming_the_cpu_ops(tmp_path, build_cache):
    """gates.delegated_flops_share: a portable program runs everything on the CPU, so a 50% gate fails each
    component, naming what runs there; no bundle is written."""
    [result] = build_recipe("recipes/default.yaml", TINY_OVERRIDES + [
        f"output={tmp_path}", "targets=[{backend: portable}]", "gates.delegated_flops_share=0.5"], build_cache)
    assert len(result.failures) == 3, result.failures
    first = result.failures[0]
    assert first.startswith("portable/text_encoder: 0.00% of its FLOPs run in the delegate, below the gate 50% "
                            "(gates.delegated_flops_share); on the CPU: "), first
    assert not (tmp_path / "portable").exists()


def test_keep_fp32_computes_the_named_layers_in_fp32(tmp_path, build_cache):
    """XNNPACK fp16 (executed here) with two decoder norms kept in fp32: the guard reports them kept, the program
    runs them in fp32 and still meets its gate; a glob that matches nothing is one line naming the key."""
    from mdship.build import Builder
    from mdship.cache import Cache
    from mdship.errors import UserError
    from mdship.recipe import load_recipe

    os.chdir(ROOT)
    keep = "components.vae_decoder.keep_fp32=[decoder.mid.norm1, 'decoder.blocks.0.norm*']"
    recipe = load_recipe(ROOT / "recipes/md-xnnpack-fp16.yaml", TINY_OVERRIDES + [f"output={tmp_path}", keep])
    builder = Builder(recipe, cache=Cache(build_cache), progress=False)
    entry = builder.component(recipe.targets[0], "vae_decoder").entry
    guard = entry.fp16_guard
    assert guard["action"] == "kept_layers_fp32" and not guard["overflow"], guard
    assert guard["kept_fp32"] == ["decoder.mid.norm1", "decoder.blocks.0.norm1", "decoder.blocks.0.norm2"]
    assert not {c["layer"] for c in guard["closest_layers"]} & set(guard["kept_fp32"])  # fp32: no fp16 headroom
    assert entry.verification.mode == "executed" and entry.verification.passed, entry.verification
    assert entry.partitions > 1 and entry.delegated_flops_share == 1.0  # fp32 islands: XNNPACK partitions per dtype

    bad = load_recipe(ROOT / "recipes/md-xnnpack-fp16.yaml", TINY_OVERRIDES + [
        f"output={tmp_path}", "components.vae_decoder.keep_fp32=[decoder.nope]"])
    with pytest.raises(UserError, match=r"^components.vae_decoder.keep_fp32: 'decoder.nope' matches no module of "
                                        r"vae_decoder; expected a glob"):
        Builder(bad, cache=Cache(build_cache), progress=False).component(bad.targets[0], "vae_decoder")


@pytest.mark.slow  # two quantized tiny builds (calibration, PT2E, torchao) in subprocesses
def test_interrupted_quantized_build_resumes_identically(tmp_path, build_cache):
    """The same for a quantized recipe (w8a8: calibration recordings and PT2E static int8 in the cache): kill it once
    its first program is cached, no bundle left; the re-run's programs equal an uninterrupted build's."""
    cache, out = tmp_path / "cache", tmp_path / "out"
    overrides = [*TINY_OVERRIDES, f"output={out}"]
    cmd = [sys.executable, "-m", "mdship.cli", "build", "recipes/md-xnnpack-w8a8.yaml", *overrides]
    env = {**os.environ, "MDSHIP_CACHE_DIR": str(cache)}
    kill_once_a_program_is_cached(cmd, env, cache, out, timeout=1800)
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    resumed = json.loads((out / "xnnpack" / "manifest.json").read_text())
    [reference] = build_recipe("recipes/md-xnnpack-w8a8.yaml", [*TINY_OVERRIDES, f"output={tmp_path / 'ref'}"],
                               build_cache)
    original = json.loads((reference.bundle / "manifest.json").read_text())
    for name in ("text_encoder", "unet", "vae_decoder"):
        assert resumed["components"][name]["sha256"] == original["components"][name]["sha256"]
