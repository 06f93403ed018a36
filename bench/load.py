"""Gateway load generator: a Herald server under a big-group workload, measured from outside.

Run by hand (`.venv/bin/python bench/load.py --help`); figures go in docs/benchmarks.md under
"Gateway (bench/load.py)". Traffic goes to 127.0.0.1 only, every run is bounded in messages and
time (--timeout), and the server is a real subprocess:

  1. a temporary data directory is seeded directly through the engine, before the server
     starts (LMDB allows it): one tenant, the users (one Argon2id hash, reused by every user),
     ONE group of M members, and a session token per user (stored as its SHA-256 in the
     sessions table, exactly as the server stores one at login);
  2. `python -m appliance.cli serve --data-dir D --listen 127.0.0.1:0` starts, with its
     RLIMIT_NOFILE soft limit raised to the hard limit (the bench raises its own too: 10,000
     idle connections need 10,000 descriptors on each side);
  3. worker processes (bench/load_worker.py, multiprocessing "spawn") open the connections
     with raw sockets and log in with `resume` (a token per user: no Argon2id per connection),
     then S senders send N messages of B bytes, W in flight each, the send time
     (CLOCK_MONOTONIC, shared by all processes) at the start of every body. Senders and the
     latency receivers live in their own "front" process (--sender-procs), the lean receivers
     in --procs others, so that no timestamp or reaction waits behind a busy poll batch.

The machine is shared: --wait-quiet S waits for other processes to calm down before each run,
and every sending run reports its "unattributed CPU" (CPU charged to neither the server nor
the bench while it measured: other jobs, and kernel threads such as the ext4 journal).
--server-root DIR runs the server from another checkout, for A/B comparisons of a change.

Scenarios (--scenario):
  group     (default) the PERFORMANCE.md peer workload: M=500 members, C=200 online, S=4
            senders, W=8, N=2,000 messages of 100 bytes. Reports accepted messages/s (acks),
            deliveries/s (pushes received by all C connections), end-to-end latency p50/p99
            (sampled receivers decode every push), ack latency, server CPU per delivery and per
            message, server peak RSS (VmHWM), and the receivers' own CPU per frame.
  history   p50/p99 round trip of a 50-message history page over the socket, one request at a
            time at random positions, after filling the group with --history-fill messages.
  catchup   a member is offline while 2,000 messages are sent to the group, then reconnects:
            time from its login reply to holding all 2,000 (one sync with limit 500, then the
            older pages with pipelined `history after` requests), repeated --catchup-reps times.
  idle      K idle logged-in connections (default 10,000): server RSS per connection.
  direct    D=1,000 senders, each in its own direct conversation with an online peer: accepted
            durable messages/s.

With --tls the server serves wss:// with a throwaway self-signed certificate made for the
run, and every connection of the bench does TLS (through memory BIOs in the workers).

With --url ws://127.0.0.1:PORT/ws --data-dir DIR the bench targets a running server instead
(seeding a fresh tenant into DIR, which must be that server's data directory; add --server-pid
for RSS and CPU). Progress goes to stderr, the table to stdout, everything to --json PATH.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))  # run as a script from anywhere, installed or not

from load_harness import progress, raise_fd_limit, wait_quiet  # noqa: E402
from load_scenarios import SCENARIOS, Context  # noqa: E402
from load_worker import measure_parse_cost  # noqa: E402

TARGETS = {
    "deliveries_per_s": 150_000,
    "e2e_p99_ms": 50.0,
    "history_p99_ms": 2.0,
    "catchup_s": 0.1,
    "idle_kib_per_conn": 20.0,
    "direct_accepted_per_s": 10_000,
}


COLUMNS: dict[str, list[tuple[str, str, str | None, bool]]] = {
    "group": [
        ("accepted_per_s", "accepted msgs/s", None, True),
        ("deliveries_per_s", "deliveries/s", "deliveries_per_s", True),
        ("e2e_p50_ms", "end-to-end p50 ms", None, False),
        ("e2e_p99_ms", "end-to-end p99 ms", "e2e_p99_ms", False),
        ("ack_p50_ms", "ack p50 ms", None, False),
        ("ack_p99_ms", "ack p99 ms", None, False),
        ("server_cpu_us_per_delivery", "server CPU us/delivery", None, False),
        ("server_cpu_us_per_message", "server CPU us/message", None, False),
        ("server_peak_rss_mib", "server peak RSS MiB", None, False),
        ("receiver_cpu_us_per_frame", "receiver CPU us/frame", None, False),
        ("receiver_user_us_per_frame", "  of which user space", None, False),
        ("frames_per_recv", "frames per recv()", None, True),
        ("unattributed_cpu_pct", "unattributed CPU % of a core", None, False),
    ],
    "direct": [
        ("accepted_per_s", "accepted msgs/s", "direct_accepted_per_s", True),
        ("ack_p50_ms", "ack p50 ms", None, False),
        ("ack_p99_ms", "ack p99 ms", None, False),
        ("deliveries_per_s", "deliveries/s", None, True),
        ("e2e_p50_ms", "end-to-end p50 ms", None, False),
        ("e2e_p99_ms", "end-to-end p99 ms", None, False),
        ("server_cpu_us_per_message", "server CPU us/message", None, False),
        ("server_peak_rss_mib", "server peak RSS MiB", None, False),
        ("receiver_cpu_us_per_frame", "receiver CPU us/frame", None, False),
        ("unattributed_cpu_pct", "unattributed CPU % of a core", None, False),
    ],
    "history": [
        ("history_p50_ms", "history page p50 ms", None, False),
        ("history_p99_ms", "history page p99 ms", "history_p99_ms", False),
        ("server_cpu_us_per_page", "server CPU us/page", None, False),
        ("page_bytes", "page bytes", None, False),
    ],
    "catchup": [
        ("catchup_s", "catch-up s (login -> all)", "catchup_s", False),
        ("catchup_with_connect_s", "incl. connect+resume s", None, False),
        ("requests", "requests (2 round trips)", None, False),
    ],
    "idle": [
        ("idle_kib_per_conn", "server KiB/connection", "idle_kib_per_conn", False),
        ("server_rss_mib", "server RSS MiB", None, False),
        ("connects_per_s", "connects+logins/s", None, True),
    ],
}


def machine() -> dict[str, Any]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in runs[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            values = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
            out[key] = round(statistics.median(values), 4)
    return out


def print_table(scenario: str, runs: list[dict[str, Any]], median: dict[str, Any]) -> None:
    print(f"\n{scenario}: median of {len(runs)} run(s)")
    print(f"| {'metric':<28} | {'median':>12} | {'runs':<32} | {'target':<12} |")
    print(f"|{'-' * 30}|{'-' * 14}|{'-' * 34}|{'-' * 14}|")
    for key, label, target_key, higher in COLUMNS[scenario]:
        if key not in median:
            continue
        target = ""
        if target_key:
            bound = TARGETS[target_key]
            ok = median[key] >= bound if higher else median[key] <= bound
            target = f"{'>=' if higher else '<='} {bound:,} {'ok' if ok else 'MISS'}"
        each = ", ".join(f"{r[key]:,}" for r in runs)
        print(f"| {label:<28} | {median[key]:>12,} | {each:<32} | {target:<12} |")


def run_scenario(args: argparse.Namespace) -> dict[str, Any]:
    runs = []
    for run in range(args.runs):
        progress(f"== {args.scenario} run {run + 1}/{args.runs}")
        if args.wait_quiet:
            progress(f"other processes: {wait_quiet(args.wait_quiet):.0f}% of a core")
        with tempfile.TemporaryDirectory(prefix="herald-load-") as tmp:
            data_dir = Path(tmp) / "data"
            if args.keep:
                data_dir = Path(tempfile.mkdtemp(prefix="herald-load-keep-"))
                progress(f"data kept in {data_dir}")
            result = SCENARIOS[args.scenario](Context(args, data_dir, run))
        for problem in result.get("problems", []):
            progress(f"PROBLEM: {problem}")
        runs.append(result)
        progress(f"run {run + 1}: " + ", ".join(
            f"{k}={v}" for k, v in result.items() if k in {c[0] for c in COLUMNS[args.scenario]}))
    median = medians(runs)
    print_table(args.scenario, runs, median)
    return {"runs": runs, "median": median}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Herald gateway load generator (loopback only).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--scenario", choices=sorted(SCENARIOS), default="group")
    p.add_argument("--members", "-M", type=int, default=500, help="group members")
    p.add_argument("--clients", "-C", type=int, default=200, help="members online")
    p.add_argument("--senders", "-S", type=int, default=4, help="senders among the online")
    p.add_argument("--window", "-W", type=int, default=8, help="messages in flight per sender")
    p.add_argument("--messages", "-N", type=int,
                   help="messages in the measured run (default: 2,000; direct: 20,000)")
    p.add_argument("--body-bytes", "-B", type=int, default=100, help="message body size (>= 19)")
    p.add_argument("--warmup", type=int,
                   help="messages sent before measuring (default: 200; direct: 2,000)")
    p.add_argument("--procs", type=int, default=2, help="worker processes for lean receivers")
    p.add_argument("--sender-procs", type=int, default=1,
                   help="worker processes for senders and latency receivers")
    p.add_argument("--latency-receivers", type=int, default=10,
                   help="receivers that decode every push for end-to-end latency")
    p.add_argument("--sample-every", type=int, default=50,
                   help="other receivers JSON-decode one push in this many")
    p.add_argument("--connect-window", type=int, default=200,
                   help="handshakes in progress at once per worker")
    p.add_argument("--auth", choices=("resume", "password"), default="resume",
                   help="log in with pre-issued session tokens, or with the password (Argon2id "
                        "per connection: slow on purpose)")
    p.add_argument("--direct-senders", type=int, default=1_000, help="direct scenario: senders")
    p.add_argument("--idle-connections", "-K", type=int, default=10_000,
                   help="idle scenario: connections")
    p.add_argument("--idle-hold-s", type=float, default=3.0,
                   help="idle scenario: seconds to hold before reading RSS")
    p.add_argument("--history-fill", type=int, default=10_000,
                   help="history scenario: messages in the conversation")
    p.add_argument("--history-requests", type=int, default=2_000)
    p.add_argument("--history-warmup", type=int, default=100)
    p.add_argument("--history-limit", type=int, default=50, help="messages per history page")
    p.add_argument("--catchup-messages", type=int, default=2_000)
    p.add_argument("--catchup-reps", type=int, default=5)
    p.add_argument("--runs", type=int, default=1, help="repeat the whole scenario; medians")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per phase, at most")
    p.add_argument("--port", type=int, default=0, help="server port (0: any free one)")
    p.add_argument("--server-root", type=Path, default=BENCH_DIR.parent,
                   help="run the server from this checkout (A/B comparisons of branches)")
    p.add_argument("--tls", action="store_true",
                   help="serve wss:// with a throwaway self-signed certificate; every bench "
                        "connection speaks TLS (and verifies that certificate)")
    p.add_argument("--url", help="target a running server (needs --data-dir)")
    p.add_argument("--ca", metavar="FILE",
                   help="with --url wss://...: the CA file to verify the server against")
    p.add_argument("--data-dir", type=Path, help="with --url: that server's data directory")
    p.add_argument("--server-pid", type=int, help="with --url: its pid, for RSS and CPU")
    p.add_argument("--py-spy", metavar="PATH",
                   help="record the server with py-spy during the first measured run "
                        "(.svg flame graph, .json speedscope, else raw collapsed stacks)")
    p.add_argument("--receiver-cost", action="store_true",
                   help="only measure the lean receiver's parse cost per frame, in-process")
    p.add_argument("--wait-quiet", type=float, default=0, metavar="S",
                   help="before each run, wait up to S seconds for other processes to use "
                        "under 25%% of a core (a shared machine)")
    p.add_argument("--keep", action="store_true", help="keep the data directory")
    p.add_argument("--json", type=Path, metavar="PATH", help="write every figure here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.url and not args.data_dir:
        raise SystemExit("--url needs --data-dir (the server's data directory, to seed users)")
    if args.body_bytes < 19:
        raise SystemExit("--body-bytes must be at least 19 (the send time is in the body)")
    direct = args.scenario == "direct"
    if args.messages is None:
        args.messages = 20_000 if direct else 2_000
    if args.warmup is None:
        args.warmup = 2_000 if direct else 200
    limit = raise_fd_limit()
    info = machine()
    progress(f"{info['nproc']} x {info['cpu']}, Python {info['python']}, fd limit {limit:,}")
    parse_us = measure_parse_cost(args.body_bytes)
    progress(f"lean receiver, parse only (in-process, no syscalls): {parse_us:.2f} us/frame")
    if args.receiver_cost:
        return 0
    outcome = run_scenario(args)
    print(f"\nreceiver parse cost (in-process, no syscalls): {parse_us:.2f} us/frame")
    if args.json:
        record = {"scenario": args.scenario, "argv": sys.argv, "machine": info,
                  "targets": TARGETS, "receiver_parse_us_per_frame": round(parse_us, 3),
                  **outcome}
        args.json.write_text(json.dumps(record, indent=2) + "\n")
        progress(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
