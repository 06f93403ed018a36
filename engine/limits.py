"""Size limits the engine enforces on every write, whoever calls it."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Limits"]


@dataclass(frozen=True, slots=True)
class Limits:
    """Defaults fit chat; the appliance overrides them from its configuration."""

    max_body_bytes: int = 16 * 1024
    max_client_msg_id_bytes: int = 64
    max_mentions: int = 100
    max_title_chars: int = 200
    max_name_chars: int = 64
    max_page_messages: int = 500
    max_group_members: int = 100_000
    # A retried send is recognised for at least this long and at most twice as long (windows).
    dedupe_window_ms: int = 24 * 3600 * 1000
