"""mdship.metrics: identical images are infinite PSNR (stored as 200 in JSON, counted apart in summaries), and the
learned metrics run only from local weights (a tiny CLIP model made here; LPIPS through its package's interface)."""

from __future__ import annotations

import math
import shutil
import sys
import types

import numpy as np
import pytest

from mdship import metrics
from mdship_testing import ROOT


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(n)]


def test_identical_images_are_infinite_and_json_stores_them_as_200():
    [a] = _images(1)
    b = a.copy()
    b[0, 0, 0] ^= 1
    assert metrics.image_psnr(a, a) == math.inf
    assert 60 < metrics.image_psnr(a, b) < math.inf
    assert metrics.json_db(math.inf) == metrics.IDENTICAL_DB and metrics.from_json_db(metrics.IDENTICAL_DB) == math.inf
    assert metrics.from_json_db(41.5) == 41.5


def test_psnr_summary_counts_identical_images_apart():
    s = metrics.psnr_summary([math.inf, 40.0, 30.0, math.inf, 50.0])
    assert s == {"images": 5, "identical": 2, "median_db": 40.0, "worst_db": 30.0, "worst_index": 2}
    assert metrics.psnr_summary([math.inf, math.inf])["median_db"] is None


def test_manifest_mean_keeps_its_format(tiny_bundle):
    """Old readers still get finite JSON: identical images are stored as 200 in per_prompt."""
    from mdship.bundle import Bundle

    f = Bundle.open(tiny_bundle).manifest.fidelity
    assert all(math.isfinite(v) for v in f.image_psnr_db.per_prompt)


def test_clip_score_from_a_local_model(tmp_path):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    config = CLIPConfig(text_config={"vocab_size": 4411, "hidden_size": 32, "intermediate_size": 37,
                                     "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 77},
                        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1,
                                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
                        projection_dim=16)
    CLIPModel(config).save_pretrained(tmp_path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    for f in (ROOT / "mdship" / "data" / "preset-tokenizer").iterdir():
        shutil.copy(f, tmp_path / f.name)
    scores = metrics.clip_scores(str(tmp_path), _images(2), ["a red circle", "a blue square"])
    assert len(scores) == 2 and all(0 <= s <= 100 for s in scores)
    with pytest.raises(metrics.MetricUnavailable, match="not a local CLIP model directory"):
        metrics.clip_scores(str(tmp_path / "missing"), _images(1), ["x"])


def test_lpips_is_unavailable_without_its_package(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "lpips", None)  # import lpips -> ImportError
    with pytest.raises(metrics.MetricUnavailable, match="lpips package is not installed"):
        metrics.lpips_distances(str(tmp_path / "w.pth"), _images(1), _images(1))


def test_lpips_loads_local_weights_and_never_a_pretrained_backbone(monkeypatch, tmp_path):
    """The lpips package's interface (LPIPS(net, pretrained, pnet_rand) + load_state_dict), faked: what mdship asks
    of it is an untrained backbone (no torchvision download) and the user's state dict."""
    import torch

    made = {}

    class LPIPS(torch.nn.Module):
        def __init__(self, net, pretrained, pnet_rand, verbose):
            super().__init__()
            made.update(net=net, pretrained=pretrained, pnet_rand=pnet_rand)
            self.scale = torch.nn.Parameter(torch.zeros(()))

        def forward(self, a, b):
            return (self.scale * (a - b).abs().mean(dim=(1, 2, 3))).view(-1, 1, 1, 1)

    monkeypatch.setitem(sys.modules, "lpips", types.SimpleNamespace(LPIPS=LPIPS))
    torch.save({"scale": torch.tensor(2.0)}, tmp_path / "w.pth")
    ref, cand = _images(2), _images(2, seed=1)
    distances = metrics.lpips_distances(str(tmp_path / "w.pth"), ref, cand)
    assert made == {"net": "alex", "pretrained": False, "pnet_rand": True}
    assert len(distances) == 2 and all(d > 0 for d in distances)
    assert metrics.lpips_distances(str(tmp_path / "w.pth"), ref, ref) == [0.0, 0.0]
    (tmp_path / "bad.pth").write_bytes(b"not a state dict")
    with pytest.raises(metrics.MetricUnavailable, match="not an LPIPS"):
        metrics.lpips_distances(str(tmp_path / "bad.pth"), ref, cand)
