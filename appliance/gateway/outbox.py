"""Per-connection outboxes: frames are written to the socket without an `await` per delivery.

Fanout encodes a frame once and pushes the same bytes to every recipient's outbox. `flush()`
hands everything queued for a connection to the kernel in one `writev`; only when the kernel's
buffer is full does the rest wait for a drain task, which awaits writability and ends once the
outbox is empty (an idle connection keeps no parked task: docs/benchmarks.md, idle memory).
An outbox never holds more than its cap: `push` refuses, and the owner closes the connection
(the client catches up by sync when it returns). PERFORMANCE.md has the figures behind this.

Under TLS the outbox is given a `seal` function (appliance/gateway/tls.py): pushed frames wait as
plaintext, and each flush seals a batch of them into records and writes the ciphertext the
same way, still without an `await`. Ciphertext is never dropped (a TLS stream has no gaps):
only frames not yet sealed are. The cap counts what has not reached the kernel yet, plaintext
not yet sealed plus ciphertext not yet written, so it means the same with and without TLS
(give or take the records' ~22 bytes of overhead per 16 KiB).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable

import trio

__all__ = ["Flusher", "Outbox"]

_IOV_MAX = 1024
SEAL_BATCH_BYTES = 256 * 1024  # plaintext sealed per step under TLS: about a socket buffer


class Flusher:
    """Outboxes with unflushed frames, flushed together once a burst of pushes is done."""

    def __init__(self) -> None:
        self._dirty: set[Outbox] = set()

    def mark(self, outbox: Outbox) -> None:
        self._dirty.add(outbox)

    def flush_all(self) -> None:
        dirty, self._dirty = self._dirty, set()
        for outbox in dirty:
            outbox.flush()


class Outbox:
    def __init__(
        self, fd: int, cap_bytes: int, flusher: Flusher,
        seal: Callable[[bytes], bytes] | None = None,
    ) -> None:
        """`seal`, for TLS, turns plaintext into the bytes to write (raising `ssl.SSLError`
        once the channel is broken)."""
        self._fd = fd
        self._cap = cap_bytes
        self._flusher = flusher
        self._seal = seal
        # Bytes for the socket; the first item may be the tail of a partly written frame.
        self._queue: list[bytes] = []
        # Where pushed frames wait: the socket queue itself without TLS, else plaintext to seal.
        self._frames: list[bytes] = self._queue if seal is None else []
        self._queued_bytes = 0
        self._blocked = False
        self._nursery: trio.Nursery | None = None  # where the drain task runs, when needed
        self._draining = False
        self._emptied = trio.Event()
        self.closed = False
        self.broken = False  # the peer went away mid-write; the owner should close
        self._final = False  # a close (or HTTP refusal) is queued: nothing may follow it

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    def push(self, frame: bytes) -> bool:
        """Queue `frame`; False (and nothing queued) when that would pass the cap. After the
        final frame, frames are dropped (True): RFC 6455 allows nothing after a close."""
        if self.closed or self._final:
            return True
        if self._queued_bytes + len(frame) > self._cap:
            return False
        self._frames.append(frame)
        self._queued_bytes += len(frame)
        self._flusher.mark(self)
        return True

    def push_final(self, frame: bytes, *, drop_queued: bool = True) -> None:
        """Queue a last frame (a close) even past the cap; with `drop_queued`, first drop
        every queued frame not yet begun (a slow consumer will sync instead). Only the first
        final frame counts; later ones are dropped."""
        if self.closed or self._final:
            return
        self._final = True
        if drop_queued:
            if self._seal is not None:
                self._frames.clear()  # not sealed yet; all ciphertext must still go out
            else:
                # Keep a partly written frame (only a blocked outbox has one): cutting it
                # would corrupt the stream.
                del self._queue[1 if self._blocked else 0:]
        self._frames.append(frame)
        self._queued_bytes = sum(map(len, self._queue))
        if self._frames is not self._queue:
            self._queued_bytes += sum(map(len, self._frames))
        self._flusher.mark(self)

    def push_sealed(self, data: bytes) -> None:
        """Queue bytes the TLS channel produced on its own (handshake, tickets, key updates,
        alerts, close_notify): they go out whatever the cap, and even after the final frame."""
        if self.closed or not data:
            return
        self._queue.append(data)
        self._queued_bytes += len(data)
        self._flusher.mark(self)

    def flush(self) -> None:
        """Write what the kernel takes now; leave the rest to the drain task."""
        if self._blocked or self.closed:
            return
        while True:
            if not self._queue:
                if not self._frames:
                    break
                self._seal_batch()
                if self.broken:
                    return
            try:
                written = os.writev(self._fd, self._queue[:_IOV_MAX])
            except BlockingIOError:
                written = 0
            except OSError:
                self._break()
                return
            self._consume(written)
            if self._queue:
                self._blocked = True
                self._start_drain()
                return
        if not self._emptied.is_set():
            self._emptied.set()

    def _seal_batch(self) -> None:
        """Move up to SEAL_BATCH_BYTES of plaintext frames into the socket queue, sealed."""
        assert self._seal is not None  # without TLS, frames go straight to the socket queue
        assert not self._queue  # so every queued byte is a plaintext frame's
        frames = self._frames
        if self._queued_bytes <= SEAL_BATCH_BYTES:  # the usual case: all of them at once
            size = self._queued_bytes
            plaintext = b"".join(frames)
            frames.clear()
        else:
            size = count = 0
            while count < len(frames) and size < SEAL_BATCH_BYTES:
                size += len(frames[count])
                count += 1
            plaintext = b"".join(frames[:count])
            del frames[:count]
        try:
            sealed = self._seal(plaintext)
        except ssl.SSLError:
            self._break()
            return
        self._queue.append(sealed)
        self._queued_bytes += len(sealed) - size

    def _break(self) -> None:
        self.broken = True
        self._queue.clear()
        self._frames.clear()
        self._queued_bytes = 0
        self._emptied.set()

    def _consume(self, written: int) -> None:
        self._queued_bytes -= written
        queue = self._queue
        index = 0
        while index < len(queue) and written >= len(queue[index]):
            written -= len(queue[index])
            index += 1
        del queue[:index]
        if written:
            queue[0] = queue[0][written:]

    # -- the drain task, started only when the kernel's buffer is full ------------------------

    def drain_in(self, nursery: trio.Nursery) -> None:
        """Run the drain task in `nursery` (the connection's) whenever it is needed. The owner
        closes the outbox as soon as that nursery is done, so no task is started after it."""
        self._nursery = nursery

    def _start_drain(self) -> None:
        if self._nursery is not None and not self._draining:
            self._draining = True
            self._nursery.start_soon(self._drain)

    async def _drain(self) -> None:
        try:
            while self._blocked and not self.closed and not self.broken:
                await trio.lowlevel.wait_writable(self._fd)
                self._blocked = False
                self.flush()
        finally:
            self._draining = False

    async def wait_empty(self) -> None:
        """Return once everything queued so far has been written (or the socket broke)."""
        while (self._queue or self._frames) and not self.broken and not self.closed:
            self._emptied = trio.Event()
            self.flush()
            if self._queue or self._frames:
                await self._emptied.wait()

    def close(self) -> None:
        """Stop writing for good (before the socket itself is closed)."""
        self.closed = True
        self._queue.clear()
        self._frames.clear()
        self._queued_bytes = 0
        self._emptied.set()
