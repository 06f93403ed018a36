"""The load generator's harness: the seeded world, the server subprocess, the worker pool.

Nothing here measures anything by itself; `load_scenarios` composes these parts. Accounting
helpers read /proc (server CPU and RSS, the whole machine's busy time: this machine is shared,
so every measured phase also records what other processes used meanwhile).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import resource
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection as Pipe
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from load_worker import ConnSpec, worker_main

__all__ = [
    "PASSWORD",
    "Pool",
    "ServerProcess",
    "Spy",
    "World",
    "assign",
    "auth_of",
    "busy_cpu_s",
    "connect_all",
    "percentile",
    "progress",
    "raise_fd_limit",
    "seed",
    "self_cpu_s",
    "spread",
    "wait_quiet",
]

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
PASSWORD = "bench-password-1"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(samples: Sequence[float], q: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def busy_cpu_s() -> float:
    """CPU seconds every process on the machine has used (from /proc/stat)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def wait_quiet(max_wait_s: float, threshold_pct: float = 25.0) -> float:
    """Wait (at most `max_wait_s`) until the rest of the machine uses under `threshold_pct` of
    one core over 2 s; returns the last reading. This machine is shared."""
    deadline = time.monotonic() + max_wait_s
    while True:
        busy0, self0, wall0 = busy_cpu_s(), self_cpu_s(), time.monotonic()
        time.sleep(2.0)
        wall = time.monotonic() - wall0
        pct = 100 * max(0.0, busy_cpu_s() - busy0 - (self_cpu_s() - self0)) / wall
        if pct < threshold_pct or time.monotonic() >= deadline:
            return pct
        progress(f"waiting for a quiet machine: other processes use {pct:.0f}% of a core")


def self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# -- the world: seeded through the engine before the server starts ------------------------------


@dataclass
class World:
    data_dir: Path
    tenant_name: str
    tenant: int
    users: list[int]
    tokens: list[str]
    group: int = 0
    directs: list[int] = field(default_factory=list)  # conv of (users[i], users[D + i])


