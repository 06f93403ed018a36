"""The writer: every LMDB write goes through here, many operations to one commit.

Requests hand in operations with a completion callback and go on (no task per request). The
writer takes whatever is pending (up to `max_batch`), applies it as one batch in a worker thread
(one transaction, one fsync), then calls each callback with its result, then `on_committed`
for fanout. A client is therefore acked only after its message is durable, and fanout starts
only after the commit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from engine import CapacityExceeded, Engine, EngineClosed, HeraldError, Operation, Result

__all__ = ["Committed", "Writer", "wall_clock_ms"]

Outcome = Result | HeraldError


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class Committed:
    """One applied operation: what was asked, by whom, and what came of it."""

    op: Operation
    origin: Any  # the connection that asked, or None; fanout skips it
    outcome: Outcome
    done: Callable[[Outcome], None]


class Writer:
    def __init__(
        self,
        engine: Engine,
        *,
        on_committed: Callable[[Sequence[Committed]], None],
        clock_ms: Callable[[], int] = wall_clock_ms,
        max_batch: int = 256,
        max_pending: int = 20_000,
    ) -> None:
        self._engine = engine
        self._on_committed = on_committed
        self._clock_ms = clock_ms
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._pending: list[Committed] = []
        self._wakeup = trio.Event()
        self._closing = False
        self._limiter = trio.CapacityLimiter(1)
        self.batches = 0
        self.ops = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def submit(self, op: Operation, done: Callable[[Outcome], None], origin: Any = None) -> None:
        """Queue `op`; `done` is called with its result or refusal after the commit.

        Raises `CapacityExceeded` when too much is pending (the caller tells the client to retry
        later) and `EngineClosed` once the writer is shutting down.
        """
        if self._closing:
            raise EngineClosed("the server is shutting down; reconnect and retry")
        if len(self._pending) >= self._max_pending:
            raise CapacityExceeded("the server is busy; retry shortly")
        self._pending.append(Committed(op, origin, None, done))  # type: ignore[arg-type]
        self._wakeup.set()

    async def apply(self, op: Operation, origin: Any = None) -> Result:
        """Submit `op` and wait for its result (for callers that can wait, e.g. the console)."""
        box: list[Outcome] = []
        finished = trio.Event()

        def done(outcome: Outcome) -> None:
            box.append(outcome)
            finished.set()

        self.submit(op, done, origin)
        await finished.wait()
        if isinstance(box[0], HeraldError):
            raise box[0]
        return box[0]

    def close(self) -> None:
        """Accept nothing more; `run` returns once what is pending is committed."""
        self._closing = True
        self._wakeup.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wakeup = trio.Event()
                await self._wakeup.wait()
                continue
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            ops = [entry.op for entry in batch]
            try:
                # Not abandoned on cancellation: a commit in flight always finishes and is acked.
                outcomes: list[Outcome] = await trio.to_thread.run_sync(
                    self._engine.apply_batch, ops, self._clock_ms(), limiter=self._limiter
                )
            except HeraldError as failure:
                outcomes = [failure] * len(batch)
            self.batches += 1
            self.ops += len(batch)
            for entry, outcome in zip(batch, outcomes, strict=True):
                entry.outcome = outcome
                entry.done(outcome)
            self._on_committed(batch)
