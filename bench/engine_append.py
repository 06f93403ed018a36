"""Engine benchmark: durable appends against the raw LMDB ceiling, history pages, sync.

Run by hand (`make bench`, i.e. `.venv/bin/python bench/engine_append.py`); figures go in
docs/benchmarks.md. One run, in a temporary directory, measures:

  (a) durable appends/s through `Engine.apply_batch` for each batch size, messages spread at
      random over 1,000 group conversations of one tenant (200 users, 3-8 members each, every
      sender a member), bodies from the shared chat corpus;
  (b) the raw ceiling: plain py-lmdb puts (sync=True, metasync=True) of the same key pattern
      (24-byte big-endian tenant|conv|seq) and the same value sizes, one write transaction per
      batch; engine and raw batches alternate one by one, so that both see the same machine
      noise and stores of the same size;
  (c) the ratio (a)/(b) per batch size;
  (d) 50-message `Engine.page_before` reads of random conversations holding >= 200 messages;
  (e) `Engine.sync` of a user in 200 conversations: with client cursors at the heads (nothing
      new), with server cursors at the heads, and with stale server cursors (a catch-up).

Each figure is the median over --reps repetitions. The corpus generator is loaded by path:
../shared/bench/chat_corpus.py beside the repository root, or --corpus-module PATH.

`--sealer aead` runs all of the above on a store encrypted at rest; `--sealer both` instead
compares a plain and a sealed engine in the same run (bench/engine_sealing.py), with the
engine's cache of opened messages off and on. `--message-cache-bytes` sizes that cache (the
engine's default, 64 MiB, holds the whole fill: reads above are then mostly served from it;
0 measures every read opening its records).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.util
import json
import os
import platform
import random
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import lmdb
import msgspec

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # run as a script from anywhere, installed or not

from engine import (  # noqa: E402  (needs the path above)
    AddKeyEpoch,
    Append,
    Appended,
    ConversationOpened,
    CreateGroup,
    CreateTenant,
    CreateUser,
    Engine,
    Keyring,
    MarkDelivered,
    Message,
    MessageKind,
    Operation,
    TenantCreated,
    UserCreated,
    hash_password,
)
from engine.message_cache import DEFAULT_MESSAGE_CACHE_BYTES  # noqa: E402

DEFAULT_CORPUS_MODULE = REPO_ROOT.parent / "shared" / "bench" / "chat_corpus.py"

BATCH_SIZES = (1, 10, 100, 256, 1000)
# Messages appended per batch size and repetition: enough commits for a stable rate, few
# enough that five repetitions of everything stay well under three minutes on 2 cores.
MESSAGES_PER_RUN = {1: 600, 10: 3_000, 100: 10_000, 256: 12_800, 1000: 20_000}
CORPUS_RECORDS = 20_000  # distinct bodies; appends cycle through them
USERS = 200
CONVERSATIONS = 1_000
MEMBERS_MIN, MEMBERS_MAX = 3, 8
SYNC_CONVERSATIONS = 200  # the sync user's conversations, also the ones filled for page reads
FILL_MESSAGES_PER_CONV = 220
FILL_BATCH = 1_000
PAGE_MESSAGES = 50
PAGE_READS_PER_REP = 2_000
SYNC_CALLS_PER_REP = 200
CATCHUP_CALLS_PER_REP = 20
MAP_SIZE_BYTES = 8 * 2**30
START_MS = 1_780_000_000_000
TENANT_NAME = "bench"

TARGET_RATIO_AT_256 = 0.40
TARGET_PAGE_MEDIAN_US = 150.0
TARGET_SYNC_MEDIAN_MS = 2.0

_KEY = struct.Struct(">QQQ")  # tenant | conv | seq, as engine.keys.pack_ids lays them out


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load_corpus_module(path: Path) -> ModuleType:
    """Import the shared corpus generator from its file (it is not a package of ours)."""
    if not path.is_file():
        raise SystemExit(
            f"corpus generator not found at {path}; pass --corpus-module PATH/chat_corpus.py"
        )
    spec = importlib.util.spec_from_file_location("chat_corpus", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- the world --------------------------------------------------------------------------------


@dataclass
class World:
    """One tenant's users and conversations, as the engine numbered them."""

    tenant: int
    sync_user: int
    conv_ids: list[int]  # CONVERSATIONS of them; the first SYNC_CONVERSATIONS hold sync_user
    senders: dict[int, list[int]]  # conv -> members who send (everyone but sync_user)
    texts: list[str]
    text_mentions: list[int]  # how many users each corpus text mentions
    next_text: int = 0
    next_cmid: int = 0
    now_ms: int = START_MS
    raw_seq: dict[int, int] = field(default_factory=dict)

    def tick(self) -> int:
        self.now_ms += 1
        return self.now_ms

    def append_op(self, rng: random.Random, conv: int) -> Append:
        text = self.texts[self.next_text % len(self.texts)]
        n_mentions = self.text_mentions[self.next_text % len(self.texts)]
        self.next_text += 1
        self.next_cmid += 1
        members = self.senders[conv]
        sender = rng.choice(members)
        others = [u for u in members if u != sender]
        mentions = tuple(rng.sample(others, min(n_mentions, len(others))))
        return Append(
            tenant=self.tenant, conv=conv, sender=sender, client_msg_id=f"m{self.next_cmid:010d}",
            body=text, mentions=mentions,
        )


