"""The server at its limits: it raises its soft open-file limit to the hard one at start, says
once when the hard limit is too low for `gateway.max_connections`; out of descriptors, or at
`max_connections`, it warns once per interval, with a count, while it keeps serving the
connections it has. Servers are real `herald serve` children started with the limits set, or
real servers on 127.0.0.1 in the test's loop."""

from __future__ import annotations

import contextlib
import logging
import re
import resource
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from clients import login, only_conversation, open_ws, request
from conftest import PASSWORD
from keyed_dirs import add_acme_with_a_group, keyed_data_dir
from processes import herald, served_port
from servers import running_server, seed_org

from appliance.config import GatewayConfig
from appliance.gateway.file_limit import FILE_LIMIT_MARGIN
from appliance.gateway.server import ACCEPT_WARNING_INTERVAL_S, ThrottledWarning

MAX_CONNECTIONS = GatewayConfig().max_connections


def _limits(soft: int, hard: int) -> Callable[[], None]:
    def set_limits() -> None:  # in the child, before it becomes herald
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return set_limits


def _soft_limit_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no 'Max open files' in /proc/PID/limits")


async def _stop(server: object) -> None:
    server.process.send_signal(signal.SIGINT)  # type: ignore[attr-defined]
    await server.expect(r"Herald stopped\.")  # type: ignore[attr-defined]


async def test_a_server_started_with_a_low_soft_limit_raises_it_to_the_hard_limit(
    tmp_path: Path,
) -> None:
    data = keyed_data_dir(tmp_path / "data")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard < 2048:
        pytest.skip(f"the test needs a finite hard open-file limit of 2048 or more, not {hard}")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery, herald(
            nursery, "serve", "--data-dir", str(data), "--listen", "127.0.0.1:0",
            preexec_fn=_limits(1024, hard),
        ) as server:
            await served_port(server)
            assert _soft_limit_of(server.process.pid) == hard
            await _stop(server)
    err = server.err.decode()
    assert f"open_file_limit={hard} was=1024 hard={hard}" in err, err
    assert ("LimitNOFILE" in err) == (hard < MAX_CONNECTIONS + FILE_LIMIT_MARGIN), err


async def test_a_hard_limit_below_max_connections_is_warned_of_once_with_what_to_set(
    tmp_path: Path,
) -> None:
    data = keyed_data_dir(tmp_path / "data")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery, herald(
            nursery, "serve", "--data-dir", str(data), "--listen", "127.0.0.1:0",
            preexec_fn=_limits(300, 600),
        ) as server:
            await served_port(server)
            assert _soft_limit_of(server.process.pid) == 600
            await _stop(server)
    warnings = [line for line in server.err.decode().splitlines() if "level=WARNING" in line]
    needed = MAX_CONNECTIONS + FILE_LIMIT_MARGIN
    assert len(warnings) == 1, warnings
    assert "the open-file limit is 600 (hard limit 600)" in warnings[0]
    assert f"LimitNOFILE={needed}" in warnings[0] and f"ulimit -n {needed}" in warnings[0]


async def test_out_of_descriptors_accept_failures_are_warned_of_once_per_interval_and_the_open_connections_keep_working(  # noqa: E501
    tmp_path: Path,
) -> None:
    data = keyed_data_dir(tmp_path / "data")
    add_acme_with_a_group(data, PASSWORD)
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery, herald(
            nursery, "serve", "--data-dir", str(data), "--listen", "127.0.0.1:0",
            preexec_fn=_limits(40, 40),  # about 13 in use when idle
        ) as server:
            port = await served_port(server)
            async with open_ws(port) as alice:
                await login(alice, "acme", "alice")
                group = await only_conversation(alice)
                # Connections that take every descriptor left, and more waiting in the
                # listen backlog, which the server can no longer accept.
                hogs = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(40)]
                with trio.fail_after(10):
                    while b"accept failed" not in server.err:
                        await trio.sleep(0.05)
                await trio.sleep(ACCEPT_WARNING_INTERVAL_S + 1)
                for seq, body in enumerate(("still here", "and still here"), start=1):
                    ack = await request(alice, {"op": "send", "id": 10 + seq, "conv": group,
                                                "cmid": body, "body": body})
                    assert ack["type"] == "reply", ack
                failures = [line for line in server.err.decode().splitlines()
                            if "accept failed" in line]
                for hog in hogs:
                    await hog.aclose()
            await _stop(server)
    assert len(failures) == 2, failures  # the first at once, the next one interval later
    assert "Too many open files" in failures[0] and "more since" not in failures[0]
    counted = re.search(r"\((\d+) more since the last warning\)", failures[1])
    assert counted is not None, failures[1]
    # About ten retries a second for the interval, none of them warned of one by one.
    assert 20 <= int(counted.group(1)) <= 10 * (ACCEPT_WARNING_INTERVAL_S + 2), failures[1]


def test_a_throttled_warning_is_logged_once_per_interval_on_the_given_clock(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    failures = ThrottledWarning(10.0, lambda: now[0])
    emfile = "accept failed: [Errno 24] Too many open files"
    with caplog.at_level(logging.WARNING, logger="herald.server"):
        for _ in range(50):  # five seconds of retries
            failures.warn(emfile)
            now[0] += 0.1
        assert [r.getMessage() for r in caplog.records] == [emfile]
        now[0] = 110.0
        failures.warn(emfile)
        now[0] = 119.9
        failures.warn(emfile)
        now[0] = 120.0
        failures.warn(emfile)
    assert [r.getMessage() for r in caplog.records] == [
        emfile,
        f"{emfile} (49 more since the last warning)",
        f"{emfile} (1 more since the last warning)",
    ]


async def test_connections_refused_at_max_connections_are_warned_of_once_per_interval(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    with trio.fail_after(30), caplog.at_level(logging.WARNING, logger="herald.server"):
        async with running_server(tmp_path / "data", max_connections=1) as running:
            seed_org(running.engine, "acme", ["alice"])
            async with open_ws(running.port) as alice:
                await login(alice, "acme", "alice")
                for _ in range(20):
                    extra = await trio.open_tcp_stream("127.0.0.1", running.port)
                    async with extra:
                        with contextlib.suppress(trio.BrokenResourceError):  # a reset
                            assert await extra.receive_some(1) == b""  # hung up on
                pong = await request(alice, {"op": "ping", "id": 2})
                assert pong["type"] == "reply", pong
    refusals = [r.getMessage() for r in caplog.records if "connection refused" in r.getMessage()]
    assert refusals == ["connection refused: 1 connections is the limit"], refusals
