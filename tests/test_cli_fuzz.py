"""Every command, fed generated input: exit 0, or exit 2 (1 for a failed gate) with ONE line on stderr. Never a
traceback (an uncaught exception fails the test: `run_cli` catches only SystemExit).

Bounded example counts keep this in `make test`; the strategies mix valid values with the classes of bad input
seen in the field (non-UTF-8 prompts, NaN / Inf, out-of-range integers, unwritable or directory outputs, files that
are not bundles)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _one_line_or_ok(result, allowed=(0, 2)):
    assert result.exit_code in allowed, (result.exit_code, result.err)
    if result.exit_code != 0:
        lines = result.err.strip().splitlines()
        assert len(lines) == 1, result.err
        assert lines[0].startswith(("error:", "verification failed:")), result.err


# ---------------------------------------------------------------------------------------------- recipes
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["xnnpack", "vulkan", "coreml", "int8", "int4", "fp16",
                                                           "per_group", "int8_dynamic", "int8_static", "auto"]))
KEYS = st.sampled_from(["checkpoint", "output", "targets", "backend", "components", "unet", "text_encoder",
                        "vae_decoder", "linear", "conv", "attention", "weights", "activations", "granularity",
                        "group_size", "precision", "keep", "sampler", "steps", "guidance", "kind", "gates",
                        "image_psnr_db", "calibration", "num_prompts", "resolution", "extends", "fallback",
                        "coreml", "vulkan", "force_fp16", "name", "zzz"])
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(KEYS, inner, max_size=4)), max_leaves=12)
BASE = {"checkpoint": "builtin:shapes", "output": "out", "targets": [{"backend": "xnnpack"}]}


@FUZZ
@given(doc=st.dictionaries(KEYS, VALUES, max_size=6), keep_base=st.booleans())
def test_validate_generated_recipes(run_cli, tmp_path, doc, keep_base):
    recipe = {**BASE, **doc} if keep_base else doc
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True))
    _one_line_or_ok(run_cli("validate", path))


@FUZZ
@given(text=st.text(max_size=200))
def test_validate_arbitrary_text(run_cli, tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    _one_line_or_ok(run_cli("validate", path))


@FUZZ
@given(key=st.sampled_from(["sampler.steps", "sampler.guidance", "components.unet.linear.group_size",
                            "gates.image_psnr_db", "resolution", "targets[0].backend", "extends", "x..y", "[0]"]),
       value=st.one_of(st.sampled_from([".inf", "-.inf", ".nan", "0", "-1", "1e400", "2e70", "[1", "{", "''"]),
                       st.text(max_size=8)))
def test_validate_generated_overrides(run_cli, key, value):
    _one_line_or_ok(run_cli("validate", ROOT / "recipes" / "default.yaml", f"{key}={value}"))


# ---------------------------------------------------------------------------------------------- generating
STEPS = st.sampled_from(["1", "2", "0", "-3", "1001", "99999999999999999999", "two", ""])
GUIDANCE = st.sampled_from(["1", "2.5", "nan", "inf", "-inf", "0.5", "1e300", "x"])
SEEDS = st.sampled_from(["0", "-1", "18446744073709551615", "18446744073709551616", "-9223372036854775809", "s"])
PROMPTS = st.one_of(st.text(max_size=30), st.sampled_from(["a red circle", "\udcff\udcfe bytes", "nul\x00", ""]))


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """Output paths of every kind: fine, nested-new, an existing directory, under a read-only directory, under a
    file."""
    base = tmp_path_factory.mktemp("outs")
    (base / "dir").mkdir()
    (base / "ro").mkdir()
    os.chmod(base / "ro", stat.S_IRUSR | stat.S_IXUSR)
    (base / "file").write_text("x")
    return [base / "ok.png", base / "new" / "deep" / "x.png", base / "dir", base / "ro" / "x.png",
            base / "file" / "x.png"]


@FUZZ
@given(steps=STEPS, guidance=GUIDANCE, seed=SEEDS, prompt=PROMPTS, out=st.integers(0, 4),
       sampler=st.sampled_from(["ddim", "one_step", "euler"]))
def test_run_generated_arguments(run_cli, tiny_bundle, outputs, steps, guidance, seed, prompt, out, sampler):
    if os.geteuid() == 0 and out == 3:
        out = 4  # root writes anywhere: the read-only case needs an ordinary user
    result = run_cli("run", tiny_bundle, "--prompt", prompt, "--steps", steps, "--guidance", guidance,
                     "--seed", seed, "--sampler", sampler, "--out", outputs[out], "--no-verify")
    _one_line_or_ok(result)
    if result.exit_code == 0:
        assert Path(outputs[out]).is_file()


@FUZZ
@given(steps=STEPS, guidance=GUIDANCE, seed=SEEDS, prompt=PROMPTS, out=st.integers(0, 4),
       checkpoint=st.sampled_from(["preset:tiny", "preset:tiny@3", "preset:huge", "builtin:nope", "/no/such/dir",
                                   "s3:x", ""]))
def test_generate_generated_arguments(run_cli, outputs, steps, guidance, seed, prompt, out, checkpoint):
    if os.geteuid() == 0 and out == 3:
        out = 4
    result = run_cli("generate", checkpoint, "--prompt", prompt, "--steps", steps, "--guidance", guidance,
                     "--seed", seed, "--out", outputs[out])
    _one_line_or_ok(result)


# ---------------------------------------------------------------------------------------------- bundles
@FUZZ
@given(command=st.sampled_from(["verify", "bench", "report", "adherence"]),
       target=st.sampled_from(["bundle", "missing", "file", "empty-dir", "checkpoint-dir"]),
       extra=st.sampled_from([[], ["--runs", "0"], ["--threads", "-1"], ["--json"], ["--prompts", "nope.txt"]]))
def test_bundle_commands_on_generated_targets(run_cli, tiny_bundle, tiny_checkpoint_dir, tmp_path, command, target,
                                              extra):
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty-dir").mkdir(exist_ok=True)
    path = {"bundle": tiny_bundle, "missing": tmp_path / "missing", "file": tmp_path / "file",
            "empty-dir": tmp_path / "empty-dir", "checkpoint-dir": tiny_checkpoint_dir}[target]
    args = [command, path, *extra]
    if command == "adherence" and "--prompts" not in extra:
        args += ["--prompts", ROOT / "calibration" / "shapes-eval.txt"]
    if command == "bench":
        args += ["--runs", "1", "--warmup", "0"] if "--runs" not in extra else []
    if command == "adherence" and target in ("bundle", "checkpoint-dir"):
        return  # a valid run of 128 prompts: covered by tests/shapes, too slow to fuzz
    _one_line_or_ok(run_cli(*args), allowed=(0, 1, 2))


def test_non_finite_numbers_are_refused_by_name(run_cli, tiny_bundle, tmp_path):
    for value in ("nan", "inf"):
        r = run_cli("run", tiny_bundle, "--prompt", "x", "--guidance", value, "--out", tmp_path / "x.png")
        assert r.exit_code == 2 and "--guidance" in r.err and "finite" in r.err, r.err
    r = run_cli("run", tiny_bundle, "--prompt", "x", "--steps", "0", "--out", tmp_path / "x.png")
    assert r.exit_code == 2 and "--steps 0: expected an integer in 1..1000" in r.err, r.err