def build_world(engine: Engine, corpus: ModuleType, rng: random.Random) -> World:
    progress(f"corpus: generating {CORPUS_RECORDS:,} records")
    records = corpus.make_corpus(CORPUS_RECORDS, 1)
    texts = [r["text"] for r in records]
    text_mentions = [len(r.get("mentions", ())) for r in records]

    progress(f"world: 1 tenant, {USERS} users, {CONVERSATIONS} groups")
    phc = hash_password("bench-password", rng=lambda n: b"bench-fixed-salt"[:n])
    created = engine.apply(CreateTenant(name=TENANT_NAME), START_MS)
    assert isinstance(created, TenantCreated)
    tenant = created.tenant
    if engine.keyring is not None:  # a sealed store: what the appliance does for a new tenant
        engine.keyring.install(tenant, 1, os.urandom(32))
        engine.apply(AddKeyEpoch(tenant=tenant, wrapped_dek=b"bench: no real wrap",
                                 key_id="bench"), START_MS)
    results = engine.apply_batch(
        [
            CreateUser(tenant=tenant, login=f"user{i:04d}", display_name=f"User {i}",
                       password_hash=phc)
            for i in range(USERS)
        ],
        START_MS,
    )
    users = [r.user for r in results if isinstance(r, UserCreated)]
    assert len(users) == USERS, results
    sync_user, others = users[0], users[1:]
    groups: list[Operation] = []
    member_sets: list[list[int]] = []
    for c in range(CONVERSATIONS):
        members = rng.sample(others, rng.randint(MEMBERS_MIN, MEMBERS_MAX))
        member_sets.append(members)
        extra = (sync_user,) if c < SYNC_CONVERSATIONS else ()
        groups.append(CreateGroup(
            tenant=tenant, creator=members[0], title=f"group {c}",
            members=(*members[1:], *extra),
        ))
    results = engine.apply_batch(groups, START_MS)
    conv_ids = [r.conv for r in results if isinstance(r, ConversationOpened)]
    assert len(conv_ids) == CONVERSATIONS, results
    return World(
        tenant=tenant, sync_user=sync_user, conv_ids=conv_ids,
        senders=dict(zip(conv_ids, member_sets, strict=True)), texts=texts,
        text_mentions=text_mentions,
    )


# -- (a) and (b): appends ---------------------------------------------------------------------


_encode = msgspec.msgpack.Encoder().encode


def raw_item(world: World, op: Append) -> tuple[bytes, bytes]:
    """Key and value as the engine stores `op` (plain sealer: a marker byte, then the record)."""
    seq = world.raw_seq.get(op.conv, 0) + 1
    world.raw_seq[op.conv] = seq
    message = Message(
        seq=seq, sender=op.sender, ts=world.now_ms, client_msg_id=op.client_msg_id,
        kind=MessageKind.TEXT, body=op.body, mentions=op.mentions,
    )
    return _KEY.pack(world.tenant, op.conv, seq), b"\x00" + _encode(message)


@dataclass
class Batches:
    ops: list[list[Append]]
    raw: list[list[tuple[bytes, bytes]]]


