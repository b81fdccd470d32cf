"""The lower stage: provenance records shared, not deep-copied, with the same program."""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn
from torch.fx import traceback

from mdship import backends
from mdship.recipe import Target
from mdship.stages import export, lower, serialize

XNNPACK = backends.get("xnnpack")


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.proj = nn.Conv2d(4, 8, 3, padding=1), nn.Linear(8, 8)

    def forward(self, x):
        h = self.conv(x)
        h = h * torch.sigmoid(h)
        return self.proj(h.mean(dim=(2, 3))) + 1


def test_shared_provenance_keeps_the_program_and_its_debug_handles(monkeypatch):
    """Lowered with shared provenance links, a program is the stock lowering's byte for byte (the debug handles
    ExecuTorch serializes come from each chain's oldest link), and no provenance chain is deep-copied."""
    torch.manual_seed(0)
    x = (torch.randn(1, 4, 8, 8),)
    exported = export.run("c", Block().eval(), "fp32", x)
    partitioners = XNNPACK.partitioners(Target(backend="xnnpack"), None)
    copied, deepcopy = [], copy.deepcopy

    def counting(value, *args):
        if isinstance(value, list) and value and isinstance(value[0], traceback.NodeSource):
            copied.append(len(value))
        return deepcopy(value, *args)

    monkeypatch.setattr(copy, "deepcopy", counting)

    def program() -> tuple[bytes, int]:
        copied.clear()
        data = serialize.run(lower.run(exported, partitioners, XNNPACK.transform_passes())).data
        return data, len(copied)

    shared, shared_copies = program()
    for module in (lower, serialize):  # the stock lowering: torch.fx's own deep copies
        monkeypatch.setattr(module, "shared_provenance", contextlib.nullcontext)
    stock, stock_copies = program()
    assert shared == stock
    assert shared_copies == 0 < stock_copies
