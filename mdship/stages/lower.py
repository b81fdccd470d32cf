"""Stage `lower`: ExportedProgram -> ExecuTorch edge program with the target's delegate partitions.

Records the coverage a user needs to judge a bundle: partition count, delegated vs non-delegated op counts,
which op types fell back to the CPU's portable kernels (and how often), and the share of the component's
FLOPs that runs inside delegates (mdship.coverage).

ExecuTorch's edge-dialect IR verifier is off (`EdgeCompileConfig(_check_ir_validity=False)`, as ExecuTorch's own
LLM export does): it re-checks every node's dtypes after each of the ~80 graph passes of a lowering, a tenth of a
quantized UNet's lowering time (74.7 -> 65.2 s for the tiny w8a8 UNet in a cold build, same program bytes). What it
would catch cannot reach a bundle anyway: every program is executed (or simulated) against eager PyTorch by `verify`.

Provenance records are shared, not deep-copied (`shared_provenance`): each of those passes re-traces the graph, and
torch.fx gives every re-traced node a `from_node` record holding a deep copy of its source's whole chain, one link per
pass so far: quadratic in the passes, 14 of the tiny w8a8 UNet's 72 s of lowering. The records are never changed
after they are made (torch.fx builds a new list when it adds one), so sharing the links keeps every value, and the
debug handles ExecuTorch derives from each chain's oldest link, the same: the programs are byte-identical (the five
shipped XNNPACK recipes' programs and test vectors compared; tests/stages/test_lower.py). A scoped override of a
torch internal, so only for the torch releases in PROVENANCE_SHARING_VERIFIED; obsolete once torch.fx stops
deep-copying the chains.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from importlib.metadata import version
from types import SimpleNamespace

from mdship.stages.export import ExportedComponent


@dataclass
class LoweredComponent:
    name: str
    edge: object  # executorch.exir.EdgeProgramManager
    coverage: dict


#: torch releases whose torch.fx.traceback.NodeSource `shared_provenance` was checked against
PROVENANCE_SHARING_VERIFIED = ("2.13.0",)


@contextlib.contextmanager
def shared_provenance():
    """While active, torch.fx's provenance records (`node.meta["from_node"]`) share their chain's links instead of
    deep-copying them (see the module docstring)."""
    from torch.fx.traceback import NodeSource

    if version("torch").split("+")[0] not in PROVENANCE_SHARING_VERIFIED:
        yield
        return

    original = NodeSource.__init__

    def init(self, node, pass_name: str = "", action=None) -> None:
        chain = node.meta.get("from_node") if node is not None else None
        if chain is None:
            original(self, node, pass_name, action)
            return
        # What NodeSource.__init__ reads of the node, without the chain it would deep-copy; the links are shared.
        original(self, SimpleNamespace(name=node.name, target=node.target, graph=node.graph, meta={}), pass_name,
                 action)
        self.from_node = list(chain)

    NodeSource.__init__ = init
    try:
        yield
    finally:
        NodeSource.__init__ = original


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
    with shared_provenance():
        edge = to_edge_transform_and_lower({name: e.program for name, e in exported.items()},
                                           partitioner=partitioners or None,
                                           transform_passes=transform_passes or None,
                                           compile_config=EdgeCompileConfig(_check_ir_validity=False))
    return LoweredComponent(exported["forward"].name, edge, coverage(edge.exported_program("forward").graph_module))
