"""Engine values to wire frames, and refusals to error frames: one table for both."""

from __future__ import annotations

from appliance.protocol.frames import (
    ConvsData,
    ConvSummary,
    ErrorFrame,
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
    SyncResult,
)

__all__ = [
    "convs_data",
    "error_frame",
    "history_data",
    "members_data",
    "not_logged_in",
    "sync_data",
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
    return ErrorFrame(request_id, "unauthenticated", "log in first (op 'login' or 'resume')")


# What a client is told instead of the refusal's own message: the details of an internal
# error (LMDB's words, a bug's) help nobody but the administrator, who has them in the log.
_CLIENT_MESSAGES: dict[type[HeraldError], str] = {
    InternalError: "the server failed to do this (an internal error, in its log); it was "
                   "not done",
}


def error_frame(request_id: int | None, refusal: HeraldError) -> ErrorFrame:
    """Engine refusals keep their stable codes on the wire, unchanged."""
    message = _CLIENT_MESSAGES.get(type(refusal), refusal.message)
    return ErrorFrame(request_id, refusal.code, message)
