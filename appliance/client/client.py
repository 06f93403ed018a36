"""HeraldClient: log in, stay connected, match replies to requests, send exactly once.

The client logs in and keeps the session token; when the connection drops it reconnects with
backoff and resumes with the token (logging in again if the token is refused), and says so to
the application (`status.py`). A server that cannot use the organisation's keys yet
(`key_unavailable` at login or in the catch-up sync) is waited for with backoff, never given
up on. Replies are matched to requests by id. A send is retried with the same client message
id across reconnects until acked, so the server stores it once; the message is then delivered
from the ack, since the server does not push it back to the connection that sent it. What
reaches the application, and in which order, is `delivery.py`'s business.

Tasks, all in the nursery of `open_client`: the connection supervisor (`_run`: connect,
authenticate, serve, back off, reconnect), the current connection's reader (`Session.run`) and
heartbeat, and the sequencer (`Delivery.run`).
"""

from __future__ import annotations

import logging
import random
import secrets
import ssl
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from itertools import count
from typing import Any, Literal, TypeVar

import msgspec
import trio

from appliance.client.cursors import Cursors
from appliance.client.delivery import Delivery
from appliance.client.errors import (
    CertificateRejected,
    ClientClosed,
    ClientError,
    ConnectionLost,
    LoginFailed,
    ProtocolViolation,
    ServerUnreachable,
)
from appliance.client.messages import MessageStream, Sent
from appliance.client.options import ClientOptions, ClientStats
from appliance.client.session import Session
from appliance.client.status import (
    ConnectionStatus,
    Disconnected,
    Reconnected,
    ReconnectFailed,
    StatusListener,
    WaitingForKeys,
)
from appliance.client.transport import (
    CONNECT_ERRORS,
    Target,
    handshake,
    open_stream,
    why_unreachable,
)
from appliance.protocol.codes import ByeCode, ErrorCode
from appliance.protocol.frames import (
    AddRequest,
    ChangeData,
    ClientFrame,
    ConvData,
    ConvsData,
    ConvsRequest,
    ConvSummary,
    CreateGroupRequest,
    HistoryData,
    HistoryRequest,
    JoinRequest,
    KickRequest,
    LeaveRequest,
    LoginData,
    LoginRequest,
    LogoutRequest,
    LookupData,
    LookupRequest,
    MembersData,
    MembersRequest,
    MsgPush,
    OkData,
    OpenDirectRequest,
    PasswordData,
    PasswordRequest,
    PingRequest,
    ReadData,
    ReadPush,
    ReadRequest,
    ResumeRequest,
    SendData,
    SendRequest,
    SyncData,
    SyncRequest,
    UserData,
    UsersData,
    UsersRequest,
    WireMessage,
)

__all__ = ["HeraldClient", "open_client"]

log = logging.getLogger("herald.client")

T = TypeVar("T")

# What each request's reply `data` decodes to.
_REPLY_TYPES: dict[type, type] = {
    PingRequest: OkData,
    SendRequest: SendData,
    SyncRequest: SyncData,
    HistoryRequest: HistoryData,
    ReadRequest: ReadData,
    MembersRequest: MembersData,
    ConvsRequest: ConvsData,
    LookupRequest: UserData,
    UsersRequest: UsersData,
    CreateGroupRequest: ConvData,
    OpenDirectRequest: ConvData,
    AddRequest: ChangeData,
    KickRequest: ChangeData,
    LeaveRequest: ChangeData,
    JoinRequest: ChangeData,
}


def _reply_type(frame: ClientFrame) -> type:
    """What `frame`'s reply `data` decodes to: `lookup` answers one login or many."""
    if isinstance(frame, LookupRequest) and frame.logins is not None:
        return LookupData
    return _REPLY_TYPES[type(frame)]


# Requests whose repetition changes nothing: repeated on the next connection when one breaks.
# A send is made safe by its client message id (see `send`); membership changes are not safe.
_SAFE_TO_REPEAT = frozenset({
    PingRequest, SyncRequest, HistoryRequest, ReadRequest, MembersRequest, ConvsRequest,
    LookupRequest, UsersRequest, OpenDirectRequest,
})
# A session that ends sooner than this (e.g. the server closes every new connection at once)
# does not reset the backoff, so a client never reconnects in a tight loop.
STABLE_SESSION_S = 10.0