def make_batches(world: World, rng: random.Random, convs: Sequence[int], size: int,
                 total: int) -> Batches:
    """`total` appends to random conversations of `convs`, cut into batches of `size`.

    Built before the clock starts: a client's op arrives ready-made at the writer.
    """
    ops: list[list[Append]] = []
    raw: list[list[tuple[bytes, bytes]]] = []
    for _ in range(max(1, total // size)):
        batch = [world.append_op(rng, rng.choice(convs)) for _ in range(size)]
        ops.append(batch)
        raw.append([raw_item(world, op) for op in batch])
    return Batches(ops, raw)


def run_engine(engine: Engine, world: World, batches: list[list[Append]]) -> list[int]:
    """Apply each batch; returns the ns each `apply_batch` took. Every append must succeed."""
    timings: list[int] = []
    clock = time.perf_counter_ns
    for batch in batches:
        now = world.tick()
        t0 = clock()
        results = engine.apply_batch(batch, now)
        timings.append(clock() - t0)
        for result in results:
            if not isinstance(result, Appended) or result.duplicate:
                raise SystemExit(f"the engine refused an append: {result!r}")
    return timings


def run_raw(env: Any, db: Any, batches: list[list[tuple[bytes, bytes]]]) -> list[int]:
    """One durable write transaction per batch of plain puts; ns per batch."""
    timings: list[int] = []
    clock = time.perf_counter_ns
    for batch in batches:
        t0 = clock()
        with env.begin(write=True, db=db) as txn:
            for key, value in batch:
                txn.put(key, value)
        timings.append(clock() - t0)
    return timings


def fill(engine: Engine, env: Any, db: Any, world: World, rng: random.Random) -> None:
    """Give each of the sync user's conversations its fill of messages, in both stores."""
    convs = world.conv_ids[:SYNC_CONVERSATIONS]
    pending = [c for c in convs for _ in range(FILL_MESSAGES_PER_CONV)]
    rng.shuffle(pending)
    total = len(pending)
    for start in range(0, total, FILL_BATCH):
        ops = [world.append_op(rng, c) for c in pending[start:start + FILL_BATCH]]
        raw = [raw_item(world, op) for op in ops]
        run_engine(engine, world, [ops])
        run_raw(env, db, [raw])
        if start % (10 * FILL_BATCH) == 0:
            progress(f"fill: {start:,}/{total:,} messages")


@dataclass
class AppendFigures:
    batch: int
    engine_per_s: list[float] = field(default_factory=list)
    raw_per_s: list[float] = field(default_factory=list)
    engine_batch_ms: list[float] = field(default_factory=list)  # p50 per rep
    raw_batch_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        engine = statistics.median(self.engine_per_s)
        raw = statistics.median(self.raw_per_s)
        ratios = [e / r for e, r in zip(self.engine_per_s, self.raw_per_s, strict=True)]
        return {
            "batch": self.batch,
            "engine_appends_per_s": round(engine),
            "raw_puts_per_s": round(raw),
            "ratio": round(statistics.median(ratios), 3),
            "engine_batch_p50_ms": round(statistics.median(self.engine_batch_ms), 3),
            "raw_batch_p50_ms": round(statistics.median(self.raw_batch_ms), 3),
            "engine_appends_per_s_runs": [round(x) for x in self.engine_per_s],
            "raw_puts_per_s_runs": [round(x) for x in self.raw_per_s],
        }


def measure_appends(engine: Engine, env: Any, db: Any, world: World, rng: random.Random,
                    reps: int, sizes: Sequence[int] = BATCH_SIZES) -> list[AppendFigures]:
    """Engine and raw batches alternate one by one (and take turns going first), so that the
    noise of a shared machine (other processes' fsyncs, CPU steal) falls on both sides alike."""
    figures = {size: AppendFigures(size) for size in sizes}
    for rep in range(reps):
        for size in sizes:
            batches = make_batches(world, rng, world.conv_ids, size, MESSAGES_PER_RUN[size])
            count = size * len(batches.ops)
            engine_ns: list[int] = []
            raw_ns: list[int] = []
            gc.collect()
            for i, (ops, raw) in enumerate(zip(batches.ops, batches.raw, strict=True)):
                if i % 2:
                    raw_ns += run_raw(env, db, [raw])
                    engine_ns += run_engine(engine, world, [ops])
                else:
                    engine_ns += run_engine(engine, world, [ops])
                    raw_ns += run_raw(env, db, [raw])
            fig = figures[size]
            fig.engine_per_s.append(count / (sum(engine_ns) / 1e9))
            fig.raw_per_s.append(count / (sum(raw_ns) / 1e9))
            fig.engine_batch_ms.append(statistics.median(engine_ns) / 1e6)
            fig.raw_batch_ms.append(statistics.median(raw_ns) / 1e6)
            progress(
                f"appends rep {rep + 1}/{reps} batch {size:>4}: "
                f"engine {fig.engine_per_s[-1]:>9,.0f}/s  raw {fig.raw_per_s[-1]:>9,.0f}/s  "
                f"ratio {fig.engine_per_s[-1] / fig.raw_per_s[-1]:.2f}"
            )
    return list(figures.values())


# -- (d) and (e): reads -----------------------------------------------------------------------


def time_calls(call: Callable[[int], object], n: int) -> list[float]:
    """Microseconds of each of `n` calls of `call(i)`."""
    clock = time.perf_counter_ns
    out: list[float] = []
    for i in range(n):
        t0 = clock()
        call(i)
        out.append((clock() - t0) / 1e3)
    return out


@dataclass
class LatencyFigures:
    name: str
    unit: str  # "us" or "ms"
    medians: list[float] = field(default_factory=list)
    p99s: list[float] = field(default_factory=list)
    detail: str = ""

    def add(self, samples_us: list[float]) -> None:
        scale = 1.0 if self.unit == "us" else 1e-3
        self.medians.append(statistics.median(samples_us) * scale)
        self.p99s.append(percentile(samples_us, 0.99) * scale)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "unit": self.unit,
            "median": round(statistics.median(self.medians), 3),
            "p99": round(statistics.median(self.p99s), 3),
            "median_runs": [round(x, 3) for x in self.medians],
            "detail": self.detail,
        }


def measure_pages(engine: Engine, world: World, rng: random.Random,
                  reps: int) -> list[LatencyFigures]:
    tenant, user = world.tenant, world.sync_user
    convs = world.conv_ids[:SYNC_CONVERSATIONS]
    heads = {c.conv: c.head for c in engine.conversations(tenant, user)}
    assert min(heads.values()) >= 200, "page reads need conversations of >= 200 messages"
    latest = LatencyFigures("page_before latest 50", "us", detail="before=None")
    older = LatencyFigures("page_before older 50", "us", detail="before=random seq in history")
    for rep in range(reps):
        picks = [rng.choice(convs) for _ in range(PAGE_READS_PER_REP)]
        befores = [rng.randint(PAGE_MESSAGES + 1, heads[c]) for c in picks]
        gc.collect()
        for conv in picks[:3]:  # what is timed below returns whole pages
            page = engine.page_before(tenant, user, conv, None, PAGE_MESSAGES)
            assert len(page.messages) == PAGE_MESSAGES and page.more
        latest.add(time_calls(
            lambda i, picks=picks: engine.page_before(tenant, user, picks[i], None, PAGE_MESSAGES),
            PAGE_READS_PER_REP,
        ))
        older.add(time_calls(
            lambda i, picks=picks, befores=befores: engine.page_before(
                tenant, user, picks[i], befores[i], PAGE_MESSAGES
            ),
            PAGE_READS_PER_REP,
        ))
        progress(f"pages rep {rep + 1}/{reps}: latest median {latest.medians[-1]:.1f} us, "
                 f"older median {older.medians[-1]:.1f} us")
    return [latest, older]


def measure_sync(engine: Engine, world: World, reps: int) -> list[LatencyFigures]:
    tenant, user = world.tenant, world.sync_user
    heads = {c.conv: c.head for c in engine.conversations(tenant, user)}
    assert len(heads) == SYNC_CONVERSATIONS
    idle = LatencyFigures("sync, client cursors at heads", "ms",
                          detail=f"{SYNC_CONVERSATIONS} conversations, nothing new")
    catchup = LatencyFigures("sync, stale server cursors", "ms")
    server_idle = LatencyFigures("sync, server cursors at heads", "ms",
                                 detail=f"{SYNC_CONVERSATIONS} conversations, nothing new")
    check = engine.sync(tenant, user, heads)
    assert not check.conversations and not check.removed
    stale = engine.sync(tenant, user)
    catchup.detail = (f"{len(stale.conversations)} conversations, "
                      f"{sum(len(c.messages) for c in stale.conversations)} messages returned")
    for rep in range(reps):
        gc.collect()
        idle.add(time_calls(lambda i: engine.sync(tenant, user, heads), SYNC_CALLS_PER_REP))
        catchup.add(time_calls(lambda i: engine.sync(tenant, user), CATCHUP_CALLS_PER_REP))
        progress(f"sync rep {rep + 1}/{reps}: client cursors {idle.medians[-1]:.2f} ms, "
                 f"stale server cursors {catchup.medians[-1]:.2f} ms")
    # Now mark everything delivered: the server's own cursors reach the heads.
    engine.apply_batch(
        [MarkDelivered(tenant=tenant, user=user, conv=c, seq=h) for c, h in heads.items()],
        world.tick(),
    )
    assert not engine.sync(tenant, user).conversations
    for _ in range(reps):
        gc.collect()
        server_idle.add(time_calls(lambda i: engine.sync(tenant, user), SYNC_CALLS_PER_REP))
    progress(f"sync: server cursors at heads {statistics.median(server_idle.medians):.2f} ms")
    return [idle, server_idle, catchup]


# -- report -----------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpus": str(os.cpu_count()),
        "cpu_model": cpu,
        "python": platform.python_version(),
        "lmdb": lmdb.__version__,
        "lmdb_c": ".".join(map(str, lmdb.version())),
        "platform": platform.platform(),
        "loadavg_at_end": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def render(appends: list[dict[str, Any]], reads: list[dict[str, Any]],
           targets: list[dict[str, Any]]) -> str:
    lines = [
        "| batch | engine appends/s | raw LMDB puts/s | ratio | engine batch p50 ms "
        "| raw batch p50 ms |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for a in appends:
        lines.append(
            f"| {a['batch']} | {a['engine_appends_per_s']:,} | {a['raw_puts_per_s']:,} "
            f"| {a['ratio']:.0%} | {a['engine_batch_p50_ms']:.2f} | {a['raw_batch_p50_ms']:.2f} |"
        )
    lines += ["", "| read | median | p99 | |", "|---|---:|---:|---|"]
    for r in reads:
        unit = "µs" if r["unit"] == "us" else "ms"
        lines.append(f"| {r['name']} | {r['median']:.2f} {unit} | {r['p99']:.2f} {unit} "
                     f"| {r['detail']} |")
    lines += ["", "| target | goal | measured | met |", "|---|---|---|---|"]
    for t in targets:
        lines.append(f"| {t['name']} | {t['goal']} | {t['measured']} "
                     f"| {'yes' if t['met'] else 'NO'} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--reps", type=int, default=5, help="repetitions per figure (default 5)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    parser.add_argument("--corpus-module", type=Path, default=DEFAULT_CORPUS_MODULE,
                        help=f"path of chat_corpus.py (default {DEFAULT_CORPUS_MODULE})")
    parser.add_argument("--seed", type=int, default=7, help="seed of the workload's choices")
    parser.add_argument("--dir", type=Path, default=None,
                        help="parent of the temporary store directory (default: system temp)")
    parser.add_argument("--only", choices=("all", "appends", "reads"), default="all",
                        help="measure only one part (for profiling)")
    parser.add_argument("--batches", default=None,
                        help="comma-separated batch sizes to measure, of "
                        f"{','.join(map(str, BATCH_SIZES))} (default: all; 100 with "
                        "--sealer both)")
    parser.add_argument("--check", action="store_true",
                        help="exit with status 1 when a target is missed")
    parser.add_argument("--message-cache-bytes", type=int, default=DEFAULT_MESSAGE_CACHE_BYTES,
                        help="the engine's cache of opened messages (default "
                        f"{DEFAULT_MESSAGE_CACHE_BYTES // 2**20} MiB; 0 disables it). With "
                        "--sealer both: the size of the 'on' runs")
    parser.add_argument("--cache", choices=("off", "on", "both"), default="both",
                        help="with --sealer both: measure with the message cache off (every "
                        "read opens its records), on (warmed before the reads), or both "
                        "(default)")
    parser.add_argument("--sealer", choices=("plain", "aead", "both"), default="plain",
                        help="plain store (default), sealed store (encryption at rest), or "
                        "both: the cost of sealing, plain and sealed engines side by side at "
                        "--batches (default 100 there) and for 50-message pages")
    args = parser.parse_args(argv)
    if not 1 <= args.reps <= 50:
        parser.error("--reps must be 1 to 50")
    if args.message_cache_bytes < 0:
        parser.error("--message-cache-bytes cannot be negative (0 disables the cache)")
    try:
        default = (100,) if args.sealer == "both" else BATCH_SIZES
        sizes = tuple(int(x) for x in args.batches.split(",")) if args.batches else default
    except ValueError:
        parser.error("--batches takes comma-separated integers")
    if not sizes or not set(sizes) <= set(BATCH_SIZES):
        parser.error(f"--batches must name sizes among {BATCH_SIZES}")

    corpus = load_corpus_module(args.corpus_module)
    if args.sealer == "both":
        import engine_sealing  # a sibling script: sys.path[0] is this directory

        return engine_sealing.main(args, corpus, sizes)
    rng = random.Random(args.seed)
    started = time.perf_counter()
    load_at_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="herald-bench-", dir=args.dir) as tmp:
        keyring = Keyring() if args.sealer == "aead" else None
        engine = Engine(Path(tmp) / "engine", map_size=MAP_SIZE_BYTES, keyring=keyring,
                        message_cache_bytes=args.message_cache_bytes)
        env = lmdb.open(str(Path(tmp) / "raw"), map_size=MAP_SIZE_BYTES, max_dbs=2, sync=True,
                        metasync=True, readahead=False, meminit=False)
        db = env.open_db(b"messages")
        try:
            world = build_world(engine, corpus, rng)
            fill(engine, env, db, world, rng)
            append_figures: list[AppendFigures] = []
            read_figures: list[LatencyFigures] = []
            if args.only in ("all", "appends"):
                append_figures = measure_appends(engine, env, db, world, rng, args.reps, sizes)
            if args.only in ("all", "reads"):
                read_figures = measure_pages(engine, world, rng, args.reps)
                read_figures += measure_sync(engine, world, args.reps)
            stats = engine.stats()
        finally:
            engine.close()
            env.close()

    appends = [f.summary() for f in append_figures]
    reads = [f.summary() for f in read_figures]
    targets: list[dict[str, Any]] = []
    for a in appends:
        if a["batch"] == 256:
            targets.append({"name": "engine/raw at batch 256",
                            "goal": f">= {TARGET_RATIO_AT_256:.0%}",
                            "measured": f"{a['ratio']:.0%}",
                            "met": a["ratio"] >= TARGET_RATIO_AT_256})
    for r in reads:
        if r["name"] == "page_before latest 50":
            targets.append({"name": "50-message page, median",
                            "goal": f"<= {TARGET_PAGE_MEDIAN_US:.0f} µs",
                            "measured": f"{r['median']:.1f} µs",
                            "met": r["median"] <= TARGET_PAGE_MEDIAN_US})
        if r["name"] == "sync, client cursors at heads":
            targets.append({"name": "idle sync of 200 conversations, median",
                            "goal": f"<= {TARGET_SYNC_MEDIAN_MS:.0f} ms",
                            "measured": f"{r['median']:.2f} ms",
                            "met": r["median"] <= TARGET_SYNC_MEDIAN_MS})
    elapsed = time.perf_counter() - started
    print(render(appends, reads, targets))
    print(f"\n{args.reps} repetitions, medians; run took {elapsed:.0f} s; "
          f"store at the end: {stats['messages']:,} messages, "
          f"{stats['map_used_bytes'] / 2**20:,.0f} MiB")
    if args.json:
        report = {
            "machine": {**machine(), "loadavg_at_start": load_at_start},
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "sealer": args.sealer,
            "reps": args.reps,
            "seed": args.seed,
            "workload": {
                "users": USERS, "conversations": CONVERSATIONS,
                "members_per_conversation": [MEMBERS_MIN, MEMBERS_MAX],
                "messages_per_run": MESSAGES_PER_RUN, "sync_conversations": SYNC_CONVERSATIONS,
                "fill_messages_per_conversation": FILL_MESSAGES_PER_CONV,
            },
            "appends": appends,
            "reads": reads,
            "targets": targets,
            "store": stats,
            "elapsed_s": round(elapsed, 1),
        }
        write_json_report(args.json, report)
    return 1 if args.check and not all(t["met"] for t in targets) else 0


def write_json_report(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    progress(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
