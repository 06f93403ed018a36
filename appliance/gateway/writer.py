"""The writer: every LMDB write goes through here, many operations to one commit.

Requests hand in operations with a completion callback and go on (no task per request). The
writer takes whatever is pending (up to `max_batch`), applies it as one batch in a worker thread
(one transaction, one fsync), then calls each callback with its result, then `on_committed`,
which plans the fanout and returns the coroutine function that sends it.

The fanout of a batch runs in the background, in slices, so requests are read meanwhile. The
next commit starts when that fanout ends, or at once if `overlap_min_batch` operations are
already waiting: then it overlaps the fanout (the fsync releases the GIL). Overlapping with
fewer would commit small batches whose fanouts join few frames, which costs more per
delivery than it saves (docs/benchmarks.md, "Fanout per commit").

What must stay ordered stays ordered: a client is acked only after its batch is durable; a
batch's fanout is planned after its commit and before the next commit starts (so it sees the
members as of its own commit); and one fanout finishes before the next begins, so pushes keep
commit order on every connection.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from engine import (
    CapacityExceeded,
    Engine,
    EngineClosed,
    HeraldError,
    InternalError,
    Operation,
    Result,
)

__all__ = ["OVERLAP_MIN_BATCH", "Committed", "SendFanout", "Writer", "wall_clock_ms"]

log = logging.getLogger("herald.writer")

Outcome = Result | HeraldError
# Operations that must be waiting for the next commit to start while a fanout is being sent.
# 64: the peer and big-group workloads (at most 32 in flight) then never overlap, the 1,000
# direct senders (hundreds waiting) do; docs/benchmarks.md has the three measured.
OVERLAP_MIN_BATCH = 64
SendFanout = Callable[[], Awaitable[None]]


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class Committed:
    """One applied operation: what was asked, by whom, and what came of it."""

    op: Operation
    origin: Any  # the connection that asked, or None; fanout skips it
    outcome: Outcome
    done: Callable[[Outcome], None]
    submitted_s: float = 0.0  # time.perf_counter() at `submit`: the send latency metric's start


class Writer:
    def __init__(
        self,
        engine: Engine,
        *,
        on_committed: Callable[[Sequence[Committed]], SendFanout | None],
        clock_ms: Callable[[], int] = wall_clock_ms,
        max_batch: int = 256,
        max_pending: int = 20_000,
        overlap_min_batch: int = OVERLAP_MIN_BATCH,
    ) -> None:
        self._engine = engine
        self._on_committed = on_committed
        self._clock_ms = clock_ms
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._overlap_min_batch = min(overlap_min_batch, max_batch)
        self._pending: list[Committed] = []
        self._wakeup = trio.Event()
        self._closing = False
        self._fanout_done = trio.Event()  # the last batch's fanout has been sent
        self._fanout_done.set()
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
        pending = self._pending
        pending.append(Committed(op, origin, None, done, time.perf_counter()))  # type: ignore[arg-type]
        if len(pending) == 1 or len(pending) >= self._overlap_min_batch:  # what `run` awaits
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
        """Commit batches until `close`, then return once the last fanout is sent.

        Commits and fanouts are shielded from cancellation: a commit in flight always finishes
        and is acked, and a fanout never waits for a peer (it only yields between slices).
        """
        async with trio.open_nursery() as fanouts:
            task_status.started()
            while True:
                if not self._pending:
                    if self._closing:
                        await self._fanout_done.wait()
                        return
                    await self._wait()
                    continue
                if (not self._fanout_done.is_set()
                        and len(self._pending) < self._overlap_min_batch):
                    await self._wait()  # for the fanout to end, or for a big enough batch
                    continue
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                with trio.CancelScope(shield=True):
                    results = await self._commit(batch)
                    await self._fanout_done.wait()  # the previous batch's pushes go out first
                self.batches += 1
                self.ops += len(batch)
                for entry, result in zip(batch, results, strict=True):
                    entry.outcome = result
                    entry.done(result)
                send = self._on_committed(batch)
                if send is not None:
                    self._fanout_done = trio.Event()
                    fanouts.start_soon(self._send, send)

    async def _wait(self) -> None:
        self._wakeup = trio.Event()
        await self._wakeup.wait()

    async def _commit(self, batch: list[Committed]) -> list[Outcome]:
        """Apply `batch` in a worker thread, started at once (the previous fanout may still be
        running here meanwhile). A refusal of the whole transaction (a full store, a closed
        engine) refuses every op of the batch; an internal error or a bug only the op that
        caused it."""
        finished = trio.Event()
        box: list[Any] = []  # the thread's outcome.Outcome: unwrap() returns or raises
        token = trio.lowlevel.current_trio_token()

        def deliver(result: Any) -> None:  # in the worker thread
            def report() -> None:
                box.append(result)
                finished.set()
            token.run_sync_soon(report)

        apply = functools.partial(self._engine.apply_batch, [entry.op for entry in batch],
                                  self._clock_ms())
        trio.lowlevel.start_thread_soon(apply, deliver, name="herald writer commit")
        await finished.wait()
        try:
            results: list[Outcome] = box[0].unwrap()
        except InternalError as failure:
            return await self._isolate(batch, failure)
        except HeraldError as failure:  # the store refused the transaction: full, closed
            return [failure] * len(batch)
        except Exception as bug:  # answered and logged in _isolate, never swallowed
            return await self._isolate(batch, bug)
        return results

    async def _isolate(self, batch: list[Committed], failure: Exception) -> list[Outcome]:
        """The batch's transaction failed with a storage error or a bug, which one of its ops
        caused (nothing was committed): apply the ops one by one, so that only that op is
        refused, with `internal`, and logged with its traceback. The others commit."""
        if len(batch) > 1:
            outcomes: list[Outcome] = []
            for entry in batch:
                outcomes.extend(await self._commit([entry]))
            return outcomes
        (entry,) = batch
        log.error("%s failed: refused with 'internal'", type(entry.op).__name__,
                  exc_info=failure)
        if isinstance(failure, InternalError):
            return [failure]
        return [InternalError(f"{type(failure).__name__} (a bug)")]

    async def _send(self, send: SendFanout) -> None:
        try:
            with trio.CancelScope(shield=True):
                await send()
        finally:
            self._fanout_done.set()
            self._wakeup.set()
