"""Whether this process is fedsweep's own command's: only then does fedsweep change settings
of the whole interpreter (a notebook or a test that calls the Python API keeps its own)."""

from __future__ import annotations

import gc

__all__ = ["freeze", "own"]

_OWNED = False


def own() -> None:
    """Marks this process as the ``fedsweep`` command's (its entry point calls this)."""
    global _OWNED
    _OWNED = True


def freeze() -> None:
    """In the command's process, moves every object alive now out of the garbage collector's
    reach: what a command imported and built lives until the process ends, and with
    PyTorch, MLflow and Optuna loaded, each full collection walks some 700,000 such objects
    (about 0.15 s), and the interpreter's exit walks them once more (1 to 2 s). Garbage among
    frozen objects is freed by reference counting as usual; only cycles wait for the exit."""
    if _OWNED:
        gc.freeze()
