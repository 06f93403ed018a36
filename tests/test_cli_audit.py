"""The command line's account and key commands record what they do in the audit log, naming
the OS user who ran them; `herald audit verify` checks the chain offline and names the first
bad entry; `herald audit list` shows entries, filtered, as a table or JSON lines. Sealed stores
run in child processes (tests/keyed_dirs.py says why); a plain store runs in this one."""

from __future__ import annotations

import datetime
import getpass
import json
from pathlib import Path

import lmdb
import pytest
from conftest import NOW_MS, PASSWORD
from keyed_dirs import herald

from appliance.cli import main
from appliance.cli.accounts import cli_actor
from engine import (
    ActorKind,
    AuditActor,
    Audited,
    CreateTenant,
    CreateUser,
    Engine,
    hash_password,
)

NEW_PASSWORD = "canary-77aa10-new-password"
GROUP_TITLE = "canary-title-of-the-group"

# Each command, its standard input, and the entries it leaves.
STEPS: list[tuple[tuple[str, ...], str, list[str]]] = [
    (("tenant", "add", "acme"), "", ["tenant.create", "keys.rotate"]),
    (("user", "add", "--tenant", "acme", "alice", "--password-stdin"), PASSWORD + "\n",
     ["user.create"]),
    (("user", "add", "--tenant", "acme", "bob", "--password-stdin"), PASSWORD + "\n",
     ["user.create"]),
    (("user", "passwd", "--tenant", "acme", "alice", "--password-stdin"), NEW_PASSWORD + "\n",
     ["user.set_password"]),
    (("user", "disable", "--tenant", "acme", "bob"), "", ["user.disable"]),
    (("user", "enable", "--tenant", "acme", "bob"), "", ["user.enable"]),
    (("user", "revoke-sessions", "--tenant", "acme", "alice"), "", ["user.revoke_sessions"]),
    (("group", "add", "--tenant", "acme", "--owner", "alice", "--members", "bob",
      GROUP_TITLE), "", ["group.create"]),
    (("keys", "rotate", "--tenant", "acme"), "", ["keys.rotate"]),
    (("keys", "shred", "--tenant", "acme", "--epoch", "1", "--confirm", "acme"), "",
     ["keys.shred"]),
    (("keys", "revoke", "--tenant", "acme", "--confirm", "acme"), "", ["keys.revoke"]),
]


def test_every_account_and_key_command_leaves_its_entries_naming_the_os_user(
    tmp_path: Path,
) -> None:
    from keyed_dirs import keyed_data_dir

    data = str(keyed_data_dir(tmp_path / "data"))
    for command, stdin, _ in STEPS:
        result = herald(*command[:2], "--data-dir", data, *command[2:], stdin=stdin)
        assert result.returncode == 0, (command, result.stderr)
    listed = herald("audit", "list", "--data-dir", data, "--json")
    assert listed.returncode == 0, listed.stderr
    entries = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [e["action"] for e in entries] == [a for _, _, actions in STEPS for a in actions]
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    for entry in entries:
        assert entry["actor"] == {"kind": "system", "tenant": 0, "id": 0,
                                  "name": f"cli:{getpass.getuser()}"}
        assert entry["outcome"] == "ok"
    assert entries[4]["target"] == entries[2]["target"]  # alice's password, alice's creation
    shown = listed.stdout
    assert PASSWORD not in shown and NEW_PASSWORD not in shown and GROUP_TITLE not in shown

    verified = herald("audit", "verify", "--data-dir", data)
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.startswith(f"audit log verified: {len(entries)} entries")
    assert entries[-1]["hash"] in verified.stdout

    _flip_a_byte_of_entry(Path(data) / "hot", 3)
    damaged = herald("audit", "verify", "--data-dir", data)
    assert damaged.returncode == 1
    assert "entry 3" in damaged.stderr and "altered" in damaged.stderr
    assert "2 entries before it verify" in damaged.stderr
    assert "Traceback" not in damaged.stderr + damaged.stdout
    listing = herald("audit", "list", "--data-dir", data)
    assert listing.returncode == 1 and "Traceback" not in listing.stderr
    assert "herald audit verify" in listing.stderr