# `bye` codes that end the session (docs/protocol.md, section 4): after them the token is dead.
_SESSION_ENDED = frozenset({ByeCode.LOGGED_OUT, ByeCode.SESSION_REVOKED,
                            ByeCode.PASSWORD_CHANGED, ByeCode.ACCOUNT_DISABLED,
                            ByeCode.SESSION_EXPIRED})


@dataclass(frozen=True, slots=True)
class _Attempt:
    """How one connection went: whether it logged in; in words, why it failed or why the
    session ended; and the refusal, when the server could not use the tenant's keys."""

    logged_in: bool
    reason: str = ""
    keys_unavailable: ClientError | None = None


class _KeysUnavailable(Exception):
    """The login was refused with `key_unavailable`: the server is up, its keys are not."""

    def __init__(self, refusal: ClientError) -> None:
        super().__init__(refusal)
        self.refusal = refusal


class HeraldClient:
    """A logged-in client. Make one with `open_client`, which connects, logs in and closes it.

    `cursors` maps conversation -> the last seq the application already holds (from its own
    store); the client then delivers everything after those. Without it the client starts from
    now: each conversation's current head is its starting point, and older messages are history
    (`history(conv, before=...)`). A conversation first heard of later delivers its latest
    `options.backlog` messages. `cursors()` says what to persist.
    """

    def __init__(
        self, url: str, tenant: str, login: str, password: str, *,
        ssl_context: ssl.SSLContext | None = None, cursors: Mapping[int, int] | None = None,
        options: ClientOptions | None = None, rng: Callable[[], float] = random.random,
        on_status: StatusListener | None = None,
    ) -> None:
        """`on_status` hears of disconnections, reconnections and waits for the server's keys
        (see `status.py`). Raises `ValueError` for a URL that is not ws:// or wss://, or an
        SSL context given with a ws:// URL."""
        self._target = Target.parse(url)
        if ssl_context is not None and not self._target.secure:
            raise ValueError("an SSL context needs a wss:// URL")
        self._url = url
        self._ssl_context = ssl_context
        self._tenant_name = tenant
        self._login = login
        self._password = password  # kept to log in again when the session token is refused
        # A password change whose reply was lost: the server may have made it or not, so a
        # login tries this one when the held password is refused (see `change_password`).
        self._password_in_doubt: str | None = None
        self._options = options or ClientOptions()
        self._rng = rng
        self._on_status = on_status
        self._key_waits = 0  # consecutive key_unavailable answers: the backoff's attempt count
        self.stats = ClientStats()
        self._ids = count(1)
        self._token = ""
        self._login_data: LoginData | None = None
        self._session: Session | None = None
        self._generation = 0
        self._changed = trio.Event()
        self._closing = False
        self._failure: LoginFailed | CertificateRejected | ServerUnreachable | None = None
        self._cursors = Cursors(cursors, backlog=self._options.backlog)
        self._read_marks: dict[int, int] = {}
        self._delivery = Delivery(self, self._cursors, self._options, self.stats,
                                  note_read=self._note_read, on_established=self._notify,
                                  wait_for_keys=self._wait_for_keys)
        self._messages = MessageStream(self._delivery.delivered, self._stopped_error)

    # -- identity and state -------------------------------------------------------------------

    @property
    def user(self) -> int:
        """The logged-in user's id."""
        return self._identity().user

    @property
    def tenant_id(self) -> int:
        return self._identity().tenant

    @property
    def display_name(self) -> str:
        return self._identity().display_name

    @property
    def connected(self) -> bool:
        """Whether a logged-in connection is up right now."""
        return self._session is not None and not self._session.finished.is_set()

    @property
    def messages(self) -> MessageStream:
        """Every message, once, in seq order per conversation (see `MessageStream`)."""
        return self._messages

    def cursors(self) -> dict[int, int]:
        """Per conversation, the last seq delivered with none missing below: what an
        application with a local store persists and hands back as `cursors` next time."""
        return self._cursors.snapshot()

    def read_mark(self, conv: int) -> int:
        """The last seq of `conv` the user has read, on any device, as far as this client knows
        (from sync, `convs`, its own `mark_read` and the server's read pushes); 0 if unknown."""
        return self._read_marks.get(conv, 0)

    def _identity(self) -> LoginData:
        if self._login_data is None:
            raise RuntimeError("not logged in yet; use open_client()")
        return self._login_data

    # -- requests -----------------------------------------------------------------------------

    async def request(self, frame: ClientFrame) -> Any:
        """Send any request (its `id` is replaced) and return its reply data as the op's
        Struct (`HistoryData` for `history`, `ConvsData` for `convs`, ...).

        Waits for a connection while the client is reconnecting. Requests safe to repeat are
        repeated on the next connection when one breaks; others raise `ConnectionLost`.
        Raises `ClientError` when the server refuses, `ServerUnreachable`, `LoginFailed` or
        `CertificateRejected` once the client has stopped, `ClientClosed` after `aclose`,
        `ProtocolViolation` for a reply this client cannot decode, `ValueError` for login,
        resume, logout and password (the client manages its session itself).
        """
        data, _ = await self.request_counted(frame)
        return data

    async def request_counted(self, frame: ClientFrame) -> tuple[Any, int]:
        """`request`, and the generation of the session that answered (1 for the first
        logged-in connection, 2 for the next, ...). Raises as `request`."""
        if isinstance(frame, LoginRequest | ResumeRequest | LogoutRequest | PasswordRequest):
            raise ValueError("the client manages its session itself")
        reply_type = _reply_type(frame)
        while True:
            session = await self._ready_session()
            try:
                data = await session.request(frame)
            except ConnectionLost:
                if type(frame) in _SAFE_TO_REPEAT:
                    continue
                raise
            return _convert(data, reply_type), session.generation

    async def send(
        self, conv: int, body: str, *, mentions: Iterable[int] = (), cmid: str | None = None
    ) -> Sent:
        """Send a text message and return its (seq, ts) once the server has stored it.

        Retried with the same client message id (`cmid`, generated when not given) across
        reconnects until acked, and after `retry_after` when throttled; the server stores it
        once. The message is then delivered on `messages` like any other. Bound the wait with a
        cancel scope.

        Raises `ClientError` when the server refuses it (`not_member`, `invalid`, ...),
        `ServerUnreachable`, `LoginFailed` or `CertificateRejected` once the client has stopped,
        `ClientClosed` after `aclose`.
        """
        return await self._send(SendRequest(
            id=0, conv=conv, cmid=cmid or secrets.token_hex(12), body=body,
            mentions=list(mentions)))

    async def recall(self, conv: int, seq: int, *, cmid: str | None = None) -> Sent:
        """Recall the user's own message `seq` of `conv`: a "recall" message (its `ref` is
        `seq`) is appended, and clients hide the recalled one. Retried as `send`.

        Raises `ClientError` `forbidden` for someone else's message, `invalid` for a seq that
        is not a message of `conv`, and as `send`.
        """
        return await self._send(SendRequest(
            id=0, conv=conv, cmid=cmid or secrets.token_hex(12), body="", kind="recall",
            ref=seq))

    async def _send(self, frame: SendRequest) -> Sent:
        """Send `frame` until acked or refused (see `send`)."""

        def deliver_from_ack(data: Any) -> None:
            # Runs in the reader, in wire order: before any frame that came after the ack.
            try:
                ack = msgspec.convert(data, SendData)
            except msgspec.ValidationError:
                return  # `_convert` below reports it to the caller
            self._delivery.hint(ack.conv, WireMessage(
                seq=ack.seq, sender=self.user, ts=ack.ts, kind=frame.kind, body=frame.body,
                cmid=frame.cmid, mentions=frame.mentions, ref=frame.ref))

        while True:
            session = await self._ready_session()
            try:
                data = await session.request(frame, on_reply=deliver_from_ack)
            except ConnectionLost:
                self.stats.send_retries += 1
                continue
            except ClientError as exc:
                if exc.code == ErrorCode.THROTTLED:
                    await trio.sleep(exc.retry_after or self._options.reconnect.first_delay_s)
                elif exc.code == ErrorCode.ENGINE_CLOSED:
                    # The server is stopping: retry on the next connection.
                    await session.finished.wait()
                else:
                    raise
                self.stats.send_retries += 1
                continue
            ack = _convert(data, SendData)
            return Sent(ack.seq, ack.ts)

    async def history(
        self, conv: int, *, before: int | None = None, after: int | None = None, limit: int = 50
    ) -> HistoryData:
        """A page of `conv`, ascending: before seq `before` (older history), after seq `after`,
        or the latest. `more` says whether messages exist beyond it in that direction. Not
        delivered on `messages`. Raises as `request`."""
        reply: HistoryData = await self.request(
            HistoryRequest(id=0, conv=conv, before=before, after=after, limit=limit))
        return reply

    async def convs(self) -> list[ConvSummary]:
        """Every conversation of the user with head, read mark and unread count, most recent
        activity first. Raises as `request`."""
        reply: ConvsData = await self.request(ConvsRequest(id=0))
        for summary in reply.convs:
            self._note_read(summary.conv, summary.read)
        return reply.convs

    async def mark_read(self, conv: int, seq: int) -> ReadData:
        """Mark `conv` read up to `seq` (a read mark never moves back). Raises as `request`."""
        reply: ReadData = await self.request(ReadRequest(id=0, conv=conv, seq=seq))
        self._note_read(conv, reply.read)
        return reply

    async def members(self, conv: int, since: int = 0) -> MembersData:
        """The member list of `conv`, whole or as the changes since version `since`."""
        reply: MembersData = await self.request(MembersRequest(id=0, conv=conv, since=since))
        return reply

    async def lookup(self, login: str) -> UserData:
        """A user of the tenant by login. Raises `ClientError` `not_found`, and as `request`."""
        reply: UserData = await self.request(LookupRequest(id=0, login=login))
        return reply

    async def lookup_many(self, logins: Iterable[str]) -> LookupData:
        """Users of the tenant by login (at most 500 at a time), in one request: `users` found
        and the logins `unknown` (another tenant's among them), each once, in the order
        given. Raises as `request`."""
        reply: LookupData = await self.request(LookupRequest(id=0, logins=list(logins)))
        return reply

    async def users(self, users: Iterable[int]) -> list[UserData]:
        """Names of users of the tenant by id (at most 500 at a time); ids that name no user
        of the tenant are left out. Raises as `request`."""
        reply: UsersData = await self.request(UsersRequest(id=0, users=list(users)))
        return reply.users

    async def open_direct(self, peer: int) -> int:
        """The direct conversation with user `peer` (created if needed). Raises as `request`."""
        reply: ConvData = await self.request(OpenDirectRequest(id=0, peer=peer))
        return reply.conv

    async def create_group(
        self, title: str, members: Iterable[int] = (), *, logins: Iterable[str] = (),
        open: bool = False,
    ) -> int:
        """Create a group owned by the user, with `members` (ids) and the users with `logins`;
        returns its conversation id. A login that names no user of the tenant refuses it
        (`ClientError` `not_found`, naming the login). Not repeated when the connection breaks
        (raises `ConnectionLost`): look at `convs()` before creating again."""
        reply: ConvData = await self.request(CreateGroupRequest(
            id=0, title=title, members=list(members), logins=list(logins), open=open))
        return reply.conv

    async def add_members(
        self, conv: int, users: Iterable[int] = (), *, logins: Iterable[str] = (),
        role: Literal["member", "admin"] = "member",
    ) -> ChangeData:
        """Add users to a group (owner or admin only), by id and by login. Raises as
        `create_group`."""
        reply: ChangeData = await self.request(
            AddRequest(id=0, conv=conv, users=list(users), logins=list(logins), role=role))
        return reply

    async def kick(self, conv: int, user: int) -> ChangeData:
        """Remove a member from a group. Raises as `create_group`."""
        reply: ChangeData = await self.request(KickRequest(id=0, conv=conv, user=user))
        return reply

    async def leave(self, conv: int) -> ChangeData:
        """Leave a group. Raises as `create_group`."""
        reply: ChangeData = await self.request(LeaveRequest(id=0, conv=conv))
        return reply

    async def join(self, conv: int) -> ChangeData:
        """Join an open group. Raises as `create_group`."""
        reply: ChangeData = await self.request(JoinRequest(id=0, conv=conv))
        return reply

    async def change_password(self, current: str, new: str) -> None:
        """Change the user's own password. Every other session of the user ends (their
        connections get `bye` `password_changed`); this client stays logged in, under the
        new session token the server returns, and logs in with `new` from now on.

        Raises `ClientError` `wrong_password` for a wrong `current` (answered late on
        purpose, and each failure slows the next attempts and logins: never retry in a loop),
        `weak_password` for a `new` the policy refuses (at least 8 characters), and as
        `request`. Not repeated when the connection breaks: `ConnectionLost` then means the
        change may or may not have been made; the client, reconnecting, resumes if it was
        not and otherwise logs in with whichever of the two passwords works.
        """
        frame = PasswordRequest(id=0, current=current, new=new)

        def adopt(data: Any) -> None:
            # Runs in the reader as the reply is read: a reconnect right after it already
            # resumes with the new token.
            try:
                reply = msgspec.convert(data, PasswordData)
            except msgspec.ValidationError:
                return  # `_convert` below reports it to the caller
            self._token, self._password, self._password_in_doubt = reply.token, new, None
            if self._login_data is not None:
                self._login_data = msgspec.structs.replace(
                    self._login_data, token=reply.token, expires_ms=reply.expires_ms)

        session = await self._ready_session()
        try:
            data = await session.request(frame, on_reply=adopt)
        except ConnectionLost:
            self._password_in_doubt = new
            raise
        _convert(data, PasswordData)

    async def ping(self) -> None:
        """A round trip to the server. Raises as `request`."""
        await self.request(PingRequest(id=0))

    async def aclose(self) -> None:
        """Close the connection normally and stop; later requests raise `ClientClosed`, and the
        message stream ends after what was delivered. Idempotent."""
        if self._closing:
            return
        self._closing = True
        self._delivery.close()
        self._notify()
        session = self._session
        if session is not None:
            await session.close()

    # -- connections --------------------------------------------------------------------------

    async def _run(self) -> None:
        """The connection supervisor: connect, serve, back off, reconnect; stop when the
        policy says so. Raises nothing but bugs."""
        policy = self._options.reconnect
        failures = 0
        short_sessions = 0  # consecutive sessions that ended soon: back off from those too
        while not self._closing:
            began = trio.current_time()
            try:
                attempt = await self._connect_once()
            except (LoginFailed, CertificateRejected) as refused:
                self._stop(refused)
                return
            if self._closing:
                return
            if attempt.keys_unavailable is not None:
                # The server answered: not a failure to reach it, so never a reason to stop.
                await self._wait_for_keys(attempt.keys_unavailable)
                continue
            if attempt.logged_in:
                failures = 0
                lasted = trio.current_time() - began
                short_sessions = short_sessions + 1 if lasted < STABLE_SESSION_S else 0
                self._report(Disconnected(attempt.reason))
            else:
                failures += 1
                self.stats.failed_connects += 1
                allowed = policy.attempts_allowed(ever_logged_in=self._generation > 0)
                if allowed is not None and failures >= allowed:
                    tries = f" ({failures} attempts)" if failures > 1 else ""
                    self._stop(ServerUnreachable(
                        f"cannot connect to {self._url}: {attempt.reason}{tries}"))
                    return
            delay = policy.delay_s(failures + short_sessions + 1, self._rng())
            if not attempt.logged_in:
                self._report(ReconnectFailed(attempt.reason, delay))
            log.info("reconnecting to %s in %.2fs", self._url, delay)
            await trio.sleep(delay)

    async def _wait_for_keys(self, refusal: ClientError) -> None:
        """The server cannot use the tenant's keys yet: say so, and wait before trying again
        (its `retry_after` if it gave one, else the reconnect policy's backoff)."""
        self._key_waits += 1
        delay = refusal.retry_after or self._options.reconnect.delay_s(
            self._key_waits, self._rng())
        log.warning("the server cannot use this organisation's keys yet (%s); retrying in "
                    "%.2fs", refusal.message, delay)
        self._report(WaitingForKeys(refusal.message, delay))
        await trio.sleep(delay)

    def _report(self, status: ConnectionStatus) -> None:
        if self._on_status is not None:
            self._on_status(status)

    async def _connect_once(self) -> _Attempt:
        """One connection, from opening to its end. Raises `LoginFailed`,
        `CertificateRejected`."""
        step = ["tcp"]
        timeout_s = self._options.connect_timeout_s
        try:
            with trio.fail_after(timeout_s):
                stream = await open_stream(self._target, self._ssl_context, step)
        except CONNECT_ERRORS as exc:
            log.info("cannot connect to %s: %r", self._url, exc)
            return _Attempt(False, why_unreachable(exc, self._target, step=step[-1],
                                                   timeout_s=timeout_s))
        try:
            async with trio.open_nursery() as nursery:
                outcome = await self._serve(nursery, stream)
                nursery.cancel_scope.cancel()
        finally:
            await trio.aclose_forcefully(stream)
        if isinstance(outcome, (LoginFailed, CertificateRejected)):
            raise outcome
        return outcome

    async def _serve(
        self, nursery: trio.Nursery, stream: trio.abc.Stream
    ) -> _Attempt | LoginFailed | CertificateRejected:
        """Handshake, authenticate, then serve until the connection ends. Returns rather than
        raises, so that nothing the network does leaves the nursery as an exception group."""
        options = self._options
        try:
            with trio.fail_after(options.connect_timeout_s):
                ws = await handshake(nursery, stream, self._target,
                                     max_message_bytes=options.max_message_bytes)
        except CertificateRejected as refused:
            return refused
        except CONNECT_ERRORS as exc:
            log.info("WebSocket handshake with %s failed: %r", self._url, exc)
            return _Attempt(False, why_unreachable(exc, self._target, step="websocket",
                                                   timeout_s=options.connect_timeout_s))
        session = Session(ws, stream, self._ids, on_push=self._on_push, on_read=self._on_read,
                          close_timeout_s=options.close_timeout_s)
        nursery.start_soon(session.run)
        try:
            with trio.fail_after(options.connect_timeout_s):
                await self._authenticate(session)
        except ConnectionLost:
            await session.abort()
            return _Attempt(False, "the connection broke during the login")
        except trio.TooSlowError:
            await session.abort()
            return _Attempt(False, f"no answer to the login within "
                                   f"{options.connect_timeout_s:g} s")
        except LoginFailed as refused:
            await session.close()
            return refused
        except _KeysUnavailable as waiting:
            await session.close()
            return _Attempt(False, waiting.refusal.message, waiting.refusal)
        if self._closing:
            await session.close()
            return _Attempt(True)
        self._key_waits = 0
        self._generation += 1
        session.generation = self._generation
        self._session = session
        self.stats.sessions += 1
        self._delivery.session_started(self._generation)
        self._notify()
        if self._generation > 1:
            self._report(Reconnected())
        if options.heartbeat_s is not None:
            nursery.start_soon(self._heartbeat, session, options.heartbeat_s)
        await session.finished.wait()
        if self._closing:  # `aclose` is closing it: let the closing handshake finish
            await session.closed.wait()
        self._session = None
        self._notify()
        bye = session.bye
        if bye is not None and bye.code in _SESSION_ENDED:
            self._token = ""  # never resume an ended session
            if bye.code != ByeCode.SESSION_EXPIRED:
                # Logged out, revoked, password changed, disabled: logging straight back in
                # with the password this client holds would undo what the user or the
                # administrator just did. Stop, and let the application ask.
                return LoginFailed(bye.code, bye.message)
        return _Attempt(True, bye.message if bye is not None else "the connection was lost")

    async def _authenticate(self, session: Session) -> None:
        """Resume with the token, else log in. Raises `LoginFailed`, `ConnectionLost`,
        `_KeysUnavailable`."""
        if self._token:
            try:
                data = await session.request(ResumeRequest(id=0, token=self._token))
            except ClientError as exc:
                self.stats.resumes_refused += 1
                log.info("session token refused (%s); logging in again", exc)
            else:
                self._logged_in(_convert(data, LoginData))
                self._password_in_doubt = None  # a change would have ended that session
                self.stats.resumes += 1
                return
        try:
            data = await self._log_in(session, self._password)
        except ClientError as exc:
            if exc.code == ErrorCode.KEY_UNAVAILABLE:  # the server waits for its escrow
                raise _KeysUnavailable(exc) from None
            doubt, self._password_in_doubt = self._password_in_doubt, None
            if doubt is None or exc.code != ErrorCode.UNAUTHENTICATED:
                raise LoginFailed(exc.code, exc.message, exc.retry_after,
                                  exc.request_id) from None
            try:  # the change whose reply was lost was made after all
                data = await self._log_in(session, doubt)
            except ClientError as again:
                if again.code == ErrorCode.KEY_UNAVAILABLE:  # the server waits for its escrow
                    self._password_in_doubt = doubt
                    raise _KeysUnavailable(again) from None
                raise LoginFailed(again.code, again.message, again.retry_after,
                                  again.request_id) from None
            self._password = doubt
        self._password_in_doubt = None
        self._logged_in(_convert(data, LoginData))
        self.stats.logins += 1

    async def _log_in(self, session: Session, password: str) -> Any:
        """The reply data of a login with `password`. Raises `ClientError`, `ConnectionLost`."""
        return await session.request(LoginRequest(
            id=0, tenant=self._tenant_name, login=self._login, password=password,
            device=self._options.device))

    def _logged_in(self, data: LoginData) -> None:
        self._login_data = data
        self._token = data.token

    async def _heartbeat(self, session: Session, interval_s: float) -> None:
        """Ping when the server has been quiet for `interval_s`; cut the connection when the
        pong does not come within as long (a dead peer sends no FIN)."""
        while not session.finished.is_set():
            await trio.sleep(interval_s)
            if trio.current_time() - session.last_received < interval_s:
                continue
            with trio.move_on_after(interval_s):
                await session.ping()
                continue
            log.warning("no pong from %s within %ss; dropping the connection", self._url,
                        interval_s)
            await session.abort()
            return

    async def _ready_session(self) -> Session:
        """The current logged-in session, waiting while the client reconnects."""
        while True:
            changed = self._changed
            self._raise_if_stopped()
            session = self._session
            if session is not None and not session.finished.is_set():
                return session
            await changed.wait()

    async def _wait_established(self) -> None:
        """Return once logged in with delivery cursors set; raise if the client stopped."""
        while True:
            changed = self._changed
            self._raise_if_stopped()
            if self._cursors.established and self._login_data is not None:
                return
            await changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _stop(self, failure: LoginFailed | CertificateRejected | ServerUnreachable) -> None:
        log.error("client stopped: %s", failure)
        self._failure = failure
        self._delivery.close()
        self._notify()

    def _stopped_error(self) -> BaseException:
        """A fresh exception saying why the client can no longer be used."""
        failure = self._failure
        if isinstance(failure, LoginFailed):
            return LoginFailed(failure.code, failure.message, failure.retry_after,
                               failure.request_id)
        if isinstance(failure, CertificateRejected):
            return CertificateRejected(*failure.args)
        if failure is not None:
            return ServerUnreachable(*failure.args)
        return ClientClosed("the client is closed")

    def _raise_if_stopped(self) -> None:
        if self._failure is not None or self._closing:
            raise self._stopped_error()

    # -- the reader's callbacks: never block ---------------------------------------------------

    def _on_push(self, frame: MsgPush) -> None:
        self._delivery.hint(frame.conv, frame.msg)

    def _on_read(self, frame: ReadPush) -> None:
        self._note_read(frame.conv, frame.read)

    def _note_read(self, conv: int, read: int) -> None:
        self._read_marks[conv] = max(read, self._read_marks.get(conv, 0))


