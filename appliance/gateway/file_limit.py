"""The server's open-file limit: each connection holds a descriptor, and the default soft limit
(1,024 on most systems) would stop `herald serve` at about a thousand connections, far below
`gateway.max_connections`.

At start the server raises its soft RLIMIT_NOFILE to the hard limit, which any process may do,
and says so once when even the hard limit is too low for `max_connections`: only the
administrator can raise that (LimitNOFILE= in the systemd unit, `ulimit -n` in the shell, or
/etc/security/limits.conf).
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

__all__ = ["FILE_LIMIT_MARGIN", "FileLimit", "raise_open_file_limit"]

# Descriptors the server holds besides its connections: the store (LMDB's data and lock
# files), the listening sockets, standard streams, the escrow's connections or HSM files,
# the certificate files read daily, worker threads' transient files.
FILE_LIMIT_MARGIN = 256


@dataclass(frozen=True, slots=True)
class FileLimit:
    """The open-file limit before and after `raise_open_file_limit`, and what to say."""

    was: int
    now: int
    hard: int
    warning: str | None  # when the limit stays below what max_connections needs


def raise_open_file_limit(max_connections: int) -> FileLimit:
    """Raise this process's soft open-file limit to its hard limit. `warning` says what to set
    when the result is below `max_connections` + FILE_LIMIT_MARGIN. Never raises: a limit
    that cannot be raised is reported, and the server runs with what it has."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = max_connections + FILE_LIMIT_MARGIN
    # An unlimited hard limit cannot be the soft one on Linux (it is capped by fs.nr_open):
    # ask for what the connections need instead.
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    now = soft
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            now = target
        except (ValueError, OSError):
            pass  # kept as it was; the warning below says what it allows
    warning = None
    if now < needed:
        warning = (
            f"the open-file limit is {now} (hard limit {_shown(hard)}), below "
            f"gateway.max_connections ({max_connections}) + {FILE_LIMIT_MARGIN} for the store "
            f"and listeners: connections past about {max(now - FILE_LIMIT_MARGIN, 0)} will be "
            f"refused. Raise the hard limit to at least {needed}: LimitNOFILE={needed} in the "
            f"systemd unit, or `ulimit -n {needed}` (as root, or in "
            f"/etc/security/limits.conf) before herald serve; or lower gateway.max_connections"
        )
    return FileLimit(was=soft, now=now, hard=hard, warning=warning)


def _shown(limit: int) -> str:
    return "unlimited" if limit == resource.RLIM_INFINITY else str(limit)
