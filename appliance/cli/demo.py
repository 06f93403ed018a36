"""The demo tenant `make run` creates on first start, so a new user can chat at once."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from appliance.keys.manager import KeyManager
from engine import (
    ActorKind,
    AuditActor,
    Audited,
    CreateGroup,
    CreateTenant,
    CreateUser,
    Engine,
    OpenDirect,
    hash_password,
)

__all__ = ["DEMO_TENANT", "ensure_demo"]

DEMO_TENANT = "demo"
# Who made the demo accounts, in the audit log: the server, on its first start with --demo.
DEMO_ACTOR = AuditActor(kind=ActorKind.SYSTEM, name="serve --demo")
_USERS = (("alice", "Alice Chen"), ("bob", "Bob Li"))
# The file is written once, when the demo is created: a password changed later (/password in
# herald chat, herald user passwd) is never written back, so the file must say so.
INITIAL_ONLY = ("these are the initial passwords, never updated here: once a user changes "
                "theirs (/password in herald chat, herald user passwd), the one here is no "
                "longer valid")


def ensure_demo(engine: Engine, keys: KeyManager, data_dir: Path, now_ms: int) -> str | None:
    """Create the demo tenant (with its first data key), two users, a direct conversation and
    a group, if the store has no tenant yet. Returns the text to print (credentials), or None
    when nothing was created."""
    credentials_file = data_dir / "demo-credentials.txt"
    if engine.tenants():
        if credentials_file.exists():
            return f"Demo logins are in {credentials_file} ({INITIAL_ONLY})."
        return None
    tenant = engine.apply(Audited(op=CreateTenant(name=DEMO_TENANT), actor=DEMO_ACTOR),
                          now_ms).tenant  # type: ignore[union-attr]
    keys.rotate(tenant, actor=DEMO_ACTOR)
    lines = [f"Demo tenant {DEMO_TENANT!r} created. Log in with:"]
    users = []
    for login, name in _USERS:
        password = secrets.token_urlsafe(9)
        op = CreateUser(tenant=tenant, login=login, display_name=name,
                        password_hash=hash_password(password))
        users.append(engine.apply(Audited(op=op, actor=DEMO_ACTOR), now_ms).user)  # type: ignore[union-attr]
        lines.append(f"  tenant {DEMO_TENANT}  login {login:<6} password {password}")
    engine.apply(OpenDirect(tenant=tenant, user=users[0], peer=users[1]), now_ms)
    group = CreateGroup(tenant=tenant, creator=users[0], title="Welcome", members=(users[1],))
    engine.apply(Audited(op=group, actor=DEMO_ACTOR), now_ms)
    lines.append(f"({INITIAL_ONLY[0].upper()}{INITIAL_ONLY[1:]}.)")
    text = "\n".join(lines)
    fd = os.open(credentials_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text + "\n")
    return text + f"\n(also saved in {credentials_file})"
