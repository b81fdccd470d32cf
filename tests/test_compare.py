"""`mdship compare`: two small bundles (one from a recipe argument, built through the cache) and a simulated one, run
against the fp32 reference; the report opens in headless Chromium with every image decoded, its plots present, no
console error and no network request; `--gate` fails for CI when a bundle misses a gate.

The bundles are the session's (tests/conftest.py): the tiny fp32 default and the tiny 8da4w bundle, so this module
adds a compare run (seconds) and no build.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil

import pytest

from mdship_testing import ROOT, TINY_OVERRIDES, rewrite_manifest

PLOTS = ("Size vs image PSNR", "Latency vs image PSNR", "Size per component")


def _chromium_tool():
    spec = importlib.util.spec_from_file_location("mdship_chromium", ROOT / "tools" / "chromium.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def simulated_copy(tiny_bundle, tmp_path):
    """A copy of the tiny fp32 bundle whose manifest says what a Vulkan build says: it cannot run here, and its
    figures are simulated."""
    copy = tmp_path / "sim" / "vulkan"
    shutil.copytree(tiny_bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["recipe"]["name"] = "vk"
    manifest["target"].update(name="vulkan", backend="vulkan")
    manifest["verification"]["mode"] = manifest["fidelity"]["mode"] = "simulated"
    for c in manifest["components"].values():
        c["verification"]["mode"] = "simulated"
        c["bytes"] //= 2
    rewrite_manifest(copy, manifest)
    return copy


@pytest.fixture
def cache_env(build_cache, monkeypatch):
    monkeypatch.setenv("MDSHIP_CACHE_DIR", str(build_cache))
    monkeypatch.chdir(ROOT)


def test_compare_writes_a_report_that_opens_in_chromium(tiny_bundle, tiny_8da4w_bundle, simulated_copy, cache_env,
                                                        run_cli, tmp_path):
    out = tmp_path / "report"
    sets = [a for o in TINY_OVERRIDES + [f"output={tmp_path}/built/{{recipe}}"] for a in ("--set", o)]
    r = run_cli("compare", "recipes/default.yaml", tiny_8da4w_bundle, simulated_copy, *sets,
                "--num-prompts", "3", "--seeds", "2", "--bench", "--out", out)
    assert r.exit_code == 0, r.err
    assert "Executed here" in r.out and "Simulated" in r.out and f"{out}/report.html" in r.out

    data = json.loads((out / "report.json").read_text())
    fp32, q, sim = data["bundles"]
    assert fp32["built_from"].startswith("recipes/default.yaml checkpoint=preset:tiny")
    assert fp32["bundle"] == str(tmp_path / "built" / "default" / "xnnpack")
    assert data["prompts"]["count"] == 3 and data["prompts"]["images"] == 6
    assert [p["seed"] for p in data["prompts"]["pairs"]] == [0, 3, 1, 4, 2, 5]
    # executed: measured here, on every image; identical images counted apart, never averaged in at 200 dB
    assert fp32["executed_here"] and fp32["images"]["mode"] == "executed" and len(fp32["images"]["psnr_db"][
        "per_image"]) == 6
    psnr = fp32["images"]["psnr_db"]
    assert psnr["identical"] == psnr["per_image"].count(None) and psnr["identical"] >= 1
    assert q["images"]["psnr_db"]["identical"] == 0 and 15 < q["images"]["psnr_db"]["worst_db"] < 80
    assert q["ratio_vs_fp32"] < 0.5 and q["latency"]["components"]["unet"]["median_ms"] > 0
    # simulated: the build's figures, labelled, not run, not on the front
    assert not sim["executed_here"] and sim["images"]["mode"] == "simulated" and sim["latency"] is None
    assert not sim["on_pareto_front"] and q["on_pareto_front"]
    assert data["judge"] == {"skipped": "preset:tiny has no prompt-adherence judge"}
    assert data["optional_metrics"]["lpips"]["status"] == "skipped" and "never downloads" in data[
        "optional_metrics"]["clip_score"]["why"]
    assert "For xnnpack, ship md-xnnpack-8da4w/xnnpack" in data["recommendation"]
    assert "For vulkan (simulated figures" in data["recommendation"]
    md = (out / "report.md").read_text()
    assert "## Executed here" in md and "## Simulated" in md and "(sim)" in md and "![Size vs image PSNR]" in md

    tool = _chromium_tool()
    try:
        tool.find_chromium()
    except tool.BrowserError as e:
        pytest.fail(str(e))
    page = tool.inspect_page(out / "report.html", screenshot=tmp_path / "report.png")
    assert page["title"] == "mdship compare"
    assert page["console_errors"] == [] and page["network"] == []
    assert page["images"] and all(i["complete"] and i["naturalWidth"] > 0 for i in page["images"]), page["images"]
    alts = {i["alt"] for i in page["images"]}
    assert set(PLOTS) <= alts and any(a.startswith("Images") for a in alts), alts
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_only_simulated_bundles_run_nothing(simulated_copy, cache_env, run_cli, tmp_path):
    r = run_cli("compare", simulated_copy, "--bench", "--out", tmp_path / "r")
    assert r.exit_code == 0, r.err
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    [sim] = data["bundles"]
    assert not sim["executed_here"] and sim["images"]["source"] == "the build (manifest.json)"
    assert "For vulkan (simulated" in data["recommendation"] and data["reference"]["adherence"] is None
    assert not (tmp_path / "r" / "grid.png").exists() and (tmp_path / "r" / "size_vs_psnr.png").is_file()


def test_gate_fails_on_a_bundle_that_misses_its_gate(tiny_bundle, tiny_8da4w_bundle, cache_env, run_cli,
                                                     tmp_path):
    args = ["compare", tiny_bundle, tiny_8da4w_bundle, "--num-prompts", "2", "--image-psnr-gate", "60"]
    r = run_cli(*args, "--out", tmp_path / "a")
    assert r.exit_code == 0, r.err  # without --gate the report is written and the command succeeds
    assert json.loads((tmp_path / "a" / "report.json").read_text())["bundles"][1]["passed"] is False
    r = run_cli(*args, "--out", tmp_path / "b", "--gate")
    assert r.exit_code == 1 and (tmp_path / "b" / "report.html").is_file()
    [line] = r.err.strip().splitlines()
    assert "1 of 2 bundles miss a gate: md-xnnpack-8da4w/xnnpack (image PSNR worst dB" in line and ">= 60" in line


def test_gate_recorded_by_the_build_is_judged(tiny_bundle, cache_env, run_cli, tmp_path):
    """A bundle argument keeps the image gates its build judged (manifest fidelity.gates)."""
    copy = tmp_path / "strict" / "xnnpack"
    shutil.copytree(tiny_bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["fidelity"]["gates"] = {"image_psnr_db": None, "image_ssim": 1.5}
    rewrite_manifest(copy, manifest)
    r = run_cli("compare", copy, "--num-prompts", "2", "--out", tmp_path / "r", "--gate")
    assert r.exit_code == 1 and "image SSIM worst" in r.err and ">= 1.5" in r.err


def test_compare_errors_are_one_line(tiny_bundle, run_cli, tmp_path, cache_env):
    r = run_cli("compare", "--out", tmp_path / "r")
    assert r.exit_code == 2 and "no bundles or recipes given" in r.err
    r = run_cli("compare", tmp_path / "nothing.txt", "--out", tmp_path / "r")
    assert r.exit_code == 2 and "not a bundle directory nor a recipe file" in r.err
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "notes.txt").write_text("mine")
    r = run_cli("compare", tiny_bundle, "--out", tmp_path / "keep")
    assert r.exit_code == 2 and "not a compare report" in r.err and r.err.count("\n") == 1
    r = run_cli("compare", tiny_bundle, "--reference", "preset:tiny@7", "--out", tmp_path / "r")
    assert r.exit_code == 2 and "is not the bundles' checkpoint" in r.err


def test_pareto_front():
    from mdship.compare import pareto_front

    points = [(5.0, 40.0), (1.0, 30.0), (2.0, 30.0), (3.0, math.inf), (4.0, 50.0)]
    assert pareto_front(points) == [1, 3]


def test_adherence_difference_within_the_judges_error_is_not_significant():
    import numpy as np

    from mdship.adherence import Judge
    from mdship.compare import _adherence

    def score(images, prompts):
        return {"accuracy": float(np.mean([im.mean() for im in images])), "n": len(images)}

    judge = Judge("fake", score, str, 0.02, "test")
    reference = {"accuracy": 0.50}
    pairs = [("p", 0)]
    assert _adherence(judge, [np.full((2, 2), 0.51)], pairs, reference)["significant"] is False
    assert _adherence(judge, [np.full((2, 2), 0.45)], pairs, reference)["significant"] is True