def seed(
    data_dir: Path, *, users: int, group_members: int = 0, direct_pairs: int = 0,
    fill: int = 0, body_bytes: int = 100, tenant_name: str = "bench",
) -> World:
    """Create the tenant, users, the group (the first `group_members` users), direct
    conversations and `fill` group messages; issue a session token per user.

    The store is sealed, as `herald serve` serves no other, with the demo's keys (a SoftHSM2
    token as the escrow, appliance/cli/demo_keys.py). The work runs in a child process: SoftHSM2
    reads its configuration once per process, and every run has a token of its own."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        world: World = pool.apply(_seed_sealed, (data_dir,), {
            "users": users, "group_members": group_members, "direct_pairs": direct_pairs,
            "fill": fill, "body_bytes": body_bytes, "tenant_name": tenant_name})
    return world


def _seed_sealed(
    data_dir: Path, *, users: int, group_members: int, direct_pairs: int, fill: int,
    body_bytes: int, tenant_name: str,
) -> World:
    from appliance.cli.demo_keys import prepare_demo_keys
    from appliance.cli.unlock import open_engine
    from appliance.config import Config
    from appliance.gateway.tokens import new_token
    from engine import (
        ActorKind,
        Append,
        AuditActor,
        CreateGroup,
        CreateSession,
        CreateTenant,
        CreateUser,
        OpenDirect,
        hash_password,
    )

    data_dir.mkdir(parents=True, exist_ok=True)
    config, _ = prepare_demo_keys(Config(data_dir=data_dir))
    now_ms = time.time_ns() // 1_000_000
    keyed = open_engine(config)
    engine = keyed.engine
    try:
        phc = hash_password(PASSWORD)  # once: Argon2id is slow on purpose
        tenant = engine.apply(CreateTenant(name=tenant_name), now_ms).tenant  # type: ignore[union-attr]
        assert keyed.manager is not None
        # Its first key epoch, as `herald tenant add` does (and audited as it is).
        keyed.manager.rotate(tenant, actor=AuditActor(kind=ActorKind.SYSTEM, name="bench"))
        ids: list[int] = []
        for first in range(0, users, 2_000):
            ops = [CreateUser(tenant=tenant, login=f"u{i:06d}", display_name=f"User {i}",
                              password_hash=phc) for i in range(first, min(users, first + 2_000))]
            ids += [r.user for r in engine.apply_batch(ops, now_ms)]  # type: ignore[union-attr]
        world = World(data_dir, tenant_name, tenant, ids, [])
        if group_members:
            op = CreateGroup(tenant=tenant, creator=ids[0], title="bench group",
                             members=tuple(ids[1:group_members]))
            world.group = engine.apply(op, now_ms).conv  # type: ignore[union-attr]
        if direct_pairs:
            ops = [OpenDirect(tenant=tenant, user=ids[i], peer=ids[direct_pairs + i])
                   for i in range(direct_pairs)]
            world.directs = [r.conv for r in engine.apply_batch(ops, now_ms)]  # type: ignore[union-attr]
        filler = "." * max(0, body_bytes - 19)
        for first in range(0, fill, 1_000):
            ops = [Append(tenant=tenant, conv=world.group, sender=ids[i % group_members],
                          client_msg_id=f"fill{i}", body=f"{0:019d}{filler}")
                   for i in range(first, min(fill, first + 1_000))]
            engine.apply_batch(ops, now_ms)
        # A stored session per user, as a login would create (only its hash is stored).
        expires_ms = now_ms + config.gateway.session_lifetime_s * 1000
        for first in range(0, users, 2_000):
            issued = [new_token() for _ in ids[first:first + 2_000]]
            engine.apply_batch([
                CreateSession(tenant=tenant, user=user, token_hash=digest, device="bench",
                              expires_ms=expires_ms)
                for user, (_, digest) in zip(ids[first:first + 2_000], issued, strict=True)
            ], now_ms)
            world.tokens += [token for token, _ in issued]
    finally:
        keyed.close()
    return world


# -- the server under test -------------------------------------------------------------------


class ServerProcess:
    """`herald serve` as a subprocess (or a running server given by --url and --server-pid)."""

    def __init__(self, data_dir: Path, port: int, root: Path = REPO_ROOT,
                 tls: bool = False) -> None:
        """Start `python -m appliance.cli serve` from the checkout at `root` (its cwd, so that
        its `appliance` package is the one imported: another branch, for A/B comparisons).
        With `tls`, it serves wss:// with a throwaway self-signed certificate."""
        self.log_path = data_dir / "server.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop())
        command = [sys.executable, "-m", "appliance.cli", "serve", "--data-dir", str(data_dir),
                   "--listen", f"127.0.0.1:{port}"]
        self.tls, self.ca_file = tls, None
        if tls:
            from appliance.cli.certs import make_self_signed

            made = make_self_signed(data_dir / "tls", [])
            self.ca_file = str(made.cert_file)
            command += ["--tls-cert", str(made.cert_file), "--tls-key", str(made.key_file)]
        self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            command, cwd=root, stdout=subprocess.PIPE, stderr=self._log,
            preexec_fn=raise_fd_limit,  # 10,000 idle connections need the hard limit
        )
        self.pid = self.proc.pid
        self.host = "127.0.0.1"
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline().decode(errors="replace")
            if not line:
                self.proc.wait()
                raise RuntimeError(
                    f"the server exited ({self.proc.returncode}):\n{self.log_tail()}")
            if "listening at ws://" in line or "listening at wss://" in line:
                self.port = int(line.rsplit(":", 1)[1].split("/")[0])
                return

    @classmethod
    def external(cls, url: str, pid: int | None, ca_file: str | None = None) -> ServerProcess:
        """A running server; for wss://, `ca_file` is what its certificate is checked against
        (default: the system's trust store)."""
        server = cls.__new__(cls)
        server.proc, server._log = None, None  # type: ignore[assignment]
        server.pid = pid or 0
        server.tls, server.ca_file = url.startswith("wss://"), ca_file
        hostport = url.split("://", 1)[1].split("/", 1)[0]
        server.host, port = hostport.rsplit(":", 1)
        server.port = int(port)
        if server.host not in ("127.0.0.1", "localhost"):
            raise SystemExit("bench/load.py sends traffic to 127.0.0.1 only")
        return server

    def client_context(self) -> ssl.SSLContext | None:
        """For the bench's own blocking clients: None for ws://."""
        return ssl.create_default_context(cafile=self.ca_file) if self.tls else None

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def status(self) -> dict[str, int]:
        """VmRSS, VmHWM (KiB) of the server process; empty without a pid."""
        if not self.pid:
            return {}
        out = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
        return out

    def cpu_s(self) -> float:
        """User + system CPU seconds of the server so far (every thread); nan without a pid."""
        if not self.pid:
            return float("nan")
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self._log.close()


