"""`pausepoint demo --dir DIR` never deletes a user's files: it takes a new or empty
folder, or one an earlier demo made (and then replaces only that demo's own files)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pausepoint.persistence.errors import PausepointError
from pausepoint.worker.demo import MARKER, prepare_dir

ROOT = Path(__file__).resolve().parents[2]


def demo(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAUSEPOINT_")}
    return subprocess.run(
        [sys.executable, "-m", "pausepoint.worker", "demo", *args],
        cwd=cwd,
        env=env | {"PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


@pytest.mark.parametrize("as_dot", [False, True])
def test_a_folder_with_the_users_files_is_refused_and_left_alone(
    tmp_path: Path, as_dot: bool
) -> None:
    folder = tmp_path / "mine"
    (folder / "notes").mkdir(parents=True)
    (folder / "thesis.tex").write_text("three years of work")
    (folder / "notes" / "a.txt").write_text("a")
    (folder / "pausepoint.db").write_bytes(b"not a demo's")  # a name the demo uses, even
    before = tree(folder)
    done = demo(folder, "--dir", ".") if as_dot else demo(tmp_path, "--dir", str(folder))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "not empty" in done.stderr and "Traceback" not in done.stderr
    assert tree(folder) == before
    assert not (folder / MARKER).exists()


def test_a_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("keep")
    done = demo(tmp_path, "--dir", str(target))
    assert done.returncode == 1 and "is a file" in done.stderr
    assert target.read_text() == "keep"


def test_a_new_or_empty_folder_is_used_and_marked(tmp_path: Path) -> None:
    prepare_dir(tmp_path / "new" / "nested")
    assert (tmp_path / "new" / "nested" / MARKER).is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    prepare_dir(empty)
    assert (empty / MARKER).is_file()


def test_an_earlier_demos_folder_loses_only_the_demos_own_files(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    prepare_dir(folder)
    for name in ("pausepoint.db", "pausepoint.db-wal", "broker.db", "broker.db-shm", "worker.log"):
        (folder / name).write_text("old demo")
    (folder / "my-notes.md").write_text("what I saw in the demo")
    (folder / "keep").mkdir()
    (folder / "keep" / "x").write_text("x")
    prepare_dir(folder)
    assert tree(folder) == {
        MARKER: (folder / MARKER).read_bytes(),
        "my-notes.md": b"what I saw in the demo",
        "keep/x": b"x",
    }


def test_a_marker_that_is_a_folder_does_not_count(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    (folder / MARKER).mkdir(parents=True)
    (folder / "worker.log").write_text("mine")
    with pytest.raises(PausepointError, match="not empty"):
        prepare_dir(folder)
    assert (folder / "worker.log").read_text() == "mine"
