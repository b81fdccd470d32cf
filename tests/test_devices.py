"""mdship.devices without an emulator: device names, the qemu command line, the emulator-artefact rule, the kernel
trace, the build's lane choice, the manifest field and its report column. Running the arm64 runner under qemu is
tests/runner/test_runner_arm64.py (slow: it cross-compiles the runner)."""

from __future__ import annotations

import json

import pytest

from mdship import devices
from mdship.bundle import DeviceVerification, Manifest
from mdship.errors import UserError
from mdship.stages import device as device_stage

SME_WRONG = {"features": ["asimd", "sme"], "svl_bits": 256, "elements": 64, "smopa_4way_i8_wrong": 48,
             "fmopa_f32_wrong": 0}


def test_device_names():
    assert isinstance(devices.get("host"), devices.Host)
    matrix = devices.get("arm64-qemu")
    assert matrix.cpu is None and [m.name for m in matrix.models] == list(devices.MODEL_NAMES)
    one = devices.get("arm64-qemu:cortex-a53")
    assert [m.name for m in one.models] == ["cortex-a53"]
    assert devices.get("arm64-qemu:neoverse-n1").models[0].name == "neoverse-n1"  # any qemu model, by name
    for bad in ("arm", "host:x", "adb"):
        with pytest.raises(UserError, match="unknown device"):
            devices.get(bad)


def test_matrix_has_a_phone_core_a_baseline_core_and_an_sme_model():
    assert devices.PHONE_MODEL == "cortex-a76"
    assert {"cortex-a76", "cortex-a53", "max"} <= set(devices.MODEL_NAMES)


def test_qemu_command_line(tmp_path, monkeypatch):
    monkeypatch.setenv("MDSHIP_ARM64_CACHE", str(tmp_path / "cache"))
    cmd = devices.Arm64Qemu().command("cortex-a53", tmp_path / "prog", ["--selftest"], {"X": "1"})
    assert cmd[:5] == ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu", "-cpu", "cortex-a53"]
    assert f"LD_LIBRARY_PATH={tmp_path / 'cache' / 'executorch' / 'lib'}:" in cmd[6] and cmd[7:9] == ["-E", "X=1"]
    assert cmd[-2:] == [str(tmp_path / "prog"), "--selftest"]


def test_missing_lane_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("MDSHIP_ARM64_BUILD", str(tmp_path))
    lane = devices.Arm64Qemu()
    assert "make runner-arm64" in lane.unavailable()
    with pytest.raises(UserError, match="make runner-arm64"):
        lane.require()


INT8_SME = ["kai_run_lhs_quant_pack_qai8dxp_f32", "kai_run_matmul_clamp_f32_qai8dxp1vlx4_qsi8cxp4vlx4_1vlx4vl_sme_mopa"]
F16_SME = ["kai_run_lhs_pack_x16p2vlx2_x16_sme", "kai_run_matmul_clamp_f16_f16p2vlx2_f16p2vlx2b_2vlx2vl_sme_mopa"]


def test_a_wrong_sme_instruction_excludes_a_model_only_when_a_kernel_that_ran_uses_it():
    reason = devices.exclusion(SME_WRONG, "qemu-aarch64 version 7.2.22", INT8_SME)
    assert reason.startswith("emulator artefact: qemu-aarch64 version 7.2.22")
    assert "SMOPA (4-way, int8): 48 of 64 elements wrong, used by " + INT8_SME[1] in reason and "FMOPA" not in reason
    assert devices.exclusion(SME_WRONG, "q", F16_SME) is None  # fp16 kernels issue no SMOPA: the failure counts
    assert devices.exclusion(SME_WRONG, "q", []) is None
    assert devices.exclusion({**SME_WRONG, "smopa_4way_i8_wrong": 0}, "q", INT8_SME) is None
    assert devices.exclusion({"features": ["asimd"]}, "q", INT8_SME) is None  # no SME: nothing to check


