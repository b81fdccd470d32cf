"""tools/bench.py (`make bench`) without running a benchmark: its build commands and its report writers.

The timings themselves are never asserted (performance is measured by `make bench`, not by tests); these tests
only keep the script's output code from rotting, on a synthetic results dict shaped like results.json.
"""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("mdship_bench_tool", ROOT / "tools" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(threads: int, scale: float, runner: str) -> dict:
    stats = lambda ms: {"median_ms": ms * scale, "p90_ms": ms * scale * 1.1, "runs": 2}  # noqa: E731
    result = {"bundle": "artifacts/default/xnnpack", "backend": "xnnpack", "threads": threads, "runs": 2,
              "warmup": 1, "load_ms": {"text_encoder": 4.0, "unet": 25.0, "vae_decoder": 5.0},
              "components": {"text_encoder": stats(0.5), "unet": stats(6.0), "vae_decoder": stats(12.0)},
              "end_to_end_one_step": {**stats(30.0), "unet_calls": 1},
              "end_to_end_8_step": {**stats(80.0), "unet_calls": 16},
              "peak_rss_mb": 424.7 if runner == "python" else 42.4}
    return {"threads": threads, "result": result}


def _results(load_1min: float = 0.1) -> dict:
    fidelity = {"image_psnr_db": {"mean": 116.769, "worst": 89.026}, "image_ssim": {"mean": 1.0, "worst": 1.0},
                "prompts": 4, "mode": "executed"}
    return {
        "schema_version": 1,
        "created": "2026-01-01T00:00:00+00:00",
        "machine": {"cpu_model": "Test CPU", "cores": 2, "cores_available": 2, "mem_total_gib": 8.0,
                    "platform": "Linux", "python": "3.11.7", "git": "abc1234",
                    "versions": {"mdship": "0.1.0", "torch": "2.13.0", "executorch": "1.5.1", "torchao": "0.18.0"}},
        "load_average": {"start": [load_1min, 0.2, 0.3], "end": [0.1, 0.2, 0.3]},
        "settings": {"recipes": ["default", "md-xnnpack-w8a8"], "runs": 2, "warmup": 1, "threads": [1, 2]},
        "warnings": [],
        "cpp_runner": {"path": "artifacts/runner-build/mdship-runner"},
        "bundles": [
            {"recipe": "default",
             "build": {"bundle": "artifacts/default/xnnpack", "cached": True, "seconds": 2.0},
             "size": {"label": "default/xnnpack", "total_bytes": 19_740_204, "fidelity": fidelity,
                      "images": {"psnr_db": {"images": 4, "identical": 3, "median_db": 89.026, "worst_db": 89.026}}},
             "python": [_run(1, 1.0, "python"), _run(2, 0.75, "python")],
             "cpp": [_run(1, 0.9, "cpp"), {"threads": 2, "error": "exit 2: mdship-runner: error: boom | bad"}]},
            {"recipe": "md-xnnpack-w8a8", "build": {"error": "exit 1: verification failed: unet 20.1 dB < 35"}},
        ],
        "failures": [],
    }


def test_build_commands(bench):
    assert bench.recipe_command("default") == ["build", "recipes/default.yaml", "--json"]
    cmd = bench.recipe_command("md-xnnpack-8da4w")
    assert cmd[:2] == ["build", "recipes/md-xnnpack-8da4w.yaml"]
    assert "checkpoint=builtin:shapes" in cmd and "resolution=null" in cmd
    assert "output=artifacts/shapes/md-xnnpack-8da4w" in cmd and cmd[-1] == "--json"
    assert set(bench.RECIPES) == {"default", "md-xnnpack-fp32", "md-xnnpack-fp16", "md-xnnpack-w8a8",
                                  "md-xnnpack-8da4w"}
    assert all((ROOT / "recipes" / f"{name}.yaml").is_file() for name in bench.SHAPES_RECIPES)


def test_markdown_tables(bench):
    text = bench.format_markdown(_results())
    assert "Test CPU, 2 cores" in text and "executorch 1.5.1" in text and "start 0.10 / 0.20 / 0.30" in text
    python_table = text.split("## Python runner")[1].split("## C++ runner")[0]
    cpp_table = text.split("## C++ runner")[1].split("## Failures")[0]
    header = ("| bundle | total MB | image PSNR dB median / worst | threads | load ms | text enc ms | UNet ms | "
              "decoder ms | 1-step ms | N-step ms | peak RSS MiB |")
    assert header in python_table and header in cpp_table
    assert "| default | 19.7 | 89.0 / 89.0 (3 of 4 identical) | 1 | 34.0 | 0.5 | 6.0 | 12.0 | 30.0 | 80.0 (N=8) | 424.7 |" in python_table
    assert "| default | 19.7 | 89.0 / 89.0 (3 of 4 identical) | 2 | 34.0 | 0.4 | 4.5 | 9.0 | 22.5 | 60.0 (N=8) | 424.7 |" in python_table
    assert "| 42.4 |" in cpp_table and cpp_table.count("| default |") == 1  # the failed 2-thread run has no row
    assert "md-xnnpack-w8a8 |" not in python_table  # its build failed: no numbers
    failures = text.split("## Failures")[1]
    assert "md-xnnpack-w8a8: build failed: exit 1: verification failed" in failures
    assert "default: cpp runner, 2 threads: exit 2: mdship-runner: error: boom \\| bad" in failures
    assert bench.failures(_results()) == [
        "default: cpp runner, 2 threads: exit 2: mdship-runner: error: boom | bad",
        "md-xnnpack-w8a8: build failed: exit 1: verification failed: unet 20.1 dB < 35"]


def test_markdown_skipped_runner_and_warning(bench):
    results = _results(load_1min=3.0)
    results["warnings"] = ["1-minute load average 3.00 > 0.5 at start"]
    skipped = bench.runner_status(ROOT / "no-such-dir" / "mdship-runner")
    assert skipped.startswith("skipped:") and "make runner" in skipped
    results["cpp_runner"]["skipped"] = skipped
    results["bundles"] = results["bundles"][:1]
    results["bundles"][0]["cpp"] = {"skipped": skipped}
    text = bench.format_markdown(results)
    assert "> **Warning:** 1-minute load average 3.00 > 0.5 at start" in text
    cpp_section = text.split("## C++ runner")[1]
    assert skipped in cpp_section and "| bundle |" not in cpp_section
    assert "## Failures" not in text and bench.failures(results) == []  # a skipped runner is not a failure


def test_write_results_atomic(bench, tmp_path):
    results = _results()
    original = copy.deepcopy(results)
    json_path, md_path = bench.write_results(results, tmp_path / "bench")
    assert json.loads(json_path.read_text()) == original
    assert md_path.read_text() == bench.format_markdown(original)
    assert sorted(p.name for p in (tmp_path / "bench").iterdir()) == ["results.json", "results.md"]  # no temp files
