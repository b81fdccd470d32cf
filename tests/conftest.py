"""Shared fixtures: a tiny random-init checkpoint on disk, and an in-process CLI runner."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from mdship_testing import TINY_OVERRIDES, build_recipe  # noqa: F401  (re-exported for test modules)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# Builds in the tests run no emulated device lane (minutes under qemu), even where `make runner-arm64` installed
# one; tests/runner/test_runner_arm64.py asks for it by name.
os.environ.setdefault("MDSHIP_BUILD_DEVICES", "none")
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class CliResult:
    exit_code: int
    out: str
    err: str


@pytest.fixture
def run_cli(capsys):
    """Run `mdship ARGS...` in-process through the real entry point (exit codes and one-line errors included)."""
    from mdship.cli import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        code = 0
        try:
            main([str(a) for a in args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="session")
def tiny_checkpoint_dir(tmp_path_factory) -> Path:
    from mdship.checkpoint import Checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    Checkpoint.from_preset("tiny", seed=0).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_checkpoint_dir):
    from mdship.checkpoint import Checkpoint

    return Checkpoint.from_pretrained(tiny_checkpoint_dir)


@pytest.fixture(scope="session")
def build_cache(tmp_path_factory) -> Path:
    """One stage cache for the whole session: tests that build the same programs share them."""
    return tmp_path_factory.mktemp("mdship-cache")


def _tiny_build(tmp_path_factory, build_cache, recipe: str, name: str, *overrides: str) -> Path:
    """`recipe` built on the tiny preset (with `overrides`) into a session temp dir; the bundle's path."""
    out = tmp_path_factory.mktemp(name)
    [result] = build_recipe(recipe, TINY_OVERRIDES + [f"output={out}", *overrides], build_cache)
    assert not result.failures, result.failures
    return result.bundle


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, build_cache) -> Path:
    """recipes/default.yaml built on the tiny preset: an XNNPACK fp32 bundle."""
    return _tiny_build(tmp_path_factory, build_cache, "recipes/default.yaml", "bundle")


@pytest.fixture(scope="session")
def tiny_8da4w_bundle(tmp_path_factory, build_cache) -> Path:
    """recipes/md-xnnpack-8da4w.yaml built on the tiny preset: a small quantized XNNPACK bundle (built once per
    session; tests/test_build_quantized.py checks the build, tests/test_compare.py compares it)."""
    return _tiny_build(tmp_path_factory, build_cache, "recipes/md-xnnpack-8da4w.yaml", "q8da4w")


@pytest.fixture(scope="session")
def tiny_fp16_bundle(tmp_path_factory, build_cache) -> Path:
    """recipes/md-xnnpack-fp16.yaml built on the tiny preset: an XNNPACK bundle with fp16 programs."""
    return _tiny_build(tmp_path_factory, build_cache, "recipes/md-xnnpack-fp16.yaml", "fp16")


@pytest.fixture(scope="session")
def multires_bundle(tmp_path_factory, build_cache) -> Path:
    """recipes/default.yaml on the tiny preset serving 64 and 96 px, guidance as one batch-2 call and as two
    batch-1 calls: one program per component whose methods share their weights."""
    return _tiny_build(tmp_path_factory, build_cache, "recipes/default.yaml", "multires", "resolutions=[64, 96]",
                       "sampler.guidance_modes=[batch2, two_calls]")
