"""The bundle format (mdship.bundle): the manifest validated on every read, test vectors, file hashes."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from mdship import bundle
from mdship.bundle import COMPONENTS, Bundle
from mdship.errors import BundleError

from mdship_testing import rewrite_manifest


@pytest.fixture
def copy(tiny_bundle, tmp_path):
    dest = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, dest)
    return dest


def _edit_manifest(path, fn):
    data = json.loads((path / "manifest.json").read_text())
    fn(data)
    rewrite_manifest(path, data)


def test_open_reads_a_typed_manifest(tiny_bundle):
    b = Bundle.open(tiny_bundle)
    assert b.manifest.schema_version == bundle.SCHEMA_VERSION and b.backend == "xnnpack"
    assert list(b.manifest.components) == list(COMPONENTS)
    unet = b.component("unet")
    assert [s.name for s in unet.inputs] == list(bundle.COMPONENT_IO["unet"][0])
    assert unet.file == bundle.program_file("unet") and b.program("unet").is_file()
    assert unet.verification.vectors == bundle.vectors_file("unet")
    b.verify_files()


def test_manifest_round_trips_as_written(tiny_bundle):
    text = (tiny_bundle / "manifest.json").read_text()
    manifest = bundle.parse_manifest(text, tiny_bundle / "manifest.json")
    assert json.loads(manifest.to_json()) == json.loads(text)


@pytest.mark.parametrize("edit, words", [
    (lambda m: m.pop("sampler"), "manifest.json: sampler: field required"),
    (lambda m: m["components"]["unet"].pop("sha256"), "manifest.json: components.unet.sha256: field required"),
    (lambda m: m["components"]["unet"]["inputs"][0].update(shape="wide"),
     "manifest.json: components.unet.inputs[0].shape: input should be a valid list"),
    (lambda m: m["components"].pop("vae_decoder"), "components.vae_decoder: missing from the manifest"),
    (lambda m: m.update(colour="red"), "manifest.json: colour: extra inputs are not permitted"),
    (lambda m: m.update(schema_version=99), "schema_version 99 is not supported"),
])
def test_a_damaged_manifest_is_one_line_naming_the_field(copy, edit, words):
    _edit_manifest(copy, edit)
    with pytest.raises(BundleError) as info:
        Bundle.open(copy)
    message = str(info.value)
    assert words in message and "\n" not in message, message


def test_the_integrity_root_covers_the_manifest(copy):
    """Any change to manifest.json, or to its digest file, is refused before the manifest is even parsed; the
    digest file is in `sha256sum -c` format."""
    import subprocess

    assert subprocess.run(["sha256sum", "-c", bundle.INTEGRITY], cwd=copy, capture_output=True).returncode == 0
    text = (copy / "manifest.json").read_text()
    (copy / "manifest.json").write_text(text.replace('"float32"', '"float16"', 1))
    with pytest.raises(BundleError, match=r"manifest\.json: sha256 does not match manifest\.json\.sha256"):
        Bundle.open(copy)
    (copy / "manifest.json").write_text(text)
    Bundle.open(copy)
    (copy / bundle.INTEGRITY).write_text("0" * 64 + "  manifest.json\n")
    with pytest.raises(BundleError, match="does not match"):
        Bundle.open(copy)
    (copy / bundle.INTEGRITY).write_text("garbage\n")
    with pytest.raises(BundleError, match="expected one line"):
        Bundle.open(copy)
    (copy / bundle.INTEGRITY).unlink()
    with pytest.raises(BundleError, match="integrity root"):
        Bundle.open(copy)


def test_not_json_and_not_a_bundle(copy, tmp_path):
    with pytest.raises(BundleError, match="bundle directory not found"):
        Bundle.open(tmp_path / "nope")
    (copy / "manifest.json").write_text("{")
    (copy / bundle.INTEGRITY).write_text(bundle.integrity_line(b"{"))
    with pytest.raises(BundleError, match="not valid JSON"):
        Bundle.open(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match="no manifest.json"):
        Bundle.open(copy)


def test_test_vectors_round_trip_and_incomplete_ones_are_refused(tmp_path):
    names = bundle.COMPONENT_IO["unet"][0]
    vectors = [((torch.randn(2, 8, 4, 4), torch.tensor([3]), torch.randn(2, 5, 6)), torch.randn(2, 8, 4, 4))]
    path = tmp_path / "v.safetensors"
    bundle.save_vectors(path, vectors, names)
    [(inputs, expected)] = bundle.load_vectors(path, names)
    assert all(torch.equal(a, b) for a, b in zip(inputs, vectors[0][0])) and torch.equal(expected, vectors[0][1])
    with pytest.raises(BundleError, match="'0/input/context' is missing"):
        bundle.load_vectors(_without(path, "0/input/context", tmp_path), names)
    path.write_bytes(b"not safetensors")
    with pytest.raises(BundleError, match="unreadable test vectors"):
        bundle.load_vectors(path, names)


def _without(path, key, tmp_path):
    from safetensors.torch import load_file, save_file

    flat = load_file(str(path))
    del flat[key]
    out = tmp_path / "cut.safetensors"
    save_file(flat, str(out))
    return out


def test_verify_files_names_the_changed_file(copy):
    (copy / "scheduler.json").write_text("{}\n")
    with pytest.raises(BundleError, match=r"scheduler\.json: sha256 does not match"):
        Bundle.open(copy).verify_files()
