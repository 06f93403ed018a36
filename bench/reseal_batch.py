"""How long one background re-seal batch holds LMDB's write lock, per batch size.

`Engine.reseal_records` runs in one write transaction; while it runs, the server's writer
(chat appends) waits for LMDB's write lock. This fills a sealed store with message blocks of
typical chat text, adds a key epoch, and times `reseal_records(tenant, "messages", after,
N)` for several N (each call is the whole transaction: scan, open, seal, put, commit with its
fsync), and an empty commit (`N` = 0 below: a batch that finds nothing, the floor every write
pays). The median over the batches says what `[keys] reseal_batch_blocks` costs an append
that arrives during a batch.

    .venv/bin/python bench/reseal_batch.py [--messages 60000] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from engine import (
    AddKeyEpoch,
    Append,
    ConversationOpened,
    CreateGroup,
    CreateTenant,
    CreateUser,
    Engine,
    Keyring,
    TenantCreated,
    UserCreated,
)
from engine.keys import pack_ids
from engine.passwords import hash_password

BATCH_SIZES = (1, 8, 16, 32, 64, 128, 256)
CALLS_PER_SIZE = 40
GROUPS = 50
WORDS = ("the", "deploy", "is", "green", "review", "please", "meeting", "at", "noon", "ok",
         "thanks", "on", "it", "ticket", "merged", "lunch", "call", "later", "build", "failed")


def fill(engine: Engine, keyring: Keyring, messages: int, rng: random.Random) -> int:
    created = engine.apply(CreateTenant(name="bench"), 1)
    assert isinstance(created, TenantCreated)
    tenant = created.tenant
    keyring.install(tenant, 1, os.urandom(32))
    engine.apply(AddKeyEpoch(tenant=tenant, wrapped_dek=b"w", key_id="e1"), 1)
    phc = hash_password("bench-password", rng=lambda n: b"bench-fixed-salt"[:n])
    users = []
    for n in range(4):
        user = engine.apply(CreateUser(tenant=tenant, login=f"u{n}", display_name=f"U {n}",
                                       password_hash=phc), 1)
        assert isinstance(user, UserCreated)
        users.append(user.user)
    convs = []
    for n in range(GROUPS):
        group = engine.apply(CreateGroup(tenant=tenant, creator=users[0], title=f"g{n}",
                                         members=tuple(users[1:])), 1)
        assert isinstance(group, ConversationOpened)
        convs.append(group.conv)
    for start in range(0, messages, 500):
        ops = [Append(tenant=tenant, conv=rng.choice(convs), sender=rng.choice(users),
                      client_msg_id=f"m{start + i}",
                      body=" ".join(rng.choices(WORDS, k=rng.randint(3, 30))))
               for i in range(min(500, messages - start))]
        engine.apply_batch(ops, 2)
    return tenant


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=60_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rng = random.Random(7)
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        keyring = Keyring(name_key=bytes(32))
        engine = Engine(Path(tmp) / "store", map_size=2**30, keyring=keyring)
        tenant = fill(engine, keyring, args.messages, rng)
        _, blocks = engine.reseal_pending(tenant, "messages")
        after = b""
        epoch = 1
        results: dict[str, float] = {}
        for size in BATCH_SIZES:
            times: list[float] = []
            while len(times) < CALLS_PER_SIZE:
                if epoch == 1 or not after:
                    # All under the current epoch: a new one, and again from the start.
                    epoch += 1
                    keyring.install(tenant, epoch, os.urandom(32))
                    engine.apply(AddKeyEpoch(tenant=tenant, wrapped_dek=b"w", key_id="e"), 3)
                began = time.perf_counter()
                batch = engine.reseal_records(tenant, "messages", after, size)
                elapsed = time.perf_counter() - began
                after = batch.next_key
                if batch.resealed == size:  # a short batch at the end is not a sample
                    times.append(elapsed)
            results[str(size)] = statistics.median(times) * 1000
        # A batch that finds nothing after the tenant's last key: the transaction's floor.
        end = pack_ids(tenant, 2**64 - 1, 2**64 - 1)
        times = []
        for _ in range(CALLS_PER_SIZE):
            began = time.perf_counter()
            engine.reseal_records(tenant, "messages", end, 1)
            times.append(time.perf_counter() - began)
        results["0"] = statistics.median(times) * 1000
        engine.close()
    print(f"{args.messages:,} messages in {blocks:,} blocks "
          f"({args.messages / blocks:.1f} messages a block)")
    for size, ms in sorted(results.items(), key=lambda kv: int(kv[0])):
        print(f"batch of {int(size):>4} blocks: {ms:7.2f} ms median holding the write lock")
    if args.json:
        args.json.write_text(json.dumps({"blocks": blocks, "median_ms": results}, indent=2))


if __name__ == "__main__":
    main()
