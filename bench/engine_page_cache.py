"""One 50-message page read, plain and sealed, with the engine's message cache off, warm and
missing: what a page costs before the cache, once cached, and on a miss (the first read after a
restart or an eviction: the cache is filled as the page is opened).

Run by hand: `.venv/bin/python bench/engine_page_cache.py [--reads 3000] [--reps 5]`. Two
conversations of 300 messages per store; their latest pages are read in turn, `--reads` times
per repetition, and the best repetition's mean is reported (a micro-benchmark: the minimum
is the least noisy estimate of the work). `bench/engine_append.py --sealer both` gives
medians over many conversations, with the cache off and warm; this adds the miss.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine import (  # after the path above
    AddKeyEpoch,
    Append,
    CreateGroup,
    CreateTenant,
    CreateUser,
    Engine,
    Keyring,
    hash_password,
)
from engine.message_cache import ENTRY_OVERHEAD_BYTES

NOW_MS = 1_700_000_000_000
MESSAGES = 300
PAGE = 50
BODY = "a chat message of a typical length, with a few words more than a greeting"
# A cache that holds one page and a little, not two: reading the two conversations in turn,
# every read misses, opens its records, fills the cache and evicts the other conversation.
MISSING_BYTES = (PAGE + 10) * (ENTRY_OVERHEAD_BYTES + 100)
SETUPS = (  # (name, sealed, cache bytes)
    ("plain, cache off", False, 0),
    ("plain, cache warm", False, 64 * 2**20),
    ("plain, cache miss", False, MISSING_BYTES),
    ("sealed, cache off", True, 0),
    ("sealed, cache warm", True, 64 * 2**20),
    ("sealed, cache miss", True, MISSING_BYTES),
)


def build(
    path: Path, sealed: bool, cache_bytes: int, password_hash: str
) -> tuple[Engine, int, int, list[int]]:
    keyring = Keyring() if sealed else None
    engine = Engine(path, keyring=keyring, message_cache_bytes=cache_bytes)
    tenant = engine.apply(CreateTenant(name="bench"), NOW_MS).tenant
    if keyring is not None:
        keyring.install(tenant, 1, os.urandom(32))
        engine.apply(AddKeyEpoch(tenant=tenant, wrapped_dek=b"bench", key_id="bench"), NOW_MS)
    alice, bob = (
        engine.apply(CreateUser(tenant=tenant, login=login, display_name=login,
                                password_hash=password_hash), NOW_MS).user
        for login in ("alice", "bob")
    )
    convs = []
    for title in ("one", "two"):
        conv = engine.apply(CreateGroup(tenant=tenant, creator=alice, title=title,
                                        members=(bob,)), NOW_MS).conv
        engine.apply_batch([
            Append(tenant=tenant, conv=conv, sender=alice, client_msg_id=f"{title}{i}",
                   body=BODY)
            for i in range(MESSAGES)
        ], NOW_MS)
        convs.append(conv)
    return engine, tenant, bob, convs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reads", type=int, default=3000, help="page reads per repetition")
    parser.add_argument("--reps", type=int, default=5, help="repetitions (the best is kept)")
    args = parser.parse_args()
    if args.reads < 1 or args.reps < 1:
        parser.error("--reads and --reps must be at least 1")
    password_hash = hash_password("bench-password")
    print("| setup | 50-message page |\n|---|---:|")
    with tempfile.TemporaryDirectory(prefix="herald-bench-page-cache-") as tmp:
        for name, sealed, cache_bytes in SETUPS:
            directory = Path(tmp) / name.replace(", ", "_").replace(" ", "_")
            engine, tenant, reader, convs = build(directory, sealed, cache_bytes, password_hash)
            try:
                for conv in convs:
                    engine.page_before(tenant, reader, conv, None, PAGE)  # warms a warm cache
                best = float("inf")
                for _ in range(args.reps):
                    started = time.perf_counter_ns()
                    for i in range(args.reads):
                        engine.page_before(tenant, reader, convs[i % 2], None, PAGE)
                    best = min(best, (time.perf_counter_ns() - started) / args.reads / 1000)
                print(f"| {name} | {best:.1f} µs |")
            finally:
                engine.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
