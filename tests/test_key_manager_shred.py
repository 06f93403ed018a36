"""A key manager meets an epoch that another process shredded while this one did not hold its
DEK (it had expired, say): the manager marks it shredded at its next refresh, so reads say the
messages are gone for good instead of asking the escrow for a key that no longer exists.

(The case where the DEK was installed is test_background_reseal.py's, through a server.) The
manager runs in a child process: its SoftHSM2 token is the data directory's own (see
tests/keyed_dirs.py), and the shred is `herald keys shred`, a process of its own beside it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from keyed_dirs import HERALD, add_acme_with_a_group, keyed_data_dir

_CHILD = r"""
import json, subprocess, sys
from pathlib import Path
from appliance.config import load_config
from appliance.cli.unlock import open_engine
from appliance.cli.accounts import cli_actor
from engine import Append, KeyUnavailable

data, herald = Path(sys.argv[1]), json.loads(sys.argv[2])
keyed = open_engine(load_config(data_dir=data))
engine, manager, keyring = keyed.engine, keyed.manager, keyed.engine.keyring
try:
    tenant = engine.find_tenant("acme")
    alice = engine.find_user(tenant, "alice")
    (group,) = [c.conv for c in engine.conversations(tenant, alice)]
    engine.apply(Append(tenant=tenant, conv=group, sender=alice, client_msg_id="m1",
                        body="under epoch 1"), 1_000)
    manager.rotate(tenant, actor=cli_actor())  # epoch 2; alice and the group are re-sealed under it
    keyring.forget(tenant, 1)  # as after its lifetime: epoch 1's DEK is not held any more
    shred = subprocess.run([*herald, "keys", "shred", "--data-dir", str(data), "--tenant",
                            "acme", "--epoch", "1", "--confirm", "acme"],
                           capture_output=True, text=True, timeout=120)
    assert shred.returncode == 0, shred.stderr
    before = keyring.is_shredded(tenant, 1)
    (status,) = manager.refresh()
    try:
        engine.messages(tenant, group, 1, 1)
        read = "opened"
    except KeyUnavailable as exc:
        read = str(exc)
    print(json.dumps({"before": before, "after": keyring.is_shredded(tenant, 1),
                      "installed": keyring.installed(tenant), "state": status.state,
                      "detail": status.detail, "read": read}))
finally:
    keyed.close()
"""


def test_an_epoch_shredded_elsewhere_while_its_key_was_not_held_is_marked_shredded(
    tmp_path: Path,
) -> None:
    data = keyed_data_dir(tmp_path / "data")
    add_acme_with_a_group(data, "correct horse battery")
    child = subprocess.run([sys.executable, "-c", _CHILD, str(data), json.dumps(HERALD)],
                           capture_output=True, text=True, timeout=300, check=False)
    assert child.returncode == 0, child.stderr
    seen = json.loads(child.stdout.strip().splitlines()[-1])
    assert seen["before"] is False, seen  # the shred happened in another process
    assert seen["after"] is True, seen
    assert seen["installed"] == [2], seen
    # The escrow key of epoch 1 is gone too; the manager must not have asked for it.
    assert seen["state"] == "available", seen
    assert "shredded" in seen["read"] and "gone for good" in seen["read"], seen
