"""Every code the appliance puts on the wire, in one table: an error frame's `code` and a
`bye` frame's `code`. docs/protocol.md documents each member (sections 4 and 5), and
tests/test_protocol_doc.py checks that the two agree.

A refusal class carries its code as a string: the engine's (engine/errors.py) and the key
layer's (appliance/keys/errors.py) cannot import this package, so `ErrorCode` repeats each of
them, and tests/test_wire_codes.py checks that every class's code is a member. A module that
sends a code names the member (`ErrorCode.THROTTLED`), never a string of its own: that test
also fails on a code spelled as a literal anywhere in appliance/.

The members are `StrEnum`s, so they are their strings: msgspec encodes them as such, and a
member equals the string a client decodes. The frames' `code` fields stay `str` (not these
enums) so that a client still decodes a code that a newer server added.

Codes are stable: once published, a code never changes meaning. Add a member; never reuse one.
"""

from __future__ import annotations

import enum

__all__ = ["ByeCode", "ErrorCode"]


class ErrorCode(enum.StrEnum):
    """The `code` of an error frame: why a request (or a frame) was refused."""

    # The gateway's own: a frame it cannot read, a client it has not authenticated, a load
    # it sheds.
    BAD_FRAME = "bad_frame"
    UNKNOWN_OP = "unknown_op"
    THROTTLED = "throttled"

    # The engine's refusals (engine/errors.py), sent unchanged.
    UNAUTHENTICATED = "unauthenticated"
    WRONG_PASSWORD = "wrong_password"
    WEAK_PASSWORD = "weak_password"
    INVALID = "invalid"
    NOT_FOUND = "not_found"
    NOT_MEMBER = "not_member"
    FORBIDDEN = "forbidden"
    CONFLICT = "conflict"
    CLIENT_MSG_ID_REUSED = "client_msg_id_reused"
    CAPACITY_EXCEEDED = "capacity_exceeded"
    INTERNAL = "internal"
    CORRUPT_DATA = "corrupt_data"
    KEY_UNAVAILABLE = "key_unavailable"
    ENGINE_CLOSED = "engine_closed"

    # The key layer's refusals (appliance/keys/errors.py): they reach administrators only
    # (key operations, and `herald` commands, which print the code).
    KEY_ERROR = "key_error"
    NOT_INITIALIZED = "not_initialized"
    WRONG_PASSPHRASE = "wrong_passphrase"
    WEAK_PASSPHRASE = "weak_passphrase"
    MASTER_KEY_IN_HSM = "master_key_in_hsm"
    PASSPHRASE_CHANGE_BUSY = "passphrase_change_busy"
    DAMAGED_KEY_FILE = "damaged_key_file"
    KEY_FILE_EXISTS = "key_file_exists"
    KEY_FILE_MISSING = "key_file_missing"
    DEK_MISMATCH = "dek_mismatch"
    ESCROW_ERROR = "escrow_error"
    ESCROW_UNAVAILABLE = "escrow_unavailable"
    ESCROW_CERTIFICATE_REFUSED = "escrow_certificate_refused"
    ESCROW_REFUSED = "escrow_refused"
    HSM_ERROR = "hsm_error"
    HSM_UNAVAILABLE = "hsm_unavailable"
    HSM_TOKEN_MISSING = "hsm_token_missing"
    HSM_PIN_WRONG = "hsm_pin_wrong"
    HSM_PIN_LOCKED = "hsm_pin_locked"
    HSM_SETTINGS = "hsm_settings"
    MASTER_KEY_MISSING = "master_key_missing"
    MASTER_KEY_EXISTS = "master_key_exists"


class ByeCode(enum.StrEnum):
    """The `code` of a `bye` frame: why the server is about to close the connection."""

    SHUTDOWN = "shutdown"
    LOGIN_TIMEOUT = "login_timeout"
    # The session ended (engine.SessionEnd has the same values): its token is dead.
    LOGGED_OUT = "logged_out"
    SESSION_REVOKED = "session_revoked"
    PASSWORD_CHANGED = "password_changed"
    ACCOUNT_DISABLED = "account_disabled"
    SESSION_EXPIRED = "session_expired"
