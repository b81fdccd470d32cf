"""benchmarks/ (the side-by-side suite) without timing anything: its ratios, tables and round-robin order.

Performance itself is measured by `make bench`, never asserted here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is a checkout folder, not installed
from benchmarks import builds, report, sidebyside  # noqa: E402


def _component(eager, compiled, other, flops=4e9):
    return {"flops": flops, "seconds": {"eager_fp32": eager, "compile_fp32": compiled, "bundle:w8a8": other}}


def test_speedups_are_per_round_medians_of_eager_over_contender():
    # round 2 is slowed 3x for everyone (a load spike): the per-round ratio is unaffected
    times = {"eager_fp32": [1.0, 3.0, 1.0], "bundle:w8a8": [0.5, 1.5, 0.5]}
    assert report.speedups(times, "eager_fp32") == {"eager_fp32": 1.0, "bundle:w8a8": 2.0}
    assert report.speedups(times, "compile_fp32") == {}  # no torch.compile contender: no ratio against it


def test_rows_hold_gflops_against_the_peak_of_their_precision():
    peaks = {"torch_fp32": 3.0, "xnnpack_fp32": 4.0, "xnnpack_int8": 5.0}
    rows = {r["contender"]: r for r in report.rows(_component([2.0] * 3, [1.6] * 3, [1.0] * 3), peaks)}
    # every fp32 contender against the best fp32 GEMM of the run, whichever library ran it
    assert rows["eager_fp32"]["gflops"] == pytest.approx(2.0) and rows["eager_fp32"]["of_peak"] == pytest.approx(0.5)
    assert rows["bundle:w8a8"]["vs_eager"] == pytest.approx(2.0) and rows["bundle:w8a8"]["vs_compile"] == pytest.approx(1.6)
    assert rows["bundle:w8a8"]["peak_gflops"] == 5.0 and rows["bundle:w8a8"]["of_peak"] == pytest.approx(0.8)
    assert rows["compile_fp32"]["spread"] == 0.0
    assert report.peak(peaks, "bundle:fp16") is None  # no fp16 peak is measured: no share is claimed


def test_composed_image_adds_component_medians():
    run = {"components": {"text_encoder": {"seconds": {"x": [0.1, 0.2, 0.1]}},
                          "unet": {"seconds": {"x": [1.0, 1.0, 2.0]}},
                          "vae_decoder": {"seconds": {"x": [3.0]}}}}
    assert report.composed_image(run, "x", unet_calls=2) == pytest.approx(0.1 + 2 * 1.0 + 3.0)
    assert report.composed_image(run, "missing", 1) is None
    run["components"]["unet"]["inputs"] = [[2, 8, 8, 8]]
    run["components"]["text_encoder"]["seconds"]["eager_fp32"] = [0.2]
    run["components"]["unet"]["seconds"]["eager_fp32"] = [2.0]
    run["components"]["vae_decoder"]["seconds"]["eager_fp32"] = [6.0]
    text = "\n".join(report.composed_table(run, steps=2))
    assert "2 UNet calls at batch 2" in text and "| x | 5.100 | 2.00x |" in text


def test_markdown_and_json_are_written_together(tmp_path):
    run = {"checkpoint": "preset:tiny@0", "resolution": 64, "threads": 2, "runs": 3, "warmup": 1,
           "thread_policy": {"omp_wait_policy": "PASSIVE"}, "load_average": {"start": [0.1, 0, 0], "end": [0.2, 0, 0]},
           "peak_gflops": {"torch_fp32": 4.0, "xnnpack_fp32": 5.0, "xnnpack_int8": 6.0, "gemm": "8x8x8"},
           "components": {"vae_decoder": _component([2.0] * 3, [1.6] * 3, [1.0] * 3)}}
    results = report.wrap([run])
    out = tmp_path / "sidebyside.json"
    report.write(results, out)
    assert json.loads(out.read_text())["runs"][0]["threads"] == 2
    text = out.with_suffix(".md").read_text()
    assert "preset:tiny@0 at 64 px, 2 thread(s)" in text and "OMP_WAIT_POLICY=PASSIVE" in text
    assert "| vae_decoder | bundle:w8a8 | 1.000 | 0% | 2.00x | 1.60x | 4.0 | 67% |" in text
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temp files


def test_etdump_table_lists_operators_where_they_ran():
    profile = {"method_ms": 120.0, "cpu_ms": 0.5, "top_ops": [
        {"op": "Convolution (NHWC, F32) IGEMM", "where": "delegate", "calls": 23, "ms": 100.0, "share": 0.83}]}
    run = {"components": {"vae_decoder": {"etdump": {"xnnpack_fp32": profile}}}}
    text = "\n".join(report.etdump_tables(run))
    assert "vae_decoder / xnnpack_fp32: 120.0 ms per call (0.5 ms outside the delegate)" in text
    assert "| Convolution (NHWC, F32) IGEMM | delegate | 23 | 100.0 | 83% |" in text


def test_interleave_calls_every_contender_once_per_round_in_order():
    calls, ticks = [], iter(range(100))
    contenders = {"eager_fp32": lambda x: calls.append("e"), "other": lambda x: calls.append("o")}
    times = sidebyside.interleave(contenders, (0,), runs=2, warmup=1, clock=lambda: next(ticks))
    assert calls == ["e", "o"] * 3  # warm-up round, then two timed rounds
    assert {k: len(v) for k, v in times.items()} == {"eager_fp32": 2, "other": 2}


def test_child_arguments_drop_threads_and_out():
    argv = ["--preset", "tiny", "--threads", "1", "2", "--out", "x.json", "--runs", "3"]
    assert sidebyside._without_option(argv, ("--threads", "--out")) == ["--preset", "tiny", "--runs", "3"]


def test_etdump_files_go_beside_the_results_per_thread_count():
    assert str(sidebyside.etdump_dir("a/b.json.2.part", 2)) == "a/b-etdump/2-thread"
    assert str(sidebyside.etdump_dir("a/b.json", 1)) == "a/b-etdump/1-thread"


def test_bad_bundle_argument_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        sidebyside.parse_args(["--bundle", f"w8a8={tmp_path}"])
    assert "expected NAME=DIR with DIR a bundle" in capsys.readouterr().err


def test_build_times_table_and_a_failed_build_is_one_line(monkeypatch, tmp_path):
    record = {"wall_s": 80.5, "cpu_s": 120.25, "peak_rss_mb": 1900.0, "cached": False,
              "threads": {"threads": 2, "omp_wait_policy": "PASSIVE"},
              "load_average": {"before": [0.1, 0.2, 0.3], "after": [1.9, 1.0, 0.5]}}
    results = {"machine": {"cpu_model": "cpu", "cores_available": 2},
               "builds": [{"recipe": "recipes/default.yaml", "overrides": ["checkpoint=builtin:shapes"],
                           "cold": record, "noop": {**record, "wall_s": 4.25, "cached": True}}]}
    table = builds.markdown(results)
    assert "| default | 80.5 | 120.2 | 1 | 1,900 | 4.2 | 0.10 / 1.90 |" in table
    assert "checkpoint=builtin:shapes" in table and "PASSIVE" in table
    results["builds"][0]["cold"].update(workers=2, peak_tree_rss_mb=2500.0)
    assert "| default | 80.5 | 120.2 | 2 | 2,500 | 4.2 |" in builds.markdown(results)

    # a real `mdship build` that fails: its last line, one line
    with pytest.raises(SystemExit, match=r"^recipes/x.yaml: mdship build exited 2: error: .*recipes/x.yaml"):
        builds.build_once("recipes/x.yaml", [], tmp_path / "out", tmp_path / "cache")


def test_runner_memory_splits_load_from_running():
    from benchmarks import runner_memory

    # (s, RSS MiB, file-backed MiB): the .pte mapped while packing, released, then the decoder's working set
    samples = [(0.0, 0.0, 0.0), (0.1, 5.0, 4.0), (0.3, 900.0, 400.0), (0.5, 500.0, 10.0), (0.9, 980.0, 12.0)]
    p = runner_memory.phases(samples, load_s=0.35)
    assert p == {"load_peak_mib": 900.0, "load_peak_file_mib": 400.0, "after_load_mib": 500.0,
                 "running_peak_mib": 980.0, "running_added_mib": 480.0}
    row = {"bundle": "w8a8", "programs_mib": 495.7, "bound_mib": 944.4, "peak_rss_mib": 979.7, **p}
    assert "| w8a8 | 495.7 | 944 | 980 | 900 (400) | 500 | 980 | 480 |" in runner_memory.markdown([row])
    with pytest.raises(ValueError, match="no samples"):
        runner_memory.phases([(0.0, 0.0, 0.0)], load_s=1.0)


def test_images_run_whole_pipelines_per_contender_and_tabulate():
    """--images: each contender's three components through mdship's Generator, interleaved; an 8-step guided image
    on a batch-1 UNet makes 16 UNet calls, a 1-step image one."""
    from types import SimpleNamespace

    from mdship.checkpoint import Checkpoint

    checkpoint = Checkpoint.open("builtin:shapes")
    modules = checkpoint.modules()
    calls = {"unet": 0}

    def counting_unet(*inputs):
        calls["unet"] += 1
        return modules["unet"](*inputs)

    made = {"eager_fp32": dict(modules), "bundle:counted": {**modules, "unet": counting_unet}}
    args = SimpleNamespace(images=[1, 8], guidance=2.0, unet_batch=1, runs=2, warmup=1)
    images = sidebyside.images(checkpoint, 64, made, args)
    assert images["1-step"]["unet_calls"] == 1 and images["8-step"]["unet_calls"] == 16
    assert calls["unet"] == (2 + 1) * (1 + 16)  # runs + warm-up, both images
    assert all(len(v) == 2 for image in images.values() for v in image["seconds"].values())

    run = {"images": {"1-step": {**images["1-step"],
                                 "seconds": {"eager_fp32": [4.0, 4.0], "bundle:counted": [1.0, 1.0]}}}}
    text = "\n".join(report.images_table(run))
    assert "| 1-step, guidance 1, 1 UNet call(s) at batch 1 | bundle:counted | 1.000 | 0% | 4.00x | -x |" in text
    args.unet_batch = 2  # guidance as one batch-2 call per step
    assert sidebyside.images(checkpoint, 64, {"eager_fp32": dict(modules)}, args)["8-step"]["unet_calls"] == 8


def test_images_need_every_component(capsys):
    with pytest.raises(SystemExit):
        sidebyside.parse_args(["--images", "1", "--components", "unet"])
    assert "--images needs every component" in capsys.readouterr().err
