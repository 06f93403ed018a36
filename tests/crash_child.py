"""The process tests/test_engine_crash.py kills: it appends to a Herald store until SIGKILL.

    python crash_child.py STORE RUN SEED NOW_MS RETRIES_JSON

It opens the engine on STORE, creates the tenant, users and conversations it needs unless a
previous run did, resends the sends listed in RETRIES_JSON (those a killed run had in flight),
then commits batches of 1 to 64 appends across the conversations forever. A few sends in each
batch are retries of earlier ones from this run. It writes, flushed, one line per send:

    T batch conv sender client_msg_id body_sha       before the batch is handed to the engine
    M batch conv seq sender client_msg_id body_sha dup    after apply_batch returned

so an M line is an acknowledgement: the message is durable. Bodies are a function of the
client_msg_id (`body_for`), so the parent can check them whole.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path

from engine import (
    Append,
    Appended,
    ConversationKind,
    CreateGroup,
    CreateTenant,
    CreateUser,
    Engine,
    NotFound,
    OpenDirect,
    hash_password,
)

TENANT = "crashco"
LOGINS = ("ann", "ben", "cat", "dan")
PASSWORD = "correct horse battery"
MAP_SIZE_BYTES = 256 * 2**20
MAX_BATCH = 64
RETRY_SHARE = 0.05
_FILLER = " éü中文🙂\n"


def body_for(cmid: str) -> str:
    """The body every send of `cmid` carries: up to ~1,500 characters, some of them non-ASCII,
    cheap to compute so that the parent can rebuild every stored body after every kill."""
    digest = hashlib.sha256(cmid.encode()).hexdigest()
    length = int(digest[:4], 16) % 1_500
    return f"{cmid}:" + ((digest + _FILLER) * (length // 72 + 1))[:length]


def body_sha(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def _setup(engine: Engine, now_ms: int) -> tuple[int, dict[int, list[int]]]:
    """Tenant, users and conversations, created unless present; every step idempotent."""
    try:
        tenant = engine.find_tenant(TENANT)
    except NotFound:
        tenant = engine.apply(CreateTenant(name=TENANT), now_ms).tenant
    missing = []
    for login in LOGINS:
        try:
            engine.find_user(tenant, login)
        except NotFound:
            missing.append(login)
    if missing:
        phc = hash_password(PASSWORD)
        engine.apply_batch([
            CreateUser(tenant=tenant, login=login, display_name=login, password_hash=phc)
            for login in missing
        ], now_ms)
    users = [engine.find_user(tenant, login) for login in LOGINS]
    first, *others = users
    # OpenDirect returns the existing conversation: asking again is how a restart finds them.
    opened = engine.apply_batch(
        [OpenDirect(tenant=tenant, user=first, peer=peer) for peer in others], now_ms
    )
    senders = {r.conv: [first, peer] for r, peer in zip(opened, others, strict=True)}
    groups = [c.conv for c in engine.conversations(tenant, first)
              if c.kind is ConversationKind.GROUP]
    if not groups:
        created = engine.apply(
            CreateGroup(tenant=tenant, creator=first, title="everyone", members=tuple(others)),
            now_ms,
        )
        groups = [created.conv]
    senders[groups[0]] = users
    return tenant, senders


def main(argv: list[str]) -> None:
    store, run, seed, now_ms, retries_path = argv
    rng = random.Random(f"{seed}/{run}")
    now = int(now_ms)
    engine = Engine(store, map_size=MAP_SIZE_BYTES)
    tenant, senders = _setup(engine, now)
    convs = sorted(senders)
    sent: list[tuple[int, int, str]] = []  # (conv, sender, client_msg_id) acknowledged this run
    pending = [tuple(r) for r in json.loads(Path(retries_path).read_text())]
    out = sys.stdout
    for batch in range(1_000_000):
        if batch == 0 and pending:
            sends = pending
        else:
            sends = []
            for _ in range(rng.randint(1, MAX_BATCH)):
                if sent and rng.random() < RETRY_SHARE:
                    sends.append(rng.choice(sent))
                else:
                    conv = rng.choice(convs)
                    sends.append((conv, rng.choice(senders[conv]), f"r{run}.{batch}.{len(sends)}"))
        ops = [Append(tenant=tenant, conv=conv, sender=sender, client_msg_id=cmid,
                      body=body_for(cmid)) for conv, sender, cmid in sends]
        out.write("".join(
            f"T {batch} {op.conv} {op.sender} {op.client_msg_id} {body_sha(op.body)}\n"
            for op in ops
        ))
        out.flush()
        results = engine.apply_batch(ops, now)
        now += 1
        lines = []
        for op, result in zip(ops, results, strict=True):
            if not isinstance(result, Appended):
                raise SystemExit(f"the engine refused {op!r}: {result!r}")
            lines.append(f"M {batch} {op.conv} {result.seq} {op.sender} {op.client_msg_id} "
                         f"{body_sha(op.body)} {int(result.duplicate)}\n")
            sent.append((op.conv, op.sender, op.client_msg_id))
        out.write("".join(lines))
        out.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
