"""Stage `lower`: ExportedProgram -> ExecuTorch edge program with the target's delegate partitions.

Records the coverage a user needs to judge a bundle: partition count, delegated vs non-delegated op counts,
which op types fell back to the CPU's portable kernels (and how often), and the share of the component's
FLOPs that runs inside delegates (mdship.coverage).

ExecuTorch's edge-dialect IR verifier is off (`EdgeCompileConfig(_check_ir_validity=False)`, as ExecuTorch's own
LLM export does): it re-checks every node's dtypes after each of the ~80 graph passes of a lowering, a tenth of a
quantized UNet's lowering time (74.7 -> 65.2 s for the tiny w8a8 UNet in a cold build, same program bytes). What it
would catch cannot reach a bundle anyway: every program is executed (or simulated) against eager PyTorch by `verify`.
"""

from __future__ import annotations

from dataclasses import dataclass

from mdship.stages.export import ExportedComponent


@dataclass
class LoweredComponent:
    name: str
    edge: object  # executorch.exir.EdgeProgramManager
    coverage: dict


def coverage(graph_module) -> dict:
    from executorch.devtools.backend_debug import get_delegation_info

    from mdship.coverage import flops_coverage

    info = get_delegation_info(graph_module)
    # getitem only unpacks a delegate's (or a multi-output op's) results: no kernel runs for it on the CPU.
    fallback = {op: b.non_delegated for op, b in info.delegation_by_operator.items()
                if b.non_delegated and op != "getitem"}
    return {
        "partitions": info.num_delegated_subgraphs,
        "delegated_ops": info.num_delegated_nodes,
        "non_delegated_ops": sum(fallback.values()),
        "fallback_ops": dict(sorted(fallback.items(), key=lambda kv: -kv[1])),
        **flops_coverage(graph_module),  # flops, delegated_flops, delegated_flops_share, partitions_by_backend
    }


def run(exported: ExportedComponent | dict[str, ExportedComponent], partitioners: list,
        transform_passes: list) -> LoweredComponent:
    """Lower one exported program, or several as the methods of one program (a dict: method name -> program,
    "forward" first): ExecuTorch stores constants shared by methods once. Coverage is the `forward` method's."""
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower

    if isinstance(exported, ExportedComponent):
        exported = {"forward": exported}
    edge = to_edge_transform_and_lower({name: e.program for name, e in exported.items()},
                                       partitioner=partitioners or None, transform_passes=transform_passes or None,
                                       compile_config=EdgeCompileConfig(_check_ir_validity=False))
    return LoweredComponent(exported["forward"].name, edge, coverage(edge.exported_program("forward").graph_module))
