"""How many worker processes build a target's programs (mdship.workers): the CPUs, the memory, the user's say."""

import pytest

from mdship import threads, workers
from mdship.errors import UserError

MB, GB = 2**20, 2**30
TINY = {"unet": 12 * MB, "text_encoder": 4 * MB, "vae_decoder": 2 * MB}  # the embedded default's fp32 bytes
PAPER = {"unet": 1600 * MB, "text_encoder": 490 * MB, "vae_decoder": 38 * MB}  # preset:mobilediffusion


@pytest.fixture
def cpus(monkeypatch):
    def set_cpus(n):
        monkeypatch.setattr(threads, "cpus_allowed", lambda *a: n)
    return set_cpus


def test_one_worker_per_cpu_up_to_the_programs_missing(cpus):
    cpus(2)
    assert workers.count(TINY, 18 * MB, environ={}, available=8 * GB) == 2
    assert workers.count({"unet": 12 * MB}, 18 * MB, environ={}, available=8 * GB) == 1
    cpus(16)
    assert workers.count(TINY, 18 * MB, environ={}, available=8 * GB) == 3
    cpus(1)
    assert workers.count(TINY, 18 * MB, environ={}, available=8 * GB) == 1


def test_a_paper_scale_build_stays_in_one_process_unless_memory_is_spare(cpus):
    cpus(2)
    checkpoint = sum(PAPER.values())
    # two workers would need ~15 GB: more than half of a 24 GB CI runner's ~20 GB available
    assert workers.count(PAPER, checkpoint, environ={}, available=20 * GB) == 1
    assert workers.count(PAPER, checkpoint, environ={}, available=64 * GB) == 2
    assert workers.count(TINY, 18 * MB, environ={}, available=None) == 1  # memory unknown: one process


def test_the_user_decides_where_they_said(cpus):
    cpus(2)
    assert workers.count(TINY, 18 * MB, environ={workers.VARIABLE: "1"}, available=64 * GB) == 1
    assert workers.count(TINY, 18 * MB, environ={workers.VARIABLE: "8"}, available=None) == 3
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(UserError, match=f"{workers.VARIABLE}='{bad}': expected a positive whole number"):
            workers.requested({workers.VARIABLE: bad})
    assert workers.requested({}) is None


def test_bad_worker_count_is_one_line_before_any_work(run_cli, tmp_path, monkeypatch):
    from mdship_testing import ROOT, TINY_OVERRIDES

    monkeypatch.chdir(ROOT)
    monkeypatch.setenv(workers.VARIABLE, "many")
    monkeypatch.setenv("MDSHIP_CACHE_DIR", str(tmp_path / "cache"))
    r = run_cli("build", "recipes/default.yaml", *TINY_OVERRIDES, f"output={tmp_path / 'out'}")
    assert r.exit_code == 2 and r.err.count("\n") == 1 and "MDSHIP_BUILD_WORKERS='many'" in r.err
    assert not (tmp_path / "cache").exists()
