"""`mdship tune` (mdship.tune): the budget, the model, the recipe it writes, its errors, and (slow) a whole tune on
the tiny preset that builds and meets its budget."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from mdship import capabilities, tune
from mdship.errors import UserError
from mdship_testing import ROOT, TINY_OVERRIDES


# ----------------------------------------------------------------------------------------------------- inputs
def test_budget_is_checked_like_the_recipe_gates():
    assert tune.parse_budget(["image_psnr_db=32", "image_ssim=0.95"]) == {"image_psnr_db": 32.0, "image_ssim": 0.95}
    for bad, words in [([], "none given"), (["psnr=32"], "KEY one of image_psnr_db, image_ssim, adherence"),
                       (["image_psnr_db=30", "adherence=1.5"], "adherence=1.5: expected an accuracy in \\[0, 1\\]"),
                       (["image_psnr_db=high"], "'high' is not a number"),
                       (["image_psnr_db=0"], "image_psnr_db=0.0: input should be greater than 0"),
                       (["image_ssim=0.9"], "image_psnr_db is required")]:
        with pytest.raises(UserError, match=words):
            tune.parse_budget(bad)


@pytest.mark.parametrize("args, words", [
    (["--budget", "image_psnr_db=nan?"], "--budget 'image_psnr_db=nan?': 'nan?' is not a number"),
    (["--budget", "image_psnr_db=32", "--objective", "speed"], "Invalid value for '--objective'"),
    (["--budget", "image_psnr_db=32", "--backend", "metal"], "Invalid value for '--backend'"),
    (["--budget", "image_psnr_db=32", "--out", "tuned.json"], "--out tuned.json: expected a recipe file name ending"),
    (["--budget", "psnr=3"], "expected KEY=VALUE with KEY one of image_psnr_db, image_ssim, adherence"),
    (["--budget", "image_psnr_db=32", "--backend", "portable"],
     "--backend portable: the capability table gives it no integer format for any layer, so there is nothing to "
     "choose; expected one of xnnpack, vulkan, coreml"),
])
def test_cli_mistakes_are_one_line_exit_2(run_cli, tmp_path, args, words):
    out = ["--out", str(tmp_path / "t.yaml")] if "--out" not in args else []
    result = run_cli("tune", "recipes/md-xnnpack-w8a8.yaml", *args, *out)
    assert result.exit_code == 2, result
    assert words in result.err and result.err.count("\n") == 1 and "Traceback" not in result.err


def test_a_bad_recipe_argument_is_the_recipe_error(run_cli, tmp_path):
    result = run_cli("tune", "recipes/md-xnnpack-w8a8.yaml", "sampler.stpes=4", "--budget", "image_psnr_db=30",
                     "--out", str(tmp_path / "t.yaml"))
    assert result.exit_code == 2 and "sampler.stpes: unknown key 'stpes'; did you mean 'steps'?" in result.err


# ----------------------------------------------------------------------------------------------------- the model
def synthetic_table():
    """Three UNet layers with known sensitivities: 'mid.ff.proj_in' is 100x more sensitive than 'down.proj'."""
    from mdship.stages.sensitivity import Row, Sensitivity, format_label

    rows = []
    noise = {"down.proj": 1e-6, "mid.ff.proj_in": 1e-4}
    for layer, kind, group in [("down.proj", "linear", "unet"), ("mid.ff.proj_in", "linear", "unet:content"),
                               ("down.conv", "conv", "unet")]:
        for fmt in capabilities.candidate_formats("xnnpack", kind, "fp32"):
            bits = {"fp32": 32, "int8": 8, "int4": 4}[fmt["weights"]]
            per = 2 if fmt["weights"] == "int4" else (1 if fmt["activations"] == "int8_dynamic" else 1.5)
            n = 0.0 if bits == 32 else noise.get(layer, 1e-7) * per * (16 if bits == 4 else 1)
            rows.append(Row("unet", layer, kind, layer.split(".")[0], group, format_label(fmt), fmt,
                            64 * 64 * bits // 8 + (64 * 4 if bits < 32 else 0), 1000, [1, 16, 64], n, n))
    return Sensitivity(rows, {"text_encoder": 0, "unet": 1000, "vae_decoder": 0},
                       {"unet": [1e4, 2e4], "unet:content": [5e4, 1e4]}, [], ["a", "b"], [1000, 1001],
                       {"unet": "layer"}, {"unet": 3})


def test_the_allocation_meets_the_predicted_budget_on_every_prompt_at_least_cost():
    model = tune.Model.build(synthetic_table(), lambda r: float(r.bytes))
    cheapest = model.extreme(lambda rows: min(rows, key=lambda r: r.bytes))
    for target in (40.0, 50.0, 60.0):
        choice = model.solve(target)
        assert min(model.predicted_db(choice)) >= target - 1e-6
        assert model.bytes(choice) >= model.bytes(cheapest)
        # exhaustive: no cheaper choice meets the target
        import itertools

        for other in itertools.product(*[range(len(rows)) for rows in model.items]):
            if min(model.predicted_db(list(other))) >= target:
                assert model.bytes(list(other)) >= model.bytes(choice)
    # each prompt is a constraint: prompt b (content layer weighed 5x less) alone would allow a cheaper choice
    only_b = tune.Model.build(synthetic_table(), lambda r: float(r.bytes))
    only_b.table.kappa = {g: [k[1], k[1]] for g, k in only_b.table.kappa.items()}
    pairs = [(model.bytes(only_b.solve(t)), model.bytes(model.solve(t))) for t in range(30, 70)]
    assert all(b <= both for b, both in pairs) and any(b < both for b, both in pairs)


def test_the_tuned_recipe_is_a_plain_recipe_that_loads(tmp_path):
    from mdship.recipe import load_recipe

    model = tune.Model.build(synthetic_table(), lambda r: float(r.bytes))
    choice = model.solve(50.0)
    base = load_recipe(ROOT / "recipes/md-xnnpack-w8a8.yaml", TINY_OVERRIDES)
    target = base.targets[0]
    components = tune.tuned_components(model, choice, base)
    chosen = {rows[j].layer: rows[j] for rows, j in zip(model.items, choice)}
    assert chosen["mid.ff.proj_in"].spec["weights"] != "int4" and chosen["down.proj"].spec["weights"] == "int4"
    text = tune.recipe_text(base, target, components, {"image_psnr_db": 30.0}, "artifacts/t", "tuned", ["header"])
    path = tmp_path / "t.yaml"
    path.write_text(text)
    recipe = load_recipe(path)
    unet = recipe.component("unet")
    assert unet.layer_spec("linear").weights == "int4"  # the common format is the layer type's
    assert set(unet.layers) == {"mid.ff.proj_in"}  # the exception is an override, with its sensitivity in a comment
    assert "mid.ff.proj_in: {weights: " in text and "# output SQNR" in text
    assert recipe.gates.image_psnr_db == 30.0 and recipe.checkpoint == "preset:tiny" and text.startswith("# header")
    assert recipe.component("text_encoder").layer_spec("linear").weights == "fp32"  # no candidates: float
    assert recipe.calibration.num_prompts == 2 and recipe.targets[0].backend == "xnnpack"
    # the input recipe is a choice too (w8a8: int8 dynamic linears, static int8 conv)
    baseline, stand_ins = tune.recipe_choice(model, base)
    assert [model.items[i][j].format for i, j in enumerate(baseline)] == ["int8 pc + a8 dynamic"] * 2 + [
        "int8 pc + a8 static"] and stand_ins == []
    # a format that is no candidate (static int8 on a linear) stands in as the candidate with the same weights
    static = load_recipe(ROOT / "recipes/md-xnnpack-w8a8.yaml", TINY_OVERRIDES + [
        "components.unet.linear={weights: int8, granularity: per_channel, activations: int8_static}"])
    baseline, stand_ins = tune.recipe_choice(model, static)
    assert [model.items[i][j].format for i, j in enumerate(baseline)][:2] == ["int8 pc + a8 dynamic"] * 2
    assert stand_ins[0] == "unet.down.proj: int8 pc + a8 static as int8 pc + a8 dynamic"


def test_latency_needs_a_backend_that_runs_here():
    from mdship import backends

    with pytest.raises(UserError, match="--objective latency: vulkan programs do not run here"):
        tune.latency_costs(synthetic_table(), backends.get("vulkan"), progress=False)


def test_the_plot_draws_predicted_and_measured():
    from mdship import figures

    png = figures.tune_plot([(3e6, 30.0), (4e6, 35.0)], [
        figures.TunePoint("c1", 3.2e6, 33.0, 3.5e6, 31.0, "executed", chosen=True),
        figures.TunePoint("uniform", 5e6, 38.0, 5.8e6, math.inf, "executed", baseline=True),
        figures.TunePoint("c2", 3.9e6, 36.0, None, None, "executed")], 32.0, "t")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


# ----------------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_tune_on_the_tiny_preset_builds_and_meets_its_budget(tmp_path, build_cache, run_cli, monkeypatch):
    """The whole command on the tiny preset (random weights): sensitivity, allocation, the uniform baseline and the
    bracketing candidates built and measured; the recipe written builds again (from the cache) and meets the
    budget it states; the report and plot are beside it."""
    monkeypatch.setenv("MDSHIP_CACHE_DIR", str(build_cache))
    monkeypatch.chdir(ROOT)
    out = tmp_path / "tuned.yaml"
    result = run_cli("tune", "recipes/md-xnnpack-8da4w.yaml", *TINY_OVERRIDES, "calibration.num_eval_prompts=2",
                     "--budget", "image_psnr_db=25", "--out", out)
    assert result.exit_code == 0, result.err
    assert "(chosen)" in result.out and f"wrote {out}" in result.out
    report = json.loads(out.with_suffix(".tune.json").read_text())
    chosen = next(c for c in report["candidates"] if c["label"] == report["chosen"])
    assert chosen["measured"]["passed"] and chosen["measured"]["psnr_worst_db"] >= 25
    assert report["baseline"]["measured"]["bytes"] > 0 and report["sensitivity"]["modes"]["unet"] == "layer"
    assert out.with_suffix(".tune.png").read_bytes()[:4] == b"\x89PNG"
    text = out.read_text()
    assert "layers:" in text and text.startswith("# Tuned by mdship")
    data = yaml.safe_load(text)
    assert data["gates"]["image_psnr_db"] == 25

    from mdship_testing import build_recipe

    [built] = build_recipe(out, [f"output={tmp_path / 'rebuilt'}"], build_cache)
    assert not built.failures, built.failures
    assert built.fidelity["image_psnr_db"]["worst"] >= 25
    assert sum(c.entry.bytes for c in built.components.values()) == chosen["measured"]["bytes"]
