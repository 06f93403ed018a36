"""What the metrics add to a send, and what a scrape costs the event loop.

A send pays two things for the metrics: `time.perf_counter()` when the writer takes it
(`Writer.submit` stamps `Committed.submitted_s`) and its share of `ServerMetrics.
count_committed` once its batch is committed (a dict increment, a latency bucket, a few
isinstance checks). This times both per operation, in batches of the sizes the writer commits,
next to what the same counting would cost with prometheus-client's own Counter and Histogram
objects (a lock per call), and times a scrape (`generate_latest`) of one server's registry.
Nothing here touches the network or the disk: it is the Python cost only.

    .venv/bin/python bench/metrics_cost.py [--reps 7] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from appliance.gateway.metrics import SEND_LATENCY_BUCKETS_S, ServerMetrics
from appliance.gateway.writer import Committed
from engine import Append, Appended

BATCH_SIZES = (1, 32, 256)
OPS_PER_REP = 200_000


class _Hub:
    deliveries = pushes = evictions = 0
    online_users = 1000


class _Writer:
    batches = ops = 0
    pending = 0


class _Store:
    def store_usage(self) -> tuple[int, int]:
        return (2**30, 64 * 2**30)


def _batch(size: int) -> list[Committed]:
    now = time.perf_counter()
    return [
        Committed(Append(tenant=1, conv=7, sender=3, client_msg_id=f"m{i}", body="hello"),
                  None, Appended(conv=7, seq=i + 1, ts=0), lambda _: None, now)
        for i in range(size)
    ]


def _per_op_ns(run_batch: Callable[[list[Committed]], None], size: int, reps: int) -> float:
    batch = _batch(size)
    rounds = max(1, OPS_PER_REP // size)
    samples = []
    for _ in range(reps):
        started = time.perf_counter_ns()
        for _ in range(rounds):
            run_batch(batch)
        samples.append((time.perf_counter_ns() - started) / (rounds * size))
    return statistics.median(samples)


def _stamp_ns(reps: int) -> float:
    stamp = time.perf_counter
    samples = []
    for _ in range(reps):
        started = time.perf_counter_ns()
        for _ in range(OPS_PER_REP):
            stamp()
        samples.append((time.perf_counter_ns() - started) / OPS_PER_REP)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--json", help="write the figures to this file too")
    args = parser.parse_args()

    metrics = ServerMetrics(hub=_Hub(), writer=_Writer(), store=_Store(),
                            connections=lambda: 1000)
    library = CollectorRegistry()
    sent = Counter("bench_messages_sent", "", registry=library)
    writes = Counter("bench_writes", "", ["op", "outcome"], registry=library)
    latency = Histogram("bench_send_latency_seconds", "", buckets=SEND_LATENCY_BUCKETS_S,
                        registry=library)
    batch_ops = Histogram("bench_writer_batch_ops", "", registry=library)

    def with_library_objects(batch: list[Committed]) -> None:
        now_s = time.perf_counter()
        batch_ops.observe(len(batch))
        for entry in batch:
            writes.labels(type(entry.op).__name__, "ok").inc()
            latency.observe(now_s - entry.submitted_s)
            sent.inc()

    figures: dict[str, float] = {"stamp_ns": _stamp_ns(args.reps)}
    for size in BATCH_SIZES:
        figures[f"count_committed_ns_batch_{size}"] = _per_op_ns(
            metrics.count_committed, size, args.reps)
        figures[f"prometheus_objects_ns_batch_{size}"] = _per_op_ns(
            with_library_objects, size, args.reps)
    scrapes = []
    for _ in range(args.reps):
        started = time.perf_counter_ns()
        for _ in range(100):
            generate_latest(metrics.registry)
        scrapes.append((time.perf_counter_ns() - started) / 100 / 1000)
    figures["scrape_us"] = statistics.median(scrapes)
    figures["scrape_bytes"] = len(generate_latest(metrics.registry))

    print(f"perf_counter() stamp at submit: {figures['stamp_ns']:.0f} ns a send")
    for size in BATCH_SIZES:
        ours = figures[f"count_committed_ns_batch_{size}"]
        theirs = figures[f"prometheus_objects_ns_batch_{size}"]
        print(f"batch of {size:>3}: count_committed {ours:.0f} ns a send; with "
              f"prometheus-client objects {theirs:.0f} ns")
    print(f"one scrape (generate_latest): {figures['scrape_us']:.0f} us, "
          f"{figures['scrape_bytes']:.0f} bytes")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(figures, out, indent=2)


if __name__ == "__main__":
    main()
