"""The server's figures as Prometheus metrics, and the small HTTP listener that serves them.

What it costs the gateway: nothing per delivery and a few plain-int additions per committed
operation. Everything the server commits passes one point, the writer's committed batches
(DESIGN.md, "Admin"): `count_committed` counts writes, sends and their latency there, per
batch. Deliveries, pushes and evictions are the hub's own counters, commits and operations the
writer's: they are read when Prometheus scrapes, as are the connections and the store's size.
No prometheus-client metric object is touched on the hot path (its `Counter.inc` takes a lock);
`_Figures` turns the plain numbers into metric families at scrape time, and prometheus-client
writes the exposition. docs/benchmarks.md, "Metrics on the send path", has the cost measured.

Each server has a registry of its own (tests run several servers in one process), and the
listener is off unless `[metrics] listen` (or `herald serve --metrics-listen`) names an address;
a network address needs `[metrics] allow_network = true` (docs/admin.md, "Metrics").
"""

from __future__ import annotations

import importlib.metadata
import logging
import time
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

import h11
import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from appliance.config import MetricsConfig
from appliance.gateway.tls import is_loopback
from appliance.protocol.version import PROTOCOL_VERSION
from engine import Appended, Audited, HeraldError
from engine.records import SEALED_FORMAT_VERSION

if TYPE_CHECKING:
    from appliance.gateway.writer import Committed
    from appliance.keys.manager import TenantKeyStatus

__all__ = [
    "BATCH_OPS_BUCKETS",
    "MAX_REQUEST_BYTES",
    "MAX_SCRAPES_AT_ONCE",
    "REQUEST_TIMEOUT_S",
    "SEND_LATENCY_BUCKETS_S",
    "Buckets",
    "ServerMetrics",
    "metrics_refusal",
    "metrics_url",
    "serve_metrics",
]

log = logging.getLogger("herald.metrics")

# From a send's hand-over to the writer to its ack: a commit is an fsync (about 1-5 ms here),
# and a send waits for the batch before its own at most.
SEND_LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0,
                          2.0, 5.0)
BATCH_OPS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # the writer's max_batch is 256
# A scrape is one GET with a few headers: past this the request is refused with 431, unread.
MAX_REQUEST_BYTES = 8 * 1024
REQUEST_TIMEOUT_S = 10.0  # reading the request and writing the answer, together
MAX_SCRAPES_AT_ONCE = 8  # further connections are closed at once: a scraper retries
# After the answer: how long, and how much, a peer may still send before the close.
LINGER_S = 2.0
MAX_LINGER_BYTES = 1024 * 1024


class Buckets:
    """A histogram as plain numbers: `observe` is one bisect and three additions, with no
    lock (everything runs on the Trio thread). Exposed as a Prometheus histogram at scrape."""

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last: above every bound
        self.count = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bound's bucket (le is <=).
        self.counts[bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.total += value

    def family(self, name: str, documentation: str, unit: str = "") -> HistogramMetricFamily:
        cumulative, buckets = 0, []
        for bound, count in zip(self.bounds, self.counts, strict=False):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))
        buckets.append(("+Inf", self.count))
        return HistogramMetricFamily(name, documentation, buckets=buckets,
                                     sum_value=self.total, unit=unit)


class FanoutCounts(Protocol):
    """What the metrics read of the hub."""

    deliveries: int
    pushes: int
    evictions: int

    @property
    def online_users(self) -> int: ...


class CommitCounts(Protocol):
    """What the metrics read of the writer."""

    batches: int
    ops: int

    @property
    def pending(self) -> int: ...


class StoreUsage(Protocol):
    def store_usage(self) -> tuple[int, int]: ...


def _no_keys() -> Iterable[TenantKeyStatus]:
    return ()


def _package_version() -> str:
    try:
        return importlib.metadata.version("herald")
    except importlib.metadata.PackageNotFoundError:  # a source tree never installed
        return "unknown"