def _convert(data: Any, type_: type[T]) -> T:
    try:
        return msgspec.convert(data, type_)
    except msgspec.ValidationError as exc:
        raise ProtocolViolation(f"unexpected {type_.__name__} from the server: {exc}") from None


@asynccontextmanager
async def open_client(
    url: str, tenant: str, login: str, password: str, *,
    ssl_context: ssl.SSLContext | None = None, cursors: Mapping[int, int] | None = None,
    options: ClientOptions | None = None, on_status: StatusListener | None = None,
) -> AsyncIterator[HeraldClient]:
    """Connect, log in, set the delivery cursors, and yield the running client; on exit close
    the connection normally and stop its tasks. `on_status` hears of the connection's ups and
    downs (`appliance.client.status`), also while `open_client` waits for the first login.

    `ssl_context` is for wss:// URLs; without one the system's default verification applies.
    Raises `LoginFailed` when the credentials are refused, `CertificateRejected` when a TLS
    certificate fails verification (never retried), `ServerUnreachable` when no
    connection is made within the reconnect policy, `ValueError` for a bad URL or options.
    """
    client = HeraldClient(url, tenant, login, password, ssl_context=ssl_context,
                          cursors=cursors, options=options, on_status=on_status)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client._run)
            nursery.start_soon(client._delivery.run)
            try:
                await client._wait_established()
                yield client
            finally:
                with trio.CancelScope(shield=True):
                    await client.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The background tasks raise nothing but bugs: a lone exception is the caller's own
        # (or why the client could not start), and belongs to the caller unwrapped.
        if len(group.exceptions) == 1 and not isinstance(group.exceptions[0], BaseExceptionGroup):
            single = group.exceptions[0]
            raise single from single.__cause__
        raise
