"""mdship.cache: the local stage cache with a shared remote second tier ($MDSHIP_CACHE_URL, a directory or S3 on
loopback): entries reused across separate local caches, verified by hash on read, a corrupt remote entry rebuilt
and never used; and two real builds sharing one remote, the second lowering nothing."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from mdship.cache import Cache
from mdship_testing import ROOT, TINY_OVERRIDES, s3_bucket_fixture, s3_server_fixture

s3_server = s3_server_fixture()
s3_bucket = s3_bucket_fixture()


@pytest.fixture(params=["directory", "s3"])
def remote(request, tmp_path):
    if request.param == "directory":
        return str(tmp_path / "remote")
    return request.getfixturevalue("s3_bucket")[0]


def write_entry(d: Path) -> None:
    (d / "program.pte").write_bytes(b"\x01" * 4096)
    (d / "sub").mkdir()
    (d / "sub" / "report.json").write_text('{"psnr_db": 99.0}\n')


def test_an_entry_built_on_one_runner_is_reused_by_another(remote, tmp_path):
    a = Cache(tmp_path / "a", remote=remote)
    assert a.get("program", "k1") is None
    a.put("program", "k1", write_entry)
    assert a.stats["built"] == 1 and a.stats["uploaded"] == 1

    b = Cache(tmp_path / "b", remote=remote)
    hit = b.get("program", "k1")
    assert hit == tmp_path / "b" / "program" / "k1"
    assert (hit / "program.pte").read_bytes() == b"\x01" * 4096
    assert json.loads((hit / "sub" / "report.json").read_text()) == {"psnr_db": 99.0}
    assert b.stats["remote"] == 1 and b.stats["built"] == 0
    assert b.get("program", "k1") == hit and b.stats["local"] == 1  # now local: the remote is asked once
    assert b.get("program", "other") is None
    assert "1 entries fetched" in b.summary()


def test_a_corrupt_remote_entry_is_rebuilt_never_used(remote, tmp_path, capsys):
    import hashlib

    from mdship.store import blob_key, open_store

    Cache(tmp_path / "a", remote=remote).put("program", "k1", write_entry)
    store = open_store(remote)
    digest = hashlib.sha256(b"\x01" * 4096).hexdigest()
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x02" * 4096)  # same size, other bytes
    store.put_file(blob_key(digest), bad)

    c = Cache(tmp_path / "c", remote=remote)
    assert c.get("program", "k1") is None  # a miss: the stage is rebuilt
    assert not (tmp_path / "c" / "program" / "k1").exists()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and digest in err and "not used: rebuilding program" in err
    assert c.stats["corrupt"] == 1
    c.put("program", "k1", write_entry)  # the rebuild replaces the remote's copy

    d = Cache(tmp_path / "d", remote=remote)
    assert (d.get("program", "k1") / "program.pte").read_bytes() == b"\x01" * 4096


def test_a_damaged_listing_is_a_miss(remote, tmp_path, capsys):
    from mdship.store import open_store

    Cache(tmp_path / "a", remote=remote).put("program", "k1", write_entry)
    open_store(remote).put_bytes("cache/program/k1.json", b'{"files": {"../../escape": {"sha256": "00"}}}')
    assert Cache(tmp_path / "b", remote=remote).get("program", "k1") is None
    assert "is damaged" in capsys.readouterr().err
    assert not (tmp_path / "escape").exists()


def test_an_unreachable_remote_is_one_warning_and_the_build_goes_on(s3_bucket, tmp_path, capsys):
    url, _ = s3_bucket
    cache = Cache(tmp_path / "a", remote=url.replace("mdship-test", "no-such-bucket"))
    assert cache.get("program", "k1") is None
    cache.put("program", "k1", write_entry)
    assert (cache.get("program", "k1") / "program.pte").exists()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such bucket" in err and "local cache only" in err


def test_the_remote_comes_from_the_environment(monkeypatch, tmp_path, run_cli):
    monkeypatch.setenv("MDSHIP_CACHE_URL", str(tmp_path / "shared"))
    assert Cache(tmp_path / "a").remote_url == str(tmp_path / "shared")
    monkeypatch.setenv("MDSHIP_CACHE_URL", "")
    assert Cache(tmp_path / "a").remote is None
    monkeypatch.setenv("MDSHIP_CACHE_URL", "ftp://host/x")
    monkeypatch.chdir(ROOT)
    r = run_cli("build", "recipes/default.yaml", *TINY_OVERRIDES, f"output={tmp_path / 'out'}")
    assert r.exit_code == 2 and r.err.count("\n") == 1 and "MDSHIP_CACHE_URL ftp://host/x: unsupported scheme" in r.err


@pytest.mark.slow
def test_two_builds_in_separate_caches_share_one_remote(run_cli, s3_bucket, tmp_path, monkeypatch, capsys,
                                                        record_property):
    """Two CI runners: separate local caches, one S3 remote. The second builds the same recipe lowering nothing
    (mdship.stages.lower.run is made to fail), and writes the same programs."""
    from mdship.stages import calibrate, lower

    url, _ = s3_bucket
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("MDSHIP_CACHE_URL", url.replace("/releases", "/cache"))
    builds = {}
    for runner in ("first", "second"):
        monkeypatch.setenv("MDSHIP_CACHE_DIR", str(tmp_path / f"{runner}-cache"))
        if runner == "second":
            def never(*_, **__):
                raise AssertionError("the second runner lowered or recorded something")
            monkeypatch.setattr(lower, "run", never)
            monkeypatch.setattr(calibrate, "record", never)
        started = time.time()
        r = run_cli("build", "recipes/default.yaml", *TINY_OVERRIDES, f"output={tmp_path / runner}", "--json")
        seconds = time.time() - started
        assert r.exit_code == 0, r.err
        builds[runner] = (json.loads(r.out), seconds)

    first, second = builds["first"][0], builds["second"][0]
    assert first["cache"]["built"] > 0 and first["cache"]["uploaded"] == first["cache"]["built"]
    assert "program" in first["cache"]["built_stages"]
    assert second["cache"]["built"] == 0 and second["cache"]["built_stages"] == []
    # fetched: the test-vector recording, three programs, the fidelity result (the fp32 reference images behind it
    # are not needed again)
    assert second["cache"]["remote"] >= 5 and second["cache"]["local"] == 0
    assert all(row["cached"] for row in second["components"])
    programs = [{n: (Path(b["bundles"][0]) / f"{n}.pte").read_bytes() for n in ("text_encoder", "unet", "vae_decoder")}
                for b in (first, second)]
    assert programs[0] == programs[1]
    record_property("first_build_s", round(builds["first"][1], 1))
    record_property("second_build_s", round(builds["second"][1], 1))
    with capsys.disabled():
        print(f"\nremote cache: first build {builds['first'][1]:.1f} s ({first['cache']['built']} entries built and "
              f"uploaded), second build {builds['second'][1]:.1f} s ({second['cache']['remote']} entries fetched, "
              f"nothing lowered)")
