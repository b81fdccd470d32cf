"""The C++ runner (`mdship-runner`, runner/src/main.cpp over runner/src/pipeline.cpp) against the Python references.

- the initial latent: bit-identical to mdship.pipeline.initial_latent (SplitMix64 + Box-Muller);
- images: PSNR >= 40 dB against the eager fp32 pipeline (same prompt, seed, sampler settings), and
  against the Python host runner (`mdship run`) when it is available;
- sampler arithmetic: every prediction type and beta schedule, explicit timesteps, both guidance modes;
- `--selftest` passes on the bundle and fails (exit 1) on tampered (re-signed) test vectors;
- integrity: one byte changed in any file of the bundle makes generation and `--selftest` refuse it (one line
  naming the file, exit code 2); `--no-verify` skips the file hashes;
- errors (missing bundle or file, unsupported schema version, a device-only backend, bad options, an unwritable
  --out) are one line on stderr with exit code 2;
- `--bench` prints the JSON keys the Python bench prints;
- the PNG output (stb_image_write) is compressed and decodes with PIL to the exact pixels.

Fixtures (runner_exe, runner_bundle) are in tests/runner/conftest.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio

from mdship_testing import rewrite_manifest

REPO = Path(__file__).resolve().parents[2]
PROMPT = "a large red circle on a blue background, top left"
MIN_EAGER_PSNR_DB = 40.0


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def run_runner(exe: Path, *args, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(exe), *[str(a) for a in args]], capture_output=True, text=True, timeout=timeout)


def image_psnr(reference: np.ndarray, candidate: np.ndarray) -> float:
    assert reference.shape == candidate.shape, (reference.shape, candidate.shape)
    if np.array_equal(reference, candidate):
        return float("inf")
    return float(peak_signal_noise_ratio(reference, candidate, data_range=255))


def manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def copy_bundle(bundle: Path, dest: Path) -> Path:
    shutil.copytree(bundle, dest)
    return dest


def reseal(bundle: Path) -> None:
    """Re-hash every file the manifest lists and re-sign the manifest: an edited bundle that is consistent, to
    test what the runner does beyond the integrity check."""
    from mdship.bundle import sha256_file

    m = manifest(bundle)
    m["files"] = {rel: sha256_file(bundle / rel) for rel in m["files"]}
    for entry in m["components"].values():
        entry["sha256"] = sha256_file(bundle / entry["file"])
    rewrite_manifest(bundle, m)


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def cpp_image(exe: Path, bundle: Path, out: Path, seed: int, *args) -> np.ndarray:
    proc = run_runner(exe, bundle, "--prompt", PROMPT, "--seed", seed, "--out", out, *args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    return np.array(Image.open(out).convert("RGB"))


@pytest.fixture(scope="module")
def checkpoint(runner_bundle):
    """The checkpoint the bundle was built from (the tiny preset), checked by hash."""
    from mdship.checkpoint import Checkpoint

    m = manifest(runner_bundle)
    assert m["checkpoint"]["ref"] == "preset:tiny"
    ckpt = Checkpoint.from_preset("tiny", 0)
    if "hash" in m["checkpoint"] and hasattr(ckpt, "hash"):
        assert ckpt.hash == m["checkpoint"]["hash"], "the bundle was not built from Checkpoint.from_preset('tiny', 0)"
    return ckpt


@pytest.fixture(scope="module")
def eager(checkpoint):
    from mdship.pipeline import eager_generator

    return eager_generator(checkpoint)


@contextlib.contextmanager
def torch_threads(n: int):
    """Eager reference images with few threads: on a machine whose cores are busy, torch's default thread
    pool oversubscribes them (measured here: 88 s for one tiny 8-step image with 2 threads, 0.5 s with 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def settings_for(ckpt, sampler, steps, guidance, batched=True):
    from mdship.pipeline import SamplerSettings

    return SamplerSettings.resolve(ckpt.scheduler, sampler, steps, guidance, batched)


def mdship_cli(*args) -> int:
    """Run `mdship ARGS...` in-process (no second torch import); returns the exit code."""
    from mdship.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    return 0


def python_runner_available() -> bool:
    """Whether the Python host runner (`mdship run`, mdship/runtime.py) is usable here."""
    try:
        return mdship_cli("run", "--help") == 0
    except Exception:  # noqa: BLE001 - an unfinished runtime module must not fail the C++ tests
        return False


# ----------------------------------------------------------------------------------------------
# initial latent
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 3, 123456789, 2**63 + 5, -1])
def test_initial_latent_is_bit_identical(runner_exe, runner_bundle, tmp_path, seed):
    from mdship.pipeline import initial_latent

    dump = tmp_path / "latent.f32"
    proc = run_runner(runner_exe, runner_bundle, "--prompt", "x", "--seed", seed, "--sampler", "one_step",
                      "--guidance", "1", "--out", tmp_path / "x.png", "--dump-latent", dump)
    assert proc.returncode == 0, proc.stderr
    got = np.fromfile(dump, dtype=np.float32)
    want = initial_latent(seed, manifest(runner_bundle)["resolution"]).numpy().ravel()
    assert got.shape == want.shape
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), \
        f"{int((got != want).sum())} of {got.size} values differ (max {np.abs(got - want).max():.3g})"


