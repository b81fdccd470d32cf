"""`mdship report`: tables built from what the builds recorded, provenance kept (executed vs simulated)."""

from __future__ import annotations

import json
import shutil

import pytest

from mdship_testing import rewrite_manifest


@pytest.fixture
def half_size_simulated_copy(tiny_bundle, tmp_path):
    """A copy of the tiny fp32 bundle whose manifest says: half the bytes, int8, simulated (as Core ML would)."""
    copy = tmp_path / "copy"
    shutil.copytree(tiny_bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["recipe"]["name"] = "halved"
    manifest["verification"]["mode"] = "simulated"
    for c in manifest["components"].values():
        c["bytes"] //= 2
        c["quantization"] = {"scheme": {"linear": {"weights": "int8"}}}
        c["verification"]["mode"] = "simulated"
    rewrite_manifest(copy, manifest)
    return copy


def test_markdown_report_sizes_ratio_and_provenance(tiny_bundle, half_size_simulated_copy, run_cli, tmp_path):
    out = tmp_path / "report.md"
    r = run_cli("report", tiny_bundle, half_size_simulated_copy, "--out", out)
    assert r.exit_code == 0, r.err
    assert out.read_text() == r.out
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in r.out.splitlines()
            if line.startswith("| ") and "MB" not in line and "/xnnpack" in line and "%" not in line}
    fp32, halved = rows["default/xnnpack"], rows["halved/xnnpack"]
    assert fp32[6] == "1.000" and float(halved[6]) == pytest.approx(0.5, abs=0.002)  # vs the all-fp32 bundle
    assert "(sim)" in halved[7] and "(sim)" not in fp32[7]  # simulated PSNR never passes for measured
    assert "Simulated, not measured on the target: halved/xnnpack." in r.out
    assert "## Delegate coverage" in r.out and "| default/xnnpack | UNet |" in r.out


def test_json_report_and_explicit_baseline(tiny_bundle, half_size_simulated_copy, run_cli):
    r = run_cli("report", tiny_bundle, half_size_simulated_copy, "--baseline", half_size_simulated_copy, "--json")
    assert r.exit_code == 0, r.err
    data = json.loads(r.out)
    fp32, halved = data["bundles"]
    assert halved["ratio_vs_fp32"] == 1.0 and fp32["ratio_vs_fp32"] == pytest.approx(2.0, rel=1e-3)
    assert fp32["verification"] == "executed" and halved["verification"] == "simulated"
    assert set(fp32["bytes"]) == {"text_encoder", "unet", "vae_decoder"}


def test_report_errors_are_one_line(run_cli, tmp_path):
    r = run_cli("report")
    assert r.exit_code == 2 and "no bundles given" in r.err
    r = run_cli("report", tmp_path / "missing")
    assert r.exit_code == 2 and "bundle directory not found" in r.err and r.err.count("\n") == 1
