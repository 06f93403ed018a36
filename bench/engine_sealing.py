"""The cost of sealing records at rest: a plain and a sealed engine side by side, in one run.

Run through `bench/engine_append.py --sealer both [--batches 100] [--reps 5] [--json PATH]`.
Both stores get the same world (one tenant, 200 users, 1,000 groups) and the same fill (220
messages in each of the sync user's 200 groups). Then, per repetition: the same append batches
go to both engines, alternating batch by batch and taking turns going first, so that both see
the same machine noise; and the same 50-message `page_before` reads (latest page, and a page
before a random seq) go to both, alternating per repetition. The cost of sealing is
1 - sealed/plain for append throughput and sealed/plain - 1 for the page read median.

`--cache both` (the default) runs all of that twice on the same stores, reopened: with the
engine's cache of opened messages off (every page opens its 50 records: the cold figure), and
on (`--message-cache-bytes`; every filled conversation read once first, so pages are served
from it: the warm figure). The sealed page target is checked against the plain page of the
same cache setting, and against the plain page with the cache off (what a page cost before).
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from engine_append import (
    FILL_BATCH,
    FILL_MESSAGES_PER_CONV,
    MAP_SIZE_BYTES,
    MESSAGES_PER_RUN,
    PAGE_MESSAGES,
    PAGE_READS_PER_REP,
    SYNC_CONVERSATIONS,
    World,
    build_world,
    machine,
    make_batches,
    progress,
    run_engine,
    write_json_report,
)

from engine import Engine, Keyring

TARGET_APPEND_COST = 0.15  # at batch 100
TARGET_PAGE_COST = 0.10


def fill_both(plain: Engine, sealed: Engine, world: World, rng: random.Random) -> None:
    convs = world.conv_ids[:SYNC_CONVERSATIONS]
    pending = [c for c in convs for _ in range(FILL_MESSAGES_PER_CONV)]
    rng.shuffle(pending)
    for start in range(0, len(pending), FILL_BATCH):
        ops = [world.append_op(rng, c) for c in pending[start:start + FILL_BATCH]]
        run_engine(plain, world, [ops])
        run_engine(sealed, world, [ops])
        if start % (10 * FILL_BATCH) == 0:
            progress(f"fill: {start:,}/{len(pending):,} messages, in both stores")


def measure_appends(plain: Engine, sealed: Engine, world: World, rng: random.Random,
                    reps: int, sizes: tuple[int, ...]) -> list[dict[str, Any]]:
    runs: dict[int, dict[str, list[float]]] = {s: {"plain": [], "sealed": []} for s in sizes}
    for rep in range(reps):
        for size in sizes:
            batches = make_batches(world, rng, world.conv_ids, size, MESSAGES_PER_RUN[size])
            count = size * len(batches.ops)
            plain_ns: list[int] = []
            sealed_ns: list[int] = []
            gc.collect()
            for i, ops in enumerate(batches.ops):
                if i % 2:
                    sealed_ns += run_engine(sealed, world, [ops])
                    plain_ns += run_engine(plain, world, [ops])
                else:
                    plain_ns += run_engine(plain, world, [ops])
                    sealed_ns += run_engine(sealed, world, [ops])
            runs[size]["plain"].append(count / (sum(plain_ns) / 1e9))
            runs[size]["sealed"].append(count / (sum(sealed_ns) / 1e9))
            progress(f"appends rep {rep + 1}/{reps} batch {size}: "
                     f"plain {runs[size]['plain'][-1]:,.0f}/s  "
                     f"sealed {runs[size]['sealed'][-1]:,.0f}/s")
    out = []
    for size, r in runs.items():
        ratios = [s / p for s, p in zip(r["sealed"], r["plain"], strict=True)]
        out.append({
            "batch": size,
            "plain_appends_per_s": round(statistics.median(r["plain"])),
            "sealed_appends_per_s": round(statistics.median(r["sealed"])),
            "cost": round(1 - statistics.median(ratios), 3),
            "plain_runs": [round(x) for x in r["plain"]],
            "sealed_runs": [round(x) for x in r["sealed"]],
        })
    return out


def measure_pages(plain: Engine, sealed: Engine, world: World, rng: random.Random,
                  reps: int) -> list[dict[str, Any]]:
    tenant, user = world.tenant, world.sync_user
    convs = world.conv_ids[:SYNC_CONVERSATIONS]
    heads = {c.conv: c.head for c in plain.conversations(tenant, user)}
    assert heads == {c.conv: c.head for c in sealed.conversations(tenant, user)}
    kinds = ("latest 50", "older 50")
    medians: dict[tuple[str, str], list[float]] = {
        (k, side): [] for k in kinds for side in ("plain", "sealed")
    }
    for rep in range(reps):
        picks = [rng.choice(convs) for _ in range(PAGE_READS_PER_REP)]
        befores = [rng.randint(PAGE_MESSAGES + 1, heads[c]) for c in picks]
        pages = [e.page_before(tenant, user, picks[0], None, PAGE_MESSAGES)
                 for e in (sealed, plain)]
        assert [m.body for m in pages[0].messages] == [m.body for m in pages[1].messages]
        gc.collect()
        # The same page from each store in turn, read by read (who goes first alternates):
        # both sides see the same noise from other jobs on the machine.
        for kind, before in (("latest 50", None), ("older 50", befores)):
            times: dict[str, list[float]] = {"plain": [], "sealed": []}
            for i, conv in enumerate(picks):
                at = None if before is None else before[i]
                order = (("plain", plain), ("sealed", sealed))
                for side, engine in (order if (i + rep) % 2 else order[::-1]):
                    t0 = time.perf_counter_ns()
                    engine.page_before(tenant, user, conv, at, PAGE_MESSAGES)
                    times[side].append((time.perf_counter_ns() - t0) / 1e3)
            for side in ("plain", "sealed"):
                medians[kind, side].append(statistics.median(times[side]))
        progress(f"pages rep {rep + 1}/{reps}: latest 50 plain "
                 f"{medians['latest 50', 'plain'][-1]:.1f} us, sealed "
                 f"{medians['latest 50', 'sealed'][-1]:.1f} us")
    out = []
    for kind in kinds:
        p, s = medians[kind, "plain"], medians[kind, "sealed"]
        ratios = [b / a for a, b in zip(p, s, strict=True)]
        out.append({
            "read": f"page_before {kind}",
            "plain_median_us": round(statistics.median(p), 1),
            "sealed_median_us": round(statistics.median(s), 1),
            "cost": round(statistics.median(ratios) - 1, 3),
            "plain_runs_us": [round(x, 1) for x in p],
            "sealed_runs_us": [round(x, 1) for x in s],
        })
    return out


def render(appends: list[dict[str, Any]], pages: list[dict[str, Any]],
           targets: list[dict[str, Any]]) -> str:
    """Markdown tables of what was measured (a table per non-empty section)."""
    lines = []
    if appends:
        lines += ["| batch | plain appends/s | sealed appends/s | cost of sealing |",
                  "|---:|---:|---:|---:|", ""]
        for a in appends:
            lines.insert(-1, f"| {a['batch']} | {a['plain_appends_per_s']:,} "
                         f"| {a['sealed_appends_per_s']:,} | {a['cost']:.1%} |")
    if pages:
        lines += ["| read | plain median | sealed median | cost of sealing |",
                  "|---|---:|---:|---:|", ""]
        for r in pages:
            lines.insert(-1, f"| {r['read']} | {r['plain_median_us']:.1f} µs "
                         f"| {r['sealed_median_us']:.1f} µs | {r['cost']:.1%} |")
    if targets:
        lines += ["| target | goal | measured | met |", "|---|---|---|---|", ""]
        for t in targets:
            lines.insert(-1, f"| {t['name']} | {t['goal']} | {t['measured']} "
                         f"| {'yes' if t['met'] else 'NO'} |")
    return "\n".join(lines).rstrip()


def merge_reps(reps: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """`measure_appends` figures of one repetition each, as if measured in one call."""
    out = []
    for per_size in zip(*reps, strict=True):
        plain = [run for figures in per_size for run in figures["plain_runs"]]
        sealed = [run for figures in per_size for run in figures["sealed_runs"]]
        ratios = [s / p for s, p in zip(sealed, plain, strict=True)]
        out.append({
            "batch": per_size[0]["batch"],
            "plain_appends_per_s": round(statistics.median(plain)),
            "sealed_appends_per_s": round(statistics.median(sealed)),
            "cost": round(1 - statistics.median(ratios), 3),
            "plain_runs": plain,
            "sealed_runs": sealed,
        })
    return out


def cache_insert_cost(appends: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Append throughput lost to filling the cache: 1 - on/off, per side, paired by
    repetition (the two settings took turns)."""
    out = []
    for off, on in zip(appends["off"], appends["on"], strict=True):
        row: dict[str, Any] = {"batch": off["batch"]}
        for side in ("plain", "sealed"):
            ratios = [b / a for a, b in zip(off[f"{side}_runs"], on[f"{side}_runs"],
                                            strict=True)]
            row[side] = round(1 - statistics.median(ratios), 3)
        out.append(row)
    return out


