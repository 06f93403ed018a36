"""Which administrators' roles may do which admin op: one table, checked on every request.

`login` needs no role (it is how an administrator gets one). Every other op names the roles
that may do it; an op missing from the table is refused to everybody (and a test fails), so
that a new op cannot ship unauthorized by omission. Operators view and manage accounts and
groups; the security officer alone will rotate, revoke and shred keys and read the audit log
(ops to come: the role table is where they will say so).
"""

from __future__ import annotations

from appliance.protocol.admin_frames import (
    AdminLoginRequest,
    AdminStatusRequest,
    AdminTenantsRequest,
    AdminUsersRequest,
)
from engine import AdminRole

__all__ = ["ANYONE", "OP_ROLES", "may"]

ANYONE = frozenset(AdminRole)
OP_ROLES: dict[type, frozenset[AdminRole] | None] = {
    AdminLoginRequest: None,  # no session yet: the password is the check
    AdminStatusRequest: ANYONE,
    AdminTenantsRequest: ANYONE,
    AdminUsersRequest: ANYONE,
}


def may(role: str, op: type) -> bool:
    """Whether an administrator of `role` may do `op` (False for an op not in the table)."""
    roles = OP_ROLES.get(op)
    return roles is not None and role in roles