def _flip_a_byte_of_entry(store: Path, seq: int) -> None:
    env = lmdb.open(str(store), max_dbs=32, map_size=512 * 2**20, create=False)
    try:
        with env.begin(write=True) as txn:
            audit = env.open_db(b"audit", txn=txn)
            key = seq.to_bytes(8, "big")
            value = bytearray(txn.get(key, db=audit))
            value[-3] ^= 0x01
            txn.put(key, bytes(value), db=audit)
    finally:
        env.close()


def test_the_cli_actor_names_the_os_user() -> None:
    assert cli_actor() == AuditActor(kind=ActorKind.SYSTEM, name=f"cli:{getpass.getuser()}")


@pytest.fixture
def plain_dir(tmp_path: Path) -> Path:
    """A plain store (no master key) with a few audited ops at known times."""
    data = tmp_path / "data"
    (data / "hot").mkdir(parents=True)
    engine = Engine(data / "hot")
    actor = AuditActor(kind=ActorKind.ADMIN, name="ops-anna")
    day = 86_400_000
    try:
        for name, at in (("acme", NOW_MS), ("globex", NOW_MS + day)):
            tenant = engine.apply(Audited(op=CreateTenant(name=name), actor=actor), at).tenant  # type: ignore[union-attr]
            engine.apply(Audited(op=CreateUser(tenant=tenant, login="alice", display_name="A",
                                               password_hash=hash_password(PASSWORD)),
                                 actor=actor), at + 1)
    finally:
        engine.close()
    return data


def _listed(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, object]]:
    assert main(["audit", "list", *args, "--json"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_audit_list_filters_by_tenant_action_and_time(
    plain_dir: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    data = ["--data-dir", str(plain_dir)]
    assert [e["seq"] for e in _listed(capsys, *data)] == [1, 2, 3, 4]
    assert [e["seq"] for e in _listed(capsys, *data, "--tenant", "globex")] == [3, 4]
    assert [e["seq"] for e in _listed(capsys, *data, "--action", "user.create")] == [2, 4]
    next_day = datetime.datetime.fromtimestamp(NOW_MS / 1000 + 86_400, tz=datetime.UTC)
    since = next_day.strftime("%Y-%m-%dT%H:%M:%S")
    assert [e["seq"] for e in _listed(capsys, *data, "--since", since)] == [3, 4]
    (first,) = _listed(capsys, *data, "--action", "tenant.create", "--tenant", "acme")
    assert first["actor"] == {"kind": "admin", "tenant": 0, "id": 0, "name": "ops-anna"}
    assert first["details"] == {"name": "acme"}
    assert first["time"] == datetime.datetime.fromtimestamp(
        NOW_MS / 1000, tz=datetime.UTC).isoformat(timespec="milliseconds")


def test_audit_list_prints_a_table_by_default(
    plain_dir: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["audit", "list", "--data-dir", str(plain_dir), "--tenant", "acme"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["seq", "time", "actor", "action", "tenant", "target",
                                "outcome", "details"]
    assert len(lines) == 3
    assert "admin:ops-anna" in lines[1] and "tenant.create" in lines[1] and "name=acme" in lines[1]
    assert "user.create" in lines[2] and "login=alice" in lines[2]


def test_audit_list_refuses_an_unknown_action_or_time_with_what_it_takes(
    plain_dir: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    data = ["--data-dir", str(plain_dir)]
    assert main(["audit", "list", *data, "--action", "user.explode"]) == 2
    assert "login.failed" in capsys.readouterr().err
    assert main(["audit", "list", *data, "--since", "last tuesday"]) == 2
    err = capsys.readouterr().err
    assert "--since" in err and "2h" in err
    assert main(["audit", "list", *data, "--tenant", "nope"]) == 1
    assert "no tenant is named 'nope'" in capsys.readouterr().err


def test_audit_verify_of_a_plain_store_prints_the_count_and_the_last_hash(
    plain_dir: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["audit", "verify", "--data-dir", str(plain_dir)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("audit log verified: 4 entries, the last one's hash ")
