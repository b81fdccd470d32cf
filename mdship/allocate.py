"""Choose one format per layer: a multiple-choice knapsack, solved exactly as an integer program.

    minimise    sum_i cost[i][c_i]                       (bytes, or estimated latency)
    subject to  sum_i load[i][c_i][k] <= capacity[k]     for every constraint k (predicted image error per prompt)
                exactly one option c_i per item i

`scipy.optimize.milp` (HiGHS, branch and bound) solves it exactly in milliseconds at mdship's sizes (a few hundred
layers x a handful of formats x a few prompts). A dynamic-programming knapsack would need integer loads and one
dimension per constraint; a greedy pass on cost / load ratios is not exact. Nothing here knows about layers or
formats: the tuner (mdship.tune) builds the numbers.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np


@contextmanager
def _quiet_stdout():
    """HiGHS (C++) prints solver notes such as 'HighsMipSolverData::transformNewIntegerFeasibleSolution' straight to
    file descriptor 1 whatever `disp` says: kept off the terminal for the solve."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


@dataclass
class Allocation:
    choice: list[int]  # per item, the index of the chosen option
    cost: float
    loads: list[float]  # per constraint, the summed load of the choice


def allocate(costs: list[list[float]], loads: list[list[list[float]]], capacity: list[float]) -> Allocation | None:
    """The cheapest choice of one option per item whose summed loads stay within ``capacity``; None when even the
    least-loaded choice does not fit.

    ``costs[i][j]``: cost of option j of item i; ``loads[i][j][k]``: its load on constraint k (finite, >= 0).
    """
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import lil_matrix

    if len(costs) != len(loads):
        raise ValueError(f"{len(costs)} items of costs but {len(loads)} of loads")
    if not costs:
        return Allocation([], 0.0, [0.0] * len(capacity))
    offsets = np.cumsum([0] + [len(c) for c in costs])
    n, m = int(offsets[-1]), len(capacity)
    c = np.concatenate([np.asarray(x, dtype=float) for x in costs])
    one = lil_matrix((len(costs), n))
    for i in range(len(costs)):
        one[i, offsets[i]:offsets[i + 1]] = 1.0
    constraints = [LinearConstraint(one.tocsr(), 1.0, 1.0)]
    if m:
        a = np.zeros((m, n))
        for i, options in enumerate(loads):
            if len(options) != len(costs[i]):
                raise ValueError(f"item {i}: {len(costs[i])} costs but {len(options)} loads")
            for j, load in enumerate(options):
                a[:, offsets[i] + j] = load
        if not np.all(np.isfinite(a)) or np.any(a < 0):
            raise ValueError("loads must be finite and non-negative")
        scale = np.where(np.asarray(capacity, dtype=float) > 0, np.asarray(capacity, dtype=float), 1.0)
        constraints.append(LinearConstraint(a / scale[:, None], -np.inf, np.asarray(capacity) / scale))
    # costs are scaled too, so HiGHS's absolute tolerances mean the same for bytes and for milliseconds
    norm = float(np.max(np.abs(c))) or 1.0
    with _quiet_stdout():
        result = milp(c / norm, constraints=constraints, integrality=np.ones(n), bounds=Bounds(0, 1),
                      options={"mip_rel_gap": 0.0, "disp": False})
    if result.status != 0 or result.x is None:
        return None
    x = np.round(result.x).astype(int)
    choice = [int(np.argmax(x[offsets[i]:offsets[i + 1]])) for i in range(len(costs))]
    total_loads = [float(sum(loads[i][j][k] for i, j in enumerate(choice))) for k in range(m)]
    return Allocation(choice, float(sum(costs[i][j] for i, j in enumerate(choice))), total_loads)
