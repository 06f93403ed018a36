"""`herald admin ...` against a real `herald serve` on a sealed data directory: every command a
child process, as an administrator runs them."""

from __future__ import annotations

import json
import signal
import stat
from pathlib import Path

import trio
from conftest import PASSWORD
from keyed_dirs import add_acme_with_a_group, herald, keyed_data_dir
from processes import herald as herald_process
from processes import served_port

ADMIN_PASSWORD = "an administrator's passphrase"


async def test_an_admin_made_offline_logs_in_and_reads_the_running_server(
        tmp_path: Path) -> None:
    data = keyed_data_dir(tmp_path / "data")
    add_acme_with_a_group(data, PASSWORD)
    made = herald("admin", "add", "--data-dir", str(data), "ops", "--role", "operator",
                  "--password-stdin", stdin=ADMIN_PASSWORD + "\n")
    assert made.returncode == 0, made.stderr
    assert "administrator 'ops' created (id 1, role operator)" in made.stdout
    token = tmp_path / "home" / "token"
    common = ("--data-dir", str(data), "--token-file", str(token))

    def admin(*args: str, stdin: str = "") -> tuple[int, str, str]:
        done = herald("admin", args[0], *common, *args[1:], stdin=stdin)
        return done.returncode, done.stdout, done.stderr

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery, herald_process(
            nursery, "serve", "--data-dir", str(data), "--listen", "127.0.0.1:0"
        ) as server:
            await served_port(server)
            await server.expect(r"Admin API at .*admin\.sock")
            socket_mode = (data / "admin.sock").stat().st_mode
            assert stat.S_IMODE(socket_mode) == 0o600

            code, out, err = await trio.to_thread.run_sync(
                lambda: admin("status"))
            assert code == 1 and "log in first" in err, err

            code, out, err = await trio.to_thread.run_sync(
                lambda: admin("login", "ops", "--password-stdin", stdin="wrong password\n"))
            assert (code, err.strip()) == (1, "herald: wrong login or password "
                                              "(unauthenticated)")

            code, out, err = await trio.to_thread.run_sync(
                lambda: admin("login", "ops", "--password-stdin", stdin=ADMIN_PASSWORD + "\n"))
            assert code == 0, err
            assert "logged in as 'ops' (operator)" in out
            assert stat.S_IMODE(token.stat().st_mode) == 0o600

            code, out, err = await trio.to_thread.run_sync(lambda: admin("status"))
            assert code == 0, err
            assert "tenants       1" in out and "store format  6" in out, out

            code, out, err = await trio.to_thread.run_sync(lambda: admin("tenants"))
            assert code == 0, err
            assert out.splitlines()[0].split() == ["ID", "NAME", "CREATED"]
            assert out.splitlines()[1].split()[:2] == ["1", "acme"]

            code, out, err = await trio.to_thread.run_sync(
                lambda: admin("users", "--tenant", "acme", "--json"))
            assert code == 0, err
            assert [u["login"] for u in json.loads(out)["users"]] == ["alice"]

            code, out, err = await trio.to_thread.run_sync(
                lambda: admin("users", "--tenant", "nope"))
            assert code == 1 and err.strip().endswith("(not_found)"), err

            changed = await trio.to_thread.run_sync(lambda: herald(
                "admin", "passwd", "--data-dir", str(data), "ops", "--password-stdin",
                stdin="a new administrator passphrase\n"))
            assert changed.returncode == 0, changed.stderr
            assert "password of administrator 'ops' changed; 1 session ended" in changed.stdout
            code, out, err = await trio.to_thread.run_sync(lambda: admin("status"))
            assert code == 1 and err.strip().endswith("(unauthenticated)"), err
            code, out, err = await trio.to_thread.run_sync(lambda: admin(
                "login", "ops", "--password-stdin", stdin="a new administrator passphrase\n"))
            assert code == 0, err

            token.write_text("x" * 43 + "\n")
            code, out, err = await trio.to_thread.run_sync(lambda: admin("tenants"))
            assert code == 1 and err.strip().endswith("(unauthenticated)"), err

            server.process.send_signal(signal.SIGINT)
            await server.expect(r"Herald stopped\.")
    assert not (data / "admin.sock").exists()
    assert ADMIN_PASSWORD not in server.err.decode() + server.out.decode()
    code, out, err = admin("status")
    assert code == 1 and "no herald serve answers" in err, err
    # Making an administrator and changing its password are in the audit log, by the OS user.
    listed = herald("audit", "list", "--data-dir", str(data), "--json")
    assert listed.returncode == 0, listed.stderr
    entries = [json.loads(line) for line in listed.stdout.splitlines()]
    made_and_changed = [(e["action"], e["target"], e["details"], e["actor"]["kind"])
                        for e in entries
                        if e["action"] in ("admin.create", "admin.set_password")]
    assert made_and_changed == [
        ("admin.create", "admin:1", {"login": "ops", "role": "operator"}, "system"),
        ("admin.set_password", "admin:1", {"sessions_ended": 1}, "system"),
    ]
    assert all(e["actor"]["name"].startswith("cli:") for e in entries
               if e["action"] in ("admin.create", "admin.set_password"))


def test_herald_serve_refuses_to_start_when_the_admin_socket_path_is_taken(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "admin.sock").write_text("somebody's file\n")
    refused = herald("serve", "--data-dir", str(data), "--listen", "127.0.0.1:0")
    assert refused.returncode == 1
    assert "admin.sock exists and is not a socket: move it away" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert (data / "admin.sock").read_text() == "somebody's file\n"
    assert not (data / "hot").exists()  # refused before the store was opened
