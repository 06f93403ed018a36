"""The `herald` command line, run as real subprocesses on a real data directory."""

from __future__ import annotations

import argparse
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from keyed_dirs import keyed_data_dir

from appliance.cli import build_parser
from appliance.cli.commands import COMMANDS as TABLE
from appliance.cli.commands import GROUPS

HERALD = [sys.executable, "-m", "appliance.cli"]
COMMANDS = [
    [], ["serve"], ["tenant"], ["tenant", "add"], ["tenant", "list"], ["user"], ["user", "add"],
    ["user", "list"], ["user", "passwd"], ["user", "disable"], ["user", "enable"],
    ["user", "sessions"], ["user", "revoke-sessions"], ["group"], ["group", "add"], ["init"],
    ["keys"], ["keys", "status"], ["keys", "rotate"], ["keys", "shred"], ["keys", "revoke"],
    ["keys", "passphrase"], ["audit"], ["audit", "verify"], ["audit", "list"],
    ["cert"], ["cert", "selfsigned"], ["escrow"], ["chat"],
]


def herald(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*HERALD, *args], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "herald")
def test_every_command_has_help(command: list[str]) -> None:
    result = herald(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: herald")


def _parsers_by_path(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    found = {path: parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found |= _parsers_by_path(sub, (*path, name))
    return found


def test_the_parser_has_a_command_for_each_entry_of_the_table_and_no_other() -> None:
    parsers = _parsers_by_path(build_parser())
    runnable = {path for path, parser in parsers.items()
                if not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)}
    assert runnable == {entry.path for entry in TABLE}
    assert len(TABLE) == len(runnable)  # no path twice
    for entry in TABLE:
        assert parsers[entry.path].get_default("herald_command") is entry
    assert {path[0] for path in runnable if len(path) == 2} == set(GROUPS)
    # `herald --help` lists the commands in the table's order.
    assert list(parsers) == sorted(parsers, key=lambda path: min(
        i for i, entry in enumerate(TABLE) if entry.path[:len(path)] == path))


def _in_store(data: str, script: str) -> str:
    """Run `script` in a child process with `keyed` opened on `data` (with its keys: the
    SoftHSM2 escrow must not be loaded in the pytest process); its stdout."""
    code = ("from appliance.config import load_config\n"
            "from appliance.cli.unlock import open_engine\n"
            f"keyed = open_engine(load_config(data_dir=__import__('pathlib').Path({data!r})))\n"
            "engine = keyed.engine\n" + script + "\nkeyed.close()\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_accounts_created_from_the_command_line_can_be_read_back(tmp_path: Path) -> None:
    data = str(keyed_data_dir(tmp_path / "data"))
    assert herald("tenant", "add", "--data-dir", data, "acme").returncode == 0
    for login in ("alice", "bob"):
        result = herald("user", "add", "--data-dir", data, "--tenant", "acme", login,
                        "--display-name", login.title(), "--password-stdin",
                        stdin="a long enough password\n")
        assert result.returncode == 0, result.stderr
        assert f"user {login!r} created" in result.stdout
    result = herald("group", "add", "--data-dir", data, "--tenant", "acme", "--owner", "alice",
                    "--members", "bob", "Project X")
    assert result.returncode == 0, result.stderr
    listing = herald("user", "list", "--data-dir", data, "--tenant", "acme")
    assert "alice" in listing.stdout and "Bob" in listing.stdout

    out = _in_store(data, "tenant = engine.find_tenant('acme')\n"
                          "alice = engine.authenticate(tenant, 'alice', 'a long enough password')\n"
                          "(group,) = engine.conversations(tenant, alice)\n"
                          "print(group.title, group.role, group.member_count)")
    assert out.strip() == "Project X owner 2"


def test_refusals_exit_non_zero_and_say_what_went_wrong(tmp_path: Path) -> None:
    data = str(keyed_data_dir(tmp_path / "data"))
    assert herald("tenant", "add", "--data-dir", data, "acme").returncode == 0
    again = herald("tenant", "add", "--data-dir", data, "acme")
    assert again.returncode == 1 and "exists already" in again.stderr
    short = herald("user", "add", "--data-dir", data, "--tenant", "acme", "carol",
                   "--password-stdin", stdin="short\n")
    assert short.returncode == 1 and "at least 8 characters" in short.stderr
    nowhere = herald("user", "list", "--data-dir", data, "--tenant", "nope")
    assert nowhere.returncode == 1 and "no tenant is named 'nope'" in nowhere.stderr


def test_a_bad_configuration_file_is_refused_with_the_reason(tmp_path: Path) -> None:
    config = tmp_path / "herald.toml"
    config.write_text('listen = "nowhere"\n')
    result = herald("tenant", "list", "--config", str(config))
    assert result.returncode == 2
    assert "must look like HOST:PORT" in result.stderr


def test_user_lifecycle_commands_change_the_store_and_refuse_unknown_users(
    tmp_path: Path,
) -> None:
    data = str(keyed_data_dir(tmp_path / "data"))
    assert herald("tenant", "add", "--data-dir", data, "acme").returncode == 0
    assert herald("user", "add", "--data-dir", data, "--tenant", "acme", "alice",
                  "--password-stdin", stdin="a long enough password\n").returncode == 0
    result = herald("user", "passwd", "--data-dir", data, "--tenant", "acme", "alice",
                    "--password-stdin", stdin="the next password\n")
    assert result.returncode == 0 and "0 sessions of 'alice' ended" in result.stdout, result
    short = herald("user", "passwd", "--data-dir", data, "--tenant", "acme", "alice",
                   "--password-stdin", stdin="short\n")
    assert short.returncode == 1 and "(weak_password)" in short.stderr
    assert herald("user", "disable", "--data-dir", data, "--tenant", "acme",
                  "alice").returncode == 0
    assert "(disabled)" in herald("user", "list", "--data-dir", data, "--tenant", "acme").stdout
    sessions = herald("user", "sessions", "--data-dir", data, "--tenant", "acme", "alice")
    assert sessions.stdout.strip() == "'alice' has no sessions"
    unknown = herald("user", "revoke-sessions", "--data-dir", data, "--tenant", "acme", "zed")
    assert unknown.returncode == 1 and "(not_found)" in unknown.stderr

    find_alice = "tenant = engine.find_tenant('acme')\nalice = engine.find_user(tenant, 'alice')\n"
    assert _in_store(data, find_alice + "print(engine.user(tenant, alice).disabled)") == "True\n"
    assert herald("user", "enable", "--data-dir", data, "--tenant", "acme",
                  "alice").returncode == 0
    out = _in_store(data, find_alice + "print(engine.authenticate(tenant, 'alice', "
                                       "'the next password') == alice)")
    assert out == "True\n"


# The syscall number of read(2), which /proc/PID/syscall shows first while a process waits in it.
_READ_SYSCALL = {"x86_64": 0, "aarch64": 63}


def test_ctrl_c_ends_a_command_with_a_line_not_a_traceback(tmp_path: Path) -> None:
    read_syscall = _READ_SYSCALL.get(platform.machine())
    if read_syscall is None:
        pytest.skip(f"no read(2) number known for {platform.machine()}")
    # `user add --password-stdin` waits for its line on standard input, which never comes.
    process = subprocess.Popen(
        [*HERALD, "user", "add", "--data-dir", str(tmp_path / "data"), "--tenant", "acme",
         "alice", "--password-stdin"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Interrupt it only once it waits in read(0, ...): its Python is running by then, so
        # the Ctrl-C reaches its code and not the interpreter's start.
        syscall = Path(f"/proc/{process.pid}/syscall")
        for _ in range(6000):
            fields = syscall.read_text().split()
            if fields and fields[0] == str(read_syscall) and int(fields[1], 16) == 0:
                break
            time.sleep(0.01)
        else:
            pytest.fail("the command never waited for its password on standard input")
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 130, err
    assert "herald: interrupted" in err
    assert "Traceback" not in err
