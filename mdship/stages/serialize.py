"""Stage `serialize`: edge program -> .pte bytes (the flatbuffer an ExecuTorch runtime loads)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from mdship.stages.lower import LoweredComponent


@dataclass
class SerializedComponent:
    name: str
    data: bytes
    sha256: str


def run(lowered: LoweredComponent) -> SerializedComponent:
    data = bytes(lowered.edge.to_executorch().buffer)
    return SerializedComponent(lowered.name, data, hashlib.sha256(data).hexdigest())
