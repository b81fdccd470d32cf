""".github/workflows/mdship.yml: valid for GitHub Actions (actionlint, and the workflow JSON schema that
check-jsonschema ships; both in the dev extras), and doing what docs/publishing.md says: a recipe x target matrix
from `mdship ci-matrix`, builds sharing the remote stage cache, `mdship compare --gate`, bundles and reports kept as
artifacts, `mdship publish` on tags only."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mdship_testing import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "mdship.yml"


def tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (it is in the dev extras: pip install -e '.[dev]')")
    return found


def actionlint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([tool("actionlint"), "-color=false", "-oneline", str(path)], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def test_actionlint_accepts_the_workflow():
    r = actionlint(WORKFLOW)
    assert r.returncode == 0 and not r.stdout.strip(), r.stdout + r.stderr


def test_actionlint_catches_a_broken_copy(tmp_path):
    """The check above can fail: a job needing a job that does not exist, and a typo in an expression."""
    broken = tmp_path / ".github" / "workflows" / "mdship.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text(WORKFLOW.read_text().replace("needs: matrix\n", "needs: matrx\n")
                      .replace("steps.build.outputs.bundle", "steps.bulid.outputs.bundle"))
    r = actionlint(broken)
    assert r.returncode != 0
    assert 'needs job "matrx" which does not exist' in r.stdout and 'property "bulid" is not defined' in r.stdout


def test_the_workflow_schema_accepts_the_workflow():
    r = subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def _jobs() -> tuple[dict, dict]:
    data = yaml.safe_load(WORKFLOW.read_text())
    return data, data["jobs"]


def _runs(job: dict) -> str:
    return "\n".join(step.get("run", "") for step in job["steps"])


def test_matrix_builds_with_the_remote_cache_gates_and_keeps_artifacts(run_cli, monkeypatch):
    data, jobs = _jobs()
    assert "mdship ci-matrix" in _runs(jobs["matrix"])
    build = jobs["build"]
    assert build["needs"] == "matrix"
    assert build["strategy"]["matrix"] == "${{ fromJSON(needs.matrix.outputs.matrix) }}"
    assert build["strategy"]["fail-fast"] is False
    assert data["env"]["MDSHIP_CACHE_URL"] == "${{ vars.MDSHIP_CACHE_URL }}"
    runs = _runs(build)
    assert re.search(r"mdship build \"\$RECIPE\" --target \"\$TARGET\"", runs)
    assert re.search(r"mdship compare \"\$BUNDLE\" --gate", runs)
    uploads = [s["with"]["name"] for s in build["steps"] if s.get("uses", "").startswith("actions/upload-artifact")]
    assert uploads == ["bundle-${{ matrix.name }}-${{ matrix.target }}",
                       "report-${{ matrix.name }}-${{ matrix.target }}"]

    # every matrix.X the workflow reads is a key of the rows `mdship ci-matrix` prints
    monkeypatch.chdir(ROOT)
    rows = json.loads(run_cli("ci-matrix").out)["include"]
    used = set(re.findall(r"(?<![.\w])matrix\.(\w+)", WORKFLOW.read_text()))
    assert used and all(used <= set(row) for row in rows), used


def test_publishes_only_tags_after_every_build_passed():
    data, jobs = _jobs()
    publish = jobs["publish"]
    assert publish["if"] == "startsWith(github.ref, 'refs/tags/')"
    assert publish["needs"] == "build"
    assert any(s.get("with", {}).get("pattern") == "bundle-*" for s in publish["steps"])
    assert 'mdship publish bundles/* --to "$MDSHIP_RELEASE_URL" --version "$GITHUB_REF_NAME"' in _runs(publish)
    assert "publish" not in _runs(jobs["build"]).replace("--gate", "")
    on = data.get("on", data.get(True))  # YAML 1.1 reads a bare `on` key as true
    assert on["push"]["tags"] == ["v*"]