def reopen(engine: Engine, cache_bytes: int) -> Engine:
    path, keyring = engine.path, engine.keyring
    engine.close()
    return Engine(path, map_size=MAP_SIZE_BYTES, keyring=keyring, message_cache_bytes=cache_bytes)


def warm(engine: Engine, world: World) -> None:
    """Read every filled conversation whole once: later pages find all of it cached."""
    for conv in world.conv_ids[:SYNC_CONVERSATIONS]:
        head = engine.page_before(world.tenant, world.sync_user, conv, None, 1).head
        for first in range(1, head + 1, 500):
            engine.messages(world.tenant, conv, first, min(head, first + 499))


def main(args: argparse.Namespace, corpus: ModuleType, sizes: tuple[int, ...]) -> int:
    started = time.perf_counter()
    load_at_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    settings = {"off": 0, "on": args.message_cache_bytes}
    modes = ("off", "on") if args.cache == "both" else (args.cache,)
    appends: dict[str, list[dict[str, Any]]] = {}
    pages: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="herald-bench-sealing-", dir=args.dir) as tmp:
        plain = Engine(Path(tmp) / "plain", map_size=MAP_SIZE_BYTES, message_cache_bytes=0)
        sealed = Engine(Path(tmp) / "sealed", map_size=MAP_SIZE_BYTES, keyring=Keyring(),
                        message_cache_bytes=0)
        try:
            world = build_world(plain, corpus, random.Random(args.seed))
            twin = build_world(sealed, corpus, random.Random(args.seed))
            assert (twin.tenant, twin.conv_ids, twin.senders) == (
                world.tenant, world.conv_ids, world.senders
            ), "both stores must number the same world alike"
            rng = random.Random(args.seed + 1)
            fill_both(plain, sealed, world, rng)
            if args.only in ("all", "appends"):
                # Cache off and on take turns per repetition (reopened each time: an "on"
                # repetition starts with an empty cache that its appends fill), so that both
                # settings see the same machine noise.
                per_rep: dict[str, list[list[dict[str, Any]]]] = {mode: [] for mode in modes}
                for rep in range(args.reps):
                    for mode in modes if rep % 2 == 0 else modes[::-1]:
                        plain = reopen(plain, settings[mode])
                        sealed = reopen(sealed, settings[mode])
                        progress(f"appends rep {rep + 1}: message cache {mode}")
                        per_rep[mode].append(
                            measure_appends(plain, sealed, world, rng, 1, sizes))
                appends = {mode: merge_reps(runs) for mode, runs in per_rep.items()}
            for mode in modes:
                plain, sealed = reopen(plain, settings[mode]), reopen(sealed, settings[mode])
                progress(f"message cache {mode} ({settings[mode]:,} bytes)")
                if args.only in ("all", "reads"):
                    if settings[mode]:
                        warm(plain, world)
                        warm(sealed, world)
                    pages[mode] = measure_pages(plain, sealed, world, rng, args.reps)
        finally:
            plain.close()
            sealed.close()
    targets = []
    for mode in modes:
        targets += [
            {"name": f"append throughput lost at batch {a['batch']}, cache {mode}",
             "goal": f"<= {TARGET_APPEND_COST:.0%}", "measured": f"{a['cost']:.1%}",
             "met": a["cost"] <= TARGET_APPEND_COST}
            for a in appends.get(mode, []) if a["batch"] == 100
        ] + [
            {"name": f"50-message page read time added, cache {mode}",
             "goal": f"<= {TARGET_PAGE_COST:.0%}", "measured": f"{r['cost']:.1%}",
             "met": r["cost"] <= TARGET_PAGE_COST}
            for r in pages.get(mode, []) if r["read"] == "page_before latest 50"
        ]
    if "off" in pages and "on" in pages:
        # Against what a plain page cost before the cache: the latest page, sealed and warm,
        # over plain and cold (medians of the two runs; the two were not interleaved).
        for before, after in zip(pages["off"], pages["on"], strict=True):
            after["cost_vs_plain_uncached"] = round(
                after["sealed_median_us"] / before["plain_median_us"] - 1, 3
            )
        latest = pages["on"][0]
        targets.append({
            "name": "50-message page, sealed with the cache, vs plain without it",
            "goal": f"<= {TARGET_PAGE_COST:.0%}",
            "measured": f"{latest['cost_vs_plain_uncached']:.1%}",
            "met": latest["cost_vs_plain_uncached"] <= TARGET_PAGE_COST,
        })
    insert_cost = cache_insert_cost(appends) if len(appends) == 2 else []
    elapsed = time.perf_counter() - started
    for mode in modes:
        print(f"\n### message cache {mode}\n")
        print(render(appends.get(mode, []), pages.get(mode, []), []))
    if insert_cost:
        print("\n| batch | appends/s lost to the cache, plain | sealed |\n|---:|---:|---:|")
        for row in insert_cost:
            print(f"| {row['batch']} | {row['plain']:.1%} | {row['sealed']:.1%} |")
    print("\n" + render([], [], targets))
    print(f"\n{args.reps} repetitions, medians; run took {elapsed:.0f} s")
    if args.json:
        report = {
            "machine": {**machine(), "loadavg_at_start": load_at_start},
            "command": "python bench/engine_append.py --sealer both "
                       f"--batches {','.join(map(str, sizes))} --reps {args.reps} "
                       f"--cache {args.cache} --message-cache-bytes {args.message_cache_bytes}",
            "seed": args.seed,
            "appends": appends,
            "pages": pages,
            "cache_insert_cost": insert_cost,
            "targets": targets,
            "elapsed_s": round(elapsed, 1),
        }
        write_json_report(args.json, report)
    return 1 if args.check and not all(t["met"] for t in targets) else 0
