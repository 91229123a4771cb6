"""An executor that runs every party in the calling process: for unit tests and debugging."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from clusters.base import Executor, PartyFn, PartyHost, R, Reduce

__all__ = ["InProcessExecutor"]


class InProcessExecutor(Executor):
    """Hosts all parties in this process, as one worker.

    Party work runs with torch limited to ``threads`` threads (restored afterwards), as on a
    one-CPU Ray worker, so that both executors give bit-identical results.

    Args:
        worker_init: called once before the first party runs, as a Ray worker would on start.
        threads: torch intra-op threads while party work runs (None: leave as is).
        device: where party tensors live (``cpu``, ``cuda``, ``auto``).
    """

    def __init__(
        self,
        worker_init: Callable[[], None] | None = None,
        threads: int | None = 1,
        device: str = "cpu",
    ) -> None:
        self._host = PartyHost(worker_init, device)
        self._threads = threads

    @property
    def num_workers(self) -> int:
        return 1

    def load(self, parties: Mapping[int, Any], sizes: Mapping[int, int] | None = None) -> None:
        self._host.load(parties)

    def _run(
        self,
        fn: PartyFn[R],
        party_ids: Sequence[int],
        payload: Any,
        reduce: Reduce[R] | None,
    ) -> list[R] | R | None:
        with _torch_threads(self._threads):
            return self._host.run(fn, party_ids, payload, reduce)

    def party_states(self) -> dict[int, dict[str, Any]]:
        import copy

        # copies: the caller keeps them while the parties go on changing theirs
        return copy.deepcopy(self._host.states())

    def restore_party_states(self, states: Mapping[int, dict[str, Any]]) -> None:
        import copy

        self._host.restore(copy.deepcopy(dict(states)))

    def devices(self) -> list[str]:
        return [self._host.device_name()]

    def close(self) -> None:
        self._host.clear()


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    if n is None or "torch" not in sys.modules:  # torch not in use: nothing to limit
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
