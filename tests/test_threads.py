"""mdship's thread policy: chosen from the CPUs the process may use, never over what the user set."""

import os

import pytest

from mdship import threads


def test_policy_fills_only_what_the_user_left_unset(tmp_path):
    no_quota = tmp_path / "cpu.max"
    no_quota.write_text("max 100000\n")
    allowed = len(os.sched_getaffinity(0))
    assert threads.chosen({}, no_quota) == {"OMP_NUM_THREADS": str(allowed), "OMP_WAIT_POLICY": "PASSIVE"}
    assert threads.chosen({"OMP_NUM_THREADS": "3", "OMP_WAIT_POLICY": "ACTIVE"}, no_quota) == {}
    assert threads.chosen({"MDSHIP_THREADS": "1"}, no_quota)["OMP_NUM_THREADS"] == "1"
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    threads.apply(env)
    assert env["OMP_WAIT_POLICY"] == "ACTIVE" and threads.threads(env) == int(env["OMP_NUM_THREADS"])


def test_cgroup_quota_caps_the_affinity_mask(tmp_path):
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")  # 1.5 CPUs: rounded up
    assert threads.cpus_allowed(quota) == min(2, len(os.sched_getaffinity(0)))
    quota.write_text("garbage")
    assert threads.cpus_allowed(quota) == len(os.sched_getaffinity(0))


def test_bad_override_is_one_line(capsys):
    with pytest.raises(ValueError, match="MDSHIP_THREADS='two'"):
        threads.chosen({"MDSHIP_THREADS": "two"})
    env = {"MDSHIP_THREADS": "0"}
    threads.apply(env)
    assert "OMP_NUM_THREADS" not in env and "MDSHIP_THREADS='0'" in capsys.readouterr().err


def test_importing_mdship_sets_the_policy_before_torch():
    """A fresh process that imports mdship then torch runs torch on the policy's thread count, passively."""
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")} | {"MDSHIP_THREADS": "1"}
    code = "import os, mdship, torch; print(torch.get_num_threads(), os.environ['OMP_WAIT_POLICY'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout.split()
    assert out == ["1", "PASSIVE"]
