"""The master key in an HSM, end to end: `herald init --master-key pkcs11`, accounts, `herald
serve` restarted and read back, `herald keys status`, and the errors an operator meets (wrong
PIN, token gone, key object gone, the escrow's token reused). Every `herald` command is a child
process with its own SoftHSM2 configuration: two tokens, the escrow's and the master key's."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio
from clients import login, only_conversation, open_ws, request
from keyed_dirs import herald, keyed_data_dir
from processes import herald as herald_process
from processes import served_port

from appliance.cli.demo_keys import SOFTHSM_MODULES

MASTER_PIN = "2468-master-pin"
ESCROW_PIN = "1357-escrow-pin"
MARKER = "hsm-sealed-marker"


def _softhsm(root: Path) -> tuple[str, Path]:
    module = next((m for m in SOFTHSM_MODULES if os.path.exists(m)), None)
    if shutil.which("softhsm2-util") is None or module is None:
        pytest.skip("SOFTHSM2 IS NOT INSTALLED, so the master key in an HSM is NOT TESTED: run "
                    "`apt-get install softhsm2` (make test tries to) and rerun")
    (root / "tokens").mkdir(parents=True)
    conf = root / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\n"
                    f"log.level = ERROR\n")
    for label, pin in (("herald-escrow", ESCROW_PIN), ("herald-master", MASTER_PIN)):
        subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", label, "--pin",
                        pin, "--so-pin", "9999-so-pin"], check=True, capture_output=True,
                       env={**os.environ, "SOFTHSM2_CONF": str(conf)}, timeout=60)
    return module, conf


def _hsm_data_dir(root: Path, *, master_token: str = "herald-master") -> Path:
    """A configuration (relative paths, as an administrator writes it) with the escrow in one
    token and the master key's settings naming another; not initialized."""
    module, _ = _softhsm(root / "hsm")
    (root / "escrow.pin").write_text(ESCROW_PIN + "\n")
    (root / "master.pin").write_text(MASTER_PIN + "\n")
    (root / "herald.toml").write_text(textwrap.dedent(f"""\
        data_dir = "{root / 'data'}"
        [escrow]
        backend = "pkcs11"
        pkcs11_module = "{module}"
        pkcs11_token = "herald-escrow"
        pkcs11_pin_file = "escrow.pin"
        softhsm2_conf = "hsm/softhsm2.conf"
        cache_lifetime_s = 300.0
        [keys]
        pkcs11_module = "{module}"
        pkcs11_token = "{master_token}"
        pkcs11_pin_file = "master.pin"
        """))
    return root / "herald.toml"


def _init(config: Path) -> subprocess.CompletedProcess[str]:
    return herald("init", "--config", str(config), "--master-key", "pkcs11")


def _ok(*args: str, stdin: str = "") -> str:
    result = herald(*args, stdin=stdin)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _in_token(conf: Path, code: str) -> None:
    """Run `code` with `session` open on the master key's token, in a child process (SoftHSM2
    reads its configuration once per process, and this one uses the session's token)."""
    script = textwrap.dedent(f"""\
        import pkcs11
        lib = pkcs11.lib({next(m for m in SOFTHSM_MODULES if os.path.exists(m))!r})
        session = lib.get_token(token_label="herald-master").open(user_pin={MASTER_PIN!r},
                                                                   rw=True)
        """) + textwrap.dedent(code) + "session.close()\n"
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60,
                   env={**os.environ, "SOFTHSM2_CONF": str(conf)})


async def _read_back(config: Path, send: bool) -> list[str]:
    """Serve the store, log alice in (her login is found through the HSM-derived name key),
    optionally send a message, and return the group's history."""
    async with trio.open_nursery() as nursery, herald_process(
        nursery, "serve", "--config", str(config), "--listen", "127.0.0.1:0"
    ) as server:
        port = await served_port(server)
        async with open_ws(port) as alice:
            await login(alice, "acme", "alice")
            group = await only_conversation(alice)
            if send:
                ack = await request(alice, {"op": "send", "id": 3, "conv": group, "cmid": "m1",
                                            "body": MARKER})
                assert ack["type"] == "reply", ack
            page = await request(alice, {"op": "history", "id": 4, "conv": group, "limit": 50})
        server.process.send_signal(signal.SIGINT)
        await server.expect(r"Herald stopped\.")
    assert server.process.returncode == 0, server.err.decode()
    return [m["body"] for m in page["data"]["msgs"]]  # type: ignore[index]


