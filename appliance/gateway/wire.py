"""Engine values to wire frames, and refusals to error frames and `bye`s.

Every error frame the gateway sends is built here, and every `bye` code it sends is chosen
here: an engine refusal keeps its class's code (`error_frame`), and the gateway's own refusals
and closes name their member of the one table of codes (appliance/protocol/codes.py).
"""

from __future__ import annotations

from appliance.protocol.codes import ByeCode, ErrorCode
from appliance.protocol.frames import (
    Bye,
    ConvsData,
    ConvSummary,
    ErrorFrame,
    FrameError,
    HistoryData,
    MembersData,
    SyncConv,
    SyncData,
    WireMessage,
)
from engine import (
    ConversationSummary,
    HeraldError,
    InternalError,
    MemberList,
    Message,
    Page,
    SessionEnd,
    SyncResult,
)

__all__ = [
    "LOGIN_TIMED_OUT",
    "SHUTTING_DOWN",
    "convs_data",
    "error_code",
    "error_frame",
    "frame_refused",
    "history_data",
    "members_data",
    "not_logged_in",
    "retry_later",
    "session_end_code",
    "sync_data",
    "too_deeply_nested",
    "wire_message",
]


def wire_message(message: Message) -> WireMessage:
    return WireMessage(
        seq=message.seq, sender=message.sender, ts=message.ts, kind=message.kind.value,
        body=message.body, cmid=message.client_msg_id, mentions=list(message.mentions),
        ref=message.ref, recalled_by=message.recalled_by,
    )


def history_data(page: Page) -> HistoryData:
    return HistoryData(page.conv, page.head, [wire_message(m) for m in page.messages], page.more)


def sync_data(result: SyncResult) -> SyncData:
    convs = [
        SyncConv(c.conv, c.head, c.last_ts, c.read, c.unread, [wire_message(m) for m in c.messages],
                 c.more)
        for c in result.conversations
    ]
    return SyncData(convs, result.removed)


def members_data(listing: MemberList) -> MembersData:
    members = [(user, role.value) for user, role in listing.changed]
    return MembersData(listing.conv, listing.version, listing.full, members, listing.removed)


def convs_data(summaries: list[ConversationSummary]) -> ConvsData:
    return ConvsData([
        ConvSummary(s.conv, s.kind.value, s.title, s.role.value, s.head, s.last_ts, s.read,
                    s.unread, s.member_version, s.member_count, s.open)
        for s in summaries
    ])


def not_logged_in(request_id: int | None) -> ErrorFrame:
    """The refusal of any op but login, resume and ping before a connection logs in: one
    answer whether the op exists or is well formed, so that it tells nothing more."""
    return ErrorFrame(request_id, ErrorCode.UNAUTHENTICATED,
                      "log in first (op 'login' or 'resume')")


def frame_refused(refusal: FrameError) -> ErrorFrame:
    """A frame the codec could not read: its code (`bad_frame` or `unknown_op`) and why."""
    return ErrorFrame(refusal.request_id, refusal.code, refusal.message)


def too_deeply_nested() -> ErrorFrame:
    """JSON nested deeper than the decoder can go: a frame no client sends by mistake."""
    return ErrorFrame(None, ErrorCode.BAD_FRAME, "JSON nested too deeply")


def retry_later(request_id: int, message: str, retry_after_s: float) -> ErrorFrame:
    """Too much at once (the writer's queue is full, or a data key is being fetched): the
    client resends the same frame after `retry_after_s`. Not the refusal's own code: a full
    queue is a `CapacityExceeded` inside the server, but nothing the client must report."""
    return ErrorFrame(request_id, ErrorCode.THROTTLED, message, retry_after=retry_after_s)


# What a client is told instead of the refusal's own message: the details of an internal
# error (LMDB's words, a bug's) help nobody but the administrator, who has them in the log.
_CLIENT_MESSAGES: dict[type[HeraldError], str] = {
    InternalError: "the server failed to do this (an internal error, in its log); it was "
                   "not done",
}


def error_code(refusal: HeraldError) -> ErrorCode:
    """The wire code of an engine refusal: its class's own `code`, unchanged. Every class's
    code is a member of `ErrorCode` (tests/test_wire_codes.py walks the class tree)."""
    return ErrorCode(refusal.code)


def error_frame(request_id: int | None, refusal: HeraldError) -> ErrorFrame:
    """Engine refusals keep their stable codes on the wire, unchanged."""
    message = _CLIENT_MESSAGES.get(type(refusal), refusal.message)
    return ErrorFrame(request_id, error_code(refusal), message)


SHUTTING_DOWN = Bye(ByeCode.SHUTDOWN, "the server is shutting down; reconnect shortly")
LOGIN_TIMED_OUT = Bye(ByeCode.LOGIN_TIMEOUT, "log in sooner after connecting")

_SESSION_END_CODES: dict[SessionEnd, ByeCode] = {
    SessionEnd.LOGGED_OUT: ByeCode.LOGGED_OUT,
    SessionEnd.REVOKED: ByeCode.SESSION_REVOKED,
    SessionEnd.PASSWORD_CHANGED: ByeCode.PASSWORD_CHANGED,
    SessionEnd.ACCOUNT_DISABLED: ByeCode.ACCOUNT_DISABLED,
    SessionEnd.EXPIRED: ByeCode.SESSION_EXPIRED,
}


def session_end_code(reason: SessionEnd) -> ByeCode:
    """The `bye` code that tells a connection why its session ended."""
    return _SESSION_END_CODES[reason]
