"""Helpers shared by test modules (fixtures live in conftest.py; plain functions and constants live here)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


#: overrides that put any recipe on the tiny preset with the shapes prompts (fast, and meaningful prompts)
TINY_OVERRIDES = ["checkpoint=preset:tiny", "resolution=null", "calibration.prompts=calibration/shapes-calib.txt",
                  "calibration.eval_prompts=calibration/shapes-eval.txt", "calibration.num_prompts=2"]


def build_recipe(recipe_path, overrides, cache_dir):
    """Build every target of a recipe (run from the project root); returns the TargetResults."""
    from mdship.build import Builder
    from mdship.cache import Cache
    from mdship.recipe import load_recipe

    os.chdir(ROOT)
    recipe = load_recipe(ROOT / recipe_path, list(overrides))
    builder = Builder(recipe, cache=Cache(cache_dir), progress=False)
    return [builder.target(t) for t in recipe.targets]


def shipped_recipe_builds(recipes):
    """A module-scoped fixture, parametrized over shipped recipe names (or pytest.param(name, marks=...)), that
    builds each on the tiny preset into its own output and yields (name, TargetResult, manifest)."""
    import json

    import pytest

    @pytest.fixture(scope="module", params=recipes)
    def built(request, build_cache, tmp_path_factory):
        name = request.param
        out = tmp_path_factory.mktemp(name)
        [result] = build_recipe(f"recipes/{name}.yaml", TINY_OVERRIDES + [f"output={out}"], build_cache)
        assert not result.failures, result.failures
        return name, result, json.loads((result.bundle / "manifest.json").read_text())

    return built


def rewrite_manifest(bundle_dir, manifest: dict) -> None:
    """Write `manifest` as the bundle's manifest.json AND re-sign manifest.json.sha256: a consistent but wrong
    bundle, to test what readers do beyond the integrity check."""
    import json

    from mdship.bundle import INTEGRITY, MANIFEST, integrity_line

    data = json.dumps(manifest).encode()
    (Path(bundle_dir) / MANIFEST).write_bytes(data)
    (Path(bundle_dir) / INTEGRITY).write_text(integrity_line(data))


# ---------------------------------------------------------------------------------------------- S3 on loopback
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def s3_server_fixture():
    """A session fixture: moto's standalone S3-compatible server (`moto[server]`) on 127.0.0.1, started by the test
    session itself; yields its endpoint URL."""
    import pytest

    @pytest.fixture(scope="session")
    def s3_server():
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no request log lines in the test output
        port = free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.stop()

    return s3_server


def s3_bucket_fixture():
    """A function fixture: a new bucket on the loopback server, with the AWS environment variables a user would set
    (credentials, region, AWS_ENDPOINT_URL_S3) pointing boto3 at it; yields (s3://BUCKET/PREFIX, boto3 client)."""
    import uuid

    import pytest

    @pytest.fixture
    def s3_bucket(s3_server, monkeypatch, tmp_path):
        import boto3

        for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                            "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": s3_server,
                            "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
                            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials")}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("AWS_PROFILE", raising=False)
        # unique across the whole session: moto's servers in one process share their buckets
        bucket = f"mdship-test-{uuid.uuid4().hex[:16]}"
        client = boto3.client("s3", endpoint_url=s3_server)
        client.create_bucket(Bucket=bucket)
        yield f"s3://{bucket}/releases", client

    return s3_bucket
