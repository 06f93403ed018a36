"""The cost of sealing as a client sees it: 50-message `history` pages over WebSocket from a
plain and a sealed server, side by side, with the engine's message cache off (every page opens
its blocks: the cold case), or on and warm (`--message-cache-bytes`).

`bench/engine_append.py --sealer both` measures the same pages inside the engine; this measures
the request a user waits for. Both stores get engine_sealing's world and fill (one tenant, 200
users, 1,000 groups, 220 messages in each of the sync user's 200 groups). Each store is served
by `appliance.gateway.server.Server` in a child process of its own (`herald serve` serves
only sealed stores, so the plain side cannot be a `herald serve`). One
client in this process, logged in to both as the sync user, sends the same request to each in
turn, request by request (who goes first alternates), one at a time: the latest page and a page
before a random seq of a random group. Reported per side and repetition: the round trip's median
and p99 (what bench/load.py --scenario history reports for one server), and the server's CPU
time per request (all its threads, from /proc/PID/task/*/schedstat, over the repetition: what
serving one page costs the server, without the client's share).

    .venv/bin/python bench/page_sealing_wire.py [--reps 5] [--requests 1000] [--json PATH]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import msgspec
import trio
from engine_append import (
    DEFAULT_CORPUS_MODULE,
    MAP_SIZE_BYTES,
    PAGE_MESSAGES,
    SYNC_CONVERSATIONS,
    TENANT_NAME,
    build_world,
    load_corpus_module,
    machine,
    percentile,
    progress,
    write_json_report,
)
from engine_sealing import TARGET_PAGE_COST, fill_both
from trio_websocket import WebSocketConnection, open_websocket_url

from engine import Engine, Keyring

BENCH_PASSWORD = "bench-password"  # build_world's, for every user


class _RecordingKeyring(Keyring):
    """A keyring that remembers the DEKs installed in it: the server child installs the same."""

    def __init__(self) -> None:
        super().__init__()
        self.deks: dict[tuple[int, int], bytes] = {}

    def install(self, tenant: int, epoch: int, dek: bytes,
                expires_at: float | None = None) -> None:
        self.deks[tenant, epoch] = dek
        super().install(tenant, epoch, dek, expires_at)


def _serve(store: str, deks: dict[tuple[int, int], bytes] | None, cache_bytes: int,
           report: Connection) -> None:
    """A child process: serve `store` (sealed when `deks` are given) on 127.0.0.1 until its
    stdin-less parent sends anything on `report`."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from appliance.config import Config
    from appliance.gateway.server import Server

    keyring = None
    if deks is not None:
        keyring = Keyring()
        for (tenant, epoch), dek in deks.items():
            keyring.install(tenant, epoch, dek)
    engine = Engine(Path(store), map_size=MAP_SIZE_BYTES, keyring=keyring,
                    message_cache_bytes=cache_bytes)
    config = Config(data_dir=Path(store).parent, listen_host="127.0.0.1", listen_port=0,
                    map_size_bytes=MAP_SIZE_BYTES, message_cache_bytes=cache_bytes)
    server = Server(config, engine)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server.run)
            report.send(port)
            await trio.to_thread.run_sync(report.recv)
            server.request_stop()

    try:
        trio.run(run)
    finally:
        engine.close()


