"""Durability under SIGKILL, with real processes: an acknowledged message is never lost.

tests/crash_child.py appends batches to a store and prints every commit after apply_batch
returns. This test kills it with SIGKILL at a random moment, again and again on the same
store, and after every kill reopens the store and checks it against everything the child
printed: every acknowledged message is there, whole; seqs are gapless; a batch the child had in
flight is stored whole or not at all; a resent message is never stored twice.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import NOW_MS
from crash_child import LOGINS, MAP_SIZE_BYTES, TENANT, body_for, body_sha

from engine import Engine, Message, MessageKind

CHILD = Path(__file__).with_name("crash_child.py")
ROOT = CHILD.parent.parent
SEED = 20_240_611
KILLS_AFTER_FIRST_COMMIT = 24  # killed 50-300 ms after the child's first acknowledgement
KILLS_DURING_STARTUP = 4  # killed 0-250 ms after spawning: in imports, open or setup
TIME_BUDGET_S = 50.0
FIRST_COMMIT_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Stored:
    conv: int
    seq: int
    sender: int
    sha: str


@dataclass
class Batch:
    tried: list[tuple[int, int, str, str]]  # conv, sender, client_msg_id, body_sha
    acked: list[tuple[int, int, int, str, str, bool]]  # conv, seq, sender, cmid, sha, dup


def read_lines(path: Path) -> list[list[str]]:
    """The complete lines the child wrote; a line cut by the kill is not one."""
    text = path.read_text(encoding="utf-8")
    return [line.split() for line in text.split("\n")[:-1]]


def batches_of(lines: list[list[str]]) -> list[Batch]:
    batches: dict[int, Batch] = {}
    for fields in lines:
        batch = batches.setdefault(int(fields[1]), Batch([], []))
        if fields[0] == "T":
            conv, sender, cmid, sha = fields[2:]
            batch.tried.append((int(conv), int(sender), cmid, sha))
        else:
            conv, seq, sender, cmid, sha, dup = fields[2:]
            batch.acked.append((int(conv), int(seq), int(sender), cmid, sha, dup == "1"))
    return [batches[n] for n in sorted(batches)]


def stored_messages(store: Path) -> dict[str, Stored]:
    """Reopen the store and read every timeline whole, checking seqs are gapless from 1.

    Returns the user messages by client_msg_id; fails if one was stored twice."""
    engine = Engine(store, map_size=MAP_SIZE_BYTES)  # raises if the kill left it unreadable
    try:
        engine.stats()
        tenant = engine.find_tenant(TENANT)
        reader = engine.find_user(tenant, LOGINS[0])  # a member of every conversation
        found: dict[str, Stored] = {}
        for summary in engine.conversations(tenant, reader):
            timeline: list[Message] = []
            more = True
            while more:
                page = engine.page_after(tenant, reader, summary.conv, len(timeline), 500)
                timeline += page.messages
                more = page.more
            seqs = [m.seq for m in timeline]
            assert seqs == list(range(1, summary.head + 1)), (
                f"conversation {summary.conv}: seqs are not 1..{summary.head} without gaps"
            )
            for m in timeline:
                if m.kind is not MessageKind.TEXT:
                    continue
                assert m.body == body_for(m.client_msg_id), (
                    f"conversation {summary.conv} seq {m.seq}: body of {m.client_msg_id} damaged"
                )
                assert m.client_msg_id not in found, (
                    f"{m.client_msg_id} is stored twice: a retry was appended again"
                )
                found[m.client_msg_id] = Stored(summary.conv, m.seq, m.sender, body_sha(m.body))
        return found
    finally:
        engine.close()


def run_child_and_kill(
    store: Path, run: int, retries: list[tuple[int, int, str]], rng: random.Random,
    workdir: Path, startup_kill: bool,
) -> Path:
    """Start the child, SIGKILL it, and return the file holding what it printed."""
    retries_path = workdir / f"retries{run}.json"
    retries_path.write_text(json.dumps(retries))
    out_path, err_path = workdir / f"run{run}.out", workdir / f"run{run}.err"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, str(CHILD), str(store), str(run), str(SEED),
             str(NOW_MS + run * 60_000), str(retries_path)],
            stdout=out, stderr=err, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(CHILD.parent)])},
        )
    try:
        if startup_kill:
            time.sleep(rng.uniform(0.0, 0.25))
        else:
            give_up = time.monotonic() + FIRST_COMMIT_TIMEOUT_S
            while not any(f[0] == "M" for f in read_lines(out_path)):
                assert proc.poll() is None, (
                    f"run {run}: the child exited by itself:\n{err_path.read_text()}"
                )
                assert time.monotonic() < give_up, f"run {run}: no commit within the timeout"
                time.sleep(0.005)
            time.sleep(rng.uniform(0.05, 0.3))
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, (
        f"run {run}: the child ended before the kill (exit {proc.returncode}):\n"
        f"{err_path.read_text()}"
    )
    return out_path


@pytest.mark.slow
def test_acknowledged_messages_survive_sigkill_and_the_store_reopens_after_every_kill(
    tmp_path: Path,
) -> None:
    store = tmp_path / "store"
    rng = random.Random(SEED)
    started = time.monotonic()
    durable: dict[str, Stored] = {}  # what the store must hold from now on, by client_msg_id
    retries: list[tuple[int, int, str]] = []  # a killed run's unacknowledged sends
    total = KILLS_AFTER_FIRST_COMMIT + KILLS_DURING_STARTUP
    startup_runs = set(rng.sample(range(1, total), KILLS_DURING_STARTUP))
    acked_total = 0
    in_flight_committed = in_flight_lost = 0

    for run in range(total):
        assert time.monotonic() - started < TIME_BUDGET_S, (
            f"over the time budget after {run} kills"
        )
        out_path = run_child_and_kill(store, run, retries, rng, tmp_path, run in startup_runs)
        batches = batches_of(read_lines(out_path))
        stored = stored_messages(store)

        for batch in batches:
            for conv, seq, sender, cmid, sha, dup in batch.acked:
                acked_total += 1
                # A send is a retry exactly when its id was durable before it: then it must
                # answer with the stored seq, and a fresh send must not be taken for a retry.
                assert dup == (cmid in durable), (
                    f"run {run}: {cmid} answered duplicate={dup}, but it was "
                    f"{'already' if cmid in durable else 'never'} stored before"
                )
                durable.setdefault(cmid, Stored(conv, seq, sender, sha))
                assert durable[cmid] == Stored(conv, seq, sender, sha), (
                    f"run {run}: {cmid} acknowledged as {(conv, seq)}, first stored as "
                    f"{(durable[cmid].conv, durable[cmid].seq)}"
                )

        if batches and len(batches[-1].acked) < len(batches[-1].tried):
            # Killed between handing a batch to the engine and printing all of its acks: one
            # transaction, so it is stored whole or not at all (whole if any ack got out).
            last = batches[-1]
            fresh = {cmid for _, _, cmid, _ in last.tried} - durable.keys()
            fresh |= {a[3] for a in last.acked if not a[5]}
            present = {cmid for cmid in fresh if cmid in stored}
            assert present in (set(), fresh), (
                f"run {run}: the batch in flight at the kill is stored in part: "
                f"{sorted(present)} of {sorted(fresh)}"
            )
            assert not last.acked or present == fresh
            for cmid in present:
                durable[cmid] = stored[cmid]
            in_flight_committed += bool(present)
            in_flight_lost += not present and bool(fresh)
            retries = [(conv, sender, cmid) for conv, sender, cmid, _ in last.tried]
        elif batches:
            retries = []

        missing = [
            f"{cmid} (conversation {want.conv}, seq {want.seq})"
            for cmid, want in durable.items() if stored.get(cmid) != want
        ]
        assert not missing, (
            f"after kill {run + 1}: acknowledged but missing or changed in the reopened store: "
            + ", ".join(missing[:20])
        )
        assert len(stored) == len(durable), "the store holds messages nobody sent"

    # The loop must have done what it claims: many acks checked, kills that hit a commit.
    assert acked_total > 500
    assert in_flight_committed + in_flight_lost > 0