async def test_init_in_the_hsm_then_serve_restart_and_read_back(tmp_path: Path) -> None:
    config = _hsm_data_dir(tmp_path)
    data = tmp_path / "data"
    init = _init(config)
    assert init.returncode == 0, init.stderr
    assert "PKCS#11 token 'herald-master'" in init.stdout
    assert "HSM's own backup" in init.stdout and "lost or reset" in init.stdout
    assert not (data / "master.key").exists() and (data / "master-key.pkcs11").exists()
    assert MASTER_PIN not in init.stdout + init.stderr

    _ok("tenant", "add", "--config", str(config), "acme")
    _ok("user", "add", "--config", str(config), "--tenant", "acme", "alice", "--password-stdin",
        stdin="correct horse battery\n")
    _ok("group", "add", "--config", str(config), "--tenant", "acme", "--owner", "alice",
        "Project Nightingale")
    with trio.fail_after(90):
        assert (await _read_back(config, send=True))[-1] == MARKER
        assert MARKER in await _read_back(config, send=False)  # a restart: same keys
    raw = (data / "hot" / "data.mdb").read_bytes()
    assert MARKER.encode() not in raw and b"Nightingale" not in raw

    status = _ok("keys", "status", "--config", str(config))
    assert status.startswith("master key: in the PKCS#11 token 'herald-master'"), status
    assert "tenant acme (id 1): keys available" in status
    again = _init(config)
    assert again.returncode == 1 and "initialized already" in again.stderr


def test_a_wrong_pin_a_missing_key_object_and_a_missing_token_each_say_what_to_do(
    tmp_path: Path,
) -> None:
    config = _hsm_data_dir(tmp_path)
    conf = tmp_path / "hsm" / "softhsm2.conf"
    assert _init(config).returncode == 0
    _ok("tenant", "add", "--config", str(config), "acme")

    (tmp_path / "master.pin").write_text("0000-not-the-pin\n")
    wrong = herald("tenant", "list", "--config", str(config))
    assert wrong.returncode == 1 and "(hsm_pin_wrong)" in wrong.stderr, wrong.stderr
    assert "pkcs11_pin_file" in wrong.stderr and "0000-not-the-pin" not in wrong.stderr
    (tmp_path / "master.pin").write_text(MASTER_PIN + "\n")
    assert "acme" in _ok("tenant", "list", "--config", str(config))

    _in_token(conf, """\
        from pkcs11 import Attribute
        for key in list(session.get_objects({Attribute.LABEL: "herald-master-key-name"})):
            key.destroy()
        """)
    gone = herald("tenant", "list", "--config", str(config))
    assert gone.returncode == 1 and "(master_key_missing)" in gone.stderr, gone.stderr
    assert "herald-master-key-name" in gone.stderr and "HSM's backup" in gone.stderr

    subprocess.run(["softhsm2-util", "--delete-token", "--token", "herald-master"], check=True,
                   capture_output=True, env={**os.environ, "SOFTHSM2_CONF": str(conf)},
                   timeout=60)
    absent = herald("keys", "status", "--config", str(config))
    assert absent.returncode == 1 and "(hsm_token_missing)" in absent.stderr, absent.stderr
    assert "'herald-master'" in absent.stderr


def test_the_master_key_may_not_share_the_escrows_token(tmp_path: Path) -> None:
    config = _hsm_data_dir(tmp_path, master_token="herald-escrow")
    refused = _init(config)
    assert refused.returncode == 1 and "(hsm_settings)" in refused.stderr, refused.stderr
    assert "both halves" in refused.stderr
    assert not (tmp_path / "data" / "master-key.pkcs11").exists()
    assert not (tmp_path / "data" / "appliance-id").exists()


def test_a_data_directory_initialized_in_the_hsm_refuses_settings_naming_another_key(
    tmp_path: Path,
) -> None:
    config = _hsm_data_dir(tmp_path)
    assert _init(config).returncode == 0
    with config.open("a") as out:
        out.write('pkcs11_key_label = "another-label"\n')
    moved = herald("tenant", "list", "--config", str(config))
    assert moved.returncode == 1 and "(hsm_settings)" in moved.stderr, moved.stderr
    assert "'herald-master-key'" in moved.stderr and "'another-label'" in moved.stderr


def test_keys_passphrase_is_refused_for_a_master_key_in_the_hsm(tmp_path: Path) -> None:
    config = _hsm_data_dir(tmp_path)
    assert _init(config).returncode == 0
    marker = (tmp_path / "data" / "master-key.pkcs11").read_bytes()
    refused = herald("keys", "passphrase", "--config", str(config), "--passphrase-file", "-",
                     "--new-passphrase-file", "-", stdin="a current passphrase\nanother one here\n")
    assert refused.returncode == 1 and "(master_key_in_hsm)" in refused.stderr, refused.stderr
    assert "has no passphrase" in refused.stderr and "HSM's own tools" in refused.stderr
    assert "master.pin" in refused.stderr  # where the new PIN goes
    assert not (tmp_path / "data" / "master.key").exists()
    assert (tmp_path / "data" / "master-key.pkcs11").read_bytes() == marker


def test_keys_status_says_when_the_master_key_is_a_sealed_file(tmp_path: Path) -> None:
    data = keyed_data_dir(tmp_path / "data")
    status = _ok("keys", "status", "--data-dir", str(data))
    first, second = status.splitlines()
    assert first == f"master key: in the passphrase-sealed file {data / 'master.key'}"
    assert second == "no tenants yet"