def test_kernel_trace_keeps_the_kleidiai_routines_that_ran(tmp_path):
    trace = tmp_path / "t.txt"
    trace.write_text("kai_get_mr_x\tlib.so\nkai_run_matmul_a_sme_mopa\tlib.so\nkai_run_lhs_b\tlib.so\n"
                     "kai_run_matmul_a_sme_mopa\tlib.so\n")
    assert devices.read_trace(trace) == ["kai_run_matmul_a_sme_mopa", "kai_run_lhs_b"]
    assert devices.read_trace(tmp_path / "missing.txt") == []


def test_build_lanes(monkeypatch, tmp_path):
    monkeypatch.setenv("MDSHIP_BUILD_DEVICES", "none")
    assert device_stage.lanes("xnnpack") == []
    monkeypatch.setenv("MDSHIP_ARM64_BUILD", str(tmp_path))  # not installed
    monkeypatch.setenv("MDSHIP_BUILD_DEVICES", "auto")
    assert device_stage.lanes("xnnpack") == []  # auto skips a lane that is not installed
    monkeypatch.setenv("MDSHIP_BUILD_DEVICES", "arm64-qemu")
    with pytest.raises(UserError, match="make runner-arm64"):
        device_stage.lanes("xnnpack")


def _verification() -> dict:
    model = {"cpu": "max", "role": "SME", "features": ["sme"], "passed": False,
             "excluded": devices.exclusion(SME_WRONG, "qemu 7.2", INT8_SME),
             "components": {"text_encoder": {"psnr_db": 11.2, "gate_db": 25.0, "passed": False}}}
    phone = {"cpu": "cortex-a76", "role": "phone", "features": ["asimddp"], "passed": True,
             "components": {"text_encoder": {"psnr_db": 49.1, "gate_db": 25.0, "passed": True}},
             "image_psnr_vs_host_db": 200.0, "image_psnr_vs_eager_db": 38.0,
             "operators": {"text_encoder": ["Fully Connected (NC, QP8, F32, QC8W) GEMM"]},
             "microkernels": ["kai_run_matmul_clamp_f32_qai8dxp4x4_qsi8cxp4x4_16x4_neon_dotprod"]}
    return {"device": "arm64-qemu", "mode": "emulated", "emulator": "qemu 7.2", "runner": "mdship-runner",
            "note": devices.EMULATED, "prompt": "a red circle", "seed": 0,
            "models": {"cortex-a76": phone, "max": model}, "passed": True}


def test_manifest_records_devices_and_report_shows_them(tiny_bundle, tmp_path, run_cli):
    import shutil

    from mdship import bundle

    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    manifest = bundle.Bundle.open(copy).manifest
    assert manifest.devices is None  # the tests' builds run no lane
    manifest.devices = {"arm64-qemu": DeviceVerification.model_validate(_verification())}
    bundle._write_manifest(copy, Manifest.model_validate(json.loads(manifest.to_json())))
    result = run_cli("report", str(copy))
    assert result.exit_code == 0, result.err
    assert "other ISA (emulated)" in result.out and "arm64-qemu: pass (1 of 1 models, 1 excluded)" in result.out
    assert "| cortex-a76 | 49.1 | - | - | inf | 38.0 | pass |" in result.out  # identical to the host: inf, not 200
    assert "excluded: emulator artefact" in result.out
    data = json.loads(run_cli("report", str(copy), "--json").out)
    assert data["bundles"][0]["devices"]["arm64-qemu"]["models"]["max"]["excluded"]


def test_cli_device_errors_are_one_line(run_cli, tiny_bundle, tmp_path, monkeypatch):
    result = run_cli("verify", str(tiny_bundle), "--device", "phone")
    assert result.exit_code == 2 and result.err.count("\n") == 1 and "unknown device" in result.err
    monkeypatch.setenv("MDSHIP_ARM64_BUILD", str(tmp_path))
    result = run_cli("run", str(tiny_bundle), "--prompt", "a red circle", "--out", str(tmp_path / "x.png"),
                     "--device", "arm64-qemu")
    assert result.exit_code == 2 and "make runner-arm64" in result.err and result.err.count("\n") == 1
