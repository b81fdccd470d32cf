"""What every delegate implements, and the .pte inspection they share. Stages talk to a backend only through this.

A backend is one file (`xnnpack.py`, `vulkan.py`, `coreml.py`, `portable.py`) holding everything mdship knows
about that delegate: its partitioners, the dtype it exports and computes in, its quantizer where it has one of its
own, what proves a lowering took the quantized layers, how to inspect its delegate blobs without running them, and
what files it adds to a bundle. What formats it runs correctly is data in `mdship.capabilities`.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from mdship.recipe.schema import ComponentSpec, Target
from mdship.rewrites import REWRITES


class Checks:
    """Named pass/fail checks with details, as recorded in a component's manifest `structure`."""

    def __init__(self):
        self.items: list[dict] = []

    def add(self, name: str, passed: bool, detail: str = "") -> bool:
        self.items.append({"check": name, "passed": bool(passed), "detail": detail})
        return bool(passed)

    @property
    def ok(self) -> bool:
        return all(c["passed"] for c in self.items)


def operators(pte: bytes) -> list[str]:
    """The operators a .pte runs on the CPU (outside its delegates), e.g. 'aten::embedding'."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    program = deserialize_pte_binary(pte).program
    return sorted({op.name + (f".{op.overload}" if op.overload else "") for plan in program.execution_plan
                   for op in plan.operators})


def named_data(pte: bytes) -> dict[str, bytes]:
    """The program's named data (constants and blobs the methods share), by key."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    store = deserialize_pte_binary(pte).named_data
    if store is None:
        return {}
    return {key: bytes(store.buffers[entry.buffer_index]) for key, entry in store.pte_data.items()}


