"""Shared fixtures: one local Ray for the whole session, MLflow stores in temporary dirs."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"


def _ray_token() -> tuple[Path, bool]:
    """Ray's token authentication, explicitly: one token file for the test run, named in this
    process's environment (and so in every process the tests start; a lab sets its own).
    Set when this file is imported, before any test module imports Ray, which reads it then.
    A process the test run started that imports this file again (a Ray worker unpickling a
    test's function) keeps the run's token instead of making (and leaving) one of its own.
    Returns the file and whether this process made it."""
    import os
    import secrets
    import tempfile

    inherited = os.environ.get("FEDSWEEP_TEST_RAY_TOKEN")
    if inherited and Path(inherited).is_file():
        return Path(inherited), False
    path = Path(tempfile.mkdtemp(prefix="fedsweep-ray-auth-")) / "token"
    path.write_text(secrets.token_hex(32))
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(path)
    os.environ["FEDSWEEP_TEST_RAY_TOKEN"] = str(path)
    return path, True


RAY_TOKEN, _MADE_TOKEN = _ray_token()


def _recorded_instruction_set() -> None:
    """The golden histories are compared to the 16th digit, and the kernels torch, oneDNN
    and NumPy pick differ in their last bits between AVX2 and AVX-512 (summation order,
    vectorised exp).
    They were recorded on AVX2 machines, so every process of the test run is capped at AVX2:
    set before NumPy or torch is imported, and inherited by Ray's workers and by every
    process the tests start. On an AVX2 machine this changes nothing."""
    import os
    import sys

    if "numpy" in sys.modules or "torch" in sys.modules:
        return  # a worker that unpickled a test's function: it inherited the settings
    os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")
    os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        flags = set()
    # NumPy warns about disabling what the machine lacks: name only what it has
    avx512 = ["X86_V4", "AVX512_ICL"] if "avx512f" in flags else []
    avx512 += ["AVX512_SPR"] if "avx512_fp16" in flags else []
    if avx512:
        os.environ.setdefault("NPY_DISABLE_CPU_FEATURES", " ".join(avx512))


_recorded_instruction_set()


@pytest.fixture(scope="session", autouse=True)
def ray_token():
    """The test run's Ray token file, removed at the end."""
    import shutil

    yield RAY_TOKEN
    if _MADE_TOKEN:
        shutil.rmtree(RAY_TOKEN.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_session(ray_token):
    """A real local Ray (2 CPUs, no dashboard), started once and always shut down."""
    import ray

    ray.init(
        num_cpus=2, include_dashboard=False, logging_level="ERROR", _node_ip_address="127.0.0.1"
    )
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def lab():
    """A lab for the whole session: PostgreSQL (at most 30 connections), an MLflow server
    and a 3-node Ray cluster with token authentication (each node declaring one GPU, which
    this machine does not have: a logical resource for Ray to schedule); stopped by its pids
    at the end."""
    import shutil
    import tempfile

    from clusters.lab import Lab

    from .postgres import install_postgres

    if not install_postgres():
        pytest.skip("PostgreSQL is not installed and cannot be installed here")
    root = Path(tempfile.mkdtemp(prefix="fedsweep-lab-"))
    root.chmod(0o755)  # PostgreSQL runs as its own user, which must reach its directory
    # one logical GPU per node: Ray schedules GPU shares; the parties then train on the CPU
    started = Lab.up(root / "lab", nodes=3, cpus_per_node=1, gpus_per_node=1, max_connections=30)
    try:
        yield started
    finally:
        started.down()
        shutil.rmtree(started.ray_temp, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture()
def workdir(tmp_path, monkeypatch) -> Path:
    """A fresh working directory, so MLflow's default store and artifacts land in tmp."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


@pytest.fixture()
def tracking_uri(workdir) -> str:
    return f"sqlite:///{workdir / 'mlflow.db'}"


def free_port() -> int:
    """A TCP port nobody listens on now, on loopback."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny(**extra: object) -> dict:
    """A small, fast experiment config as a dict."""
    cfg: dict = {
        "seed": 0,
        "data": {"name": "digits"},
        "partition": {"name": "iid", "num_parties": 6},
        "model": {"name": "mlp", "hidden": [16]},
        "trainer": {"name": "fedavg", "rounds": 3, "batch_size": 16, "lr": 0.1},
        "runtime": {"executor": "local"},
        "tracking": {"enabled": False},
    }
    return with_values(cfg, **extra)


def with_values(cfg: dict, **extra: object) -> dict:
    """Sets ``section__key=value`` entries in a config dict (in place) and returns it."""
    for dotted, value in extra.items():
        node = cfg
        *path, last = dotted.split("__")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return cfg


from .postgres import postgres_url  # noqa: E402,F401 - a fixture for the storage tests


class Sink:
    """A reporter that drops every metric (unit tests of trainers)."""

    def report(self, step, metrics) -> None:
        pass


def spawn(argv: list[str], cwd, sessions: list[int], env=None):
    """``argv`` in a process of its own session (recorded in ``sessions``, so that whatever
    it leaves is killed after the test), its output captured as text."""
    import subprocess

    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    sessions.append(proc.pid)
    return proc


def start_held(workdir, sessions: list[int], script: str, payload: list, what: str):
    """Python ``script`` in a process of its own, which reads ``payload`` plus a marker
    path from ``json.loads(sys.argv[1])`` and writes the marker where it holds (inside a
    step, a phase); returns the process once it holds there."""
    import json
    import sys

    marker = workdir / "held"
    marker.unlink(missing_ok=True)
    proc = spawn(
        [sys.executable, "-c", script, json.dumps([*payload, str(marker)])], workdir, sessions
    )

    def held():
        return "ended" if proc.poll() is not None else marker.exists()

    if wait_for(held, 240, what, poll=0.05) == "ended":
        raise AssertionError(f"ended early ({proc.returncode}): {proc.stderr.read()[-2000:]}")
    return proc


def wait_for(predicate, timeout: float, what: str, poll: float = 0.2):
    """Waits for ``predicate()`` to be truthy (an event: a file, a trial's state) and returns
    it; AssertionError naming ``what`` after ``timeout`` seconds. Exceptions count as not yet
    (the thing watched may not exist yet)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except Exception:  # noqa: BLE001 - e.g. the storage does not exist yet
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def session_members(leader: int) -> list:
    """The live processes of the session ``leader`` started (a process the tests started with
    ``start_new_session=True``): Ray's processes stay in the session of whoever started them,
    after their parent is gone too."""
    import os

    import psutil

    out = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == leader:
                out.append(p)
        except (ProcessLookupError, PermissionError):
            continue
    return out


def kill_session(leader: int, timeout: float = 30.0) -> None:
    """Kills every process of the session the tests started as ``leader`` and waits for them
    to be gone; nothing outside that session is touched."""
    import psutil

    members = session_members(leader)
    for p in members:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(members, timeout=timeout)


@pytest.fixture()
def sessions():
    """Leaders of the sessions a test started; every process in them is killed afterwards."""
    leaders: list[int] = []
    yield leaders
    for leader in leaders:
        kill_session(leader)


def pytest_addoption(parser):
    parser.addoption(
        "--fuzz-long",
        action="store_true",
        help="run many more fuzz examples (tests/test_fuzz.py), drawn afresh each run",
    )


def pytest_configure(config):
    from hypothesis import settings

    # Default: a bounded, repeatable draw (the same examples every run); --fuzz-long: many
    # more, random, with Hypothesis's database keeping what failed for the next run.
    settings.register_profile("default-run", max_examples=25, derandomize=True, database=None)
    settings.register_profile("fuzz-long", max_examples=3000)
    settings.load_profile("fuzz-long" if config.getoption("--fuzz-long") else "default-run")
