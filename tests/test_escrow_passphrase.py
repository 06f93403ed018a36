"""`herald escrow passphrase`: a real escrow directory, `herald escrow serve` as a subprocess.
The escrow passphrase seals escrow.keys and encrypts ca.key and server.key: all three move to
the new passphrase, only with the service stopped, and the service then starts with the new one
and still unwraps what was wrapped before."""

from __future__ import annotations

import pytest
from escrows import (
    ESCROW_PASSPHRASE,
    EscrowFiles,
    RunningEscrow,
    escrow_files,
    escrow_template,
    herald,
    new_key_id,
    running_escrow,
)
from pseudo_terminal import run_on_terminal

from appliance.escrow.pki import change_private_key_passphrase, load_private_key
from appliance.keys import unwrap_dek, wrap_dek

__all__ = ["escrow_files", "escrow_template"]  # fixtures

NEW = "the new escrow passphrase"
MASTER_KEY = bytes(range(32))
DEK = bytes(range(200, 232))
SEALED = ("escrow.keys", "ca.key", "server.key", "audit.log")


def _change(files: EscrowFiles, current: str, new: str) -> tuple[int, str, str]:
    done = herald("escrow", "passphrase", "--dir", str(files.escrow_dir), "--passphrase-file",
                  "-", "--new-passphrase-file", "-", stdin=f"{current}\n{new}\n")
    return done.returncode, done.stdout, done.stderr


def _contents(files: EscrowFiles) -> dict[str, bytes]:
    return {name: (files.escrow_dir / name).read_bytes()
            for name in SEALED if (files.escrow_dir / name).exists()}


def _passphrase_audit_lines(files: EscrowFiles) -> list[str]:
    log = files.escrow_dir / "audit.log"
    return [line for line in log.read_text().splitlines() if '"op":"passphrase"' in line]


def test_refused_while_the_service_runs_then_done_and_old_wraps_still_open(
        escrow_files: EscrowFiles) -> None:
    key_id = new_key_id()
    with running_escrow(escrow_files) as running:
        escrow = running.client()
        escrow.create_key(key_id)
        blob = wrap_dek(MASTER_KEY, escrow, key_id, 3, 1, DEK)
        before = _contents(escrow_files)
        status, _, err = _change(escrow_files, ESCROW_PASSPHRASE, NEW)
        assert status == 1 and "(keystore_busy)" in err and "stop it first" in err, err
        assert _contents(escrow_files) == before

    status, out, err = _change(escrow_files, ESCROW_PASSPHRASE, NEW)
    assert status == 0, err
    assert "OLD passphrase" in out and "need nothing" in out
    assert ESCROW_PASSPHRASE not in out + err and NEW not in out + err

    with running_escrow(escrow_files, passphrase=NEW) as running:
        assert unwrap_dek(MASTER_KEY, running.client(), key_id, 3, 1, blob) == DEK
    with pytest.raises(AssertionError, match="does not open"):
        RunningEscrow(escrow_files, passphrase=ESCROW_PASSPHRASE)

    issued = herald("escrow", "issue-client", "--dir", str(escrow_files.escrow_dir), "--name",
                    "appliance-2", "--out", str(escrow_files.escrow_dir.parent / "second"),
                    "--passphrase-file", "-", stdin=NEW + "\n")
    assert issued.returncode == 0, issued.stderr  # ca.key moved to the new passphrase too

    (line,) = _passphrase_audit_lines(escrow_files)
    assert '"client":"operator (herald escrow passphrase)"' in line and '"outcome":"ok"' in line
    log = (escrow_files.escrow_dir / "audit.log").read_text()
    assert ESCROW_PASSPHRASE not in log and NEW not in log
    audit = herald("escrow", "audit", "--dir", str(escrow_files.escrow_dir))
    assert audit.returncode == 0 and "the chain verifies" in audit.stdout, audit.stderr


@pytest.mark.parametrize(("current", "new", "code"), [
    ("a guessed escrow passphrase", NEW, "(wrong_passphrase)"),
    (ESCROW_PASSPHRASE, "too short", "(weak_passphrase)"),
], ids=["wrong-current", "short-new"])
def test_a_refused_change_writes_nothing(escrow_files: EscrowFiles, current: str, new: str,
                                         code: str) -> None:
    before = _contents(escrow_files)
    status, _, err = _change(escrow_files, current, new)
    assert status == 1 and code in err, err
    assert current not in err and new not in err and "Traceback" not in err
    assert _contents(escrow_files) == before


def test_a_change_interrupted_between_files_is_finished_by_running_it_again(
        escrow_files: EscrowFiles) -> None:
    # As a crash would leave it: ca.key already under the new passphrase, the rest not.
    ca_key = escrow_files.escrow_dir / "ca.key"
    change_private_key_passphrase(ca_key, load_private_key(ca_key, ESCROW_PASSPHRASE), NEW)
    with pytest.raises(AssertionError):
        RunningEscrow(escrow_files, passphrase=NEW)  # keystore and server.key: still the old

    status, out, err = _change(escrow_files, ESCROW_PASSPHRASE, NEW)
    assert status == 0, err
    assert "finished an interrupted change: ca.key" in out
    with running_escrow(escrow_files, passphrase=NEW) as running:
        assert running.client().status(new_key_id()) == "missing"

    before = _contents(escrow_files)
    status, out, err = _change(escrow_files, ESCROW_PASSPHRASE, NEW)
    assert status == 0 and "nothing was changed" in out, err
    assert _contents(escrow_files) == before
    assert len(_passphrase_audit_lines(escrow_files)) == 1


def test_on_a_terminal_a_mistyped_confirmation_changes_nothing(escrow_files: EscrowFiles
                                                                ) -> None:
    before = _contents(escrow_files)
    status, shown = run_on_terminal(
        ["escrow", "passphrase", "--dir", str(escrow_files.escrow_dir)],
        [("Current escrow passphrase: ", ESCROW_PASSPHRASE), ("New escrow passphrase: ", NEW),
         ("Again: ", NEW + "!")])
    assert status == 1 and "the new passphrases differ; nothing was changed" in shown, shown
    assert ESCROW_PASSPHRASE not in shown and NEW not in shown
    assert _contents(escrow_files) == before
