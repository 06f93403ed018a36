"""The wire protocol's version: raised when a change would break a client written against
docs/protocol.md (a field removed or changing meaning, a new required field). Additions that
older clients ignore (a new op, a new optional field, a new error code) keep it, as
docs/protocol.md's forward-compatibility rule says. `herald --version` prints it."""

from __future__ import annotations

__all__ = ["PROTOCOL_VERSION"]

PROTOCOL_VERSION = 1
