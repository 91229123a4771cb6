"""The best model's packaging (a trial's checkpoint made an MLflow model) in a process of its
own, for a sweep whose trials train in the driver's process.

Packaging needs MLflow's PyTorch flavour and PyTorch's export, whose first use costs some
2.5 s of imports and tracing in Python, holding the interpreter's lock: done in the driver,
beside the trials, it slows the trial that trains meanwhile by as much; done after the last
trial, it lengthens the finish by as much. A child process pays it on the machine's spare CPU
(at a low priority, with one thread) while the trials run, then packages on request while the
driver draws the study's plots. Run as ``python -m orchestrator.sweeps._packager``: it answers
each JSON line on its stdin with one on its stdout, and exits at its stdin's end (so it never
outlives the driver).
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from orchestrator.tracking import MlflowTracker

__all__ = ["PackageFailed", "Packager", "package_checkpoint"]

_ANSWER_WAIT_S = 60.0
"""Longest wait for one packaging, once the child is ready (it takes about 0.5 s)."""
_READY_WAIT_S = 2.0
"""Longest wait, at the finish, for a child still starting: on a machine too busy for it to
have started during the trials, the finish packages the model itself (about 2.5 s)."""


class PackageFailed(RuntimeError):
    """The child could not package a model (the finish then packages it itself)."""


def package_checkpoint(tracker: MlflowTracker, uri: str, run_id: str, fmt: str) -> str:
    """Turns the checkpoint at ``uri`` into an MLflow model (``pt2`` or ``pickle``) logged in
    run ``run_id``; returns the model's URI."""
    import numpy as np

    from trainers.models import load_checkpoint

    model, spec = load_checkpoint(tracker.read_bytes(uri))
    example = np.zeros((2, spec.n_features), dtype=np.float32)
    return tracker.log_model(model, example, serialization=fmt, run_id=run_id)


class Packager:
    """The driver's side: starts the child, sends requests, reads the answers in order."""

    def __init__(
        self,
        command: list[str] | None = None,
        wait_s: float = _ANSWER_WAIT_S,
        ready_wait_s: float = _READY_WAIT_S,
        idle: bool = True,
    ) -> None:
        self.wait_s, self.ready_wait_s = wait_s, ready_wait_s
        """Longest waits for one answer, and for the child's start once an answer is due."""
        default = [sys.executable, "-m", "orchestrator.sweeps._packager"]
        self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            command or (default if idle else [*default, "--normal-priority"]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            bufsize=0,  # unbuffered: a line read ahead into a buffer would hide from select
        )
        self._ready = False
        self.early: str | None = None
        """The checkpoint asked for early, whose answer comes first."""

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def submit(
        self,
        tracking_uri: str,
        experiment: str,
        uri: str,
        run_id: str,
        fmt: str,
        early: bool = False,
    ) -> None:
        """Asks for one checkpoint's packaging; :meth:`result` answers, in order. An
        ``early`` request (the best checkpoint while the last trials still train) is
        remembered (:attr:`early`) for the finish."""
        request: dict[str, object] = {"tracking_uri": tracking_uri, "experiment": experiment}
        request |= {"uri": uri, "run_id": run_id, "format": fmt}
        proc = self._live()
        try:
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(request).encode() + b"\n")
            proc.stdin.flush()
        except OSError as exc:
            raise self._failed(f"it stopped ({exc})") from None
        if early:
            self.early = uri

    def result(self) -> str:
        """The URI of the next model asked for; raises :class:`PackageFailed`."""
        if not self.wait_ready(self.ready_wait_s):
            raise self._failed(f"not ready in {self.ready_wait_s:.0f} s")
        reply = self._answer(self.wait_s)
        if "model_uri" not in reply:
            raise PackageFailed(str(reply.get("error", reply)))
        return str(reply["model_uri"])

    def close(self) -> None:
        """Ends the child (its stdin closed: it exits; a stuck one is killed)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            assert proc.stdin is not None
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def _live(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            raise self._failed("it is not running")
        return self._proc

    def wait_ready(self, timeout: float) -> bool:
        """Waits for the child to be ready (imports done, export traced)."""
        if not self._ready:
            proc = self._live()
            assert proc.stdout is not None
            if _readable(proc.stdout, timeout):
                self._ready = self._answer(0).get("ready") is True
        return self._ready

    def _answer(self, timeout: float) -> dict[str, object]:
        proc = self._live()
        assert proc.stdout is not None
        if not _readable(proc.stdout, timeout):
            raise self._failed(f"no answer in {timeout:.0f} s")
        line = proc.stdout.readline()
        if not line:
            raise self._failed(f"it exited ({proc.wait()})")
        return dict(json.loads(line))

    def _failed(self, why: str) -> PackageFailed:
        self.close()
        return PackageFailed(f"the packaging process failed: {why}")


def _readable(stream: IO[bytes], timeout: float) -> bool:
    ready, _, _ = select.select([stream], [], [], timeout)
    return bool(ready)


def _warm() -> None:
    """Imports and traces what packaging needs, once, with a throwaway model."""
    import tempfile

    import mlflow.pytorch
    import numpy as np
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        layer = torch.nn.utils.skip_init(torch.nn.Linear, 2, 2)
        mlflow.pytorch.save_model(  # export's first trace, MLflow's map of the packages
            layer,
            os.path.join(tmp, "model"),
            serialization_format="pt2",
            input_example=np.zeros((1, 2), dtype=np.float32),
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )
    try:  # MLflow asks IPython whether it runs in a notebook when it logs a model
        import IPython  # noqa: F401
    except ImportError:
        pass


def _serve() -> int:
    # The answers go to the real stdout; anything else printed, to stderr.
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    if "--normal-priority" not in sys.argv:
        _yield_to_trials()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from orchestrator.tracking import MlflowTracker

    started = time.perf_counter()
    try:
        _warm()
    except Exception:  # noqa: BLE001 - packaging itself will say what is wrong
        pass
    _send(answers, {"ready": True, "warm_s": time.perf_counter() - started})
    for line in sys.stdin:
        request = json.loads(line)
        _hurry()  # the driver is about to wait for it
        try:
            tracker = MlflowTracker(request["tracking_uri"], request["experiment"])
            uri = package_checkpoint(tracker, request["uri"], request["run_id"], request["format"])
            _send(answers, {"model_uri": uri})
        except Exception as exc:  # noqa: BLE001 - the driver packages it itself then
            _send(answers, {"error": f"{type(exc).__name__}: {exc}"})
    # Nothing to clean up: an interpreter's exit with PyTorch and MLflow loaded takes 1-2 s,
    # which the driver would wait for.
    answers.close()
    os._exit(0)


def _yield_to_trials() -> None:
    """The trials come first: CPU time nobody else wants (``SCHED_IDLE``) where the process
    may leave that policy again once the driver waits for it (root, or ``RLIMIT_NICE``
    allowing nice 0); elsewhere nice 10, which it keeps."""
    import resource

    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NICE)
        may_return = os.geteuid() == 0 or soft == resource.RLIM_INFINITY or soft >= 20
        if may_return:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return
    except (AttributeError, OSError, ValueError):
        pass
    try:
        os.nice(10)
    except OSError:
        pass


def _hurry() -> None:
    try:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except (AttributeError, OSError):
        pass


def _send(answers: IO[str], message: dict[str, object]) -> None:
    answers.write(json.dumps(message) + "\n")
    answers.flush()


if __name__ == "__main__":
    raise SystemExit(_serve())