# ----------------------------------------------------------------------------------------------
# images against the eager pipeline and the Python runner
# ----------------------------------------------------------------------------------------------
CASES = {
    # id: (runner args, sampler, steps, guidance, batched guidance)
    "recipe-defaults": ([], None, None, None, True),
    "one-step-no-cfg": (["--sampler", "one_step", "--guidance", "1"], "one_step", 1, 1.0, True),
    "ddim4-cfg3": (["--steps", "4", "--guidance", "3"], "ddim", 4, 3.0, True),
    "ddim3-cfg2-two-calls": (["--steps", "3", "--guidance", "2", "--guidance-mode", "two_calls"], "ddim", 3, 2.0,
                             False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_image_matches_eager_pipeline(runner_exe, runner_bundle, checkpoint, eager, tmp_path, case):
    args, sampler, steps, guidance, batched = CASES[case]
    recorded = manifest(runner_bundle)["sampler"]
    settings = settings_for(checkpoint, sampler or recorded["kind"], steps or recorded["steps"],
                            recorded["guidance"] if guidance is None else guidance, batched)
    got = cpp_image(runner_exe, runner_bundle, tmp_path / "cpp.png", 7, *args)
    with torch_threads(1):
        want = eager(PROMPT, 7, settings)
    psnr = image_psnr(want, got)
    print(f"\n{case}: C++ vs eager PSNR {psnr:.2f} dB ({settings})")
    assert got.shape == want.shape == (checkpoint.resolution, checkpoint.resolution, 3)
    assert psnr >= MIN_EAGER_PSNR_DB, f"{case}: C++ vs eager PSNR {psnr:.2f} dB < {MIN_EAGER_PSNR_DB}"


@pytest.mark.parametrize("case", ["recipe-defaults", "one-step-no-cfg", "ddim4-cfg3"])
def test_image_matches_python_runner(runner_exe, runner_bundle, tmp_path, case):
    if not python_runner_available():
        pytest.skip("`mdship run` (the Python host runner) is not available; compared with eager only")
    args = CASES[case][0]
    got = cpp_image(runner_exe, runner_bundle, tmp_path / "cpp.png", 11, *args)
    code = mdship_cli("run", runner_bundle, "--prompt", PROMPT, "--seed", 11, "--out", tmp_path / "py.png", *args)
    assert code == 0, f"mdship run exited {code}"
    want = np.array(Image.open(tmp_path / "py.png").convert("RGB"))
    psnr = image_psnr(want, got)
    print(f"\n{case}: C++ vs `mdship run` PSNR {psnr:.2f} dB, max |diff| {np.abs(want.astype(int) - got).max()}")
    # Same programs, same sampler arithmetic: identical in practice; allow thread-count noise.
    assert psnr >= 50.0


# ----------------------------------------------------------------------------------------------
# sampler arithmetic: every prediction type / beta schedule, explicit timesteps
# ----------------------------------------------------------------------------------------------
SCHEDULER_VARIANTS = {
    "v-prediction-linear": {"prediction_type": "v_prediction", "beta_schedule": "linear", "beta_start": 0.0001,
                            "beta_end": 0.02},
    "sample-squaredcos": {"prediction_type": "sample", "beta_schedule": "squaredcos_cap_v2"},
    "epsilon-explicit-timesteps": {"default_timesteps": [999, 759, 499, 259], "default_steps": 4},
}


@pytest.mark.parametrize("variant", list(SCHEDULER_VARIANTS))
def test_scheduler_variants_match_eager(runner_exe, runner_bundle, checkpoint, tmp_path, variant):
    """Same programs, a modified scheduler.json: the C++ sampler against the Python one (eager models)."""
    import dataclasses

    from mdship.pipeline import eager_generator

    changes = SCHEDULER_VARIANTS[variant]
    bundle = copy_bundle(runner_bundle, tmp_path / "bundle")
    sched = json.loads((bundle / "scheduler.json").read_text())
    sched.update(changes)
    (bundle / "scheduler.json").write_text(json.dumps(sched))
    reseal(bundle)
    steps = 4
    got = cpp_image(runner_exe, bundle, tmp_path / "cpp.png", 5, "--steps", steps, "--guidance", "2")

    gen = eager_generator(checkpoint)
    gen.scheduler = dataclasses.replace(checkpoint.scheduler, **changes)
    with torch_threads(1):
        want = gen(PROMPT, 5, settings_for(checkpoint, "ddim", steps, 2.0))
    psnr = image_psnr(want, got)
    print(f"\n{variant}: C++ vs eager PSNR {psnr:.2f} dB")
    assert psnr >= MIN_EAGER_PSNR_DB


# ----------------------------------------------------------------------------------------------
# --selftest
# ----------------------------------------------------------------------------------------------
def test_selftest_passes(runner_exe, runner_bundle):
    proc = run_runner(runner_exe, runner_bundle, "--selftest")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == ["text_encoder", "unet", "vae_decoder"]
    assert all(ln.endswith("ok") for ln in lines), lines

    proc = run_runner(runner_exe, runner_bundle, "--selftest", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    m = manifest(runner_bundle)
    for name, r in report.items():
        gate = m["components"][name]["verification"]["gate_db"]
        assert r["gate_db"] == gate and r["passed"] and r["psnr_db"] >= gate, (name, r)
        print(f"\n{name}: C++ self-test {r['psnr_db']:.2f} dB, build-time {m['components'][name]['verification']['psnr_db']:.2f} dB")


def test_selftest_fails_on_tampered_vectors(runner_exe, runner_bundle, tmp_path):
    from safetensors.torch import load_file, save_file

    bundle = copy_bundle(runner_bundle, tmp_path / "bundle")
    vectors = bundle / "test_vectors" / "unet.safetensors"
    flat = load_file(str(vectors))
    expected = flat["0/expected"]
    flat["0/expected"] = expected + torch.randn(expected.shape, generator=torch.Generator().manual_seed(0))
    save_file(flat, str(vectors))
    reseal(bundle)

    proc = run_runner(runner_exe, bundle, "--selftest")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = {ln.split()[0]: ln for ln in proc.stdout.strip().splitlines()}
    assert lines["unet"].endswith("FAILED"), lines
    assert lines["text_encoder"].endswith("ok") and lines["vae_decoder"].endswith("ok"), lines


# ----------------------------------------------------------------------------------------------
# errors: one line on stderr, exit code 2
# ----------------------------------------------------------------------------------------------
def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("mdship-runner: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_error_missing_bundle(runner_exe, tmp_path):
    proc = run_runner(runner_exe, tmp_path / "nope", "--prompt", "x", "--out", tmp_path / "x.png")
    assert_one_line_error(proc, "not found")
    assert_one_line_error(run_runner(runner_exe, tmp_path / "nope", "--selftest"), "not found")


def test_error_not_a_bundle(runner_exe, tmp_path):
    assert_one_line_error(run_runner(runner_exe, tmp_path, "--selftest"), "manifest.json")


def test_error_device_only_backend(runner_exe, runner_bundle, tmp_path):
    for backend in ("vulkan", "coreml"):
        bundle = copy_bundle(runner_bundle, tmp_path / backend)
        m = manifest(bundle)
        m["target"]["backend"] = backend
        rewrite_manifest(bundle, m)
        assert_one_line_error(run_runner(runner_exe, bundle, "--prompt", "x", "--out", tmp_path / "x.png"), backend)
        assert_one_line_error(run_runner(runner_exe, bundle, "--selftest"), backend)
        assert_one_line_error(run_runner(runner_exe, bundle, "--bench"), backend)


def test_error_schema_version(runner_exe, runner_bundle, tmp_path):
    bundle = copy_bundle(runner_bundle, tmp_path / "bundle")
    m = manifest(bundle)
    m["schema_version"] = 99
    rewrite_manifest(bundle, m)
    assert_one_line_error(run_runner(runner_exe, bundle, "--selftest"), "schema_version 99")

    from mdship.bundle import INTEGRITY, integrity_line

    (bundle / "manifest.json").write_bytes(b"{not json")
    (bundle / INTEGRITY).write_text(integrity_line(b"{not json"))
    assert_one_line_error(run_runner(runner_exe, bundle, "--selftest"), "invalid JSON")


def test_error_missing_program(runner_exe, runner_bundle, tmp_path):
    bundle = copy_bundle(runner_bundle, tmp_path / "bundle")
    (bundle / "unet.pte").unlink()
    for verify in ([], ["--no-verify"]):
        proc = run_runner(runner_exe, bundle, "--prompt", "x", "--out", tmp_path / "x.png", *verify)
        assert_one_line_error(proc, f"{bundle / 'unet.pte'}: missing from the bundle")


def test_error_unwritable_out(runner_exe, runner_bundle, tmp_path):
    (tmp_path / "a_file").write_text("")
    out = tmp_path / "a_file" / "x.png"  # its directory cannot be created: a file is in the way
    assert_one_line_error(run_runner(runner_exe, runner_bundle, "--prompt", "x", "--out", out), str(out.parent))
    out = tmp_path / "a_dir"  # an existing directory cannot be replaced by the image
    out.mkdir()
    assert_one_line_error(run_runner(runner_exe, runner_bundle, "--prompt", "x", "--out", out), f"{out}: cannot write")
    assert [p.name for p in out.parent.iterdir() if p.name.endswith(".tmp")] == []


# ----------------------------------------------------------------------------------------------
# integrity: manifest.json.sha256 covers manifest.json, the manifest covers every other file
# ----------------------------------------------------------------------------------------------
def refusal_needle(bundle: Path, rel: str) -> str:
    """What the one-line error must say when `rel` was changed."""
    if rel == "manifest.json.sha256":
        return "manifest.json.sha256"  # a malformed root, or a digest that no longer matches manifest.json
    if rel == "manifest.json":
        return f"{bundle / rel}: sha256 does not match manifest.json.sha256"
    return f"{bundle / rel}: sha256 does not match the manifest (tampered with or truncated)"


def test_every_changed_byte_is_refused(runner_exe, runner_bundle, tmp_path):
    """One byte flipped in any file, one file at a time in a fresh copy: generation and --selftest refuse the
    bundle before running anything."""
    files = sorted(str(p.relative_to(runner_bundle)) for p in runner_bundle.rglob("*") if p.is_file())
    assert {"manifest.json", "manifest.json.sha256", "scheduler.json", "unet.pte", "tokenizer/vocab.json",
            "test_vectors/unet.safetensors"} <= set(files), files
    for rel in files:
        bundle = copy_bundle(runner_bundle, tmp_path / "bundle")
        flip_byte(bundle / rel, (bundle / rel).stat().st_size // 2)
        out = tmp_path / "x.png"
        for args in (["--selftest"], ["--prompt", "x", "--out", out]):
            proc = run_runner(runner_exe, bundle, *args)
            assert_one_line_error(proc, refusal_needle(bundle, rel))
            assert proc.stdout == "", (rel, proc.stdout)
        assert not out.exists(), rel
        shutil.rmtree(bundle)


def test_missing_integrity_root(runner_exe, runner_bundle, tmp_path):
    bundle = copy_bundle(runner_bundle, tmp_path / "bundle")
    (bundle / "manifest.json.sha256").unlink()
    for verify in ([], ["--no-verify"]):  # --no-verify skips the file hashes, never the manifest's
        assert_one_line_error(run_runner(runner_exe, bundle, "--selftest", *verify),
                              f"{bundle / 'manifest.json.sha256'}: missing")


def test_no_verify_skips_file_hashes(runner_exe, runner_bundle, tmp_path):
    bundle = copy_bundle(runner_bundle, tmp_path / "bundle")
    vectors = bundle / "test_vectors" / "unet.safetensors"
    flip_byte(vectors, vectors.stat().st_size - 4)  # tensor data (not the header): the file still parses
    assert_one_line_error(run_runner(runner_exe, bundle, "--selftest"), str(vectors))

    proc = run_runner(runner_exe, bundle, "--selftest", "--no-verify")
    assert proc.returncode in (0, 1), proc.stderr  # it ran: 1 only if the changed value moved a PSNR below its gate
    assert [ln.split()[0] for ln in proc.stdout.strip().splitlines()] == ["text_encoder", "unet", "vae_decoder"]
    cpp_image(runner_exe, bundle, tmp_path / "x.png", 0, "--no-verify")


def test_error_bad_options(runner_exe, runner_bundle, tmp_path):
    out = tmp_path / "x.png"
    assert_one_line_error(run_runner(runner_exe, runner_bundle, "--out", out), "--prompt")
    assert_one_line_error(run_runner(runner_exe, runner_bundle, "--prompt", "x", "--out", out, "--sampler", "euler"),
                          "euler")
    assert_one_line_error(run_runner(runner_exe, runner_bundle, "--prompt", "x", "--out", out, "--guidance", "0.5"),
                          "guidance")
    assert_one_line_error(run_runner(runner_exe, runner_bundle, "--prompt", "x", "--out", out, "--steps", "5000"),
                          "steps")
    assert_one_line_error(run_runner(runner_exe, runner_bundle, "--bogus"), "--bogus")
    assert not out.exists()


# ----------------------------------------------------------------------------------------------
# --bench
# ----------------------------------------------------------------------------------------------
def test_bench_json(runner_exe, runner_bundle):
    proc = run_runner(runner_exe, runner_bundle, "--bench", "--runs", "2", "--warmup", "0", "--threads", "2")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    components = ("text_encoder", "unet", "vae_decoder")
    assert {"bundle", "backend", "threads", "runs", "warmup", "load_ms", "components", "peak_rss_mb"} <= set(report)
    assert report["threads"] == 2 and report["runs"] == 2 and report["backend"] == manifest(runner_bundle)["target"]["backend"]
    assert set(report["load_ms"]) == set(components) and all(v > 0 for v in report["load_ms"].values())
    for name in components:
        stats = report["components"][name]
        assert stats["runs"] == 2 and 0 < stats["median_ms"] <= stats["p90_ms"] + 1e-6, stats
    steps = manifest(runner_bundle)["sampler"]["steps"]
    for key in ("end_to_end_one_step", f"end_to_end_{steps}_step"):
        assert report[key]["median_ms"] > 0 and report[key]["p90_ms"] > 0 and report[key]["unet_calls"] >= 1, report
    assert report["end_to_end_one_step"]["unet_calls"] == 1
    assert report["peak_rss_mb"] > 0
    print("\n" + json.dumps(report, indent=2))


# ----------------------------------------------------------------------------------------------
# PNG output (stb_image_write)
# ----------------------------------------------------------------------------------------------
PNG_TEST_MAIN = r"""
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include "image_file.h"
// png_test OUT RAW W H: RAW (W*H*3 bytes of RGB) -> OUT with the runner's PNG writer.
int main(int argc, char** argv) {
  if (argc != 5) return 2;
  const int w = std::atoi(argv[3]), h = std::atoi(argv[4]);
  std::vector<uint8_t> px(size_t(w) * h * 3);
  std::FILE* f = std::fopen(argv[2], "rb");
  if (!f || std::fread(px.data(), 1, px.size(), f) != px.size()) return 3;
  std::fclose(f);
  mdship::write_png(argv[1], px.data(), w, h, 3);
}
"""


@pytest.fixture(scope="module")
def png_writer(runner_exe, tmp_path_factory):
    """A program that writes raw RGB as a PNG with runner/src/image_file.cpp (the runner's writer)."""
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    cache = (runner_exe.parent / "CMakeCache.txt").read_text()
    stb_dir = next(ln.split("=", 1)[1] for ln in cache.splitlines() if ln.startswith("MDSHIP_STB_INCLUDE_DIR:"))
    build = tmp_path_factory.mktemp("png_writer")
    (build / "png_test.cpp").write_text(PNG_TEST_MAIN)
    exe = build / "png_test"
    subprocess.run([cxx, "-std=c++17", "-O1", "-I", str(REPO / "runner" / "src"), "-isystem", stb_dir,
                    str(build / "png_test.cpp"), str(REPO / "runner" / "src" / "image_file.cpp"), "-o", str(exe)],
                   check=True, capture_output=True)

    def write(out: Path, pixels: np.ndarray) -> None:
        raw = out.parent / "pixels.raw"
        raw.write_bytes(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes())
        subprocess.run([str(exe), str(out), str(raw), str(pixels.shape[1]), str(pixels.shape[0])], check=True)
        raw.unlink()

    return write


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        chunks.append((data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return chunks


def first_deflate_block_type(png: bytes) -> int:
    """BTYPE of the IDAT stream's first deflate block: 0 stored (uncompressed), 1 fixed, 2 dynamic Huffman."""
    stream = b"".join(body for kind, body in png_chunks(png) if kind == b"IDAT")
    assert stream[0] & 0x0F == 8, "not a zlib deflate stream"
    return (stream[2] >> 1) & 0b11


def test_png_is_compressed_and_exact(png_writer, tmp_path):
    """A smooth image: far smaller than its raw pixels, decoded by PIL to exactly them, written atomically."""
    y, x = np.mgrid[0:233, 0:301]  # odd sizes: no row or block boundary lines up
    want = np.stack([x & 255, y, (x + y) // 2], axis=-1).astype(np.uint8)
    out = tmp_path / "img.png"
    out.write_bytes(b"an older file, replaced")
    png_writer(out, want)
    assert np.array_equal(np.array(Image.open(out)), want)
    assert out.stat().st_size < want.size / 4, f"{out.stat().st_size} bytes for {want.size} bytes of pixels"
    assert first_deflate_block_type(out.read_bytes()) in (1, 2), "stored (uncompressed) deflate blocks"
    assert [p.name for p in tmp_path.iterdir()] == ["img.png"], "a temp file was left behind"


def test_runner_png_is_the_writers(runner_exe, runner_bundle, png_writer, tmp_path):
    """The runner's PNG is image_file.cpp's encoding of the pixels PIL decodes from it. (The tiny model's images
    are noise, which deflate cannot shrink: stb then stores them, so compression is checked on a smooth image.)"""
    img = cpp_image(runner_exe, runner_bundle, tmp_path / "cpp.png", 0)
    resolution = manifest(runner_bundle)["resolution"]
    assert img.shape == (resolution, resolution, 3)
    png_writer(tmp_path / "again.png", img)
    assert (tmp_path / "again.png").read_bytes() == (tmp_path / "cpp.png").read_bytes()


def test_unknown_words_warning_matches_the_python_runner(runner_exe, runner_bundle, tmp_path):
    """Words the bundle's tokenizer spells out are named in one warning line, worded as `mdship run` words it."""
    from mdship.runtime import Runner
    from mdship.tokenizer import unknown_words_warning

    prompt = "a red zxqv and a qqq circle"
    proc = run_runner(runner_exe, runner_bundle, "--prompt", prompt, "--out", tmp_path / "x.png")
    assert proc.returncode == 0, proc.stderr
    expected = unknown_words_warning(Runner.open(runner_bundle).tokenizer, prompt)
    assert expected and proc.stderr.strip().splitlines() == [expected]
    proc = run_runner(runner_exe, runner_bundle, "--prompt", "a red circle", "--out", tmp_path / "y.png")
    assert proc.returncode == 0 and proc.stderr == ""


# ----------------------------------------------------------------------------------------------
# several image sizes and guidance modes in one bundle
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size,guidance", [("96", "2"), ("96", "1"), ("64", "1")])
def test_multires_bundle_picks_the_method_like_the_python_runner(runner_exe, multires_bundle, tmp_path, size,
                                                                 guidance):
    """--width/--height pick the programs' method for that size; guidance 1 the batch-1 UNet. Same image as
    `mdship run` with the same options."""
    args = ["--width", size, "--height", size, "--guidance", guidance]
    got = cpp_image(runner_exe, multires_bundle, tmp_path / "cpp.png", 7, *args)
    assert got.shape == (int(size), int(size), 3)
    code = mdship_cli("run", multires_bundle, "--prompt", PROMPT, "--seed", 7, "--out", tmp_path / "py.png", *args)
    assert code == 0
    want = np.array(Image.open(tmp_path / "py.png").convert("RGB"))
    assert image_psnr(want, got) >= 50.0


def test_multires_bundle_refuses_a_size_it_does_not_serve(runner_exe, multires_bundle, tmp_path):
    proc = run_runner(runner_exe, multires_bundle, "--prompt", PROMPT, "--width", "128", "--out", tmp_path / "x.png")
    assert_one_line_error(proc, "no 128 px programs", "serves 64x64, 96x96")
    proc = run_runner(runner_exe, multires_bundle, "--prompt", PROMPT, "--width", "64", "--height", "96",
                      "--out", tmp_path / "x.png")
    assert_one_line_error(proc, "square")
    assert not (tmp_path / "x.png").exists()


def test_multires_selftest_runs_every_method(runner_exe, multires_bundle):
    proc = run_runner(runner_exe, multires_bundle, "--selftest")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    labels = [ln.split()[0] for ln in proc.stdout.strip().splitlines()]
    assert labels == ["text_encoder", "unet", "unet.res64_b1", "unet.res96_b2", "unet.res96_b1", "vae_decoder",
                      "vae_decoder.res96"], labels
    report = json.loads(run_runner(runner_exe, multires_bundle, "--selftest", "--json").stdout)
    assert set(report["unet"]["methods"]) == {"forward", "res64_b1", "res96_b2", "res96_b1"}
    assert report["unet"]["passed"] and report["unet"]["psnr_db"] == min(
        r["psnr_db"] for r in report["unet"]["methods"].values())


def test_selftest_passes_on_a_quantized_bundle(runner_exe, tiny_8da4w_bundle):
    """The XNNPACK weight cache (on by default in the runner) with int4/int8 packed weights: the same figures."""
    with_cache = run_runner(runner_exe, tiny_8da4w_bundle, "--selftest", "--json")
    without = run_runner(runner_exe, tiny_8da4w_bundle, "--selftest", "--json", "--xnnpack-weight-cache", "off")
    assert with_cache.returncode == 0 and without.returncode == 0, with_cache.stderr + without.stderr
    assert json.loads(with_cache.stdout) == json.loads(without.stdout)


def test_an_fp16_bundle_runs(runner_exe, tiny_fp16_bundle, tmp_path):
    """fp16 programs: XNNPACK's weight cache crashes creating an fp16 runtime in executorch 1.5.1 (segfault in
    xnn_subgraph_alias_fp32_fallback_data), so the runner leaves it off for a bundle with an fp16 component; the
    self-test passes and an image is written, with the same figures as with the cache switched off."""
    selftest = run_runner(runner_exe, tiny_fp16_bundle, "--selftest", "--json")
    without = run_runner(runner_exe, tiny_fp16_bundle, "--selftest", "--json", "--xnnpack-weight-cache", "off")
    assert selftest.returncode == 0 and without.returncode == 0, selftest.stderr + without.stderr
    assert json.loads(selftest.stdout) == json.loads(without.stdout)
    image = run_runner(runner_exe, tiny_fp16_bundle, "--prompt", "a red circle", "--out", str(tmp_path / "a.png"))
    assert image.returncode == 0 and (tmp_path / "a.png").stat().st_size > 0, image.stderr