def _cpu_s(pid: int) -> float:
    """CPU time of every thread of `pid` so far (schedstat: nanoseconds, where /proc/PID/stat
    counts 10 ms ticks, too coarse for a few hundred requests)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return total / 1e9


async def _request(ws: WebSocketConnection, frame: dict[str, Any]) -> dict[str, Any]:
    await ws.send_message(msgspec.json.encode(frame).decode())
    reply: dict[str, Any] = msgspec.json.decode(await ws.get_message())
    if reply.get("type") != "reply" or reply.get("id") != frame["id"]:
        raise SystemExit(f"the server refused {frame['op']}: {reply}")
    return reply


async def _measure(ports: dict[str, int], pids: dict[str, int], convs: list[int],
                   heads: dict[int, int], args: argparse.Namespace) -> list[dict[str, Any]]:
    rng = random.Random(args.seed + 2)
    kinds = ("latest 50", "older 50")
    round_trips: dict[tuple[str, str], list[float]] = {
        (k, s): [] for k in kinds for s in ports}
    round_trips_p99: dict[tuple[str, str], list[float]] = {
        (k, s): [] for k in kinds for s in ports}
    cpu_per_request: dict[tuple[str, str], list[float]] = {
        (k, s): [] for k in kinds for s in ports}
    async with open_websocket_url(f"ws://127.0.0.1:{ports['plain']}/ws") as plain_ws, \
            open_websocket_url(f"ws://127.0.0.1:{ports['sealed']}/ws") as sealed_ws:
        sockets = {"plain": plain_ws, "sealed": sealed_ws}
        for ws in sockets.values():
            await _request(ws, {"op": "login", "id": 1, "tenant": TENANT_NAME,
                                "login": "user0000", "password": BENCH_PASSWORD})
        request_id = 1
        if args.message_cache_bytes:
            for side, ws in sockets.items():
                for conv in convs:  # every message once: later pages come from the cache
                    for before in range(heads[conv] + 1, 1, -PAGE_MESSAGES):
                        request_id += 1
                        await _request(ws, {"op": "history", "id": request_id, "conv": conv,
                                            "before": before, "limit": PAGE_MESSAGES})
                progress(f"{side} server: every filled conversation read once")
        for rep in range(args.reps):
            picks = [rng.choice(convs) for _ in range(args.requests)]
            befores = [rng.randint(PAGE_MESSAGES + 1, heads[c]) for c in picks]
            for kind in kinds:
                times: dict[str, list[float]] = {side: [] for side in sockets}
                cpu_before = {side: _cpu_s(pid) for side, pid in pids.items()}
                for i, conv in enumerate(picks):
                    request_id += 1
                    frame: dict[str, Any] = {"op": "history", "id": request_id, "conv": conv,
                                             "limit": PAGE_MESSAGES}
                    if kind == "older 50":
                        frame["before"] = befores[i]
                    order = list(sockets.items())
                    for side, ws in (order if (i + rep) % 2 else order[::-1]):
                        t0 = time.perf_counter_ns()
                        reply = await _request(ws, frame)
                        times[side].append((time.perf_counter_ns() - t0) / 1e3)
                        if len(reply["data"]["msgs"]) != PAGE_MESSAGES:
                            raise SystemExit(f"a page of {len(reply['data']['messages'])} "
                                             f"messages from the {side} server")
                for side, pid in pids.items():
                    cpu_per_request[kind, side].append(
                        (_cpu_s(pid) - cpu_before[side]) / len(picks) * 1e6)
                    round_trips[kind, side].append(statistics.median(times[side]))
                    round_trips_p99[kind, side].append(percentile(times[side], 0.99))
            progress(f"rep {rep + 1}/{args.reps}: latest 50 round trip plain "
                     f"{round_trips['latest 50', 'plain'][-1]:.0f} us, sealed "
                     f"{round_trips['latest 50', 'sealed'][-1]:.0f} us; server CPU per page "
                     f"plain {cpu_per_request['latest 50', 'plain'][-1]:.0f} us, sealed "
                     f"{cpu_per_request['latest 50', 'sealed'][-1]:.0f} us")
    out = []
    for kind in kinds:
        row: dict[str, Any] = {"read": f"history {kind}"}
        for name, figures in (("round_trip", round_trips), ("round_trip_p99", round_trips_p99),
                              ("server_cpu", cpu_per_request)):
            plain, sealed = figures[kind, "plain"], figures[kind, "sealed"]
            ratios = [s / p for p, s in zip(plain, sealed, strict=True)]
            row[name] = {
                "plain_median_us": round(statistics.median(plain), 1),
                "sealed_median_us": round(statistics.median(sealed), 1),
                "cost": round(statistics.median(ratios) - 1, 3),
                "plain_runs_us": [round(x, 1) for x in plain],
                "sealed_runs_us": [round(x, 1) for x in sealed],
            }
        out.append(row)
    return out


def _render(rows: list[dict[str, Any]], cache: str) -> str:
    lines = [f"| page (cache {cache}) | measure | plain | sealed | cost of sealing |",
             "|---|---|---:|---:|---:|"]
    for row in rows:
        for name, label in (("round_trip", "round trip, median"),
                            ("round_trip_p99", "round trip, p99"),
                            ("server_cpu", "server CPU per request")):
            f = row[name]
            lines.append(f"| {row['read']} | {label} | {f['plain_median_us']:.1f} µs "
                         f"| {f['sealed_median_us']:.1f} µs | {f['cost']:+.1%} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--reps", type=int, default=5, help="repetitions (default 5)")
    parser.add_argument("--requests", type=int, default=1_000,
                        help="pages of each kind per repetition, from each server (default 1000)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the workload's choices")
    parser.add_argument("--corpus-module", type=Path, default=DEFAULT_CORPUS_MODULE,
                        help=f"path of chat_corpus.py (default {DEFAULT_CORPUS_MODULE})")
    parser.add_argument("--dir", type=Path, default=None,
                        help="parent of the temporary store directories (default: system temp)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    parser.add_argument("--message-cache-bytes", type=int, default=0,
                        help="the servers' cache of opened messages (default 0: off, every "
                        "page opens its blocks); with a size, every filled conversation is "
                        "read once through each server first, so pages come from the cache")
    parser.add_argument("--both-plain", action="store_true",
                        help="a check of the setup: the 'sealed' side is a second plain store "
                        "and server, so the cost column should read 0%% within noise")
    args = parser.parse_args(argv)
    if not 1 <= args.reps <= 50 or not 10 <= args.requests <= 100_000:
        parser.error("--reps must be 1 to 50 and --requests 10 to 100,000")
    if args.message_cache_bytes < 0:
        parser.error("--message-cache-bytes cannot be negative (0 turns the cache off)")
    corpus = load_corpus_module(args.corpus_module)
    started = time.perf_counter()
    load_at_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="herald-bench-wire-", dir=args.dir) as tmp:
        stores = {"plain": Path(tmp) / "plain" / "store", "sealed": Path(tmp) / "sealed" / "store"}
        keyring = None if args.both_plain else _RecordingKeyring()
        plain = Engine(stores["plain"], map_size=MAP_SIZE_BYTES, message_cache_bytes=0)
        sealed = Engine(stores["sealed"], map_size=MAP_SIZE_BYTES, keyring=keyring,
                        message_cache_bytes=0)
        try:
            world = build_world(plain, corpus, random.Random(args.seed))
            build_world(sealed, corpus, random.Random(args.seed))
            fill_both(plain, sealed, world, random.Random(args.seed + 1))
            convs = world.conv_ids[:SYNC_CONVERSATIONS]
            heads = {c.conv: c.head for c in plain.conversations(world.tenant, world.sync_user)}
        finally:
            plain.close()
            sealed.close()
        spawn = multiprocessing.get_context("spawn")
        children: dict[str, tuple[Any, Connection]] = {}
        ports: dict[str, int] = {}
        try:
            for side, deks in (("plain", None),
                               ("sealed", None if keyring is None else keyring.deks)):
                ours, theirs = spawn.Pipe()
                child = spawn.Process(
                    target=_serve, daemon=True,
                    args=(str(stores[side]), deks, args.message_cache_bytes, theirs))
                child.start()
                children[side] = (child, ours)
                if not ours.poll(60):
                    raise SystemExit(f"the {side} server did not start")
                ports[side] = ours.recv()
            progress(f"servers up: plain on port {ports['plain']}, sealed on {ports['sealed']}")
            pids = {side: child.pid for side, (child, _) in children.items()}
            rows = trio.run(_measure, ports, pids, convs, heads, args)
        finally:
            for child, pipe in children.values():
                pipe.send("stop")
                child.join(30)
                if child.exitcode is None:
                    child.kill()
    elapsed = time.perf_counter() - started
    if args.both_plain:
        print("\n--both-plain: the 'sealed' column is a second PLAIN server (a setup check)")
    print("\n" + _render(rows, "on, warm" if args.message_cache_bytes else "off"))
    print(f"\n{args.reps} repetitions x {args.requests} pages of each kind from each server, "
          f"medians; target: sealing adds <= {TARGET_PAGE_COST:.0%}; run took {elapsed:.0f} s")
    if args.json:
        write_json_report(args.json, {
            "machine": {**machine(), "loadavg_at_start": load_at_start},
            "command": f"python bench/page_sealing_wire.py --reps {args.reps} "
                       f"--requests {args.requests} "
                       f"--message-cache-bytes {args.message_cache_bytes}"
                       + (" --both-plain" if args.both_plain else ""),
            "seed": args.seed, "pages": rows, "elapsed_s": round(elapsed, 1),
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())
