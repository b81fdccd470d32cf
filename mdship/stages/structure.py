"""Stage `structure`: check a .pte without running it (what is possible for Vulkan and Core ML on Linux).

For every delegate call in the program: the backend id is the expected one and its processed blob is present
and non-empty. Then, per backend:

* Core ML: the blob is the flattened directory ``model.mlpackage`` + ``metadata.json`` (executorchcoreml). It is
  unpacked and its spec loaded with coremltools, without compiling or running it: spec version, inputs and
  outputs (names, shapes, dtypes), the dtype of every op result (fp16 when the target computes in fp16), the
  dtype of every weight and the ``constexpr_*`` ops that dequantize weight-only int8 / int4 weights, and the
  compile specs (compute units, deployment target, precision) against the recipe.
* Vulkan: the blob is a ``VH00`` header + a VkGraph flatbuffer; it is decoded (flatc) to count the operators it
  runs, the dtypes of its tensors (fp16 with force_fp16) and of its constant tensors (int8 for quantized
  linears), and its inputs and outputs.
* XNNPACK: the blob's presence and size.

The result is a dict recorded in the manifest under each component's ``structure``; ``ok`` is false when a
check failed, and the build then fails.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

#: recipe backend name -> ExecuTorch backend id of its delegate calls
BACKEND_IDS = {"xnnpack": "XnnpackBackend", "vulkan": "VulkanBackend", "coreml": "CoreMLBackend"}
#: coremltools' MIL-program dtypes of constexpr (dequantize-on-load) weight ops
_CONSTEXPR_QUANT = ("constexpr_affine_dequantize", "constexpr_blockwise_shift_scale", "constexpr_lut_to_dense")
_FLOAT_NAMES = {"fp16": "FLOAT16", "fp32": "FLOAT32"}


class _Checks:
    def __init__(self):
        self.items: list[dict] = []

    def add(self, name: str, passed: bool, detail: str = "") -> bool:
        self.items.append({"check": name, "passed": bool(passed), "detail": detail})
        return bool(passed)

    @property
    def ok(self) -> bool:
        return all(c["passed"] for c in self.items)


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


# ---------------------------------------------------------------------------------------------- Core ML


@contextmanager
def unpacked_coreml(blob: bytes):
    """Unpack one Core ML delegate blob into a temp dir; yields the dir holding model.mlpackage + metadata.json."""
    from executorch.backends.apple.coreml import executorchcoreml

    tmp = Path(tempfile.mkdtemp(prefix="mdship-coreml-"))
    try:
        if not executorchcoreml.unflatten_directory_contents(blob, str(tmp)):
            raise ValueError("the Core ML delegate blob does not unflatten into a directory")
        roots = [p.parent for p in tmp.rglob("metadata.json")] or [tmp]
        yield roots[0]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _array_dtype(feature) -> str:
    import coremltools as ct

    kind = feature.type.WhichOneof("Type")
    if kind != "multiArrayType":
        return kind or "unknown"
    enum = ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType
    return enum.Name(feature.type.multiArrayType.dataType)


def coreml_spec_summary(spec) -> dict:
    """I/O, op-result dtypes, weight dtypes and quantization ops of a Core ML ML-program spec."""
    from coremltools.proto import MIL_pb2

    dtype_name = {v: k for k, v in MIL_pb2.DataType.items()}
    summary = {
        "specification_version": spec.specificationVersion,
        "inputs": [{"name": f.name, "shape": list(f.type.multiArrayType.shape), "dtype": _array_dtype(f)}
                   for f in spec.description.input],
        "outputs": [{"name": f.name, "shape": list(f.type.multiArrayType.shape), "dtype": _array_dtype(f)}
                    for f in spec.description.output],
    }
    if spec.WhichOneof("Type") != "mlProgram":
        summary["model_type"] = spec.WhichOneof("Type")
        return summary
    op_types, result_dtypes, weight_dtypes, quant_ops = Counter(), Counter(), Counter(), Counter()

    def tensor_dtype(value_type) -> tuple[str, int] | None:
        if value_type.WhichOneof("type") != "tensorType":
            return None
        t = value_type.tensorType
        return dtype_name.get(t.dataType, str(t.dataType)), t.rank

    for name, function in spec.mlProgram.functions.items():
        block = function.block_specializations[function.opset]
        summary.setdefault("opset", function.opset)
        for op in block.operations:
            op_types[op.type] += 1
            if op.type.startswith("constexpr"):
                quant_ops[op.type] += 1
            if op.type == "const" or op.type.startswith("constexpr"):
                # weights: the tensors (rank >= 2) a const / constexpr op holds in its attributes
                for attr in op.attributes.values():
                    td = tensor_dtype(attr.type)
                    if td and td[1] >= 2:
                        weight_dtypes[td[0]] += 1
                for arg in op.inputs.values():
                    for binding in arg.arguments:
                        if binding.WhichOneof("binding") == "value":
                            td = tensor_dtype(binding.value.type)
                            if td and td[1] >= 2:
                                weight_dtypes[td[0]] += 1
                continue
            for out in op.outputs:
                td = tensor_dtype(out.type)
                if td:
                    result_dtypes[td[0]] += 1
    fp16, fp32 = result_dtypes.get("FLOAT16", 0), result_dtypes.get("FLOAT32", 0)
    summary.update({
        "ops": sum(op_types.values()),
        "op_types": dict(op_types.most_common()),
        "op_result_dtypes": dict(result_dtypes.most_common()),
        "fp16_op_share": round(fp16 / (fp16 + fp32), 4) if fp16 + fp32 else 0.0,
        "weight_dtypes": dict(weight_dtypes.most_common()),
        "quantization_ops": dict(quant_ops.most_common()),
    })
    return summary


def load_coreml_spec(root: Path):
    """The spec of the model.mlpackage under ``root``, loaded with coremltools (no compile, no execution)."""
    import coremltools as ct

    return ct.models.utils.load_spec(str(root / "model.mlpackage"))


def _check_coreml(blob: bytes, compile_specs: dict, target, checks: _Checks, index: int) -> dict:
    from mdship.backends.coreml import compile_specs as make_compile_specs

    info: dict = {}
    want = {c.key: bytes(c.value) for c in make_compile_specs(target.coreml)}
    # the pass pipeline (~95 pass names) is compared but not shown: no use in a manifest
    info["compile_specs"] = {k: v.decode(errors="replace") for k, v in compile_specs.items() if k != "pass_pipeline"}
    checks.add(f"coreml[{index}].compile_specs", all(compile_specs.get(k) == v for k, v in want.items()),
               json.dumps(info["compile_specs"]))
    try:
        with unpacked_coreml(blob) as root:
            files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
            has_pkg = (root / "model.mlpackage").is_dir() and (root / "metadata.json").is_file()
            if not checks.add(f"coreml[{index}].mlpackage", has_pkg, f"{len(files)} files"):
                return info
            info["metadata"] = json.loads((root / "metadata.json").read_text())
            info.update(coreml_spec_summary(load_coreml_spec(root)))
    except Exception as exc:  # noqa: BLE001 - any failure to unpack or parse is a failed structural check
        checks.add(f"coreml[{index}].spec", False, f"{type(exc).__name__}: {exc}")
        return info
    checks.add(f"coreml[{index}].spec", info.get("specification_version", 0) > 0 and bool(info.get("outputs")),
               f"specification version {info.get('specification_version')}, opset {info.get('opset')}")
    names_match = (info["metadata"].get("inputNames") == [i["name"] for i in info["inputs"]] or
                   sorted(info["metadata"].get("inputNames", [])) == sorted(i["name"] for i in info["inputs"]))
    checks.add(f"coreml[{index}].io_names", names_match and
               info["metadata"].get("outputNames") == [o["name"] for o in info["outputs"]],
               "metadata.json names match the model description")
    return info


# ---------------------------------------------------------------------------------------------- Vulkan


def vulkan_graph_summary(blob: bytes) -> dict:
    """Operators, tensor dtypes, constants and I/O of a Vulkan delegate blob (header + VkGraph flatbuffer)."""
    from executorch.backends.vulkan.serialization.vulkan_graph_serialize import (
        VulkanDelegateHeader, extract_vk_flatbuffer, flatbuffer_to_vk_graph)

    header = VulkanDelegateHeader.from_bytes(blob[:VulkanDelegateHeader.EXPECTED_LENGTH])
    graph = flatbuffer_to_vk_graph(extract_vk_flatbuffer(blob))
    tensors = [v.value for v in graph.values if type(v.value).__name__ == "VkTensor"]

    def spec(i):
        t = graph.values[i].value
        dtype = getattr(getattr(t, "datatype", None), "name", "?")
        staging = getattr(getattr(t, "staging_datatype", None), "name", "UNSET")
        # dtype: how the GPU holds it; host_dtype: what the caller passes / gets (staging conversion)
        return {"shape": list(getattr(t, "dims", [])), "dtype": dtype,
                "host_dtype": dtype if staging == "UNSET" else staging}

    return {
        "version": graph.version,
        "flatbuffer_bytes": header.flatbuffer_size,
        "ops": len(graph.chain),
        "op_types": dict(Counter(op.name for op in graph.chain).most_common()),
        "tensor_dtypes": dict(Counter(t.datatype.name for t in tensors).most_common()),
        "constant_dtypes": dict(Counter(t.datatype.name for t in tensors if t.constant_id >= 0).most_common()),
        "constants": len(graph.constants),
        "inputs": [spec(i) for i in graph.input_ids],
        "outputs": [spec(i) for i in graph.output_ids],
    }


def _check_vulkan(blob: bytes, compile_specs: dict, target, checks: _Checks, index: int) -> dict:
    force = bool(target.vulkan.force_fp16) if target.vulkan else True
    checks.add(f"vulkan[{index}].compile_specs", compile_specs.get("force_fp16", b"\x00") == bytes([force]),
               f"force_fp16={compile_specs.get('force_fp16', b'').hex() or 'unset'}")
    try:
        info = vulkan_graph_summary(blob)
    except Exception as exc:  # noqa: BLE001
        checks.add(f"vulkan[{index}].graph", False, f"{type(exc).__name__}: {exc}")
        return {}
    checks.add(f"vulkan[{index}].graph", info["ops"] > 0, f"{info['ops']} operators, {info['constants']} constants")
    return info


# ---------------------------------------------------------------------------------------------- the stage


def run(pte: bytes, target, spec, expected_inputs: list[dict], expected_outputs: list[dict],
        compute_fp16: bool, quantized: dict | None = None) -> dict:
    """Check the .pte of one component for ``target``; see the module docstring. Never runs the program.

    ``quantized``: layers quantized per layer type (the quantize stage's report); the delegate must then hold
    quantized weights of the recipe's dtype for them. None: expect them wherever the spec quantizes a layer type.
    """
    checks = _Checks()
    found = delegates(pte)
    main_id = BACKEND_IDS.get(target.backend)
    allowed = {main_id, *(BACKEND_IDS[f] for f in target.fallback)}
    result: dict = {"delegates": [{"method": d["method"], "backend": d["backend"], "bytes": len(d["blob"])}
                                  for d in found]}
    if main_id is None:  # portable: no delegate expected
        checks.add("no_delegate", not found, f"{len(found)} delegate calls")
        return {"ok": checks.ok, "checks": checks.items, **result}

    checks.add("delegate_present", any(d["backend"] == main_id for d in found),
               f"{sum(d['backend'] == main_id for d in found)} {main_id} partition(s)")
    checks.add("backend_ids", all(d["backend"] in allowed for d in found),
               ", ".join(sorted({d["backend"] for d in found})))
    checks.add("blobs_non_empty", all(d["blob"] for d in found),
               f"smallest {min((len(d['blob']) for d in found), default=0)} bytes")

    partitions = []
    for i, d in enumerate(d for d in found if d["backend"] == main_id and d["blob"]):
        if main_id == "CoreMLBackend":
            partitions.append(_check_coreml(d["blob"], d["compile_specs"], target, checks, i))
        elif main_id == "VulkanBackend":
            partitions.append(_check_vulkan(d["blob"], d["compile_specs"], target, checks, i))
    if partitions:
        result[target.backend] = partitions
    _check_precision_and_weights(target, spec, partitions, compute_fp16, checks, quantized)
    if target.backend == "coreml" and len(partitions) == 1 and partitions[0].get("inputs") is not None:
        _check_single_partition_io(partitions[0], expected_inputs, expected_outputs, checks)
    return {"ok": checks.ok, "checks": checks.items, **result}


def _expected_weight_dtypes(spec, quantized: dict | None) -> set[str]:
    """Weight dtypes the quantized layers must show in the delegate (empty when nothing is quantized)."""
    from mdship.capabilities import LAYER_TYPES

    wanted = set()
    for layer in LAYER_TYPES:
        w = spec.layer_spec(layer).weights
        if w in ("int8", "int4") and (quantized is None or quantized.get(layer, 0) > 0):
            wanted.add(w)
    return wanted


def _check_precision_and_weights(target, spec, partitions: list[dict], compute_fp16: bool, checks: _Checks,
                                 quantized: dict | None) -> None:
    if not partitions:
        return
    if target.backend == "coreml":
        shares = [p.get("fp16_op_share", 0.0) for p in partitions]
        if compute_fp16:
            checks.add("precision_fp16", min(shares) >= 0.9, f"fp16 share of op results {min(shares):.1%}")
        wanted = _expected_weight_dtypes(spec, quantized)
        got = Counter()
        for p in partitions:
            got.update(p.get("weight_dtypes", {}))
        names = {"int8": ("INT8", "UINT8"), "int4": ("INT4", "UINT4")}
        for w in sorted(wanted):
            n = sum(got.get(x, 0) for x in names[w])
            checks.add(f"weights_{w}", n > 0, f"{n} {w} weight tensors in the Core ML program")
        if wanted:
            q = sum(sum(p.get("quantization_ops", {}).values()) for p in partitions)
            checks.add("weight_dequantization_ops", q > 0, f"{q} constexpr dequantization ops")
        elif compute_fp16:
            n32 = got.get("FLOAT32", 0)
            checks.add("weights_fp16", n32 == 0, f"{got.get('FLOAT16', 0)} fp16 / {n32} fp32 weight tensors")
    elif target.backend == "vulkan":
        dtypes = Counter()
        consts = Counter()
        for p in partitions:
            dtypes.update(p.get("tensor_dtypes", {}))
            consts.update(p.get("constant_dtypes", {}))
        if compute_fp16:
            checks.add("precision_fp16", dtypes.get("FLOAT32", 0) == 0 and dtypes.get("FLOAT16", 0) > 0,
                       f"{dtypes.get('FLOAT16', 0)} fp16 / {dtypes.get('FLOAT32', 0)} fp32 tensors")
        wanted = _expected_weight_dtypes(spec, quantized)
        if wanted:
            n = consts.get("INT8", 0) + consts.get("UINT8", 0)
            checks.add("weights_quantized", n > 0, f"{n} int8/uint8 (packed int4) constant tensors")


def _check_single_partition_io(part: dict, expected_inputs: list[dict], expected_outputs: list[dict],
                               checks: _Checks) -> None:
    """One partition holding the whole component: its inputs and outputs are the program's (as shapes)."""
    got_in = sorted(tuple(i["shape"]) for i in part["inputs"])
    want_in = sorted(tuple(i["shape"]) or (1,) for i in expected_inputs)
    checks.add("io_inputs", got_in == want_in, f"model inputs {got_in}, program inputs {want_in}")
    got_out = sorted(tuple(o["shape"]) for o in part["outputs"])
    want_out = sorted(tuple(o["shape"]) for o in expected_outputs)
    checks.add("io_outputs", got_out == want_out, f"model outputs {got_out}, program outputs {want_out}")


def extract_mlpackages(pte: bytes, destination: Path, stem: str) -> list[Path]:
    """Write each Core ML partition of ``pte`` as a standalone ``<stem>.mlpackage`` (``<stem>.partN`` when several)."""
    found = [d for d in delegates(pte) if d["backend"] == "CoreMLBackend" and d["blob"]]
    written = []
    for i, d in enumerate(found):
        name = f"{stem}.mlpackage" if len(found) == 1 else f"{stem}.part{i}.mlpackage"
        with unpacked_coreml(d["blob"]) as root:
            target = destination / name
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(root / "model.mlpackage", target)
        written.append(destination / name)
    return written
