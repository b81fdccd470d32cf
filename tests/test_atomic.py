"""mdship.atomic: a directory is replaced whole or not at all, even under kill -9, and dead writers' litter goes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mdship import atomic

ROOT = Path(__file__).resolve().parents[1]

# Rewrites `final` with generation g (FILES files of 64 KiB, each saying g) again and again until killed.
WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from mdship.atomic import atomic_dir
    final, files = Path(sys.argv[1]), int(sys.argv[2])
    g = int((final / "0").read_text().split()[0]) + 1 if (final / "0").exists() else 0
    while True:
        with atomic_dir(final) as tmp:
            for i in range(files):
                (tmp / str(i)).write_text(f"{g} " + "x" * 65536)
        g += 1
""")


def _generations(final: Path) -> set[str]:
    return {p.read_text().split()[0] for p in final.iterdir()}


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_kill_at_random_moments_never_leaves_a_partial_or_missing_directory(tmp_path):
    final, files = tmp_path / "bundle", 8
    rng = random.Random(0)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for attempt in range(25):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(final), str(files)], env=env)
        time.sleep(0.15 + rng.random() * 0.25)  # python start-up, then somewhere inside a write or a swap
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if attempt == 0 and not final.exists():
            continue  # killed before the first directory was complete: nothing to keep yet
        assert final.is_dir(), f"attempt {attempt}: the directory vanished"
        names = {p.name for p in final.iterdir()}
        assert names == {str(i) for i in range(files)}, f"attempt {attempt}: partial directory {sorted(names)}"
        assert len(_generations(final)) == 1, f"attempt {attempt}: files of two generations"
    with atomic.atomic_dir(final) as tmp:  # the next writer sweeps what the killed ones left
        (tmp / "0").write_text("done")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_interrupted_fallback_swap_is_restored_and_litter_swept(tmp_path):
    """Without renameat2 the swap is two renames; a process dying between them leaves `.NAME.old-*`, which the next
    write puts back (or removes once a new directory is in place). Live or foreign writers are never touched."""
    tag = atomic._tag()
    host = tag.split("-")[0]
    dead = _dead_pid()
    (tmp_path / f".bundle.old-{host}-{dead}").mkdir()
    (tmp_path / f".bundle.old-{host}-{dead}" / "kept").write_text("old")
    (tmp_path / f".other.tmp-{host}-{dead}-abc").mkdir()
    live = tmp_path / f".other.tmp-{tag}-live"
    live.mkdir()
    foreign = tmp_path / f".other.tmp-elsewhere-{dead}-abc"
    foreign.mkdir()
    atomic.sweep(tmp_path)
    assert (tmp_path / "bundle" / "kept").read_text() == "old"  # restored, not lost
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["bundle", live.name, foreign.name])


def test_fallback_swap_replaces_and_cleans(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    final = tmp_path / "out"
    for text in ("one", "two"):
        with atomic.atomic_dir(final) as tmp:
            (tmp / "f").write_text(text)
    assert (final / "f").read_text() == "two" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_failed_write_keeps_the_old_directory(tmp_path):
    final = tmp_path / "out"
    with atomic.atomic_dir(final) as tmp:
        (tmp / "f").write_text("good")
    with pytest.raises(RuntimeError):
        with atomic.atomic_dir(final) as tmp:
            (tmp / "f").write_text("half")
            raise RuntimeError("killed halfway")
    assert (final / "f").read_text() == "good" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_file(tmp_path):
    path = tmp_path / "sub" / "x.png"
    with atomic.atomic_file(path) as tmp:
        tmp.write_bytes(b"png")
    assert path.read_bytes() == b"png"
    with pytest.raises(ValueError):
        with atomic.atomic_file(path) as tmp:
            tmp.write_bytes(b"half")
            raise ValueError
    assert path.read_bytes() == b"png" and sorted(p.name for p in path.parent.iterdir()) == ["x.png"]
