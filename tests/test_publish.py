"""mdship publish / pull / ci-matrix (mdship.publish), to a directory and to an S3-compatible server on loopback
(moto's standalone server, started by the test session): idempotent, atomic under interruption, refusing what
failed, and a pull that refuses a corrupted blob and round-trips to a bundle `mdship verify` accepts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mdship_testing import ROOT, rewrite_manifest, s3_bucket_fixture, s3_server_fixture

s3_server = s3_server_fixture()
s3_bucket = s3_bucket_fixture()


class DirView:
    """The store as a user sees it with `ls` and `cat`: independent of mdship.store."""

    def __init__(self, root: Path):
        self.root, self.url = root, str(root)

    def keys(self) -> set[str]:
        return {p.relative_to(self.root).as_posix() for p in self.root.rglob("*")
                if p.is_file() and not p.name.startswith(".")} if self.root.exists() else set()

    def read(self, key: str) -> bytes | None:
        p = self.root / key
        return p.read_bytes() if p.exists() else None

    def write(self, key: str, data: bytes) -> None:
        (self.root / key).write_bytes(data)


class S3View:
    """The bucket as a user sees it with boto3 (`aws s3 ls`)."""

    def __init__(self, url: str, client):
        self.url, self.client = url, client
        self.bucket, _, self.prefix = url[len("s3://"):].partition("/")

    def keys(self) -> set[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix + "/")
        return {o["Key"][len(self.prefix) + 1:] for page in pages for o in page.get("Contents", [])}

    def read(self, key: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}")["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None

    def write(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}", Body=data)


@pytest.fixture(params=["directory", "s3"])
def store(request, tmp_path):
    if request.param == "directory":
        return DirView(tmp_path / "store")
    return S3View(*request.getfixturevalue("s3_bucket"))


def blobs(view) -> set[str]:
    return {k.removeprefix("blobs/sha256/") for k in view.keys() if k.startswith("blobs/sha256/")}


def bundle_files(bundle: Path) -> dict[str, bytes]:
    return {p.relative_to(bundle).as_posix(): p.read_bytes() for p in sorted(bundle.rglob("*")) if p.is_file()}


def variant(tiny_bundle: Path, dest: Path, **changes) -> Path:
    """A copy of the bundle whose manifest differs (re-signed): another valid bundle sharing every program blob."""
    shutil.copytree(tiny_bundle, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    for path, value in changes.items():
        node = manifest
        *parents, last = path.split("__")
        for p in parents:
            node = node[p]
        node[last] = value
    rewrite_manifest(dest, manifest)
    return dest


# ---------------------------------------------------------------------------------------------- publish
def test_publish_twice_uploads_nothing_the_second_time(run_cli, tiny_bundle, store):
    import hashlib

    first = run_cli("publish", tiny_bundle, "--to", store.url, "--version", "v1")
    assert first.exit_code == 0, first.err
    files = bundle_files(tiny_bundle)
    digests = {hashlib.sha256(data).hexdigest() for data in files.values()}
    assert blobs(store) == digests  # every file once, by its sha256
    for digest in digests:
        assert hashlib.sha256(store.read(f"blobs/sha256/{digest}")).hexdigest() == digest
    assert f"{len(digests)} blobs uploaded" in first.out

    index = json.loads(store.read("index.json"))
    [entry] = index["releases"]
    manifest = json.loads(files["manifest.json"])
    assert (entry["recipe"], entry["version"], entry["target"], entry["backend"]) == ("default", "v1", "xnnpack",
                                                                                       "xnnpack")
    assert entry["manifest_sha256"] == files["manifest.json.sha256"].decode().split()[0]
    assert entry["bytes"] == sum(len(d) for d in files.values())
    assert {rel: f["sha256"] for rel, f in entry["files"].items()} == \
        {rel: hashlib.sha256(d).hexdigest() for rel, d in files.items()}
    assert entry["quality"]["components"]["unet"]["psnr_db"] == manifest["components"]["unet"]["verification"]["psnr_db"]
    assert entry["quality"]["images"]["psnr_db"]["worst"] == manifest["fidelity"]["image_psnr_db"]["worst"]
    assert entry["passed"] and not entry["allow_failed"]

    before = {k: store.read(k) for k in store.keys()}
    second = run_cli("publish", tiny_bundle, "--to", store.url, "--version", "v1")
    assert second.exit_code == 0, second.err
    assert second.out.startswith("nothing to upload") and "index unchanged" in second.out
    assert {k: store.read(k) for k in store.keys()} == before  # not one byte written


def test_an_interrupted_publish_leaves_the_previous_index_intact(run_cli, tiny_bundle, store, tmp_path, monkeypatch):
    from mdship import store as stores

    assert run_cli("publish", tiny_bundle, "--to", store.url, "--version", "v1").exit_code == 0
    index_v1 = store.read("index.json")
    v2 = variant(tiny_bundle, tmp_path / "v2", warnings=["a different build"])

    def killed(self, key, data, token):  # the process dies after the blobs, before the index is replaced
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(stores.DirStore, "put_if", killed)
        m.setattr(stores.S3Store, "put_if", killed)
        interrupted = run_cli("publish", v2, "--to", store.url, "--version", "v2")
    assert interrupted.exit_code == 130

    new_manifest = (v2 / "manifest.json.sha256").read_text().split()[0]
    assert store.read("index.json") == index_v1  # the previous index, byte for byte
    assert len(blobs(store)) == len(bundle_files(tiny_bundle)) + 2  # v2's manifest and its integrity root
    assert new_manifest not in store.read("index.json").decode()
    out = tmp_path / "pulled"
    pulled = run_cli("pull", store.url, "default@v1", "--out", out)
    assert pulled.exit_code == 0, pulled.err
    assert bundle_files(out / "xnnpack") == bundle_files(tiny_bundle)
    missing = run_cli("pull", store.url, "default@v2", "--out", tmp_path / "v2-pulled")
    assert missing.exit_code == 2 and "has no version 'v2'" in missing.err

    again = run_cli("publish", v2, "--to", store.url, "--version", "v2")  # re-running finishes the job
    assert again.exit_code == 0, again.err
    assert "0 blobs uploaded" in again.out and "index updated" in again.out
    assert {r["version"] for r in json.loads(store.read("index.json"))["releases"]} == {"v1", "v2"}


def test_a_bundle_that_failed_its_gates_is_refused_unless_allowed(run_cli, tiny_bundle, store, tmp_path):
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    gate = manifest["components"]["unet"]["verification"]["gate_db"]
    failed = variant(tiny_bundle, tmp_path / "failed",
                     components__unet__verification__psnr_db=gate - 5.0,
                     components__unet__verification__passed=False)

    refused = run_cli("publish", failed, "--to", store.url, "--version", "v1")
    assert refused.exit_code == 1
    assert refused.err.count("\n") == 1 and "not published" in refused.err and "unet" in refused.err
    assert "--allow-failed" in refused.err
    assert store.read("index.json") is None and not blobs(store)  # nothing uploaded

    allowed = run_cli("publish", failed, "--to", store.url, "--version", "v1", "--allow-failed")
    assert allowed.exit_code == 0, allowed.err
    [entry] = json.loads(store.read("index.json"))["releases"]
    assert entry["allow_failed"] is True and entry["passed"] is False
    assert "unet" in entry["failures"][0] and "below the gate" in entry["failures"][0]
    pulled = run_cli("pull", store.url, "default@v1", "--out", tmp_path / "out")
    assert pulled.exit_code == 0 and "--allow-failed" in pulled.err  # the consumer is told


def test_a_tampered_bundle_is_refused_before_anything_is_uploaded(run_cli, tiny_bundle, store, tmp_path):
    tampered = tmp_path / "tampered"
    shutil.copytree(tiny_bundle, tampered)
    (tampered / "unet.pte").write_bytes((tampered / "unet.pte").read_bytes()[:-8])
    r = run_cli("publish", tampered, "--to", store.url, "--version", "v1")
    assert r.exit_code == 2 and r.err.count("\n") == 1
    assert "unet.pte: sha256 does not match the manifest" in r.err
    assert not store.keys()


def test_concurrent_publishers_both_land(run_cli, tiny_bundle, store, tmp_path, monkeypatch):
    """The index is replaced by a conditional write: a publisher that lost the race re-reads and merges."""
    from mdship import store as stores

    other = variant(tiny_bundle, tmp_path / "other", recipe__name="other-recipe")
    cls = stores.DirStore if isinstance(store, DirView) else stores.S3Store
    real = cls.put_if
    raced = []

    def racing(self, key, data, token):
        if not raced:  # another publisher replaces the index between our read and our write
            raced.append(True)
            assert run_cli("publish", other, "--to", store.url, "--version", "v1").exit_code == 0
        return real(self, key, data, token)

    monkeypatch.setattr(cls, "put_if", racing)
    r = run_cli("publish", tiny_bundle, "--to", store.url, "--version", "v1")
    assert r.exit_code == 0, r.err
    releases = json.loads(store.read("index.json"))["releases"]
    assert sorted(x["recipe"] for x in releases) == ["default", "other-recipe"]


def test_s3_servers_without_conditional_writes_are_written_plainly(run_cli, tiny_bundle, s3_bucket, monkeypatch):
    """A server that answers 501 NotImplemented to If-None-Match / If-Match (older S3-compatible stores) still gets
    its index, with a note."""
    from botocore.awsrequest import AWSResponse

    from mdship import store as stores

    url, client = s3_bucket
    rejected = []

    class Raw:
        def stream(self, **_):
            yield (b"<Error><Code>NotImplemented</Code><Message>A header you provided implies functionality that "
                   b"is not implemented</Message></Error>")

    def reject(request, **_):
        if "If-None-Match" in request.headers or "If-Match" in request.headers:
            rejected.append(request.url)
            return AWSResponse(request.url, 501, {}, Raw())
        return None

    init = stores.S3Store.__init__

    def patched(self, *a, **k):
        init(self, *a, **k)
        self.client.meta.events.register("before-send.s3.PutObject", reject)

    monkeypatch.setattr(stores.S3Store, "__init__", patched)
    r = run_cli("publish", tiny_bundle, "--to", url, "--version", "v1")
    assert r.exit_code == 0, r.err
    assert rejected and "rejects conditional writes (NotImplemented)" in r.err
    assert json.loads(S3View(url, client).read("index.json"))["releases"][0]["version"] == "v1"


# ---------------------------------------------------------------------------------------------- pull
def test_pull_round_trip_is_a_bundle_mdship_verify_accepts(run_cli, tiny_bundle, store, tmp_path):
    assert run_cli("publish", tiny_bundle, "--to", store.url, "--version", "v1").exit_code == 0
    out = tmp_path / "pulled"
    r = run_cli("pull", store.url, "default", "--out", out)  # no @VERSION: the newest
    assert r.exit_code == 0, r.err
    assert "every sha256 checked" in r.out
    assert sorted(p.name for p in out.iterdir()) == ["xnnpack"]
    assert bundle_files(out / "xnnpack") == bundle_files(tiny_bundle)
    verified = run_cli("verify", out / "xnnpack")
    assert verified.exit_code == 0, verified.err
    assert verified.out.count(" ok") == 3
    again = run_cli("pull", store.url, "default@v1", "--out", out)  # a previous pull is replaced whole
    assert again.exit_code == 0, again.err


def test_a_corrupted_blob_is_refused_and_nothing_is_left(run_cli, tiny_bundle, store, tmp_path):
    import hashlib

    assert run_cli("publish", tiny_bundle, "--to", store.url, "--version", "v1").exit_code == 0
    unet = hashlib.sha256((tiny_bundle / "unet.pte").read_bytes()).hexdigest()
    data = bytearray(store.read(f"blobs/sha256/{unet}"))
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    store.write(f"blobs/sha256/{unet}", bytes(data))

    parent = tmp_path / "pulls"
    parent.mkdir()
    r = run_cli("pull", store.url, "default@v1", "--out", parent / "out")
    assert r.exit_code == 2
    assert r.err.count("\n") == 1 and f"blobs/sha256/{unet}" in r.err and "corrupted" in r.err
    assert list(parent.iterdir()) == []  # no bundle, no temp directory


def test_pull_errors_are_one_line(run_cli, tiny_bundle, tmp_path):
    store = tmp_path / "store"
    cases = [
        (["pull", tmp_path / "nowhere", "default", "--out", tmp_path / "o"], "no such store"),
        (["pull", tmp_path, "default", "--out", tmp_path / "o"], "no release index"),
    ]
    for args, expected in cases:
        r = run_cli(*args)
        assert r.exit_code == 2 and r.err.count("\n") == 1 and expected in r.err, (args, r.err)
    assert run_cli("publish", tiny_bundle, "--to", store, "--version", "v1").exit_code == 0
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    for args, expected in [
        (["default@v9"], "has no version 'v9'; published: v1"),
        (["nope"], "no releases of recipe 'nope'; published: default"),
    ]:
        r = run_cli("pull", store, *args, "--out", tmp_path / "o")
        assert r.exit_code == 2 and r.err.count("\n") == 1 and expected in r.err, r.err
    r = run_cli("pull", store, "default", "--out", tmp_path / "busy")
    assert r.exit_code == 2 and "holds files that are not bundles (notes.txt)" in r.err
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    (store / "index.json").write_text("{not json")
    r = run_cli("pull", store, "default", "--out", tmp_path / "o")
    assert r.exit_code == 2 and "index.json: not valid JSON" in r.err


def test_publish_errors_are_one_line(run_cli, tiny_bundle, tmp_path, s3_bucket):
    url, client = s3_bucket
    for args, expected in [
        (["--to", "http://example.invalid/x"], "unsupported scheme"),
        (["--to", "s3://"], "no bucket"),
        (["--to", url.replace("mdship-test", "no-such-bucket")], "no such bucket"),
        (["--to", tmp_path / "s", "--version", "v 1"], "--version 'v 1': expected letters"),
    ]:
        r = run_cli("publish", tiny_bundle, *args, *([] if "--version" in args else ["--version", "v1"]))
        assert r.exit_code == 2 and r.err.count("\n") == 1 and expected in r.err, (args, r.err)
    r = run_cli("publish", tmp_path / "nope", "--to", tmp_path / "s", "--version", "v1")
    assert r.exit_code == 2 and "bundle directory not found" in r.err
    r = run_cli("publish", tiny_bundle, tiny_bundle, "--to", tmp_path / "s", "--version", "v1")
    assert r.exit_code == 2 and "same recipe and target" in r.err


def test_endpoint_url_option_reaches_the_server(run_cli, tiny_bundle, s3_bucket, s3_server, monkeypatch, tmp_path):
    url, client = s3_bucket
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    r = run_cli("publish", tiny_bundle, "--to", url, "--version", "v1", "--endpoint-url", s3_server)
    assert r.exit_code == 0, r.err
    r = run_cli("pull", url, "default@v1", "--out", tmp_path / "o", "--endpoint-url", s3_server)
    assert r.exit_code == 0, r.err


# ---------------------------------------------------------------------------------------------- CI
def test_ci_matrix_is_every_shipped_recipe_by_target(run_cli, monkeypatch):
    from mdship.recipe import load_recipe

    monkeypatch.chdir(ROOT)
    r = run_cli("ci-matrix")
    assert r.exit_code == 0, r.err
    rows = json.loads(r.out)["include"]
    expected = [(f"recipes/{p.name}", t.name, t.backend) for p in sorted((ROOT / "recipes").glob("*.yaml"))
                for t in load_recipe(p).targets]
    assert [(row["recipe"], row["target"], row["backend"]) for row in rows] == expected
    assert {row["name"] for row in rows} >= {"default", "md-xnnpack-w8a8"}
    one = json.loads(run_cli("ci-matrix", "recipes/default.yaml").out)
    assert one == {"include": [{"recipe": "recipes/default.yaml", "name": "default", "target": "xnnpack",
                                "backend": "xnnpack"}]}
    bad = run_cli("ci-matrix", "recipes/nope.yaml")
    assert bad.exit_code == 2 and bad.err.count("\n") == 1


def test_build_target_names_a_target_of_the_recipe(run_cli, monkeypatch):
    monkeypatch.chdir(ROOT)
    r = run_cli("build", "recipes/default.yaml", "--target", "vulkan")
    assert r.exit_code == 2 and r.err.count("\n") == 1
    assert "--target vulkan: default has no such target; expected one of xnnpack" in r.err


def test_generated_versions_and_release_names_are_one_line_or_ok(run_cli, tiny_bundle, tmp_path):
    """`--version` and `RECIPE[@VERSION]` are user text: any of it is published / pulled, or refused in one line."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    store = tmp_path / "store"
    assert run_cli("publish", tiny_bundle, "--to", store, "--version", "v1").exit_code == 0
    text = st.one_of(st.text(max_size=30), st.sampled_from(["default", "default@v1", "default@", "@v1", "v1.2+3",
                                                            "default@v1@v2", "../x", "v\n1", "\udcff"]))

    @settings(max_examples=40, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(spec=text, version=text)
    def check(spec, version):
        for r in (run_cli("pull", store, spec, "--out", tmp_path / "out"),
                  run_cli("publish", tiny_bundle, "--to", store, "--version", version)):
            assert r.exit_code in (0, 2), (r.exit_code, r.err)
            if r.exit_code:
                assert r.err.count("\n") == 1 and r.err.startswith("error:"), r.err

    check()


@pytest.mark.slow  # eight interpreter starts (~3 s each on 2 cores)
def test_kill_9_during_publish_and_pull_leaves_nothing_wrong(run_cli, tiny_bundle, tmp_path):
    """SIGKILL a publish (to a directory) and a pull at several moments: the store's index is the previous one or the
    new one, never damaged; a killed pull leaves no --out; re-running each finishes and `mdship verify` accepts."""
    import os
    import signal
    import subprocess
    import sys
    import time

    store, env = tmp_path / "store", {**os.environ, "OMP_NUM_THREADS": "1"}
    assert run_cli("publish", tiny_bundle, "--to", store, "--version", "v1").exit_code == 0
    before = (store / "index.json").read_bytes()
    bundle2 = tmp_path / "b2"  # a second, different release: a rebuilt manifest
    shutil.copytree(tiny_bundle, bundle2)
    manifest = json.loads((bundle2 / "manifest.json").read_text())
    manifest["build"]["seconds"] = manifest["build"].get("seconds", 0) + 1
    rewrite_manifest(bundle2, manifest)

    def killed(args, delay):
        proc = subprocess.Popen([sys.executable, "-m", "mdship.cli", *map(str, args)], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    for delay in (0.5, 2.0, 3.0, 4.0):
        killed(["publish", bundle2, "--to", store, "--version", "v2"], delay)
        index = json.loads((store / "index.json").read_text())  # parses: never half-written
        assert (store / "index.json").read_bytes() == before or {r["version"] for r in index["releases"]} == {
            "v1", "v2"}
        out = tmp_path / f"pulled-{delay}"
        killed(["pull", store, "default@v1", "--out", out], delay)
        assert not out.exists() or run_cli("verify", out / "xnnpack").exit_code == 0
    assert run_cli("publish", bundle2, "--to", store, "--version", "v2").exit_code == 0
    out = tmp_path / "pulled"
    assert run_cli("pull", store, "default@v2", "--out", out).exit_code == 0
    assert run_cli("verify", out / "xnnpack").exit_code == 0
