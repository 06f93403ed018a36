"""Why a login failed is in the server's log (tenant, login, address, reason), never the
password, while every client gets the same answer whatever the reason; `[log] level` and
`herald serve --log-level` set how much is logged."""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import pytest
import trio
from clients import open_ws, request
from conftest import NOW_MS, PASSWORD
from processes import herald, served_port
from servers import running_server, seed_org

from appliance.cli import main
from appliance.cli.serve import configure_logging
from appliance.config import load_config
from engine import SetUserDisabled

CANARY = "canary-8c41f0-password"


async def test_each_refused_login_is_logged_with_its_reason_and_answered_alike(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="herald")
    with trio.fail_after(30):
        async with running_server(tmp_path / "data", login_failure_delay_s=0.01) as running:
            acme = seed_org(running.engine, "acme", ["alice", "carol"])
            running.engine.apply(SetUserDisabled(tenant=acme["tenant"], user=acme["carol"],
                                                 disabled=True), NOW_MS)
            cases = {  # reason logged: (tenant, login, password, address)
                "wrong password": ("acme", "alice", CANARY, "127.0.0.2"),
                "unknown login": ("acme", "nobody", CANARY, "127.0.0.3"),
                "unknown tenant": ("initech", "alice", CANARY, "127.0.0.4"),
                "disabled": ("acme", "carol", PASSWORD, "127.0.0.5"),
            }
            answers = []
            for reason, (tenant, login_name, password, source) in cases.items():
                caplog.clear()
                async with open_ws(running.port, local_address=source) as ws:
                    reply = await request(ws, {"op": "login", "id": 4, "tenant": tenant,
                                               "login": login_name, "password": password})
                answers.append(reply)
                (line,) = [r.getMessage() for r in caplog.records
                           if r.getMessage().startswith("login failed")]
                assert line.startswith(f"login failed tenant={tenant!r} login={login_name!r} "
                                       f"address={source}:"), line
                assert line.endswith(f"reason={reason}"), line
            # A second wrong guess from the same address waits the backoff, and says so.
            caplog.clear()
            async with open_ws(running.port, local_address="127.0.0.2") as ws:
                answers.append(await request(ws, {"op": "login", "id": 4, "tenant": "acme",
                                                  "login": "alice", "password": CANARY}))
            lines = [r.getMessage() for r in caplog.records]
            assert any(line.startswith("login delayed by the backoff tenant='acme' "
                                       "login='alice' address=127.0.0.2:") and
                       "reason=backoff backoff_s=0.01 (account from this address)" in line
                       for line in lines), lines
            assert any(line.startswith("login failed tenant='acme' login='alice'") and
                       line.endswith("reason=wrong password backoff_s=0.01 (account from "
                                     "this address)") for line in lines), lines
    assert all(answer == answers[0] for answer in answers), answers
    assert answers[0] == {"type": "error", "id": 4, "code": "unauthenticated",
                          "message": "wrong login or password"}
    logged = "\n".join(f"{r.getMessage()} {r.args}" for r in caplog.records)
    assert CANARY not in logged and PASSWORD not in logged


def test_a_log_level_from_the_file_or_the_flag_sets_the_root_level(tmp_path: Path) -> None:
    config_file = tmp_path / "herald.toml"
    config_file.write_text('[log]\nlevel = "warning"\n')
    assert load_config(config_file).log.level == "warning"
    assert load_config(config_file, log_level="debug").log.level == "debug"
    assert load_config().log.level == "info"
    root = logging.getLogger()
    saved = root.level, list(root.handlers)
    try:
        for level, number in (("debug", logging.DEBUG), ("warning", logging.WARNING)):
            configure_logging(level)
            assert root.level == number
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]


def test_a_bad_log_level_flag_is_refused_with_the_choices(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--data-dir", str(tmp_path / "data"), "--log-level", "loud"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--log-level: invalid choice: 'loud'" in err and "'debug'" in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "data").exists()


def test_a_bad_log_level_in_the_file_is_a_configuration_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "herald.toml").write_text('[log]\nlevel = "loud"\n')
    assert main(["serve", "--data-dir", str(data)]) == 2
    err = capsys.readouterr().err
    assert "log.level must be one of ['debug', 'info', 'warning', 'error'], not 'loud'" in err, err
    assert "Traceback" not in err
    assert not (data / "hot").exists()


async def _serve_log(tmp_path: Path, *flags: str) -> str:
    """Run `herald serve --demo FLAGS`, make one failed login, stop it; its standard error."""
    data = tmp_path / "data"
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery, herald(
            nursery, "serve", "--demo", "--data-dir", str(data), "--listen", "127.0.0.1:0",
            *flags,
        ) as server:
            port = await served_port(server)
            async with open_ws(port) as ws:
                reply = await request(ws, {"op": "login", "id": 1, "tenant": "demo",
                                           "login": "alice", "password": CANARY})
            assert reply["code"] == "unauthenticated"
            server.process.send_signal(signal.SIGINT)
            await server.expect(r"Herald stopped\.")
    err = server.err.decode()
    assert "Traceback" not in err and CANARY not in err, err
    return err


async def test_serve_logs_login_attempts_at_debug_and_only_warnings_at_warning(
    tmp_path: Path,
) -> None:
    debug = await _serve_log(tmp_path / "debug", "--log-level", "debug")
    assert "level=DEBUG logger=herald.router login attempt tenant='demo' login='alice'" in debug
    assert "level=INFO logger=herald.router login failed tenant='demo'" in debug
    warning = await _serve_log(tmp_path / "warning", "--log-level", "warning")
    assert "login failed" not in warning and "level=INFO" not in warning, warning
