"""The escrow's audit log: append-only, one JSON line per operation, hash-chained.

    {"seq": 7, "time": "2026-11-26T23:59:01.123+00:00", "client": "CN=appliance-1",
     "op": "unwrap", "key_id": "tenant-1", "outcome": "ok", "prev": "<hex SHA-256>"}

`prev` is the SHA-256 of the previous line's bytes (without its newline); the first line's is
64 zeros. Editing, inserting or removing a line breaks the chain at the next line; `verify`
finds it. Cutting lines off the end is detectable only against a head hash recorded elsewhere:
`herald escrow audit` prints it for the operator to note down. Each line is fsynced before the
operation's reply is sent. Lines never hold key material, data or aad.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["GENESIS", "AuditBroken", "AuditLog", "AuditReport", "verify_audit_log"]

GENESIS = "0" * 64
_FIELDS = ("seq", "time", "client", "op", "key_id", "outcome", "prev")


class AuditBroken(Exception):
    """The audit log's chain does not verify: it was edited, or a write was torn."""


@dataclass(frozen=True, slots=True)
class AuditReport:
    entries: list[dict[str, Any]]
    head: str  # SHA-256 of the last line: note it down to detect truncation later
    problem: str | None  # None when the chain verifies
    bad_line: int | None  # 1-based


def _line_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def verify_audit_log(path: Path) -> AuditReport:
    """Read and check the whole log at `path` (a missing log is an empty, valid one)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return AuditReport([], GENESIS, None, None)
    entries: list[dict[str, Any]] = []
    prev = GENESIS
    lines = raw.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    elif lines:
        return _broken(entries, prev, len(lines), "the last line is incomplete (a torn write)")
    for number, line in enumerate(lines, start=1):
        try:
            entry = json.loads(line)
        except ValueError:
            return _broken(entries, prev, number, "the line is not JSON")
        if not isinstance(entry, dict) or tuple(entry) != _FIELDS:
            return _broken(entries, prev, number, "the line does not have the audit fields")
        if entry["prev"] != prev:
            return _broken(entries, prev, number, "the line does not follow the one before it "
                                                  "(that one, or this one, was changed, added "
                                                  "or removed)")
        if entry["seq"] != number:
            return _broken(entries, prev, number, f"the sequence number should be {number}")
        entries.append(entry)
        prev = _line_hash(line)
    return AuditReport(entries, prev, None, None)


def _broken(entries: list[dict[str, Any]], head: str, number: int, problem: str) -> AuditReport:
    return AuditReport(entries, head, f"line {number}: {problem}", number)


class AuditLog:
    """The writer of one audit log. Refuses to continue a log whose chain is broken."""

    def __init__(self, path: Path) -> None:
        report = verify_audit_log(path)
        if report.problem is not None:
            raise AuditBroken(f"the audit log {path} does not verify ({report.problem}); keep "
                              f"it as evidence, move it aside, and start again")
        self._path = path
        self._prev = report.head
        self._seq = len(report.entries)
        self._lock = threading.Lock()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._file = os.fdopen(fd, "ab", buffering=0)

    def append(self, client: str, op: str, key_id: str, outcome: str) -> None:
        """Write and fsync one line. Raises OSError when the disk refuses."""
        with self._lock:
            entry = {
                "seq": self._seq + 1,
                "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "client": client, "op": op, "key_id": key_id, "outcome": outcome,
                "prev": self._prev,
            }
            line = json.dumps(entry, separators=(",", ":"), ensure_ascii=True).encode()
            self._file.write(line + b"\n")
            os.fsync(self._file.fileno())
            self._prev = _line_hash(line)
            self._seq += 1

    def close(self) -> None:
        self._file.close()
