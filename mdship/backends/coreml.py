"""Core ML: ExecuTorch's delegate for iOS / macOS (CPU, GPU, Neural Engine). Lowers on Linux; runs only on Apple.

``CoreMLPartitioner`` with compile specs from the recipe's ``coreml:`` options: compute units
(all / cpu_and_gpu / cpu_and_ne / cpu_only), minimum deployment target (iOS16..iOS18) and compute precision
(fp16 / fp32). Each partition becomes an ``.mlpackage`` (MIL program + weights) flattened into the .pte;
``mdship.stages.structure`` unpacks it again to check the model without running it. Weight-only int8 / int4
(per channel or per group) comes from the quantize stage as torchao ops that coremltools turns into
``constexpr`` dequantization ops (iOS18 for int4 and per-block).

Inspection, without compiling or running anything: each blob is the flattened directory ``model.mlpackage`` +
``metadata.json`` (executorchcoreml). It is unpacked and its spec loaded with coremltools: spec version, inputs and
outputs (names, shapes, dtypes), the dtype of every op result (fp16 when the target computes in fp16), the dtype
of every weight and the ``constexpr_*`` ops that dequantize weight-only int8 / int4 weights, and the compile specs
(compute units, deployment target, precision) against the recipe. ``emit_mlpackage: true`` writes each partition's
``.mlpackage`` into the bundle, to open in Xcode or run with coremltools on a Mac.

Palettized weights (``lut8`` / ``lut6`` / ``lut4``): the quantize stage has already replaced each planned weight by
its k-means look-up-table values (coremltools' ``OpPalettizerConfig(mode="kmeans")``); ``lowering`` stores exactly
those weights as ``constexpr_lut_to_dense`` by running coremltools' ``palettize_weights`` with
``OpPalettizerConfig(mode="unique")`` on them after conversion (a scoped override of ExecuTorch 1.5.1's
``CoreMLBackend._convert_to_mlmodel``, which applies only ``OpLinearQuantizerConfig`` after conversion). The
inspection checks one look-up table per palettized layer.

``lower_full_graph`` when the recipe gates coverage at 100% (``gates.delegated_flops_share: 1.0``, no fallback): the
partitioner then fails the lowering on any op Core ML cannot take, instead of leaving it on the CPU.

Layers kept in fp32 (``keep_fp32:``, ``mixed``): ``compute_precision: fp16`` would cast them to fp16 with the rest,
so such a component is exported in fp16 with fp32 islands and converted with compute precision fp32, which keeps
each op in the program's dtype (fp16 ops stay fp16).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections import Counter
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from mdship.backends.base import (Backend, Checks, delegates, expected_weight_dtypes, fallback_partitioners,
                                  named_data)
from mdship.capabilities import BITS, LAYER_TYPES, LUT_DTYPES
from mdship.recipe.schema import ComponentSpec, CoreMLOptions, Target

#: how ExecuTorch's Core ML delegate of a multi-method program refers to its shared multifunction model
MULTIFUNCTION_REFERENCE = b"CMJR"

COMPUTE_UNITS = {"all": "ALL", "cpu_and_gpu": "CPU_AND_GPU", "cpu_and_ne": "CPU_AND_NE", "cpu_only": "CPU_ONLY"}


def compile_specs(options: CoreMLOptions) -> list:
    import coremltools as ct
    from executorch.backends.apple.coreml.compiler import CoreMLBackend as ExecuTorchCoreML

    specs = ExecuTorchCoreML.generate_compile_specs(
        compute_unit=ct.ComputeUnit[COMPUTE_UNITS[options.compute_units]],
        minimum_deployment_target=getattr(ct.target, options.minimum_deployment_target),
        compute_precision=ct.precision.FLOAT16 if options.compute_precision == "fp16" else ct.precision.FLOAT32,
        model_type=ExecuTorchCoreML.MODEL_TYPE.MODEL,  # COMPILED_MODEL needs macOS
    )
    if options.compute_precision == "fp16":
        # coremltools 9.0's fuse_elementwise_to_batchnorm runs after the fp16 cast and makes a batch_norm with fp16
        # gamma / beta but fp32 mean / variance, which fails validation. It fires on x * w + b with per-channel
        # constants: every trained GroupNorm / LayerNorm affine (random-init ones, w = 1 and b = 0, are folded away
        # first, so only trained checkpoints hit it). Mul + add run as well; the pass only fuses them.
        passes = [p for p in ct.PassPipeline.DEFAULT.passes if p != "common::fuse_elementwise_to_batchnorm"]
        specs.append(ExecuTorchCoreML.generate_pass_pipeline_compile_spec(passes))
    return specs


_CONVERTER_REGISTERED = False


def register_dequantize_affine() -> None:
    """Let Core ML convert torchao's ``dequantize_affine`` on weights of any rank (conv weights are 4-D).

    ExecuTorch 1.5.1 overrides coremltools' converter with one that asserts rank-2 weights (linear only), so a
    weight-only conv fails to lower ("dequantize_affine only supports rank 2 inputs"). This converter does the same
    for any rank: torchao's scale / zero point hold one value per block (``shape[i] // block_size[i]`` along each
    dim), which is the layout of coremltools' ``constexpr_blockwise_shift_scale`` (iOS18); before iOS18
    ``constexpr_affine_dequantize`` takes a single quantization axis only, and coremltools says so.
    """
    global _CONVERTER_REGISTERED
    if _CONVERTER_REGISTERED:
        return
    import executorch.backends.apple.coreml.compiler.torch_ops  # noqa: F401  (ExecuTorch's rank-2 override first)
    import numpy as np
    from coremltools.converters.mil.frontend import _utils
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs
    from coremltools.converters.mil.frontend.torch.torch_op_registry import register_torch_op
    from coremltools.converters.mil.mil import types

    @register_torch_op(torch_alias=["torchao::dequantize_affine", "torchao.dequantize_affine"], override=True)
    def dequantize_affine(context, node):
        inputs = _get_inputs(context, node, expected=[7, 8])
        data, block_size, scale = inputs[0].val, [int(b) for b in inputs[1].val], inputs[2].val
        zero_point = inputs[3].val if inputs[3] is not None and inputs[3].val is not None else None
        quant_min, quant_max = int(inputs[5].val), int(inputs[6].val)
        if data is None or scale is None:
            raise ValueError(f"{node.name}: Core ML dequantizes constant weights only")
        if len(block_size) != data.ndim or any(d % b for d, b in zip(data.shape, block_size)):
            raise ValueError(f"{node.name}: block_size {block_size} does not tile a weight of shape {data.shape}")
        grid = [d // b for d, b in zip(data.shape, block_size)]
        scale = np.asarray(scale).reshape(grid)
        if zero_point is not None:
            zero_point = np.asarray(zero_point).reshape(grid)
            if not zero_point.any():
                zero_point = None  # symmetric: no offset tensor to store
        bits = {(-8, 7): "int4", (-128, 127): "int8"}.get((quant_min, quant_max))
        if bits is None:
            raise ValueError(f"{node.name}: quantization range {quant_min}..{quant_max}; Core ML takes int4 or int8")
        np_dtype = types.nptype_from_builtin(types.string_to_builtin(bits))
        if zero_point is not None:
            zero_point = zero_point.astype(np_dtype)
        out = _utils._construct_constexpr_dequant_op(data.astype(np_dtype), zero_point, scale, name=node.name)
        context.add(out, node.name)

    _CONVERTER_REGISTERED = True


def exact_lut(nbits: int):
    """coremltools' ``lut_function`` for weights that already hold at most 2^nbits values (the quantize stage's
    k-means): the look-up table is those values, padded to 2^nbits entries, so the indices take ``nbits`` bits.

    Not ``OpPalettizerConfig(mode="unique")``: it counts the values with ``np.unique`` on the fp16 weight, and
    NumPy's AVX-512 sort of float16 (2.4.6, x86-simd-sort) misorders arrays of more than ~16k elements on CPUs that
    have it, so "unique" saw up to 108 values in a 64-value layer and stored 8-bit indices (a paper-scale lut6 UNet
    as large as int8). The values are counted here in float32, which holds every fp16 value exactly."""
    import numpy as np

    def lut_function(val):
        values, inverse = np.unique(np.asarray(val, dtype=np.float32).reshape(-1), return_inverse=True)
        if len(values) > 1 << nbits:
            raise ValueError(f"a weight palettized to {nbits} bits holds {len(values)} distinct values")
        lut = np.zeros(1 << nbits, dtype=val.dtype)
        lut[:len(values)] = values.astype(val.dtype)
        return lut, inverse.reshape(-1).astype(np.uint8)

    return lut_function


@contextmanager
def palettize_after_conversion(layers: dict[str, int]):
    """While lowering, store the weights of ``layers`` (qualified name inside the component -> bits) as Core ML
    look-up tables: after ExecuTorch converts a partition to an ML program, coremltools' ``palettize_weights`` runs
    on exactly those weight constants (found through the partition's parameter names) with `exact_lut`, which holds
    the quantize stage's k-means values bit for bit in ``constexpr_lut_to_dense`` with indices of the layer's bits."""
    import coremltools.optimize as cto
    from coremltools.converters.mil.converter import mil_convert
    from coremltools.converters.mil.mil.passes.graph_pass import PassOption
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY
    from coremltools.models.utils import _apply_graph_pass
    from executorch.backends.apple.coreml.compiler import coreml_preprocess

    bits = {f"component.{name}.weight": nbits for name, nbits in layers.items()}
    backend = coreml_preprocess.CoreMLBackend
    original = backend.__dict__["_convert_to_mlmodel"]

    def convert(edge_program, compile_specs, skip_model_load=True):
        mlmodel = original.__func__(edge_program, compile_specs, skip_model_load)
        names = {p: bits[fqn] for p, fqn in edge_program.graph_signature.inputs_to_parameters.items() if fqn in bits}
        if not names:
            return mlmodel
        config = cto.coreml.OptimizationConfig(op_name_configs={
            n: cto.coreml.OpPalettizerConfig(mode="custom", lut_function=exact_lut(nbits), granularity="per_tensor",
                                             weight_threshold=0) for n, nbits in names.items()})
        # What cto.coreml.palettize_weights(mlmodel, config) does, except that the program is converted back with
        # the compile specs' pass pipeline: the public function re-runs the default one, whose
        # fuse_elementwise_to_batchnorm breaks fp16 models with trained norm affines (see compile_specs).
        palettizer = PASS_REGISTRY["compression::palettize_weights"]
        palettizer.set_options([PassOption("config", config), PassOption("joint_compression", False)])
        program = _apply_graph_pass(mlmodel, palettizer, return_pymil_prog=True)
        spec = mlmodel.get_spec()
        return mil_convert(program, convert_to="mlprogram", convert_from="milinternal",
                           specification_version=spec.specificationVersion, compute_units=mlmodel.compute_unit,
                           model_description=spec.description, skip_model_load=True,
                           pass_pipeline=backend.pass_pipeline_from_compile_specs(compile_specs))

    backend._convert_to_mlmodel = staticmethod(convert)
    try:
        yield
    finally:
        backend._convert_to_mlmodel = original


def _options(target: Target) -> CoreMLOptions:
    return target.coreml or CoreMLOptions()


class CoreMLBackend(Backend):
    name = "coreml"
    backend_id = "CoreMLBackend"
    runs_here = False
    verification_note = ("coreml programs cannot run on this machine: they were checked structurally (delegate "
                         "blobs, Core ML spec) and numerically by running the same exported graph in eager PyTorch "
                         "in the delegate's compute dtype (simulated, not measured on the ExecuTorch runtime)")

    def partitioners(self, target: Target, spec: ComponentSpec | None, whole_graph: bool = False) -> list:
        from executorch.backends.apple.coreml.partition import CoreMLPartitioner

        register_dequantize_affine()
        return [CoreMLPartitioner(compile_specs=compile_specs(_options(target)),
                                  lower_full_graph=whole_graph and not target.fallback),
                *fallback_partitioners(target)]

    @contextmanager
    def lowering(self, target: Target, spec: ComponentSpec, quantization: dict | None = None):
        """Palettized layers (the quantize stage's ``palettized`` report) become Core ML look-up tables; coremltools'
        own progress bars stay off the terminal."""
        layers = (quantization or {}).get("palettized")
        with _progress_bars_off(), (palettize_after_conversion(layers) if layers else nullcontext()):
            yield

    def lowering_key(self, spec: ComponentSpec) -> dict:
        """Look-up tables with the layer's bits (`exact_lut`; mode="unique" before, 8-bit indices on AVX-512 CPUs)."""
        return {"look_up_tables": "exact_lut"} if spec.palettized else {}

    def computes_fp16(self, target: Target) -> bool:
        return _options(target).compute_precision == "fp16"

    def in_fp32(self, target: Target) -> Target:
        return target.model_copy(update={"coreml": _options(target).model_copy(update={"compute_precision": "fp32"})})

    def mixed(self, target: Target) -> Target:
        return self.in_fp32(target)  # compute precision fp32 casts nothing: fp16 ops stay fp16, islands fp32

    # ------------------------------------------------------------------ inspection
    def resolve_blob(self, blob: bytes, pte: bytes) -> bytes:
        """A program with several methods (sizes) holds one Core ML multifunction model per partition, a function per
        method, in the program's named data; each method's delegate is b"CMJR" + JSON {"key", "functionName"}."""
        if not blob.startswith(MULTIFUNCTION_REFERENCE):
            return blob
        return named_data(pte)[json.loads(blob[len(MULTIFUNCTION_REFERENCE):])["key"]]

    def inspect_partitions(self, found, target, spec, inputs, outputs, quantized, checks: Checks) -> list[dict]:
        partitions = [_check_partition(d["blob"], d["compile_specs"], target, checks, i) for i, d in enumerate(found)]
        if not partitions:
            return partitions
        compute_fp16 = self.compute_dtype(target, spec) == torch.float16
        mixed = compute_fp16 and not self.computes_fp16(target) and bool(spec.keep_fp32)
        shares = [p.get("fp16_op_share", 0.0) for p in partitions]
        if mixed:
            checks.add("precision_mixed", 0.0 < min(shares) and max(shares) < 1.0,
                       f"fp16 share of op results {min(shares):.1%} (keep_fp32: {', '.join(spec.keep_fp32)})")
        elif compute_fp16:
            checks.add("precision_fp16", min(shares) >= 0.9, f"fp16 share of op results {min(shares):.1%}")
        wanted = expected_weight_dtypes(spec, quantized)
        got, quant_ops = Counter(), Counter()
        for p in partitions:
            got.update(p.get("weight_dtypes", {}))
            quant_ops.update(p.get("quantization_ops", {}))
        names = {"int8": ("INT8", "UINT8"), "int4": ("INT4", "UINT4")}
        for w in sorted(wanted & set(names)):
            n = sum(got.get(x, 0) for x in names[w])
            checks.add(f"weights_{w}", n > 0, f"{n} {w} weight tensors in the Core ML program")
        if wanted & set(LUT_DTYPES):
            layers = sum((quantized or {}).get(t, 0) for t in LAYER_TYPES if spec.layer_spec(t).weights in LUT_DTYPES)
            n = quant_ops.get("constexpr_lut_to_dense", 0)
            checks.add("weights_palettized", n >= layers > 0,
                       f"{n} constexpr_lut_to_dense for {layers} palettized layers")
            for w in sorted(wanted & set(LUT_DTYPES)):  # indices as narrow as the recipe's bits
                of_w = sum((quantized or {}).get(t, 0) for t in LAYER_TYPES if spec.layer_spec(t).weights == w)
                found_w = got.get(f"UINT{BITS[w]}", 0)
                checks.add(f"indices_{BITS[w]}bit", found_w >= of_w,
                           f"{found_w} {BITS[w]}-bit index tensors for {of_w} {w} layers")
        if wanted:
            q = sum(quant_ops.values())
            checks.add("weight_dequantization_ops", q > 0, f"{q} constexpr dequantization ops")
        elif compute_fp16 and not mixed:
            n32 = got.get("FLOAT32", 0)
            checks.add("weights_fp16", n32 == 0, f"{got.get('FLOAT16', 0)} fp16 / {n32} fp32 weight tensors")
        if len(partitions) == 1 and partitions[0].get("inputs") is not None:
            partitions[0]["delegate_io"] = delegate_io(partitions[0], inputs, outputs, checks)
        return partitions

    def write_extras(self, pte: bytes, target: Target, directory: Path, component: str) -> list[str]:
        """With ``emit_mlpackage``: the standalone Core ML model of each partition, unpacked from the .pte (one per
        Core ML partition; with several, each is only a piece of the component)."""
        if not _options(target).emit_mlpackage:
            return []
        return [p.name for p in extract_mlpackages(pte, directory, component)]


#: coremltools modules that draw a tqdm bar per conversion step ("Converting PyTorch Frontend ==> MIL Ops",
#: "Running MIL ... pipeline", "Running compression pass ...") and the name each imported tqdm under
_TQDM_USERS = (("coremltools.converters.mil.frontend.torch.ops", "_tqdm"),
               ("coremltools.converters.mil.mil.passes.pass_pipeline", "tqdm"),
               ("coremltools.optimize.coreml._quantization_passes", "tqdm"),
               ("coremltools.optimize.coreml._post_training_quantization", "tqdm"))


@contextmanager
def _progress_bars_off():
    """coremltools draws several progress bars per converted partition, with no switch to turn them off; a build
    shows mdship's own bars and a summary, so theirs are disabled for the lowering unless ``--verbose``."""
    import importlib
    from functools import partial

    from mdship.programs import verbose

    if verbose():
        yield
        return
    saved = []
    for module_name, attr in _TQDM_USERS:
        module = importlib.import_module(module_name)
        saved.append((module, attr, getattr(module, attr)))
        setattr(module, attr, partial(getattr(module, attr), disable=True))
    try:
        yield
    finally:
        for module, attr, original in saved:
            setattr(module, attr, original)


@contextmanager
def unpacked(blob: bytes):
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


def spec_summary(spec) -> dict:
    """I/O, op-result dtypes, weight dtypes and quantization ops of a Core ML ML-program spec."""
    from coremltools.proto import MIL_pb2

    dtype_name = {v: k for k, v in MIL_pb2.DataType.items()}
    # a multifunction model (several sizes) describes each function; the default one is the forward method's
    functions = {f.name: f for f in spec.description.functions}
    described = functions.get(spec.description.defaultFunctionName, spec.description)
    summary = {
        "specification_version": spec.specificationVersion,
        "inputs": [{"name": f.name, "shape": list(f.type.multiArrayType.shape), "dtype": _array_dtype(f)}
                   for f in described.input],
        "outputs": [{"name": f.name, "shape": list(f.type.multiArrayType.shape), "dtype": _array_dtype(f)}
                    for f in described.output],
    }
    if functions:
        summary["functions"] = list(functions)
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


def load_spec(root: Path):
    """The spec of the model.mlpackage under ``root``, loaded with coremltools (no compile, no execution)."""
    import coremltools as ct

    return ct.models.utils.load_spec(str(root / "model.mlpackage"))


def _check_partition(blob: bytes, specs: dict, target, checks: Checks, index: int) -> dict:
    info: dict = {}
    want = {c.key: bytes(c.value) for c in compile_specs(_options(target))}
    # the pass pipeline (~95 pass names) is compared but not shown: no use in a manifest
    info["compile_specs"] = {k: v.decode(errors="replace") for k, v in specs.items() if k != "pass_pipeline"}
    checks.add(f"coreml[{index}].compile_specs", all(specs.get(k) == v for k, v in want.items()),
               json.dumps(info["compile_specs"]))
    try:
        with unpacked(blob) as root:
            files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
            has_pkg = (root / "model.mlpackage").is_dir() and (root / "metadata.json").is_file()
            if not checks.add(f"coreml[{index}].mlpackage", has_pkg, f"{len(files)} files"):
                return info
            metadata = json.loads((root / "metadata.json").read_text())
            info["metadata"] = metadata.get("methods", {}).get("forward", metadata)  # a multifunction model: per method
            info.update(spec_summary(load_spec(root)))
            if "methods" in metadata:
                checks.add(f"coreml[{index}].functions", sorted(info.get("functions", [])) == sorted(metadata["methods"]),
                           f"a multifunction model (iOS 18 / macOS 15): functions {', '.join(info.get('functions', []))}")
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


#: program dtype -> the Core ML feature dtypes ExecuTorch's delegate may hold it as (no int64 in Core ML; fp16 models)
_COREML_DTYPES = {"float32": ("FLOAT32", "FLOAT16"), "float16": ("FLOAT16",), "int64": ("INT32",), "int32": ("INT32",)}


def delegate_io(part: dict, inputs: list[dict], outputs: list[dict], checks: Checks) -> dict:
    """The Core ML model's own I/O mapped to the program's, when one partition holds the whole component.

    ExecuTorch names the model's inputs `inputs_<k>` for program input k, lists them in its own order, and converts
    dtypes at the delegate boundary (int64 to int32, float32 to float16 outputs in an fp16 model). Callers of the .pte
    never see this; callers of the .mlpackage do. Checked: every program input and output has its feature, with
    the same shape and a dtype the delegate converts from the program's.
    """
    features = {f["name"]: f for f in part["inputs"]}
    mapped_in = []
    for k, spec in enumerate(inputs):
        f = features.get(f"inputs_{k}", {})
        mapped_in.append({"program": spec["name"], "delegate": f.get("name"), "shape": f.get("shape"),
                          "dtype": f.get("dtype")})
    mapped_out = [{"program": spec["name"], "delegate": f["name"], "shape": f["shape"], "dtype": f["dtype"]}
                  for spec, f in zip(outputs, part["outputs"])]

    def agrees(spec, m):
        return (m["delegate"] is not None and m["shape"] == (spec["shape"] or [1])
                and m["dtype"] in _COREML_DTYPES.get(spec["dtype"], ()))

    checks.add("io_inputs", all(agrees(s, m) for s, m in zip(inputs, mapped_in)),
               "; ".join(f"{m['program']} -> {m['delegate']} {m['shape']} {m['dtype']}" for m in mapped_in))
    checks.add("io_outputs", len(mapped_out) == len(outputs) and all(agrees(s, m) for s, m in zip(outputs, mapped_out)),
               "; ".join(f"{m['program']} -> {m['delegate']} {m['shape']} {m['dtype']}" for m in mapped_out))
    return {"inputs": mapped_in, "outputs": mapped_out, "model_input_order": [f["name"] for f in part["inputs"]]}


def extract_mlpackages(pte: bytes, destination: Path, stem: str) -> list[Path]:
    """Write each Core ML partition of ``pte`` as a standalone ``<stem>.mlpackage`` (``<stem>.partN`` when several)."""
    backend = CoreMLBackend()
    found = [d for d in delegates(pte) if d["backend"] == backend.backend_id and d["blob"] and d["method"] == "forward"]
    written = []
    for i, d in enumerate(found):
        name = f"{stem}.mlpackage" if len(found) == 1 else f"{stem}.part{i}.mlpackage"
        with unpacked(backend.resolve_blob(d["blob"], pte)) as root:
            target = destination / name
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(root / "model.mlpackage", target)
        written.append(destination / name)
    return written
