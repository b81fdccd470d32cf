"""The command line as a user meets it: bad input of every class is one line and exit code 2, the terminal carries
no third-party log lines unless --verbose, and nothing is left half-written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mdship_testing import rewrite_manifest

ROOT = Path(__file__).resolve().parents[1]


def mdship(*args, env=None) -> subprocess.CompletedProcess:
    """The installed console entry point in a fresh process (real argv bytes, real file descriptors)."""
    cmd = [sys.executable, "-m", "mdship.cli", *[os.fsencode(a) if isinstance(a, (str, Path)) else a for a in args]]
    return subprocess.run(cmd, capture_output=True, cwd=ROOT, env={**os.environ, **(env or {})})


def one_error_line(proc: subprocess.CompletedProcess, *words: str) -> str:
    err = proc.stderr.decode("utf-8", errors="replace")
    assert proc.returncode == 2, (proc.returncode, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


@pytest.fixture
def copy(tiny_bundle, tmp_path):
    dest = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, dest)
    return dest


def test_a_prompt_that_is_not_utf8_is_one_line(tiny_bundle, tmp_path):
    out = tmp_path / "x.png"
    line = one_error_line(mdship("run", tiny_bundle, "--prompt", b"caf\xe9 \xff", "--out", out), "--prompt",
                          "not valid UTF-8")
    assert not out.exists(), line


def test_a_truncated_program_is_one_line_without_runtime_logs(copy, tmp_path):
    data = (copy / "unet.pte").read_bytes()
    (copy / "unet.pte").write_bytes(data[: len(data) // 2])
    line = one_error_line(mdship("run", copy, "--prompt", "x", "--out", tmp_path / "x.png", "--no-verify"),
                          "unet.pte", "cannot load it", "File size is too small")
    assert "cpuinfo" not in line
    verbose = mdship("--verbose", "run", copy, "--prompt", "x", "--out", tmp_path / "x.png", "--no-verify")
    assert verbose.returncode == 2 and b"[program.cpp" in verbose.stderr  # --verbose lets the runtime speak


def test_verify_names_each_flipped_file(copy, run_cli):
    """One byte flipped in any file of the bundle, the manifest and its digest included, is refused by name."""
    files = sorted(p for p in copy.rglob("*") if p.is_file())
    assert {"manifest.json", "manifest.json.sha256", "unet.pte", "scheduler.json"} <= {p.name for p in files}
    for path in files:
        original = path.read_bytes()
        flipped = bytearray(original)
        flipped[len(flipped) // 2] ^= 0x01
        path.write_bytes(bytes(flipped))
        r = run_cli("verify", copy)
        path.write_bytes(original)
        assert r.exit_code == 2 and r.err.count("\n") == 1, (path, r.err)
        named = path.name if path.name != "manifest.json.sha256" else "manifest.json"
        assert named in r.err, (path, r.err)
    assert run_cli("verify", copy).exit_code == 0


def test_missing_scheduler_and_a_manifest_that_disagrees_with_its_program(copy, tiny_bundle, run_cli, tmp_path):
    (copy / "scheduler.json").unlink()
    r = run_cli("run", copy, "--prompt", "x", "--out", tmp_path / "x.png", "--no-verify")
    assert r.exit_code == 2 and "scheduler.json: missing from the bundle" in r.err and r.err.count("\n") == 1
    shutil.copyfile(tiny_bundle / "scheduler.json", copy / "scheduler.json")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["resolution"] = 128  # latents twice the size the UNet program was exported for
    rewrite_manifest(copy, manifest)
    r = run_cli("run", copy, "--prompt", "x", "--out", tmp_path / "x.png", "--no-verify")
    assert r.exit_code == 2 and r.err.count("\n") == 1 and "refused its inputs" in r.err, r.err


def test_outputs_that_cannot_be_written_are_refused_before_any_work(run_cli, tiny_bundle, tmp_path):
    (tmp_path / "taken").write_text("a file")
    r = run_cli("build", ROOT / "recipes" / "default.yaml", "checkpoint=preset:tiny",
                f"output={tmp_path / 'taken' / 'sub'}")
    assert r.exit_code == 2 and "is a file, not a directory" in r.err and r.err.count("\n") == 1, r.err
    r = run_cli("build", ROOT / "recipes" / "default.yaml", "checkpoint=preset:tiny", f"output={tmp_path}",
                "targets=[{backend: xnnpack, name: taken}]")
    assert r.exit_code == 2 and "is an existing file" in r.err, r.err
    r = run_cli("run", tiny_bundle, "--prompt", "x", "--out", tmp_path)
    assert r.exit_code == 2 and "is a directory" in r.err, r.err
    r = run_cli("adherence", tiny_bundle, "--prompts", ROOT / "calibration/shapes-eval.txt",
                "--grid", tmp_path / "taken" / "grid.png")
    assert r.exit_code == 2 and "is a file, not a directory" in r.err, r.err