class ServerMetrics:
    """One server's figures and the registry that exposes them.

    The gateway bumps `requests`, `logins_ok` and `logins_failed`, and calls
    `count_committed` once per committed batch; everything else is read from its owner when
    Prometheus scrapes.
    """

    def __init__(
        self, *, hub: FanoutCounts, writer: CommitCounts, store: StoreUsage,
        connections: Callable[[], int],
        key_status: Callable[[], Iterable[TenantKeyStatus]] = _no_keys,
        clock_s: Callable[[], float] = time.time,
    ) -> None:
        self.hub = hub
        self.writer = writer
        self.store = store
        self.connections = connections
        self.key_status = key_status
        self.started_s = clock_s()
        self.logins_ok = 0
        self.logins_failed = 0
        self.messages_sent = 0
        self.writes: dict[tuple[str, str], int] = {}  # (operation, "ok" or error code) -> n
        self.requests: defaultdict[type, int] = defaultdict(int)  # by frame class, as received
        self.send_latency = Buckets(SEND_LATENCY_BUCKETS_S)
        self.batch_ops = Buckets(BATCH_OPS_BUCKETS)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Figures(self))
        ProcessCollector(registry=self.registry)  # CPU, memory, descriptors (from /proc)

    def count_committed(self, batch: Sequence[Committed]) -> None:
        """Count a batch the writer just committed: its operations by outcome, the messages it
        stored and each send's latency (its submission to now, when its ack is queued)."""
        now_s = time.perf_counter()
        self.batch_ops.observe(len(batch))
        writes = self.writes
        latency = self.send_latency
        sent = 0
        for entry in batch:
            outcome = entry.outcome
            # An audited op counts as the op it wraps (a login is a CreateSession).
            op = entry.op.op if isinstance(entry.op, Audited) else entry.op
            if isinstance(outcome, HeraldError):
                key = (type(op).__name__, outcome.code)
            else:
                key = (type(op).__name__, "ok")
                if isinstance(outcome, Appended):
                    latency.observe(now_s - entry.submitted_s)
                    if not outcome.duplicate:
                        sent += 1
            writes[key] = writes.get(key, 0) + 1
        self.messages_sent += sent


class _Figures(Collector):
    """The herald_* metric families, made from the plain numbers when a scrape asks."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._m = metrics
        self._build = (_package_version(), str(SEALED_FORMAT_VERSION), str(PROTOCOL_VERSION))

    def collect(self) -> Iterator[Metric]:
        m = self._m
        build = GaugeMetricFamily(
            "herald_build_info", "This Herald's version, store format and wire protocol; "
            "always 1", labels=("version", "store_format", "protocol"))
        build.add_metric(self._build, 1)
        yield build
        yield GaugeMetricFamily("herald_start_time_seconds",
                                "When this server started, in seconds since the Unix epoch",
                                value=m.started_s)
        yield GaugeMetricFamily("herald_connections", "Open client connections, logged in or "
                                "not", value=m.connections())
        yield GaugeMetricFamily("herald_online_users", "Users with at least one logged-in "
                                "connection", value=m.hub.online_users)
        logins = CounterMetricFamily("herald_logins", "Password logins, by outcome (resumes "
                                     "with a session token are not counted)",
                                     labels=("outcome",))
        logins.add_metric(("ok",), m.logins_ok)
        logins.add_metric(("failed",), m.logins_failed)
        yield logins
        yield CounterMetricFamily("herald_messages_sent", "Messages stored (a retransmitted "
                                  "send, answered as a duplicate, is not counted again)",
                                  value=m.messages_sent)
        yield CounterMetricFamily("herald_deliveries", "Frames pushed to connections: "
                                  "messages, system messages and read positions, one per "
                                  "receiving connection", value=m.hub.deliveries)
        yield CounterMetricFamily("herald_fanout_pushes", "Writes into connections' outboxes: "
                                  "one per connection per conversation per commit, carrying "
                                  "one or more frames", value=m.hub.pushes)
        yield CounterMetricFamily("herald_slow_evictions", "Connections closed because they "
                                  "read too slowly (their outbox was full)",
                                  value=m.hub.evictions)
        requests = CounterMetricFamily("herald_requests", "Requests received from clients, by "
                                       "op (docs/protocol.md), answered or refused",
                                       labels=("op",))
        for frame, count in sorted((_op_name(frame), count)
                                   for frame, count in list(m.requests.items())):
            requests.add_metric((frame,), count)
        yield requests
        writes = CounterMetricFamily("herald_writes", "Operations the writer committed or "
                                     "refused, by engine operation and outcome ('ok' or the "
                                     "error code)", labels=("op", "outcome"))
        for labels, count in sorted(m.writes.items()):
            writes.add_metric(labels, count)
        yield writes
        yield CounterMetricFamily("herald_writer_commits", "Transactions the writer committed "
                                  "(one fsync each)", value=m.writer.batches)
        yield GaugeMetricFamily("herald_writer_pending_ops", "Operations waiting for the "
                                "next commit", value=m.writer.pending)
        yield m.batch_ops.family("herald_writer_batch_ops", "Operations per committed batch")
        yield m.send_latency.family(
            "herald_send_latency_seconds", "From a send's hand-over to the writer to its ack, "
            "queued after the commit")
        used, mapped = m.store.store_usage()
        yield GaugeMetricFamily("herald_store_used_bytes", "Bytes of the hot store in use "
                                "(LMDB pages up to the last one written)", value=used)
        yield GaugeMetricFamily("herald_store_map_bytes", "The hot store's memory map: the most "
                                "it may grow to ([storage] map_size_bytes)", value=mapped)
        keys = GaugeMetricFamily("herald_tenant_key_state", "Each tenant's key state (1 for "
                                 "the state it is in): available, partial, unavailable, "
                                 "revoked or no_key", labels=("tenant", "state"))
        epochs = GaugeMetricFamily("herald_tenant_key_epoch", "Each tenant's current key epoch",
                                   labels=("tenant",))
        for status in m.key_status():
            keys.add_metric((str(status.tenant), status.state), 1)
            epochs.add_metric((str(status.tenant),), status.current_epoch)
        yield keys
        yield epochs


def _op_name(frame: type) -> str:
    """A request frame's `op`, its msgspec tag (appliance/protocol/frames.py)."""
    return str(getattr(getattr(frame, "__struct_config__", None), "tag", frame.__name__))


