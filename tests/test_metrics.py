"""The Prometheus metrics: a real server on 127.0.0.1, real clients sending real messages, and
the endpoint read with a real HTTP GET over a socket and parsed by prometheus-client's own
parser."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing
from clients import login, open_ws, receive_json, request
from conftest import NOW_MS, PASSWORD
from keyed_dirs import add_acme_with_a_group, keyed_data_dir
from processes import ROOT, served_port
from processes import herald as herald_process
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from servers import RunningServer, running_server, seed_org

from appliance.config import MetricsConfig
from appliance.gateway.metrics import (
    MAX_REQUEST_BYTES,
    REQUEST_TIMEOUT_S,
    Buckets,
    metrics_refusal,
    serve_metrics,
)
from engine import CreateGroup

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@asynccontextmanager
async def metrics_port(registry: CollectorRegistry) -> AsyncIterator[int]:
    """serve_metrics on 127.0.0.1, a port the kernel picks, as `herald serve` starts it."""
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        await nursery.start(serve_metrics, registry, listeners)
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


async def http_exchange(port: int, sent: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send `sent` as it is, read the answer until the server closes: (status, headers, body)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(sent)
        answer = bytearray()
        while chunk := await stream.receive_some(65536):
            answer += chunk
    head, _, body = bytes(answer).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


async def scrape(port: int) -> Samples:
    status, headers, body = await http_exchange(
        port, b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert status == 200, body
    assert headers["content-type"] == CONTENT_TYPE_LATEST
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def logged_in_group(running: RunningServer, logins: list[str]) -> tuple[int, dict[str, int]]:
    ids = seed_org(running.engine, "acme", logins)
    op = CreateGroup(tenant=ids["tenant"], creator=ids[logins[0]], title="team",
                     members=tuple(ids[name] for name in logins[1:]))
    conv = running.engine.apply(op, NOW_MS).conv  # type: ignore[union-attr]
    return conv, ids


async def test_the_endpoint_serves_the_text_format_that_prometheus_clients_parser_reads(
    tmp_path: Path,
) -> None:
    with trio.fail_after(20):
        async with running_server(tmp_path / "data") as running, metrics_port(
            running.server.metrics.registry
        ) as port:
            samples = await scrape(port)

    names = {name for name, _ in samples}
    for expected in ("herald_connections", "herald_online_users", "herald_logins_total",
                     "herald_messages_sent_total", "herald_deliveries_total",
                     "herald_writer_commits_total", "herald_writer_batch_ops_bucket",
                     "herald_send_latency_seconds_count", "herald_store_used_bytes",
                     "herald_store_map_bytes", "herald_start_time_seconds",
                     "process_open_fds"):
        assert expected in names, expected
    (build,) = [labels for name, labels in samples if name == "herald_build_info"]
    assert {label for label, _ in build} == {"version", "store_format", "protocol"}
    assert 0 < value(samples, "herald_store_used_bytes") <= value(samples, "herald_store_map_bytes")
    assert value(samples, "herald_store_map_bytes") == running.config.map_size_bytes


async def test_five_messages_to_a_group_of_three_count_five_sends_and_ten_deliveries(
    tmp_path: Path,
) -> None:
    with trio.fail_after(30):
        async with running_server(tmp_path / "data") as running, metrics_port(
            running.server.metrics.registry
        ) as port:
            conv, _ = await logged_in_group(running, ["alice", "bob", "carol"])
            async with open_ws(running.port) as alice, open_ws(running.port) as bob, open_ws(
                running.port
            ) as carol:
                for ws, name in ((alice, "alice"), (bob, "bob"), (carol, "carol")):
                    await login(ws, "acme", name)
                before = await scrape(port)
                assert value(before, "herald_connections") == 3
                assert value(before, "herald_online_users") == 3
                for n in range(5):
                    ack = await request(alice, {"op": "send", "id": 10 + n, "conv": conv,
                                                "cmid": f"m{n}", "body": f"hello {n}"})
                    assert ack["type"] == "reply", ack
                for reader in (bob, carol):
                    for _ in range(5):
                        assert (await receive_json(reader))["type"] == "msg"
                # A retransmit is answered as a duplicate: not a second message.
                again = await request(alice, {"op": "send", "id": 20, "conv": conv,
                                              "cmid": "m0", "body": "hello 0"})
                assert again["data"]["duplicate"] is True
                after = await scrape(port)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("herald_messages_sent_total") == 5
    assert moved("herald_requests_total", op="send") == 6
    assert moved("herald_deliveries_total") == 10  # bob's 5 and carol's 5; none back to alice
    assert moved("herald_writes_total", op="Append", outcome="ok") == 6
    assert moved("herald_send_latency_seconds_count") == 6  # every acked send, duplicate too
    assert moved("herald_send_latency_seconds_sum") > 0
    assert moved("herald_writer_commits_total") >= 1
    assert moved("herald_writer_batch_ops_count") == moved("herald_writer_commits_total")
    assert value(after, "herald_send_latency_seconds_bucket", le="+Inf") == value(
        after, "herald_send_latency_seconds_count")


async def test_logins_are_counted_by_outcome(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with running_server(tmp_path / "data") as running, metrics_port(
            running.server.metrics.registry
        ) as port:
            seed_org(running.engine, "acme", ["alice"])
            async with open_ws(running.port) as ws:
                await login(ws, "acme", "alice")
            async with open_ws(running.port) as ws:
                refused = await request(ws, {"op": "login", "id": 1, "tenant": "acme",
                                             "login": "alice", "password": "not the password"})
                assert refused["type"] == "error", refused
                refused = await request(ws, {"op": "login", "id": 2, "tenant": "nobody",
                                             "login": "alice", "password": "not the password"})
                assert refused["type"] == "error", refused
            samples = await scrape(port)

    assert value(samples, "herald_logins_total", outcome="ok") == 1
    assert value(samples, "herald_logins_total", outcome="failed") == 2
    assert value(samples, "herald_writes_total", op="CreateSession", outcome="ok") == 1


async def test_a_bad_request_gets_its_status_and_the_server_goes_on_serving(
    tmp_path: Path,
) -> None:
    with trio.fail_after(20):
        async with running_server(tmp_path / "data") as running, metrics_port(
            running.server.metrics.registry
        ) as port:
            seed_org(running.engine, "acme", ["alice"])
            answers = {
                "another path": await http_exchange(port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"),
                "another method": await http_exchange(
                    port, b"POST /metrics HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"),
                "garbage": await http_exchange(port, b"\x16\x03\x01 not http at all\r\n\r\n"),
                "a huge header": await http_exchange(
                    port, b"GET /metrics HTTP/1.1\r\nHost: h\r\nX: "
                    + b"a" * (2 * MAX_REQUEST_BYTES) + b"\r\n\r\n"),
            }
            # A scraper that connects and goes away at once, and one that sends half a line.
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.aclose()
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"GET /metr")
            await stream.aclose()

            samples = await scrape(port)  # still answering
            async with open_ws(running.port) as ws:  # and the gateway too
                await login(ws, "acme", "alice")

    assert {what: status for what, (status, _, _) in answers.items()} == {
        "another path": 404, "another method": 405, "garbage": 400, "a huge header": 431}
    assert answers["another method"][1]["allow"] == "GET"
    assert b"/metrics" in answers["another path"][2]
    assert "herald_build_info" in {name for name, _ in samples}


async def test_a_scraper_that_sends_nothing_is_closed_after_the_request_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    registry = CollectorRegistry()
    async with metrics_port(registry) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            started = trio.current_time()
            assert await stream.receive_some(100) == b""  # closed, unanswered
            assert trio.current_time() - started >= REQUEST_TIMEOUT_S


class _BrokenCollector(Collector):
    """A collector with a bug, as a future metric might have one."""

    def collect(self) -> Iterator[Metric]:
        raise ZeroDivisionError("a bug in a collector")


async def test_a_collector_that_fails_gets_500_and_the_listener_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = CollectorRegistry()
    broken = _BrokenCollector()
    registry.register(broken)
    with trio.fail_after(20):
        async with metrics_port(registry) as port:
            status, _, body = await http_exchange(
                port, b"GET /metrics HTTP/1.1\r\nHost: h\r\n\r\n")
            registry.unregister(broken)
            assert (await http_exchange(
                port, b"GET /metrics HTTP/1.1\r\nHost: h\r\n\r\n"))[0] == 200

    assert (status, body) == (500, b"the scrape failed; see the server's log\n")
    assert "a metrics scrape failed" in caplog.text and "ZeroDivisionError" in caplog.text


def test_the_latency_histogram_puts_a_value_on_a_bound_in_that_bounds_bucket() -> None:
    buckets = Buckets((0.1, 1.0))
    for seconds in (0.05, 0.1, 0.5, 1.0, 3.0):
        buckets.observe(seconds)

    family = buckets.family("t_seconds", "test")

    cumulative = {s.labels["le"]: s.value for s in family.samples if s.name.endswith("_bucket")}
    assert cumulative == {"0.1": 2, "1.0": 4, "+Inf": 5}
    assert {s.name: s.value for s in family.samples if not s.name.endswith("_bucket")} == {
        "t_seconds_count": 5, "t_seconds_sum": 4.65}


def test_metrics_are_off_by_default_and_a_network_address_needs_allow_network() -> None:
    assert not MetricsConfig().enabled
    assert metrics_refusal(MetricsConfig()) is None
    assert metrics_refusal(MetricsConfig(listen="127.0.0.1:9470")) is None
    assert metrics_refusal(MetricsConfig(listen="[::1]:9470")) is None
    assert metrics_refusal(MetricsConfig(listen="0.0.0.0:9470", allow_network=True)) is None
    refusal = metrics_refusal(MetricsConfig(listen="0.0.0.0:9470"))
    assert refusal is not None and "allow_network = true" in refusal and "[metrics]" in refusal


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "appliance.cli", "serve", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False,
                          stdin=subprocess.DEVNULL)


async def test_herald_serve_refuses_metrics_on_a_network_address_or_a_port_in_use(
    tmp_path: Path,
) -> None:
    refused = await trio.to_thread.run_sync(lambda: _serve(
        "--data-dir", str(tmp_path / "none"), "--listen", "127.0.0.1:0",
        "--metrics-listen", "0.0.0.0:9470"))
    assert refused.returncode == 2, refused
    assert refused.stderr.startswith("herald: refusing to serve metrics on 0.0.0.0"), refused
    assert "allow_network = true in [metrics]" in refused.stderr
    assert "Traceback" not in refused.stderr

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        in_use = await trio.to_thread.run_sync(lambda: _serve(
            "--data-dir", str(tmp_path / "none"), "--listen", "127.0.0.1:0",
            "--metrics-listen", f"127.0.0.1:{port}"))
    assert in_use.returncode == 1, in_use
    assert in_use.stderr == (f"herald: cannot listen on 127.0.0.1:{port}: Address already in "
                             f"use; choose another --metrics-listen\n"), in_use.stderr


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process `pid` listens on, from /proc: its sockets' inodes, matched in
    the kernel's tables of TCP sockets in the LISTEN state (0A)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


async def test_herald_serve_listens_for_metrics_only_when_told_and_reports_tenants_keys(
    tmp_path: Path,
) -> None:
    data = keyed_data_dir(tmp_path / "data")
    add_acme_with_a_group(data, PASSWORD)
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            async with herald_process(nursery, "serve", "--data-dir", str(data), "--listen",
                                      "127.0.0.1:0") as plain:
                port = await served_port(plain)
                assert listening_ports(plain.process.pid) == {port}  # no metrics listener
                plain.process.send_signal(signal.SIGINT)
                await plain.expect(r"Herald stopped\.")
            assert "Metrics" not in plain.out.decode()

            async with herald_process(nursery, "serve", "--data-dir", str(data), "--listen",
                                      "127.0.0.1:0", "--metrics-listen",
                                      "127.0.0.1:0") as measured:
                found = await measured.expect(
                    r"Metrics for Prometheus at http://127\.0\.0\.1:(\d+)/metrics")
                metrics = int(found.group(1))
                port = await served_port(measured)
                assert listening_ports(measured.process.pid) == {port, metrics}
                samples = await scrape(metrics)
                measured.process.send_signal(signal.SIGINT)
                await measured.expect(r"Herald stopped\.")

    keys = {labels: v for (name, labels), v in samples.items()
            if name == "herald_tenant_key_state"}
    assert list(keys.values()) == [1.0]
    (labels,) = keys
    assert dict(labels)["state"] == "available"
    assert value(samples, "herald_tenant_key_epoch", tenant=dict(labels)["tenant"]) == 1
    assert value(samples, "herald_connections") == 0
