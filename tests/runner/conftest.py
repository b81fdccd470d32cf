"""Fixtures for the C++ runner tests: build `mdship-runner` once per session, and a bundle to run.

The runner is built with CMake into artifacts/runner-build (the same build tree as mdship-tokenize, so the
tokenizer library is compiled once) against the executorch pip wheel's CMake package. Builds use -j2: this
machine's cores are shared.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD_DIR = REPO / "artifacts" / "runner-build"


def executorch_cmake_dir() -> Path:
    import executorch  # a namespace package: no __file__

    root = Path(list(executorch.__path__)[0])
    cmake_dir = root / "share" / "cmake"
    assert (cmake_dir / "executorch-config.cmake").is_file(), f"the executorch wheel has no CMake package in {cmake_dir}"
    return cmake_dir


@pytest.fixture(scope="session")
def runner_exe() -> Path:
    cmake = shutil.which("cmake")
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if not cmake or not cxx:
        pytest.skip(f"cannot build runner/: cmake={cmake!r}, C++ compiler={cxx!r} (install cmake and g++)")
    configure = [
        cmake, "-S", str(REPO / "runner"), "-B", str(BUILD_DIR), "-DCMAKE_BUILD_TYPE=Release",
        "-DMDSHIP_WARNINGS_AS_ERRORS=OFF", "-DMDSHIP_BUILD_RUNNER=ON", f"-DCMAKE_PREFIX_PATH={executorch_cmake_dir()}",
    ]
    build = [cmake, "--build", str(BUILD_DIR), "--target", "mdship-runner", "-j2"]
    for cmd in (configure, build):
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    exe = BUILD_DIR / "mdship-runner"
    assert exe.is_file(), exe
    return exe


@pytest.fixture(scope="session")
def runner_bundle(request, tmp_path_factory) -> Path:
    """An XNNPACK fp32 bundle of recipes/default.yaml on the tiny preset.

    Reuses the session's `tiny_bundle` (tests/conftest.py) when that fixture exists, so the multi-minute
    build is shared with the other bundle tests; otherwise builds one here. MDSHIP_RUNNER_TEST_BUNDLE=DIR uses an
    existing bundle of that recipe instead (for iterating on the runner without rebuilding).
    """
    if os.environ.get("MDSHIP_RUNNER_TEST_BUNDLE"):
        return Path(os.environ["MDSHIP_RUNNER_TEST_BUNDLE"])
    try:
        return Path(request.getfixturevalue("tiny_bundle"))
    except pytest.FixtureLookupError:
        pass
    from mdship.build import Builder
    from mdship.cache import Cache
    from mdship.recipe import load_recipe

    out = tmp_path_factory.mktemp("runner-bundle")
    cache = tmp_path_factory.mktemp("runner-cache")
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        recipe = load_recipe("recipes/default.yaml", ["checkpoint=preset:tiny", f"output={out}"])
        return Builder(recipe, cache=Cache(cache), progress=False).target(recipe.targets[0]).bundle
    finally:
        os.chdir(cwd)