def metrics_refusal(metrics: MetricsConfig) -> str | None:
    """Why the metrics may not be served where `metrics` says, or None: a network address
    needs `allow_network = true` in `[metrics]` (the figures tell who is busy and when)."""
    if not metrics.enabled or metrics.allow_network or is_loopback(metrics.host):
        return None
    return (f"refusing to serve metrics on {metrics.host}, a network address: anyone who "
            f"reaches it could read the appliance's figures. Listen on 127.0.0.1 (a local "
            f"Prometheus, or an agent that forwards them), or set allow_network = true in "
            f"[metrics] to accept it")


def metrics_url(metrics: MetricsConfig, port: int) -> str:
    """Where a scraper finds the metrics, for the port actually bound."""
    host = f"[{metrics.host}]" if ":" in metrics.host else metrics.host
    return f"http://{host}:{port}/metrics"


async def serve_metrics(
    registry: CollectorRegistry, listeners: Sequence[trio.SocketListener], *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer `GET /metrics` on `listeners` with the exposition of `registry`, until
    cancelled: one request per connection, `MAX_SCRAPES_AT_ONCE` connections at a time, each
    within `REQUEST_TIMEOUT_S`. Anything else gets 404, 405 or 400 and a close; a peer that
    misbehaves is closed, never an error of the server."""
    scrapes = trio.CapacityLimiter(MAX_SCRAPES_AT_ONCE)

    async def handle(stream: trio.SocketStream) -> None:
        try:
            scrapes.acquire_nowait()
        except trio.WouldBlock:
            await trio.aclose_forcefully(stream)
            return
        try:
            with trio.move_on_after(REQUEST_TIMEOUT_S):
                await _answer(stream, registry)
                await _linger(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the scraper went away; it asks again at its next interval
        finally:
            scrapes.release()
            await trio.aclose_forcefully(stream)

    await trio.serve_listeners(handle, list(listeners), task_status=task_status)


async def _answer(stream: trio.SocketStream, registry: CollectorRegistry) -> None:
    http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
    try:
        request = await _request(stream, http)
    except h11.RemoteProtocolError as bad:
        status = bad.error_status_hint
        await _respond(stream, http, status, b"bad request: %s\n" % str(bad).encode())
        return
    if request is None:
        return  # closed before a whole request
    path = request.target.partition(b"?")[0]
    if path != b"/metrics":
        await _respond(stream, http, 404, b"not found: Herald serves its metrics at /metrics\n")
    elif request.method != b"GET":
        await _respond(stream, http, 405, b"only GET\n", [(b"Allow", b"GET")])
    else:
        try:
            exposition = generate_latest(registry)
        except Exception as bug:  # a collector's bug: logged and answered, as the router does
            log.error("a metrics scrape failed: answered 500", exc_info=bug)
            await _respond(stream, http, 500, b"the scrape failed; see the server's log\n")
            return
        await _respond(stream, http, 200, exposition,
                       [(b"Content-Type", CONTENT_TYPE_LATEST.encode())])


async def _linger(stream: trio.SocketStream) -> None:
    """Half-close, then read what the peer still sends (the rest of a refused request) until
    it closes: closing with unread bytes would reset the connection, and the reset can reach
    the peer before the answer it is reading."""
    await stream.send_eof()
    drained = 0
    with trio.move_on_after(LINGER_S):
        while drained < MAX_LINGER_BYTES and (chunk := await stream.receive_some(65536)):
            drained += len(chunk)


async def _request(stream: trio.SocketStream, http: h11.Connection) -> h11.Request | None:
    """The request's head, or None if the peer closed first. Raises `h11.RemoteProtocolError`
    for a malformed or oversized one."""
    while True:
        event = http.next_event()
        if event is h11.NEED_DATA:
            http.receive_data(await stream.receive_some(MAX_REQUEST_BYTES))
            continue
        if isinstance(event, h11.Request):
            return event
        return None  # ConnectionClosed


async def _respond(
    stream: trio.SocketStream, http: h11.Connection, status: int, body: bytes,
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    if http.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return  # h11 cannot answer in this state: the close says it
    if not any(name == b"Content-Type" for name, _ in headers):
        headers = [*headers, (b"Content-Type", b"text/plain; charset=utf-8")]
    head = h11.Response(status_code=status, headers=[
        *headers, (b"Content-Length", str(len(body)).encode()), (b"Connection", b"close")])
    await stream.send_all(http.send(head) + http.send(h11.Data(data=body))
                          + http.send(h11.EndOfMessage()))
