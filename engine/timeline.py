"""Conversation timelines: gapless appends (idempotent per sender and client_msg_id), pages.

Read diffusion: a message is written once, into the conversation's last message block (keyed
`tenant|conv|first seq`, engine/blocks.py), whatever the size of the conversation. Each append
also rewrites the conversation's head, one dedupe entry and the sender's cursor; nothing is
written per recipient. A recall also rewrites the block of the message it hides, without that
message's content.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Callable
from typing import Any, NamedTuple, cast

import msgspec

from engine.blocks import (
    BLOCK_MAX_MESSAGES,
    BLOCK_MAX_STORED_BYTES,
    BLOCK_RECORD_OVERHEAD,
    TAIL_MAX_MESSAGES,
    TAIL_MAX_STORED_BYTES,
    block_index,
    extend_block,
    merge_blocks,
    pack_block,
)
from engine.crypto import CONTENT_DIGEST_BYTES, Keyring, plain_content_digest, sealed_epoch
from engine.errors import (
    ClientMsgIdReused,
    Conflict,
    Forbidden,
    Invalid,
    KeyUnavailable,
    NotFound,
    NotMember,
)
from engine.hotstore import HotStore
from engine.keys import pack_id, pack_ids
from engine.limits import Limits
from engine.message_cache import PLAIN_EPOCH, CachedMessage, MessageCache
from engine.ops import Append, Appended
from engine.records import (
    ConversationRecord,
    MemberRecord,
    Message,
    MessageKind,
    RecordSealer,
    Role,
    pack_cursor,
    pack_head,
    unpack_cursor,
    unpack_head,
    unpack_head_block,
)

__all__ = ["Page", "Timeline"]

_DEDUPE = struct.Struct(">QQQ")  # conv, seq, ts; then the content digest (may be empty)
# The digest of a recalled message's dedupe entry: its content is gone, and any retry of it is
# answered as one (no digest a content could have is all zeros but by a 2**-128 chance).
RECALLED_DIGEST = bytes(CONTENT_DIGEST_BYTES)
# `pack_ids` of two and of three ids (the same bytes), without its dispatch on the count: an
# append packs six keys, and the dispatch was a tenth of its CPU (docs/benchmarks.md).
_pack_ids2 = struct.Struct(">QQ").pack
_pack_ids3 = struct.Struct(">QQQ").pack
_SEQ = struct.Struct(">Q")


def _seq_of(key: bytes) -> int:
    """The first seq of a `messages` key (tenant|conv|first seq of the block)."""
    return int(_SEQ.unpack_from(key, 16)[0])


def _seek_block(cur: Any, conv_key: bytes, seq: int) -> bool:
    """Put `cur` on the block of conversation `conv_key` (tenant|conv) that holds `seq` if
    stored: the one with the greatest first seq <= `seq`. False when there is none."""
    target = conv_key + _SEQ.pack(seq)
    if cur.set_range(target):
        if cur.key() == target:
            return True
        if not cur.prev():
            return False
    elif not cur.last():
        return False
    return bool(cur.key()[:16] == conv_key)

_MESSAGES = b"messages"  # table names, which a sealer binds each record to
_MEMBERS = b"members"
_CONVS = b"convs"
_USER_KINDS = frozenset({MessageKind.TEXT, MessageKind.BOT, MessageKind.RECALL})
# A scan of at most this many seqs first asks the cache for all of them, and skips the LMDB
# cursor when it has every one (more than the largest page, sync's per-conversation share and
# a fanout's run; a longer scan, rare, opens what the cache lacks without that shortcut).
_MAX_CACHED_RUN = 1024
# Last blocks kept opened for appends (at most about 2 KiB of plaintext each, plus the stored
# value): the conversations being written to.
_MAX_TAILS = 4096


class _Located(NamedTuple):
    """A stored message and its block: the block's key, its records, the message's position
    in them, and the block's key epoch."""

    key: bytes
    records: list[bytes]
    position: int
    message: Message
    epoch: int | None  # the key epoch the block is sealed under; None in a plain store


