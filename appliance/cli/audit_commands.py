"""`herald audit verify|list`: the appliance's audit log, read offline from the data directory
(docs/admin.md "Audit log"; what it holds: docs/security.md "The appliance's audit log").

Both only read, so they run beside a running server (LMDB readers never block its writer).
They need the name key alone, not the escrow: the log is sealed under a key derived from the
name key so that it stays readable whatever happens to the tenants' data keys (a shred, a
revocation, an escrow that does not answer).
"""

from __future__ import annotations

import datetime
import json
import re
import sys
from collections.abc import Iterator

from appliance.cli.unlock import open_name_keyed_engine
from appliance.config import Config
from appliance.gateway.writer import wall_clock_ms
from appliance.keys.errors import KeyManagementError
from engine import AuditAction, AuditEntry, CorruptData, Engine, HeraldError

__all__ = ["list_entries", "parse_since", "verify"]

PAGE_ENTRIES = 1000
_RELATIVE = re.compile(r"(\d+)([smhd])")
_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
SINCE_HELP = "a UTC date or time (2026-12-07, 2026-12-07T09:30) or an age (90s, 30m, 2h, 7d)"


class _Refused(Exception):
    """A bad argument: exit 2 with this message."""


def parse_since(text: str, now_ms: int) -> int:
    """The time `--since` names, in ms: an ISO date or date and time (UTC unless it says
    otherwise), or an age before `now_ms`. Raises `ValueError` for anything else."""
    relative = _RELATIVE.fullmatch(text.strip())
    if relative:
        return now_ms - int(relative.group(1)) * _UNIT_MS[relative.group(2)]
    moment = datetime.datetime.fromisoformat(text.strip())
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return int(moment.timestamp() * 1000)


def _open(config: Config) -> Engine | None:
    """The store, with its name key; None (after saying why) when it cannot be opened."""
    try:
        return open_name_keyed_engine(config)
    except HeraldError as exc:
        print(f"herald: cannot open the store in {config.data_dir}: {exc.message}",
              file=sys.stderr)
    except KeyManagementError as exc:
        print(f"herald: {exc.message} ({exc.code})", file=sys.stderr)
    return None


def verify(config: Config) -> int:
    """Check the whole chain: 0 and the count and last hash (to note down elsewhere), or 1 and
    the first bad entry."""
    engine = _open(config)
    if engine is None:
        return 1
    try:
        verdict = engine.verify_audit()
    finally:
        engine.close()
    if not verdict.ok:
        assert verdict.problem is not None
        print(f"herald: the audit log is damaged at entry {verdict.bad_seq} "
              f"({verdict.problem.value}): {verdict.why}; {verdict.count} entries before it "
              f"verify", file=sys.stderr)
        return 1
    noun = "entry" if verdict.count == 1 else "entries"
    print(f"audit log verified: {verdict.count} {noun}, the last one's hash "
          f"{verdict.head_hash.hex()}\n"
          f"(note both down away from this machine: `herald audit list --json` shows later "
          f"whether entry {verdict.count} still has this hash, which a log rolled back to an "
          f"older copy would not)")
    return 0


def list_entries(config: Config, tenant_name: str | None, action: str | None,
                 since: str | None, as_json: bool) -> int:
    """Print the entries that match, oldest first: a table, or one JSON object a line."""
    try:
        chosen = _action(action)
        since_ms = _since(since)
    except _Refused as exc:
        print(f"herald: {exc}", file=sys.stderr)
        return 2
    engine = _open(config)
    if engine is None:
        return 1
    try:
        tenant = engine.find_tenant(tenant_name) if tenant_name is not None else None
        entries = _entries(engine, chosen, tenant, since_ms)
        if as_json:
            for entry in entries:
                print(json.dumps(_as_json(entry), sort_keys=False))
        else:
            print(_ROW.format("seq", "time", "actor", "action", "tenant", "target", "outcome",
                              "details").rstrip())
            for entry in entries:
                print(_row(entry))
    except HeraldError as exc:
        print(f"herald: {exc.message} ({exc.code})", file=sys.stderr)
        return 1
    finally:
        engine.close()
    return 0


def _action(action: str | None) -> AuditAction | None:
    if action is None:
        return None
    try:
        return AuditAction(action)
    except ValueError:
        raise _Refused(f"--action {action!r} is none of the actions: "
                       f"{', '.join(a.value for a in AuditAction)}") from None


def _since(since: str | None) -> int | None:
    if since is None:
        return None
    try:
        return parse_since(since, wall_clock_ms())
    except ValueError:
        raise _Refused(f"--since {since!r} is not {SINCE_HELP}") from None


def _entries(engine: Engine, action: AuditAction | None, tenant: int | None,
             since_ms: int | None) -> Iterator[AuditEntry]:
    """Every match, a page at a time (each page one short read of the store)."""
    after = 0
    while True:
        try:
            page = engine.audit_entries(after, PAGE_ENTRIES, action=action, tenant=tenant,
                                        since_ms=since_ms)
        except CorruptData as exc:
            raise CorruptData(f"an audit entry after entry {after} cannot be read ({exc.message})"
                              f": run `herald audit verify` to find the first bad one") from None
        yield from page.entries
        if not page.more:
            return
        after = page.scanned_to


def _time(ms: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)


def _as_json(entry: AuditEntry) -> dict[str, object]:
    actor = entry.actor
    return {
        "seq": entry.seq, "time": _time(entry.time_ms).isoformat(timespec="milliseconds"),
        "time_ms": entry.time_ms,
        "actor": {"kind": actor.kind.value, "tenant": actor.tenant, "id": actor.id,
                  "name": actor.name},
        "action": entry.action.value, "tenant": entry.tenant, "target": entry.target,
        "outcome": entry.outcome.value, "reason": entry.reason, "details": entry.details,
        "prev_hash": entry.prev_hash.hex(), "hash": entry.hash.hex(),
    }


_ROW = "{:>6}  {:<20}  {:<24}  {:<22}  {:>6}  {:<10}  {:<24}  {}"


def _actor(entry: AuditEntry) -> str:
    actor = entry.actor
    who = actor.name or (f"#{actor.id}" if actor.id else "unknown")
    return f"{actor.kind.value}:{who}"


def _row(entry: AuditEntry) -> str:
    outcome = entry.outcome.value + (f": {entry.reason}" if entry.reason else "")
    details = " ".join(f"{name}={value!r}" if isinstance(value, str) and " " in value
                       else f"{name}={value}" for name, value in entry.details.items())
    return _ROW.format(entry.seq, _time(entry.time_ms).strftime("%Y-%m-%dT%H:%M:%SZ"),
                       _actor(entry), entry.action.value, entry.tenant or "-",
                       entry.target or "-", outcome, details).rstrip()
