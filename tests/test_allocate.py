"""The allocator (mdship.allocate): exact on synthetic sensitivities whose optimum is known."""

from __future__ import annotations

import itertools
import random

import pytest

from mdship.allocate import allocate


def brute_force(costs, loads, capacity):
    best = None
    for choice in itertools.product(*[range(len(c)) for c in costs]):
        if all(sum(loads[i][j][k] for i, j in enumerate(choice)) <= capacity[k] + 1e-12 for k in range(len(capacity))):
            cost = sum(costs[i][j] for i, j in enumerate(choice))
            best = cost if best is None or cost < best else best
    return best


def test_the_textbook_case_picks_int8_for_the_one_sensitive_layer():
    """Four layers, three formats (fp32, int8, int4 bytes and noise); one layer is 100x more sensitive. Under the
    budget the optimum is int4 everywhere except the sensitive layer, at int8: the answer by hand."""
    bytes_ = [[400, 100, 50]] * 4
    noise = [[0.0, 1e-4, 1e-3], [0.0, 1e-4, 1e-3], [0.0, 1e-2, 1e-1], [0.0, 1e-4, 1e-3]]
    loads = [[[n] for n in layer] for layer in noise]
    result = allocate(bytes_, loads, [0.02])
    assert result.choice == [2, 2, 1, 2]
    assert result.cost == 250 and result.loads[0] == pytest.approx(0.013)
    assert allocate(bytes_, loads, [1.0]).choice == [2, 2, 2, 2]  # a loose budget: all int4
    assert allocate(bytes_, loads, [0.0]).choice == [0, 0, 0, 0]  # no error allowed: all float


@pytest.mark.parametrize("seed", range(25))
def test_random_instances_match_brute_force(seed):
    """Several constraints (one per calibration prompt, as the tuner uses it), uneven option counts."""
    rng = random.Random(seed)
    n, m = rng.randint(1, 6), rng.randint(1, 3)
    costs = [[rng.randint(1, 40) for _ in range(rng.randint(1, 4))] for _ in range(n)]
    loads = [[[rng.random() for _ in range(m)] for _ in c] for c in costs]
    capacity = [rng.uniform(0.2, 0.6 * n) for _ in range(m)]
    best = brute_force(costs, loads, capacity)
    result = allocate(costs, loads, capacity)
    if best is None:
        assert result is None
    else:
        assert result is not None and result.cost == pytest.approx(best)
        assert all(load <= cap + 1e-9 for load, cap in zip(result.loads, capacity))


def test_tiny_loads_and_large_costs_stay_exact():
    """Byte counts in the millions and image-error loads around 1e-6 (the tuner's scales) do not trip tolerances."""
    costs = [[4_000_000, 1_000_000, 520_000], [4_000_000, 1_000_000, 520_000], [800, 200, 104]]
    loads = [[[0.0], [2e-7], [3e-6]], [[0.0], [1e-7], [9e-7]], [[0.0], [1e-6], [8e-6]]]
    result = allocate(costs, loads, [2.5e-6])
    # int8, int4, int8: 2e-7 + 9e-7 + 1e-6 fits; int4 on the first layer (3e-6) alone would not
    assert result.choice == [1, 2, 1] and result.cost == brute_force(costs, loads, [2.5e-6]) == 1_520_200


def test_no_items_and_bad_input():
    assert allocate([], [], [1.0]).choice == []
    assert allocate([[3, 1]], [[[0.5], [2.0]]], [-1.0]) is None  # nothing fits
    with pytest.raises(ValueError, match="non-negative"):
        allocate([[1, 2]], [[[0.1], [-0.1]]], [1.0])
    with pytest.raises(ValueError, match="2 costs but 1 loads"):
        allocate([[1, 2]], [[[0.1]]], [1.0])