class Page(msgspec.Struct, frozen=True):
    """Consecutive messages of one conversation in ascending seq order.

    `more` says whether messages exist beyond the page in the direction it was read.
    """

    conv: int
    head: int
    messages: list[Message]
    more: bool


class Timeline:
    def __init__(
        self, store: HotStore, sealer: RecordSealer, limits: Limits,
        cache: MessageCache | None = None, keyring: Keyring | None = None,
    ) -> None:
        """With `cache`, reads serve opened messages from it and fill it; `keyring` (a sealed
        store's) names the epoch new blocks are sealed under, and each cache entry keeps the
        epoch of its block (PLAIN_EPOCH in a plain store). The engine collects the messages a
        batch appends in `appended` and fills the cache once they commit."""
        self._store = store
        self._dbs = store.dbs
        self._sealer = sealer
        self._limits = limits
        self._cache = cache
        self._epoch_of: Callable[[bytes], int] | None = None
        self._write_epoch: Callable[[bytes], int] | None = None
        # conv key -> (stored last block, its plaintext), sealed stores only: an append then
        # extends the block it wrote last without decrypting it again. An entry is used only
        # while the store still holds exactly that value (a rolled-back batch leaves a stale
        # entry, which then misses); `drop_tails` empties it when the keyring forgets a DEK.
        self._tails: dict[bytes, tuple[bytes, bytes]] | None = None
        self._keyring = keyring
        if keyring is not None:
            self._epoch_of = sealed_epoch
            self._write_epoch = keyring.write_epoch
            self._tails = {}
        # (conv key, seq, opened message) of each message written in the current write
        # transaction, when the engine hands a list over (it does with a cache); else None.
        self.appended: list[tuple[bytes, int, CachedMessage]] | None = None
        # (conv key, first seq, last seq) of each block a recall rewrote in the current write
        # transaction, handed over like `appended`: their cached messages are stale once it
        # commits.
        self.rewritten: list[tuple[bytes, int, int]] | None = None
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode_message = msgspec.msgpack.Decoder(Message).decode
        self._decode_member = msgspec.msgpack.Decoder(MemberRecord).decode
        self._decode_conversation = msgspec.msgpack.Decoder(ConversationRecord).decode

    # -- writes (inside the caller's write transaction) ---------------------------------------

    def append(self, txn: Any, op: Append, now_ms: int) -> Appended:
        """Append a user message. Checks everything before writing anything.

        A recall also blanks the message it hides (`_blank`). Raises `Invalid` (sizes, kind,
        client_msg_id, a mention of a non-member, a recall carrying a body or mentions, or of
        a system message, a recall or a seq not stored), `NotFound` (no such conversation, or
        one the sender may not see), `NotMember` (an open group the sender is not in),
        `Forbidden` (recalling another's message without being an admin), `Conflict`
        (client_msg_id already used for another conversation; a message recalled already),
        `ClientMsgIdReused` (the client_msg_id was used for other content).
        """
        limits = self._limits
        cmid = op.client_msg_id.encode()
        if not cmid or len(cmid) > limits.max_client_msg_id_bytes:
            raise Invalid(f"client_msg_id must be 1 to {limits.max_client_msg_id_bytes} bytes")
        if op.kind not in _USER_KINDS:
            raise Invalid(f"a client may not send messages of kind {op.kind!r}")
        if len(op.body.encode()) > limits.max_body_bytes:
            raise Invalid(f"message body is longer than {limits.max_body_bytes} bytes")
        if len(op.mentions) > limits.max_mentions:
            raise Invalid(f"a message may mention at most {limits.max_mentions} users")
        if op.kind == MessageKind.RECALL and (op.body or op.mentions):
            raise Invalid("a recall carries no body and no mentions: only the seq it hides (ref)")

        if self._keyring is not None:  # the disk then shows no client_msg_id
            cmid = self._keyring.blind_client_msg_id(pack_id(op.tenant), cmid)
        dedupe_key = self._dedupe_key(op.tenant, now_ms, op.sender, cmid)
        digest = self._content_digest(op, cmid)
        duplicate = self._find_duplicate(txn, dedupe_key, op.tenant, op.sender, cmid, now_ms)
        if duplicate is not None:
            conv, seq, ts, stored_digest = duplicate
            if conv != op.conv:
                raise Conflict("client_msg_id was already used for another conversation")
            if not self._same_content(txn, op, seq, digest, stored_digest):
                raise ClientMsgIdReused(
                    f"client_msg_id was already used for message {seq} of this conversation, "
                    f"with other content: a retry sends the same message; a new message "
                    f"needs a new client_msg_id"
                )
            return Appended(conv=conv, seq=seq, ts=ts, duplicate=True)

        recaller_role = None  # only a recall needs the sender's role, so only it opens the record
        if op.kind is MessageKind.RECALL:
            recaller_role = self.member(txn, op.tenant, op.conv, op.sender).role
        else:
            self.check_member(txn, op.tenant, op.conv, op.sender)
        members_db = self._dbs.members
        for mentioned in op.mentions:
            if txn.get(_pack_ids3(op.tenant, op.conv, mentioned), db=members_db) is None:
                raise Invalid(f"user {mentioned} is mentioned but is not a member of this "
                              f"conversation")
        head = self._head(txn, op.tenant, op.conv)
        head_seq = head[0]
        if recaller_role is not None:
            target = self._check_recall(txn, op, recaller_role, head_seq)
            # The recalled message's content leaves the store with this commit (its block is
            # re-sealed without it); the recall itself is then written after it. A recall
            # seals twice, so in a sealed store it runs in a nested transaction (engine.core).
            self._blank(txn, op.tenant, target, head_seq + 1)
        elif op.ref:
            raise Invalid("only a recall refers to another message")

        # The message's seal is this op's first write (but a recall's), and nothing after it
        # can refuse: a missing or expired key leaves no trace without a nested transaction.
        seq, ts = self._write(txn, op, head, now_ms)
        txn.put(dedupe_key, _DEDUPE.pack(op.conv, seq, ts) + digest, db=self._dbs.dedupe)
        # The sender has read its own message: its unread count must not grow by it.
        txn.put(
            _pack_ids3(op.tenant, op.sender, op.conv), pack_cursor(seq, seq),
            db=self._dbs.user_convs,
        )
        return Appended(conv=op.conv, seq=seq, ts=ts)

    def append_system(
        self, txn: Any, tenant: int, conv: int, actor: int, event: str, users: tuple[int, ...],
        now_ms: int,
    ) -> int:
        """Record a membership event in the timeline, so that every member's sync sees it."""
        head = self._head(txn, tenant, conv)
        op = Append(
            tenant=tenant, conv=conv, sender=actor, client_msg_id="", body=event,
            kind=MessageKind.SYSTEM, mentions=users,
        )
        seq, _ = self._write(txn, op, head, now_ms)
        return seq

    def _write(
        self, txn: Any, op: Append, head: tuple[int, int, int], now_ms: int
    ) -> tuple[int, int]:
        """Append the message after `head` (seq, ts, first seq of the last block): into the
        last block while it has room and is sealed under the current epoch, else as a new
        block, after merging the full tail into the block before it when they fit
        (engine/blocks.py). Every seal comes before the first write, so a missing key leaves
        no trace."""
        head_seq, head_ts, block_first = head
        seq = head_seq + 1
        ts = max(now_ms, head_ts)  # timestamps never go backwards within a conversation
        message = Message(
            seq=seq, sender=op.sender, ts=ts, client_msg_id=op.client_msg_id, kind=op.kind,
            body=op.body, mentions=op.mentions, ref=op.ref,
        )
        record = self._encode(message)
        messages_db = self._dbs.messages
        conv_key = _pack_ids2(op.tenant, op.conv)
        block = None
        merge = None
        if head_seq:
            tail_key = conv_key + _SEQ.pack(block_first)
            tail = txn.get(tail_key, db=messages_db)
            if tail is not None and self._extends(tail, tail_key):
                if (
                    seq - block_first < TAIL_MAX_MESSAGES
                    and len(tail) + len(record) + BLOCK_RECORD_OVERHEAD <= TAIL_MAX_STORED_BYTES
                ):
                    key = tail_key
                    block = extend_block(self._open_tail(tail_key, tail), record)
                else:
                    merge = self._merge_tail(txn, tail_key, tail, seq - block_first)
        if block is None:
            block_first = seq
            key = conv_key + _SEQ.pack(seq)
            block = pack_block((record,))
        sealed = self._sealer.seal(_MESSAGES, key, block)
        # Every seal is made: nothing below can refuse.
        if merge is not None:
            merged_key, merged, old_tail_key = merge
            txn.put(merged_key, merged, db=messages_db)
            txn.delete(old_tail_key, db=messages_db)
        txn.put(key, sealed, db=messages_db)
        tails = self._tails
        if tails is not None:
            if len(tails) >= _MAX_TAILS and conv_key not in tails:
                tails.clear()  # simpler than an LRU, and rare: a refill costs one open each
            tails[conv_key] = (sealed, block)
        txn.put(conv_key, pack_head(seq, ts, block_first), db=self._dbs.heads)
        appended = self.appended
        if appended is not None:
            # Decoded back, not `message` itself: a read must give the very values an
            # uncached one would (an op built by hand may carry a list or a plain str).
            epoch = PLAIN_EPOCH if self._epoch_of is None else self._epoch_of(sealed)
            opened = (self._decode_message(record), len(record), epoch)
            appended.append((conv_key, seq, opened))
        return seq, ts

    def _merge_tail(
        self, txn: Any, tail_key: bytes, tail: bytes, tail_count: int
    ) -> tuple[bytes, bytes, bytes] | None:
        """The full tail merged into the block before it, sealed, if both fit in one block
        and are under the current epoch: (that block's key, the sealed merge, the tail's key,
        to delete). None when the tail stays a block of its own."""
        with txn.cursor(db=self._dbs.messages) as cur:
            if not cur.set_key(tail_key) or not cur.prev():
                return None
            previous_key, previous = cur.item()
        if (
            previous_key[:16] != tail_key[:16]
            or _seq_of(tail_key) - _seq_of(previous_key) + tail_count > BLOCK_MAX_MESSAGES
            or len(previous) + len(tail) > BLOCK_MAX_STORED_BYTES
            or not self._extends(previous, previous_key)
        ):
            return None
        merged = merge_blocks(
            self._sealer.open(_MESSAGES, previous_key, previous), self._open_tail(tail_key, tail)
        )
        return previous_key, self._sealer.seal(_MESSAGES, previous_key, merged), tail_key

    def _open_tail(self, key: bytes, tail: bytes) -> bytes:
        """The plaintext of the stored last block `tail` under `key`."""
        if self._tails is not None:
            cached = self._tails.get(key[:16])
            if cached is not None and cached[0] == tail:
                return cached[1]
        return self._sealer.open(_MESSAGES, key, tail)

    def drop_tails(self, tenant: bytes | None = None, epoch: int | None = None) -> None:
        """Forget the plaintexts of last blocks (a keyring forget listener: its arguments
        are not needed, everything goes)."""
        if self._tails is not None:
            self._tails = {}

    def drop_unusable_tails(self) -> None:
        """Forget the plaintexts of last blocks whose DEK has expired (nothing announces it)."""
        tails, keyring = self._tails, self._keyring
        if tails is None or keyring is None:
            return
        for conv_key, (stored, _) in list(tails.items()):  # copied in one step
            try:
                keyring.dek(conv_key[:8], sealed_epoch(stored))
            except KeyUnavailable:
                tails.pop(conv_key, None)

    def _extends(self, tail: bytes, key: bytes) -> bool:
        """Whether a new message may join the stored block `tail`: in a sealed store only
        while the tail is under the tenant's current epoch, so that a block never mixes
        epochs and shredding one destroys exactly the messages written under it."""
        write_epoch = self._write_epoch
        if write_epoch is None:
            return True
        assert self._epoch_of is not None
        return self._epoch_of(tail) == write_epoch(key[:8])

    def _check_recall(
        self, txn: Any, op: Append, role: Role, head_seq: int
    ) -> _Located:
        """The message `op` recalls, located in its block; raises its refusal."""
        if not 1 <= op.ref <= head_seq:
            raise Invalid(f"recall refers to seq {op.ref}, which does not exist")
        target = self._locate(txn, op.tenant, op.conv, op.ref)
        message = target.message
        if message.kind is MessageKind.SYSTEM or message.kind is MessageKind.RECALL:
            raise Invalid("system messages and recalls cannot be recalled")
        if message.sender != op.sender and role is Role.MEMBER:
            raise Forbidden("only the sender, an admin or the owner may recall a message")
        if message.recalled_by:
            raise Conflict(f"message {op.ref} was recalled already, by message "
                           f"{message.recalled_by}")
        return target

    def _blank(self, txn: Any, tenant: int, target: _Located, recall_seq: int) -> None:
        """Rewrite the block holding `target` with its body and mentions removed and a mark
        of the recall (`recall_seq`), sealed afresh under its epoch; and zero the digest of its
        dedupe entry. The old block's bytes are freed pages that LMDB overwrites as it
        reuses them (docs/storage.md "Recalls")."""
        key, records, index, message, epoch = target
        blanked = msgspec.structs.replace(message, body="", mentions=(), recalled_by=recall_seq)
        records = [*records[:index], self._encode(blanked), *records[index + 1:]]
        block = pack_block(records)
        # Under the block's own epoch: a block never mixes epochs, and a shred of that epoch
        # must still take every message written under it.
        sealed = self._sealer.seal(_MESSAGES, key, block, epoch)
        txn.put(key, sealed, db=self._dbs.messages)
        if self.rewritten is not None:
            first = _seq_of(key)
            self.rewritten.append((key[:16], first, first + len(records) - 1))
        if message.client_msg_id:
            self._forget_digest(txn, tenant, message)

    def _forget_digest(self, txn: Any, tenant: int, message: Message) -> None:
        """Zero the content digest in the dedupe entry of `message` while it is kept: nothing
        derived from a recalled body stays on disk. Its window is that of its append, whose
        clock was at most its `ts` (timestamps never go back within a conversation)."""
        cmid = message.client_msg_id.encode()
        if self._keyring is not None:
            cmid = self._keyring.blind_client_msg_id(pack_id(tenant), cmid)
        window = message.ts // self._limits.dedupe_window_ms
        for w in (window, window - 1) if window else (window,):
            key = _pack_ids3(tenant, w, message.sender) + cmid
            found = txn.get(key, db=self._dbs.dedupe)
            if found is not None and len(found) > _DEDUPE.size:
                conv_seq_ts = bytes(found[:_DEDUPE.size])
                if _DEDUPE.unpack(conv_seq_ts)[1] == message.seq:
                    txn.put(key, conv_seq_ts + RECALLED_DIGEST, db=self._dbs.dedupe)
                    return

    def _content_digest(self, op: Append, cmid: bytes) -> bytes:
        """What the dedupe entry keeps to tell a retry (the same content) from a reuse of its
        client_msg_id (`cmid`, blinded in a sealed store): a digest of the kind, body, ref and
        mentions (engine.crypto), or nothing in a sealed store without a name key."""
        entry = _pack_ids2(op.tenant, op.sender) + cmid
        content = self._encode((op.kind, op.body, op.ref, op.mentions))
        keyring = self._keyring
        if keyring is None:
            return plain_content_digest(entry, content)
        return keyring.content_digest(entry, content) or b""

    def _same_content(
        self, txn: Any, op: Append, seq: int, digest: bytes, stored_digest: bytes
    ) -> bool:
        """Whether `op` sends what message `seq` was sent with: its dedupe entry's digest, or
        the stored message itself where the entry keeps none. A recalled message's content
        is gone (its entry says so): a retry of it is told it was stored, as before."""
        if stored_digest == RECALLED_DIGEST:
            return True
        if stored_digest:
            return hmac.compare_digest(stored_digest, digest)
        first = self._get_message(txn, op.tenant, op.conv, seq)
        return first.recalled_by != 0 or (
            first.kind == op.kind and first.body == op.body and first.ref == op.ref
            and tuple(first.mentions) == tuple(op.mentions)
        )

    def _dedupe_key(self, tenant: int, now_ms: int, sender: int, cmid: bytes) -> bytes:
        window = now_ms // self._limits.dedupe_window_ms
        return _pack_ids3(tenant, window, sender) + cmid

    def _find_duplicate(
        self, txn: Any, key: bytes, tenant: int, sender: int, cmid: bytes, now_ms: int
    ) -> tuple[int, int, int, bytes] | None:
        """The earlier append of this retry, as (conv, seq, ts, content digest): `key` is its
        dedupe key in the current window, and the previous window is looked up too."""
        dedupe_db = self._dbs.dedupe
        found = txn.get(key, db=dedupe_db)
        if found is None:
            previous = now_ms // self._limits.dedupe_window_ms - 1
            if previous < 0:  # the first window has none before it (and -1 cannot be packed)
                return None
            found = txn.get(_pack_ids3(tenant, previous, sender) + cmid, db=dedupe_db)
            if found is None:
                return None
        conv, seq, ts = _DEDUPE.unpack_from(found)
        return int(conv), int(seq), int(ts), bytes(found[_DEDUPE.size:])

    def prune_dedupe(self, txn: Any, tenant: int, now_ms: int) -> int:
        """Forget retry records older than the previous window; returns how many went."""
        oldest_kept = now_ms // self._limits.dedupe_window_ms - 1
        if oldest_kept <= 0:
            return 0
        prefix = pack_ids(tenant)
        stop = pack_ids(tenant, oldest_kept)
        removed = 0
        with txn.cursor(db=self._dbs.dedupe) as cur:
            if not cur.set_range(prefix):
                return 0
            while cur.key()[:8] == prefix and cur.key() < stop:
                cur.delete()
                removed += 1
                if not cur.key():
                    break
        return removed

    # -- reads (inside any transaction) -------------------------------------------------------

    def member(self, txn: Any, tenant: int, conv: int, user: int) -> MemberRecord:
        """The membership of `user` in `conv`; otherwise `NotMember` for an open group (which
        the user may see, and join), `NotFound` for any other conversation, as for one that
        does not exist."""
        key = _pack_ids3(tenant, conv, user)
        found = self._member_value(txn, key, tenant, conv, user)
        return self._decode_member(self._sealer.open(_MEMBERS, key, found))

    def check_member(self, txn: Any, tenant: int, conv: int, user: int) -> None:
        """`member` without opening the record, when its role does not matter: the key is what
        makes a member (and in a sealed store opening it costs an AES-GCM-SIV decryption)."""
        self._member_value(txn, _pack_ids3(tenant, conv, user), tenant, conv, user)

    def _member_value(self, txn: Any, key: bytes, tenant: int, conv: int, user: int) -> bytes:
        found = txn.get(key, db=self._dbs.members)
        if found is None:
            conv_key = _pack_ids2(tenant, conv)
            stored = txn.get(conv_key, db=self._dbs.convs)
            if stored is not None:
                record = self._decode_conversation(self._sealer.open(_CONVS, conv_key, stored))
                if record.seen_by_everyone:
                    raise NotMember(f"user {user} is not a member of conversation {conv}")
            raise NotFound(f"conversation {conv} does not exist")
        return found  # type: ignore[no-any-return]

    def head(self, txn: Any, tenant: int, conv: int) -> tuple[int, int]:
        """(seq, ts) of the conversation's last message; (0, 0) before the first."""
        found = txn.get(_pack_ids2(tenant, conv), db=self._dbs.heads)
        if found is None:
            raise NotFound(f"conversation {conv} does not exist")
        return unpack_head(found)

    def _head(self, txn: Any, tenant: int, conv: int) -> tuple[int, int, int]:
        """`head` and the first seq of the conversation's last block."""
        found = txn.get(_pack_ids2(tenant, conv), db=self._dbs.heads)
        if found is None:
            raise NotFound(f"conversation {conv} does not exist")
        return unpack_head_block(found)

    def cursor(self, txn: Any, tenant: int, user: int, conv: int) -> tuple[int, int]:
        found = txn.get(_pack_ids3(tenant, user, conv), db=self._dbs.user_convs)
        if found is None:
            raise NotMember(f"user {user} is not a member of conversation {conv}")
        return unpack_cursor(found)

    def _locate(self, txn: Any, tenant: int, conv: int, seq: int) -> _Located:
        """Message `seq` of `conv` and the block that holds it: `NotFound` if not stored."""
        with txn.cursor(db=self._dbs.messages) as cur:
            if _seek_block(cur, _pack_ids2(tenant, conv), seq):
                key, stored = cur.item()
                plaintext = self._open_tail(key, stored)
                ends, start = block_index(plaintext)
                i = seq - _seq_of(key)
                if i < len(ends):
                    records = [plaintext[start + (ends[n - 1] if n else 0):start + ends[n]]
                               for n in range(len(ends))]
                    epoch = None if self._epoch_of is None else self._epoch_of(stored)
                    return _Located(key, records, i, self._decode_message(records[i]), epoch)
        raise NotFound(f"message {seq} of conversation {conv} is not stored")

    def _get_message(self, txn: Any, tenant: int, conv: int, seq: int) -> Message:
        return self._locate(txn, tenant, conv, seq).message

    def scan(
        self, txn: Any, tenant: int, conv: int, first: int, last: int,
        max_bytes: int | None = None, *, newest_first: bool = False,
    ) -> list[Message]:
        """Messages first..last inclusive, ascending; fewer where the range is not stored.

        With `max_bytes`, the run stops before the stored records would pass that many bytes
        (always at least one message, so that a reader makes progress): from `first` up, or
        with `newest_first` from `last` down. Replies are bounded so that one answer never
        outgrows a connection's outgoing queue.
        """
        return self.scan_sized(txn, tenant, conv, first, last, max_bytes,
                               newest_first=newest_first)[0]

    def scan_sized(
        self, txn: Any, tenant: int, conv: int, first: int, last: int,
        max_bytes: int | None = None, *, newest_first: bool = False, at_least_one: bool = True,
    ) -> tuple[list[Message], int]:
        """`scan`, and the bytes of the records it returned. Without `at_least_one`, the
        bound is strict: nothing is returned when the first message would pass it."""
        if last < first:
            return [], 0
        limit = (2**63) if max_bytes is None else max_bytes
        strict = not at_least_one
        cache = self._cache
        if cache is None:
            return self._scan_store(txn, tenant, conv, first, last, limit, strict,
                                    newest_first, {}, None)
        conv_key = _pack_ids2(tenant, conv)
        hits: dict[int, CachedMessage] = {}
        found = cache.lookup(conv_key, first, last) if last - first < _MAX_CACHED_RUN else None
        if found is not None:
            # Every seq of the range cached, and none past this snapshot's head (the cache may
            # hold messages committed after it began): the store would return exactly these.
            if None not in found and last <= self.head(txn, tenant, conv)[0]:
                complete = cast(list[CachedMessage], found)
                return self._serve_cached(cache, conv_key[:8], complete, limit, strict,
                                          newest_first)
            hits = {entry[0].seq: entry for entry in found if entry is not None}
        generation = cache.generation  # before opening anything (engine.message_cache)
        opened: list[tuple[int, CachedMessage]] = []
        out, used = self._scan_store(txn, tenant, conv, first, last, limit, strict,
                                     newest_first, hits, opened)
        if opened:
            cache.fill_run(conv_key, opened, generation, txn.id())
        return out, used

    @staticmethod
    def _serve_cached(
        cache: MessageCache, tenant: bytes, entries: list[CachedMessage], limit: int,
        strict: bool, newest_first: bool,
    ) -> tuple[list[Message], int]:
        """`_scan_store` over a range the cache holds whole: the same messages, byte budget
        and refusals. The store path opens each record (checking its key) before it weighs
        it, so keys are checked in scan order up to the first message past the budget."""
        ordered = entries[::-1] if newest_first else entries
        total = sum([entry[1] for entry in ordered])
        if total <= limit:  # the usual case: the whole range fits, every record is opened
            for epoch in dict.fromkeys([entry[2] for entry in ordered]):
                cache.check(tenant, epoch)
            return [entry[0] for entry in entries], total
        usable: set[int] = set()
        out: list[Message] = []
        used = 0
        for message, size, epoch in ordered:
            if epoch not in usable:
                cache.check(tenant, epoch)
                usable.add(epoch)
            if used + size > limit and (out or strict):
                break
            used += size
            out.append(message)
        if newest_first:
            out.reverse()
        return out, used

    def _scan_store(
        self, txn: Any, tenant: int, conv: int, first: int, last: int, limit: int,
        strict: bool, newest_first: bool, hits: dict[int, CachedMessage],
        opened: list[tuple[int, CachedMessage]] | None,
    ) -> tuple[list[Message], int]:
        """The scan over the blocks holding first..last: each block is opened (one AEAD call,
        which checks its key), and each message of the range in it is served from `hits` or
        decoded, and then added to `opened` when given. Messages are weighed against `limit`
        one by one, in scan order."""
        used = 0
        conv_key = _pack_ids2(tenant, conv)
        sealer_open = self._sealer.open
        decode = self._decode_message
        epoch_of = self._epoch_of
        epoch = PLAIN_EPOCH
        out: list[Message] = []
        with txn.cursor(db=self._dbs.messages) as cur:
            if not _seek_block(cur, conv_key, last if newest_first else first):
                return out, used
            blocks = cur.iterprev() if newest_first else iter(cur)
            for key, stored in blocks:
                block_first = _seq_of(key)
                if key[:16] != conv_key or block_first > last:
                    break
                plaintext = sealer_open(_MESSAGES, key, stored)
                ends, start = block_index(plaintext)
                lo = max(first, block_first)
                hi = min(last, block_first + len(ends) - 1)
                seqs = range(hi, lo - 1, -1) if newest_first else range(lo, hi + 1)
                if opened is not None and epoch_of is not None:
                    epoch = epoch_of(stored)
                for seq in seqs:
                    entry = hits.get(seq) if hits else None
                    if entry is None:
                        i = seq - block_first
                        begin = start + (ends[i - 1] if i else 0)
                        size = start + ends[i] - begin
                        if used + size > limit and (out or strict):
                            return self._scanned(out, used, newest_first)
                        message = decode(plaintext[begin:start + ends[i]])
                        if opened is not None:
                            opened.append((seq, (message, size, epoch)))
                    else:
                        message, size, _ = entry
                        if used + size > limit and (out or strict):
                            return self._scanned(out, used, newest_first)
                    used += size
                    out.append(message)
                if newest_first and block_first <= first:
                    break
        return self._scanned(out, used, newest_first)

    @staticmethod
    def _scanned(
        out: list[Message], used: int, newest_first: bool
    ) -> tuple[list[Message], int]:
        if newest_first:
            out.reverse()
        return out, used

    def page_after(
        self, txn: Any, tenant: int, conv: int, after: int, limit: int,
        max_bytes: int | None = None,
    ) -> Page:
        head, _ = self.head(txn, tenant, conv)
        last = min(head, after + limit)
        messages = self.scan(txn, tenant, conv, after + 1, last, max_bytes)
        return Page(conv, head, messages, (messages[-1].seq if messages else last) < head)

    def page_before(
        self, txn: Any, tenant: int, conv: int, before: int, limit: int,
        max_bytes: int | None = None,
    ) -> Page:
        # Seqs are gapless from 1, so the page's range is arithmetic, not a backwards search.
        head, _ = self.head(txn, tenant, conv)
        last = min(head, before - 1)
        first = max(1, last - limit + 1)
        messages = self.scan(txn, tenant, conv, first, last, max_bytes, newest_first=True)
        return Page(conv, head, messages, (messages[0].seq if messages else first) > 1)
