"""The load generator's scenarios: each seeds a world, starts a server, measures, stops it.

Every scenario takes a `Context` and returns a flat dict of figures (plus "problems": anything
that went wrong, e.g. a receiver that did not get every push). See bench/load.py for what each
one measures.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from load_harness import (
    Pool,
    ServerProcess,
    Spy,
    World,
    assign,
    auth_of,
    busy_cpu_s,
    connect_all,
    percentile,
    progress,
    seed,
    self_cpu_s,
    spread,
)
from load_worker import ConnSpec
from rawws import BlockingClient, send_frame_bytes

__all__ = ["SCENARIOS", "Context"]


@dataclass
class Context:
    args: argparse.Namespace
    data_dir: Path
    run: int


def open_server(ctx: Context) -> ServerProcess:
    args = ctx.args
    if args.url:
        return ServerProcess.external(args.url, args.server_pid, args.ca)
    progress("starting the server" + (" (wss://, a throwaway self-signed certificate)"
                                      if args.tls else ""))
    server = ServerProcess(ctx.data_dir, args.port, args.server_root, tls=args.tls)
    progress(f"server pid {server.pid} listening on 127.0.0.1:{server.port}")
    return server


def seed_for(ctx: Context, **kw: Any) -> World:
    args = ctx.args
    name = "bench" if not args.url else f"bench{int(time.time())}r{ctx.run}"
    started = time.monotonic()
    world = seed(args.data_dir if args.url else ctx.data_dir, tenant_name=name,
                 body_bytes=args.body_bytes, **kw)
    progress(f"seeded {len(world.users):,} users, group of {kw.get('group_members', 0):,}, "
             f"{len(world.directs):,} direct conversations, {kw.get('fill', 0):,} messages "
             f"in {time.monotonic() - started:.1f} s")
    return world


def run_messages(
    ctx: Context, server: ServerProcess, assignment: list[list[ConnSpec]], senders: int,
    what: str,
) -> dict[str, Any]:
    """Connect everything, warm up, then the measured phase; the figures of a sending run."""
    args = ctx.args
    pool = Pool(server, assignment, args)
    try:
        connections = sum(pool.sizes)
        connect_s = connect_all(pool, pool.sizes, what, args.timeout)
        if args.warmup:
            progress(f"warm-up: {args.warmup:,} messages")
            pool.go(args.warmup, senders, args.timeout)
        progress(f"measuring: {args.messages:,} messages of {args.body_bytes} B from {senders:,} "
                 f"senders, {args.window} in flight each, {connections:,} connections")
        spy = Spy(args.py_spy if ctx.run == 0 else None, server.pid)
        cpu0, busy0, self0, wall0 = server.cpu_s(), busy_cpu_s(), self_cpu_s(), time.monotonic()
        reports = pool.go(args.messages, senders, args.timeout)
        cpu1, busy1, self1, wall1 = server.cpu_s(), busy_cpu_s(), self_cpu_s(), time.monotonic()
        spy.stop()
        workers_cpu = sum(r["cpu_user_s"] + r["cpu_sys_s"] for r in reports)
        # CPU charged to neither the server nor the bench: other users' processes (this
        # machine is shared), but also kernel threads working for us (the ext4 journal
        # behind every fsync, softirqs): a noise gauge, not a pure one.
        others = (busy1 - busy0) - (cpu1 - cpu0) - workers_cpu - (self1 - self0)
        unattributed = max(0.0, others) / (wall1 - wall0)
        status = server.status()
    finally:
        pool.close()
    result = summarize_messages(args, reports, cpu1 - cpu0, status, connections, connect_s)
    result["unattributed_cpu_pct"] = round(100 * unattributed)
    return result


def summarize_messages(
    args: argparse.Namespace, reports: list[dict[str, Any]], server_cpu_s: float,
    status: dict[str, int], connections: int, connect_s: float,
) -> dict[str, Any]:
    t_start = min(r["t_start"] for r in reports if r["t_start"] is not None)
    t_last_msg = max(r["t_last_msg"] for r in reports)
    t_last_ack = max(r["t_last_ack"] for r in reports)
    deliveries = sum(r["msgs"] for r in reports)
    acked = sum(r["acked"] for r in reports)
    errors = sum(r["error_count"] for r in reports)
    latencies = [x / 1e6 for r in reports for x in r["latencies_ns"]]
    acks = [x / 1e6 for r in reports for x in r["ack_latencies_ns"]]
    frames = deliveries + acked + sum(r["other_frames"] for r in reports)
    worker_cpu = sum(r["cpu_user_s"] + r["cpu_sys_s"] for r in reports)
    worker_user = sum(r["cpu_user_s"] for r in reports)
    recvs = sum(r["recvs"] for r in reports)
    problems = [f"worker {r['worker']}: {k}={r[k]}" for r in reports
                for k in ("shortfall", "unacked", "lost_count", "samples_bad_count", "error_count")
                if r[k]]
    problems += [f"lost: {x}" for r in reports for x in r["lost"]]
    problems += [f"error: {x}" for r in reports for x in r["errors"]]
    problems += [f"bad sample: {x}" for r in reports for x in r["samples_bad"]]
    deliver_s = max(1e-9, (t_last_msg - t_start) / 1e9)
    accept_s = max(1e-9, (t_last_ack - t_start) / 1e9)
    return {
        "connections": connections,
        "connect_s": round(connect_s, 2),
        "messages": args.messages,
        "accepted": acked - errors,
        "errors": errors,
        "deliveries": deliveries,
        "accepted_per_s": round((acked - errors) / accept_s),
        "deliveries_per_s": round(deliveries / deliver_s),
        "duration_s": round(deliver_s, 3),
        "e2e_p50_ms": round(percentile(latencies, 0.50), 2),
        "e2e_p99_ms": round(percentile(latencies, 0.99), 2),
        "e2e_max_ms": round(max(latencies, default=float("nan")), 2),
        "latency_samples": len(latencies),
        "ack_p50_ms": round(percentile(acks, 0.50), 2),
        "ack_p99_ms": round(percentile(acks, 0.99), 2),
        "server_cpu_s": round(server_cpu_s, 2),
        "server_cpu_us_per_delivery": round(server_cpu_s * 1e6 / max(1, deliveries), 2),
        "server_cpu_us_per_message": round(server_cpu_s * 1e6 / max(1, acked), 1),
        "server_peak_rss_mib": round(status.get("VmHWM", 0) / 1024, 1),
        "receiver_cpu_us_per_frame": round(worker_cpu * 1e6 / max(1, frames), 2),
        "receiver_cpu_s": round(worker_cpu, 2),
        "receiver_user_us_per_frame": round(worker_user * 1e6 / max(1, frames), 2),
        "frames_per_recv": round(frames / max(1, recvs), 1),
        "samples_checked": sum(r["samples_ok"] for r in reports),
        "problems": problems,
    }


def scenario_group(ctx: Context) -> dict[str, Any]:
    args = ctx.args
    if not args.senders <= args.clients <= args.members:
        raise SystemExit("need senders <= clients <= members")
    world = seed_for(ctx, users=args.members, group_members=args.members)
    server = open_server(ctx)
    try:
        receivers = range(args.senders, args.clients)
        latency = {args.senders + i for i in spread(len(receivers), args.latency_receivers)}
        specs: list[ConnSpec] = []
        for i in range(args.clients):
            role = "send" if i < args.senders else "lat" if i in latency else "recv"
            specs.append((auth_of(world, i, args), role, i if i < args.senders else -1, "all",
                          world.group))
        result = run_messages(ctx, server, assign(specs, args), args.senders, "group members")
        result["expected_deliveries"] = args.messages * (args.clients - 1)
    finally:
        server.stop()
    return result


def scenario_direct(ctx: Context) -> dict[str, Any]:
    args = ctx.args
    pairs = args.direct_senders
    world = seed_for(ctx, users=2 * pairs, direct_pairs=pairs)
    server = open_server(ctx)
    try:
        latency = spread(pairs, args.latency_receivers)
        specs: list[ConnSpec] = []
        for i in range(pairs):
            conv = world.directs[i]
            specs.append((auth_of(world, i, args), "send", i, "none", conv))
            role = "lat" if i in latency else "recv"
            specs.append((auth_of(world, pairs + i, args), role, -1, ("peer", i), conv))
        result = run_messages(ctx, server, assign(specs, args), pairs, "senders and peers")
        result["expected_deliveries"] = args.messages
    finally:
        server.stop()
    return result


def scenario_idle(ctx: Context) -> dict[str, Any]:
    args = ctx.args
    k = args.idle_connections
    world = seed_for(ctx, users=k)
    server = open_server(ctx)
    try:
        specs: list[ConnSpec] = [(auth_of(world, i, args), "recv", -1, "none", 0)
                                 for i in range(k)]
        assignment = [specs[w:: args.procs] for w in range(args.procs)]
        time.sleep(0.5)
        rss_start = server.status().get("VmRSS", 0)
        pool = Pool(server, assignment, args)
        try:
            warm = min(k // 10, 500)
            warm_counts = [len(range(w, warm, args.procs)) for w in range(args.procs)]
            connect_all(pool, warm_counts, "warm-up connections", args.timeout)
            time.sleep(1.0)
            rss_warm = server.status().get("VmRSS", 0)
            rest = [size - warm for size, warm in zip(pool.sizes, warm_counts, strict=True)]
            connect_s = connect_all(pool, rest, "idle connections", args.timeout)
            progress(f"holding {k:,} idle connections for {args.idle_hold_s:.0f} s")
            time.sleep(args.idle_hold_s)
            status = server.status()
        finally:
            pool.close()
    finally:
        server.stop()
    per_conn = (status.get("VmRSS", 0) - rss_warm) / max(1, k - warm)
    return {
        "connections": k,
        "connect_s": round(connect_s, 2),
        "connects_per_s": round((k - warm) / connect_s),
        "server_rss_start_mib": round(rss_start / 1024, 1),
        "server_rss_warm_mib": round(rss_warm / 1024, 1),
        "server_rss_mib": round(status.get("VmRSS", 0) / 1024, 1),
        "server_peak_rss_mib": round(status.get("VmHWM", 0) / 1024, 1),
        "idle_kib_per_conn": round(per_conn, 2),
        "idle_kib_per_conn_overall": round((status.get("VmRSS", 0) - rss_start) / k, 2),
        "problems": [],
    }


def scenario_history(ctx: Context) -> dict[str, Any]:
    args = ctx.args
    world = seed_for(ctx, users=args.members, group_members=args.members, fill=args.history_fill)
    server = open_server(ctx)
    rng = random.Random(ctx.run)
    limit = args.history_limit
    try:
        client = BlockingClient(server.host, server.port, ssl_context=server.client_context())
        client.resume(world.tokens[1])
        head = client.request({"op": "history", "conv": world.group, "limit": 1})["head"]
        rtts: list[float] = []
        problems: list[str] = []
        cpu0 = 0.0
        for i in range(args.history_warmup + args.history_requests):
            if i == args.history_warmup:
                cpu0 = server.cpu_s()
            before = rng.randint(limit + 1, head + 1)
            rid = client.next_id()
            frame = {"op": "history", "id": rid, "conv": world.group, "before": before,
                     "limit": limit}
            started = time.perf_counter_ns()
            client.send(frame)
            payload = client.read_text()
            elapsed = time.perf_counter_ns() - started
            reply = json.loads(payload)
            if reply.get("id") != rid or len(reply["data"]["msgs"]) != limit:
                problems.append(f"bad history reply {payload[:200]!r}")
            if i >= args.history_warmup:
                rtts.append(elapsed / 1e6)
        cpu = server.cpu_s() - cpu0
        client.close()
        status = server.status()
    finally:
        server.stop()
    return {
        "messages_in_conversation": head,
        "requests": len(rtts),
        "page_messages": limit,
        "page_bytes": len(payload),
        "history_p50_ms": round(percentile(rtts, 0.50), 3),
        "history_p99_ms": round(percentile(rtts, 0.99), 3),
        "history_max_ms": round(max(rtts), 3),
        "server_cpu_us_per_page": round(cpu * 1e6 / len(rtts), 1),
        "server_peak_rss_mib": round(status.get("VmHWM", 0) / 1024, 1),
        "problems": problems[:5],
    }


def send_burst(client: BlockingClient, conv: int, n: int, window: int, body_bytes: int,
               tag: str) -> None:
    """Send n messages with `window` in flight; return once all are acked."""
    fill = "." * max(0, body_bytes - 19)
    sent = acked = 0
    outstanding: set[int] = set()

    def send_one() -> None:
        nonlocal sent
        rid = client.next_id()
        outstanding.add(rid)
        client.send({"op": "send", "id": rid, "conv": conv, "cmid": f"{tag}-{rid}",
                     "body": f"{time.monotonic_ns():019d}{fill}"})
        sent += 1

    while sent < min(window, n):
        send_one()
    while acked < n:
        reply = client.read_reply()
        if reply.get("type") != "reply" or reply.get("id") not in outstanding:
            raise RuntimeError(f"send failed: {reply}")
        outstanding.discard(reply["id"])
        acked += 1
        if sent < n:
            send_one()


def scenario_catchup(ctx: Context) -> dict[str, Any]:
    args = ctx.args
    world = seed_for(ctx, users=args.members, group_members=args.members)
    server = open_server(ctx)
    page = 500  # the engine's largest page (Limits.max_page_messages)
    conv = world.group
    try:
        sender = BlockingClient(server.host, server.port, ssl_context=server.client_context())
        sender.resume(world.tokens[0])
        member = BlockingClient(server.host, server.port, ssl_context=server.client_context())
        member.resume(world.tokens[1])
        known = member.request({"op": "history", "conv": conv, "limit": 1})["head"]
        member.close()
        from_login: list[float] = []
        from_connect: list[float] = []
        problems: list[str] = []
        for rep in range(args.catchup_reps):
            progress(f"catch-up {rep + 1}/{args.catchup_reps}: sending {args.catchup_messages:,} "
                     f"while the member is offline")
            send_burst(sender, conv, args.catchup_messages, args.window, args.body_bytes,
                       f"c{ctx.run}r{rep}")
            time.sleep(0.2)
            t0 = time.perf_counter()
            member = BlockingClient(server.host, server.port, ssl_context=server.client_context())
            member.resume(world.tokens[1])
            t_login = time.perf_counter()
            synced = member.request({"op": "sync", "cursors": {str(conv): known}, "limit": page})
            state = next(c for c in synced["convs"] if c["conv"] == conv)
            head = state["head"]
            seqs = [m["seq"] for m in state["msgs"]]
            lowest = seqs[0] if seqs else head + 1
            ids = []
            frames = b""
            for after in range(known, lowest - 1, page):
                rid = member.next_id()
                ids.append(rid)
                frames += send_frame_bytes({"op": "history", "id": rid, "conv": conv,
                                            "after": after, "limit": min(page, lowest - 1 - after)})
            member.send_raw(frames)
            for rid in ids:
                reply = member.read_reply()
                if reply.get("id") != rid:
                    raise RuntimeError(f"history failed: {reply}")
                seqs += [m["seq"] for m in reply["data"]["msgs"]]
            t_end = time.perf_counter()
            member.close()
            if sorted(seqs) != list(range(known + 1, head + 1)):
                problems.append(f"rep {rep}: got {len(seqs)} messages, wanted {head - known}")
            if head - known != args.catchup_messages:
                problems.append(f"rep {rep}: head moved by {head - known}")
            from_login.append(t_end - t_login)
            from_connect.append(t_end - t0)
            known = head
        sender.close()
        status = server.status()
    finally:
        server.stop()
    return {
        "missed_messages": args.catchup_messages,
        "reps": args.catchup_reps,
        "requests": 1 + len(ids),
        "catchup_s": round(statistics.median(from_login), 4),
        "catchup_max_s": round(max(from_login), 4),
        "catchup_with_connect_s": round(statistics.median(from_connect), 4),
        "server_peak_rss_mib": round(status.get("VmHWM", 0) / 1024, 1),
        "problems": problems,
    }


SCENARIOS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "group": scenario_group,
    "history": scenario_history,
    "catchup": scenario_catchup,
    "idle": scenario_idle,
    "direct": scenario_direct,
}
