"""Ending sessions on the wire: every connection of a revoked session is closed, with a `bye`.

Two paths lead here. A revocation made through this server's writer (logout, and later the
admin API) is seen in `on_committed` and closes the connections at once. One made by another
process on the same store (`herald user revoke-sessions`, `passwd`, `disable`) is found by
`run`, which re-reads the sessions of all connected clients every `session_check_interval_s`
(one read transaction, one LMDB get per connected session: docs/security.md has the cost).
The same sweep closes connections whose session expired, and an hourly job prunes expired
sessions from the store.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import trio

from appliance.gateway.connection import CLOSE_POLICY
from appliance.gateway.wire import session_end_code
from appliance.gateway.writer import Committed
from appliance.protocol.frames import Bye
from engine import (
    CapacityExceeded,
    EngineClosed,
    HeraldError,
    PasswordChanged,
    PruneSessions,
    SessionEnd,
    SessionsPruned,
    SessionsRevoked,
)

if TYPE_CHECKING:
    from appliance.gateway.connection import Connection
    from appliance.gateway.server import Services

__all__ = ["BYE_MESSAGES", "SessionGuard"]

log = logging.getLogger("herald.sessions")

PRUNE_INTERVAL_S = 3600.0

BYE_MESSAGES = {
    SessionEnd.LOGGED_OUT: "this session was logged out; log in again",
    SessionEnd.REVOKED: "an administrator ended this session; log in again",
    SessionEnd.PASSWORD_CHANGED: "the password was changed; log in with the new password",
    SessionEnd.ACCOUNT_DISABLED: "this account is disabled; ask an administrator",
    SessionEnd.EXPIRED: "the session expired; log in again",
}


class SessionGuard:
    def __init__(self, services: Services) -> None:
        self._s = services
        self.sweeps = 0
        self.closed = 0

    def end(self, conns: Sequence[Connection], reason: SessionEnd) -> None:
        """Close `conns` with a `bye` saying why, then close code 1008. Those closing already
        are left out: a sweep may meet connections that a commit closed while it read the
        store, and counting (and logging) them twice would overstate what it did."""
        conns = [conn for conn in conns if not conn.closing]
        if not conns:
            return
        bye = Bye(session_end_code(reason), BYE_MESSAGES[reason])
        for conn in conns:
            conn.close(CLOSE_POLICY, bye)
        self.closed += len(conns)
        users = sorted({conn.user for conn in conns})
        log.info("session ended (%s): closed %d connections of users %s%s", reason.value,
                 len(conns), users[:10], " ..." if len(users) > 10 else "")

    def on_committed(self, batch: Sequence[Committed]) -> None:
        """Close at once the connections of sessions this server's own writes ended; the
        connection that asked answers by itself: a logout closes itself, and a password
        change stays open, rebound to its new session (the router did that in the writer's
        callback, which runs before this)."""
        for entry in batch:
            outcome = entry.outcome
            if isinstance(outcome, PasswordChanged):
                outcome = outcome.revoked
            if not isinstance(outcome, SessionsRevoked) or not outcome.token_hashes:
                continue
            ended = set(outcome.token_hashes)
            peers: Iterable[Any] = self._s.hub.connections_of(outcome.tenant, outcome.user)
            self.end([conn for conn in peers if conn is not entry.origin
                      and conn.session in ended], outcome.reason)

    def sweep(self, ended: dict[bytes, SessionEnd], conns: Sequence[Connection]) -> None:
        """Close those of `conns` whose session is in `ended`.

        A connection changing its own password is skipped: `ended` may have been read after
        that change committed (so its old token shows as ended) but be handled before the
        writer's callback rebinds it to its new session. The next sweep sees it as it is.
        """
        by_reason: dict[SessionEnd, list[Connection]] = {}
        for conn in conns:
            if conn.changing_session:
                continue
            reason = ended.get(conn.session)
            if reason is not None:
                by_reason.setdefault(reason, []).append(conn)
        for reason, closing in by_reason.items():
            self.end(closing, reason)

    async def run(self) -> None:
        """Check the connected sessions every interval, forever; prune hourly."""
        interval = self._s.config.gateway.session_check_interval_s
        next_prune = trio.current_time() + PRUNE_INTERVAL_S
        while True:
            await trio.sleep(interval)
            peers: Iterable[Any] = self._s.hub.connections()
            conns = [conn for conn in peers if conn.session and not conn.closing]
            if conns:
                hashes = list({conn.session for conn in conns})
                try:
                    ended = await trio.to_thread.run_sync(
                        self._s.engine.ended_sessions, hashes, self._s.clock_ms())
                except EngineClosed:
                    return
                except HeraldError as exc:  # e.g. a damaged record: keep serving, say so
                    log.warning("checking the connected sessions failed: %s", exc.message)
                    continue
                self.sweep(ended, conns)
                self._s.flusher.flush_all()
            self.sweeps += 1
            if trio.current_time() >= next_prune:
                next_prune = trio.current_time() + PRUNE_INTERVAL_S
                self._prune()

    def _prune(self) -> None:
        def done(outcome: object) -> None:
            if isinstance(outcome, HeraldError):
                log.warning("pruning expired sessions failed: %s", outcome.message)
            elif isinstance(outcome, SessionsPruned):
                log.info("pruned %d expired sessions", outcome.count)
                if outcome.more:
                    self._prune()

        # Busy or stopping: the next hour tries again.
        with contextlib.suppress(CapacityExceeded, EngineClosed):
            self._s.writer.submit(PruneSessions(), done)
