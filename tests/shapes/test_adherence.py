"""`mdship adherence`: the trained builtin checkpoint follows prompts; the command reports per attribute."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILTIN = ROOT / "mdship" / "builtin" / "shapes"


def test_adherence_json_on_a_random_checkpoint(run_cli, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a large red circle on a blue background, top left\na small green square on a white background, center\n")
    r = run_cli("adherence", "preset:tiny", "--prompts", prompts, "--steps", "1", "--json")
    assert r.exit_code == 0, r.err
    result = json.loads(r.out)
    assert result["n"] == 2 and set(result["per_attribute"]) == {"shape", "color", "background", "size", "position"}
    assert 0 <= result["accuracy"] <= 1


def test_adherence_rejects_non_shapes_prompts(run_cli, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red fox in the snow\n")
    r = run_cli("adherence", "preset:tiny", "--prompts", prompts)
    assert r.exit_code == 2 and "p.txt:1: not a shapes caption" in r.err


@pytest.mark.skipif(not BUILTIN.is_dir(), reason="builtin:shapes is made by tools/train_shapes.py")
def test_builtin_shapes_follows_prompts(run_cli):
    """The trained checkpoint, eager fp32 with its default sampler, on held-out evaluation prompts."""
    lines = (ROOT / "calibration" / "shapes-eval.txt").read_text().splitlines()[:32]
    prompts = ROOT / "artifacts" / "test-eval-32.txt"
    prompts.parent.mkdir(exist_ok=True)
    prompts.write_text("\n".join(lines) + "\n")
    r = run_cli("adherence", "builtin:shapes", "--prompts", prompts, "--json")
    assert r.exit_code == 0, r.err
    assert json.loads(r.out)["accuracy"] >= 0.80
