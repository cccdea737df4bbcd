"""Everything installs under `pausepoint`; old workflow module names still load."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pausepoint.persistence
import pausepoint.tasks
import pausepoint.worker
from pausepoint.worker.settings import Settings


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PAUSEPOINT_", "PYTHONPATH"))}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def test_the_packages_are_pausepoints() -> None:
    for module in (pausepoint.persistence, pausepoint.tasks, pausepoint.worker):
        assert module.__name__.startswith("pausepoint.")
    assert Settings().workflows == ["pausepoint.tasks.examples"]


def test_the_old_examples_name_still_loads(tmp_path: Path) -> None:
    done = _python(
        "from pausepoint.tasks.workflow import registry\n"
        "registry.load(['tasks.examples'])\n"
        "print(sorted(registry.names()))\n",
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "'loan'" in done.stdout and "'noop'" in done.stdout
    assert "is now 'pausepoint.tasks.examples'" in done.stderr


def test_a_users_own_tasks_module_is_not_replaced_by_ours(tmp_path: Path) -> None:
    (tmp_path / "tasks.py").write_text(
        "from pausepoint.tasks.workflow import Workflow\nmine = Workflow('mine')\n"
        "@mine.step\ndef only(ctx):\n    return None\n"
    )
    done = _python(
        "import sys; sys.path.insert(0, '.')\n"
        "from pausepoint.tasks.workflow import registry\n"
        "registry.load(['tasks'])\n"
        "import tasks; print(tasks.__file__); print(sorted(registry.names()))\n",
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert str(tmp_path / "tasks.py") in done.stdout and "'mine'" in done.stdout


def test_an_unknown_workflow_module_is_still_a_clear_error(tmp_path: Path) -> None:
    done = _python(
        "from pausepoint.tasks.workflow import registry\nregistry.load(['tasks.nothing'])\n",
        tmp_path,
    )
    assert done.returncode != 0 and "cannot import workflow module 'tasks.nothing'" in done.stderr