def delegates(pte: bytes) -> list[dict]:
    """Every delegate call in a .pte: method, backend id, compile specs and its processed blob (bytes)."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    program = deserialize_pte_binary(pte).program
    found = []
    for plan in program.execution_plan:
        for d in plan.delegates:
            blob = b""  # deserialize_pte_binary moves segment data back inline
            if d.processed.location.name == "INLINE" and d.processed.index < len(program.backend_delegate_data):
                blob = bytes(program.backend_delegate_data[d.processed.index].data)
            found.append({"method": plan.name, "backend": d.id, "blob": blob,
                          "compile_specs": {c.key: bytes(c.value) for c in d.compile_specs}})
    return found


class Backend:
    """The defaults: a delegate that exports and computes in the component's precision and runs here."""

    #: recipe name of the backend (a row key of mdship.capabilities)
    name: str = ""
    #: ExecuTorch backend id of this delegate's partitions in a .pte (None: no delegate)
    backend_id: str | None = None
    #: whether this machine can execute its .pte files (the ExecuTorch pip wheel runs XNNPACK and portable)
    runs_here: bool = True
    #: how the numbers of a program that cannot run here were checked (for the manifest)
    verification_note: str = ""
    #: the export rewrites (mdship.rewrites.REWRITES) this delegate needs to take whole components
    rewrites: tuple[str, ...] = REWRITES

    # ------------------------------------------------------------------ lowering
    def partitioners(self, target: Target, spec: ComponentSpec, whole_graph: bool = False) -> list:
        """ExecuTorch partitioners, in claim order (a fallback delegate comes after the main one).

        ``whole_graph``: the recipe gates delegate coverage at 100% (`gates.delegated_flops_share: 1.0`); a delegate
        that can refuse to leave anything on the CPU at lowering time does so (Core ML's ``lower_full_graph``)."""
        return []

    def transform_passes(self) -> list:
        """Edge transform passes to run before partitioning."""
        return []

    def lowering(self, target: Target, spec: ComponentSpec, quantization: dict | None = None):
        """A context manager the lowering of one component runs in (a scoped toolchain override); none by default.
        ``quantization``: the quantize stage's report of this component."""
        return nullcontext()

    def lowering_key(self, spec: ComponentSpec) -> dict:
        """What else the program this backend lowers from ``spec`` depends on, for the program cache key: a revision
        of a lowering step changes it, so that only the programs that step writes are rebuilt (none by default)."""
        return {}

    def export_precision(self, target: Target, spec: ComponentSpec) -> str:
        """The precision the program is exported in ("fp32" / "fp16"); the delegate may compute in another."""
        return spec.precision

    def computes_fp16(self, target: Target) -> bool:
        """Whether the delegate computes float layers in fp16 whatever the component's precision."""
        return False

    def compute_dtype(self, target: Target, spec: ComponentSpec) -> torch.dtype:
        """The float dtype the delegate computes this component in (what simulated verification uses)."""
        return torch.float16 if self.computes_fp16(target) or spec.precision == "fp16" else torch.float32

    def caveats(self, target: Target, spec: ComponentSpec) -> list[str]:
        """Published device failures of the formats this component uses on this target (mdship.capabilities
        DEVICE_CAVEATS): labels for `mdship validate` and the manifest, not refusals."""
        from mdship.capabilities import device_caveats

        return device_caveats(self.name, spec, target.options.model_dump() if target.options else {})

    def in_fp32(self, target: Target) -> Target:
        """The target with any forced fp16 computation turned off (`on_fp16_overflow: fp32`)."""
        return target

    def mixed(self, target: Target) -> Target:
        """The target whose delegate computes each op in the program's own dtype, so that the layers a component
        keeps in fp32 inside an fp16 program (`keep_fp32:`) stay fp32 (the default: every delegate that does not
        force fp16 already does)."""
        return target

    # ------------------------------------------------------------------ quantization
    def static_quantizer(self, layer_names: set[str]):
        """A PT2E quantizer for static int8 on exactly these layers, or None when the backend has none."""
        return None

    def check_lowered(self, component: str, quantization: dict, coverage: dict) -> None:
        """Raise QuantizationError when the lowering did not take the quantized layers."""

    # ------------------------------------------------------------------ inspection and bundle files
    def inspect(self, pte: bytes, target: Target, spec: ComponentSpec, inputs: list[dict], outputs: list[dict],
                quantized: dict | None = None) -> dict:
        """Structural checks of one component's .pte, without running it (the manifest's `structure`).

        Every delegate call has an expected backend id and a non-empty blob; then the backend checks each of its
        partitions (`inspect_partitions`). ``quantized``: layers quantized per layer type (the quantize stage's
        report); the delegate must then hold quantized weights for them.
        """
        from mdship import backends

        checks = Checks()
        found = delegates(pte)
        cpu_operators = operators(pte)
        result: dict = {"delegates": [{"method": d["method"], "backend": d["backend"], "bytes": len(d["blob"])}
                                      for d in found], "cpu_operators": cpu_operators}
        self.inspect_program(cpu_operators, quantized, checks)
        if self.backend_id is None:
            checks.add("no_delegate", not found, f"{len(found)} delegate calls")
            return {"ok": checks.ok, "checks": checks.items, **result}
        allowed = {self.backend_id, *(backends.get(f).backend_id for f in target.fallback)}
        checks.add("delegate_present", any(d["backend"] == self.backend_id for d in found),
                   f"{sum(d['backend'] == self.backend_id for d in found)} {self.backend_id} partition(s)")
        checks.add("backend_ids", all(d["backend"] in allowed for d in found),
                   ", ".join(sorted({d["backend"] for d in found})))
        checks.add("blobs_non_empty", all(d["blob"] for d in found),
                   f"smallest {min((len(d['blob']) for d in found), default=0)} bytes")
        # the forward method's partitions: further methods (other sizes) run the same layers on the same weights
        mine = [{**d, "blob": self.resolve_blob(d["blob"], pte)} for d in found
                if d["backend"] == self.backend_id and d["blob"] and d["method"] == "forward"]
        partitions = self.inspect_partitions(mine, target, spec, inputs, outputs, quantized, checks)
        if partitions:
            result[self.name] = partitions
        return {"ok": checks.ok, "checks": checks.items, **result}

    def resolve_blob(self, blob: bytes, pte: bytes) -> bytes:
        """A delegate's own data, when its processed bytes only refer to the program's named data (as is)."""
        return blob

    def inspect_program(self, operators: list[str], quantized: dict | None, checks: Checks) -> None:
        """Checks of the operators the program runs outside its delegates (none by default)."""

    def inspect_partitions(self, found: list[dict], target: Target, spec: ComponentSpec, inputs: list[dict],
                           outputs: list[dict], quantized: dict | None, checks: Checks) -> list[dict]:
        """Per-partition details and checks of this backend's delegate blobs (none by default)."""
        return []

    def write_extras(self, pte: bytes, target: Target, directory, component: str) -> list[str]:
        """Extra files this target adds to a bundle for one component; the names written (none by default)."""
        return []


def expected_weight_dtypes(spec: ComponentSpec, quantized: dict | None) -> set[str]:
    """Weight dtypes the quantized layers must show in a delegate (empty when nothing is quantized).

    ``quantized`` counts the layers each layer type's spec quantized; a `layers:` override with integer weights
    quantized at least one layer (the quantize stage refuses one that quantizes none)."""
    from mdship.capabilities import LAYER_TYPES, QUANTIZED_DTYPES

    wanted = set()
    for layer in LAYER_TYPES:
        w = spec.layer_spec(layer).weights
        if w in QUANTIZED_DTYPES and (quantized is None or quantized.get(layer, 0) > 0):
            wanted.add(w)
    wanted |= {s.weights for s in spec.override_specs().values() if s.weights in QUANTIZED_DTYPES}
    return wanted


def fallback_partitioners(target: Target) -> list:
    """The partitioners of the target's `fallback:` chain (they claim what the main delegate left), in order."""
    from mdship import backends

    return [p for f in target.fallback for p in backends.get(f).partitioners(target, None)]