class Spy:
    """py-spy recording the server while the measured phase runs (--py-spy PATH)."""

    def __init__(self, path: str | None, pid: int) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        if not path or not pid:
            return
        exe = BENCH_DIR.parent / ".venv" / "bin" / "py-spy"
        fmt = "flamegraph" if path.endswith(".svg") else "speedscope" if path.endswith(
            ".json") else "raw"
        self.proc = subprocess.Popen(
            [str(exe) if exe.exists() else "py-spy", "record", "--pid", str(pid), "--rate", "200",
             "--nonblocking", "--threads", "--format", fmt, "--output", path],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        time.sleep(1.0)  # let it attach before the measured phase starts

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            _, err = self.proc.communicate(timeout=60)
            progress(f"py-spy: {err.decode(errors='replace').strip().splitlines()[-1:]}")


# -- the worker processes --------------------------------------------------------------------


class Pool:
    """The load-generator processes, each with its share of the connections."""

    def __init__(self, server: ServerProcess, assignment: list[list[ConnSpec]],
                 args: argparse.Namespace) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pipes: list[Pipe] = []
        self.procs = []
        self.sizes = [len(specs) for specs in assignment]
        for worker_id, specs in enumerate(assignment):
            parent, child = ctx.Pipe()
            params = {
                "host": server.host, "port": server.port, "specs": specs, "worker_id": worker_id,
                "sample_every": args.sample_every, "window": args.window,
                "body_bytes": args.body_bytes, "connect_window": args.connect_window,
                "tls": server.tls, "ca_file": server.ca_file,
            }
            proc = ctx.Process(target=worker_main, args=(child, params), daemon=True)
            proc.start()
            child.close()
            self.pipes.append(parent)
            self.procs.append(proc)

    def _gather(self, kind: str, timeout_s: float,
                on_progress: Callable[[list[dict[str, Any]]], None] | None = None
                ) -> list[dict[str, Any]]:
        results: dict[int, dict[str, Any]] = {}
        latest: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout_s
        last_print = time.monotonic()
        while len(results) < len(self.pipes):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"workers did not report {kind!r} in {timeout_s:.0f} s")
            for pipe in wait(self.pipes, timeout=min(left, 1.0)):
                i = self.pipes.index(pipe)  # type: ignore[arg-type]
                try:
                    what, value = pipe.recv()  # type: ignore[union-attr]
                except EOFError:
                    raise RuntimeError(f"worker {i} died") from None
                if what == kind:
                    results[i] = value
                elif what == "progress":
                    latest[i] = value
            if on_progress and latest and time.monotonic() - last_print >= 2.0:
                last_print = time.monotonic()
                on_progress(list(latest.values()))
        return [results[i] for i in range(len(self.pipes))]

    def connect(self, counts: list[int], timeout_s: float) -> tuple[int, list[str]]:
        for pipe, count in zip(self.pipes, counts, strict=True):
            pipe.send(("connect", count))
        reports = self._gather("connected", timeout_s)
        return sum(r["ready"] for r in reports), [f for r in reports for f in r["failures"]]

    def go(self, n: int, senders: int, timeout_s: float) -> list[dict[str, Any]]:
        for pipe in self.pipes:
            pipe.send(("go", {"n": n, "senders": senders, "timeout_s": timeout_s}))

        def show(latest: list[dict[str, Any]]) -> None:
            progress(f"  ... {sum(p['acked'] for p in latest):,} acked, "
                     f"{sum(p['msgs'] for p in latest):,} pushes received")

        return self._gather("done", timeout_s + 30, show)

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(("close", None))
        with contextlib.suppress(TimeoutError, RuntimeError):
            self._gather("closed", 30)
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()


def connect_all(pool: Pool, counts: list[int], what: str, timeout_s: float) -> float:
    started = time.monotonic()
    ready, failures = pool.connect(counts, timeout_s)
    elapsed = time.monotonic() - started
    if ready != sum(counts):
        raise RuntimeError(f"only {ready} of {sum(counts)} {what} logged in: {failures[:5]}")
    progress(f"{ready:,} {what} connected and logged in in {elapsed:.1f} s "
             f"({ready / elapsed:,.0f}/s)")
    return elapsed


def assign(specs: list[ConnSpec], args: argparse.Namespace) -> list[list[ConnSpec]]:
    """Senders and latency receivers to --sender-procs "front" workers, so that their
    timestamps and reactions are not queued behind a poll batch of lean receivers; the lean
    receivers round-robin to --procs workers."""
    front = [spec for spec in specs if spec[1] != "recv"]
    lean = [spec for spec in specs if spec[1] == "recv"]
    groups = [front[i:: args.sender_procs] for i in range(args.sender_procs)]
    groups += [lean[i:: args.procs] for i in range(args.procs)]
    return [group for group in groups if group]


def auth_of(world: World, index: int, args: argparse.Namespace) -> tuple[str, ...]:
    if args.auth == "password":
        return ("login", world.tenant_name, f"u{index:06d}", PASSWORD)
    return ("resume", world.tokens[index])


def spread(count: int, among: int) -> set[int]:
    """`among` indices spread evenly over range(count)."""
    among = min(among, count)
    return {int(i * count / among) for i in range(among)} if among else set()
