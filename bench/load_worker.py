"""A load-generator process: many raw WebSocket connections on one epoll, no framework.

The bench starts a few of these (multiprocessing, spawn) so that its own work runs beside the
server instead of inside one busy process. A worker owns a list of connection specs and obeys
commands from its pipe:

  ("connect", n)            open and log in the next n connections, a window at a time;
                            answers ("connected", {...})
  ("go", {"n": N, ...})     senders send their share of N messages, W in flight each; answers
                            ("done", {...}) when every connection has what it expects, or at
                            the deadline; ("progress", {...}) every PROGRESS_EVERY_S meanwhile
  ("close", None)           close every socket and exit; answers ("closed", None)

A receiver is LEAN: it finds frame boundaries from the 2-4 header bytes, recognises a pushed
message by one byte (`{"type":"msg"`: the 10th byte is "m"; no other server frame has it) and
JSON-decodes only every `sample_every`-th one (checking its type and conversation). A few
"latency" receivers decode every push to read the send time the sender put at the start of the
body. The worker reports its own CPU time for the run, so the cost per received frame is known.
"""

from __future__ import annotations

import contextlib
import os
import resource
import select
import socket
import ssl
import time
from multiprocessing.connection import Connection as Pipe
from typing import Any

import msgspec
from rawws import (
    OP_CLOSE,
    OP_PING,
    ClientTls,
    client_context,
    client_frame,
    handshake_request,
    pong_frame,
)

__all__ = ["ConnSpec", "measure_parse_cost", "quota", "worker_main"]

RECV_BYTES = 262_144
PROGRESS_EVERY_S = 2.0
CONNECT_TIMEOUT_S = 10.0
_IN, _OUT = select.EPOLLIN, select.EPOLLOUT

# A connection spec, as the bench builds it (plain tuples cross the process boundary cheaply):
#   (auth, role, send_index, expect, conv)
#   auth: ("resume", token) or ("login", tenant, login, password)
#   role: "recv" (lean), "lat" (decodes every push), "send" (sends, reads acks, counts pushes)
#   send_index: this connection's rank among all senders, or -1
#   expect: "all" (every message of the run but its own), "none", or ("peer", k): the messages
#           of sender k (a direct conversation)
#   conv: the conversation it sends to, and the one its pushes must come from
ConnSpec = tuple[tuple[str, ...], str, int, Any, int]


def quota(n: int, senders: int, index: int) -> int:
    """Messages sender `index` sends when `senders` share `n`."""
    return n // senders + (1 if index < n % senders else 0)


class _Msg(msgspec.Struct):
    seq: int
    body: str


class _Push(msgspec.Struct):
    type: str
    conv: int = 0
    msg: _Msg | None = None


class _Answer(msgspec.Struct):
    type: str
    id: int | None = None
    code: str = ""
    message: str = ""


_decode_push = msgspec.json.Decoder(_Push).decode
_decode_answer = msgspec.json.Decoder(_Answer).decode


class _Conn:
    __slots__ = (
        "acked",
        "buf",
        "cmid",
        "conv",
        "expect",
        "fd",
        "feed",
        "inflight",
        "msgs",
        "next_id",
        "next_sample",
        "out",
        "quota",
        "role",
        "send_index",
        "sent",
        "sock",
        "spec",
        "t_last",
        "tls",
        "waiting_login",
    )

    def __init__(self, spec: ConnSpec, sock: socket.socket, cmid: bytes) -> None:
        self.spec = spec
        self.sock = sock
        self.tls: ClientTls | None = None
        self.fd = sock.fileno()
        self.role = spec[1]
        self.send_index = spec[2]
        self.conv = spec[4]
        self.cmid = cmid
        self.buf = b""
        self.out = b""
        self.feed: Any = None
        self.waiting_login = True
        self.msgs = 0
        self.expect = 0
        self.next_sample = 0
        self.t_last = 0
        self.quota = self.sent = self.acked = 0
        self.next_id = 1
        self.inflight: dict[int, int] = {}


class Worker:
    def __init__(self, pipe: Pipe, params: dict[str, Any]) -> None:
        self.pipe = pipe
        self.host: str = params["host"]
        self.port: int = params["port"]
        self.specs: list[ConnSpec] = params["specs"]
        self.worker_id: int = params["worker_id"]
        self.sample_every: int = params["sample_every"]
        self.window: int = params["window"]
        self.connect_window: int = params["connect_window"]
        self.fill = b"." * max(0, params["body_bytes"] - 19)
        self.ep = select.epoll()
        self.conns: dict[int, _Conn] = {}
        self.handshake = handshake_request(self.host, self.port)
        self.tls_context = client_context(params["ca_file"]) if params.get("tls") else None
        # connecting
        self.next_spec = 0
        self.connect_target = 0
        self.handshaking = 0
        self.ready = self.ready_before = 0
        self.failed: list[str] = []
        self.connect_reported = True
        # running
        self.running = False
        self.run_params: dict[str, Any] = {}
        self.incomplete = 0
        self.deadline = 0.0
        self.cpu0 = (0.0, 0.0)
        self.t_start = 0
        self.t_last_ack = 0
        self.latencies: list[int] = []
        self.ack_latencies: list[int] = []
        self.samples_ok = 0
        self.samples_bad: list[str] = []
        self.other_frames = 0
        self.errors: list[str] = []
        self.error_count = 0
        self.lost: list[str] = []
        self.last_progress = 0.0
        self.recvs = 0
        self.exiting = False

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> None:
        pipe_fd = self.pipe.fileno()
        self.ep.register(pipe_fd, _IN)
        conns = self.conns
        poll = self.ep.poll
        recv_bytes = RECV_BYTES
        monotonic_ns = time.monotonic_ns
        while not self.exiting:
            for fd, events in poll(0.25, 4096):
                if fd == pipe_fd:
                    self._command(*self.pipe.recv())
                    continue
                c = conns.get(fd)
                if c is None:
                    continue
                if events & _OUT:
                    self._flush(c)
                if events & ~_OUT:
                    try:
                        data = c.sock.recv(recv_bytes)
                    except BlockingIOError:
                        continue
                    except OSError as exc:
                        self._lost(c, f"recv: {exc}")
                        continue
                    if data and c.tls is not None:
                        data = self._decrypt(c, data)
                        if not data:
                            continue
                    if data:
                        self.recvs += 1
                        c.feed(c, data, monotonic_ns())
                    else:
                        self._lost(c, "the server closed the connection")
            self._housekeeping()

    def _command(self, name: str, arg: Any) -> None:
        if name == "connect":
            self.connect_target = min(len(self.specs), self.next_spec + int(arg))
            self.connect_reported = False
            self.ready_before, self.failed = self.ready, []
        elif name == "go":
            self._go(arg)
        elif name == "close":
            for c in list(self.conns.values()):
                c.sock.close()
            self.conns.clear()
            self.pipe.send(("closed", None))
            self.exiting = True
        else:
            raise ValueError(f"unknown command {name!r}")

    def _housekeeping(self) -> None:
        if not self.connect_reported:
            while self.next_spec < self.connect_target and self.handshaking < self.connect_window:
                self._open(self.specs[self.next_spec])
                self.next_spec += 1
            if self.next_spec >= self.connect_target and self.handshaking == 0:
                self.connect_reported = True
                self.pipe.send(("connected", {"ready": self.ready - self.ready_before,
                                              "failed": len(self.failed),
                                              "failures": self.failed[:5]}))
        if self.running:
            now = time.monotonic()
            if self.incomplete <= 0 or now >= self.deadline:
                self._finish()
            elif now - self.last_progress >= PROGRESS_EVERY_S:
                self.last_progress = now
                msgs = sum(c.msgs for c in self.conns.values())
                acked = sum(c.acked for c in self.conns.values())
                self.pipe.send(("progress", {"msgs": msgs, "acked": acked}))

    # -- connections ----------------------------------------------------------------------------

    def _open(self, spec: ConnSpec) -> None:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=CONNECT_TIMEOUT_S)
        except OSError as exc:
            self.failed.append(f"connect: {exc}")
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        index = len(self.conns)
        c = _Conn(spec, sock, b"w%dc%d-" % (self.worker_id, index))
        auth = spec[0]
        if auth[0] == "resume":
            login = {"op": "resume", "id": 1, "token": auth[1]}
        else:
            login = {"op": "login", "id": 1, "tenant": auth[1], "login": auth[2],
                     "password": auth[3]}
        c.feed = self._feed_handshake
        self.conns[c.fd] = c
        self.ep.register(c.fd, _IN)
        self.handshaking += 1
        if self.tls_context is not None:
            c.tls = ClientTls(self.tls_context, self.host)
            self._send_raw(c, c.tls.start())
        # The login frame rides with the upgrade request: the server keeps early frames.
        self._send(c, self.handshake + client_frame(msgspec.json.encode(login)))

    def _decrypt(self, c: _Conn, data: bytes) -> bytes:
        assert c.tls is not None
        try:
            plain, reply = c.tls.receive(data)
        except ssl.SSLError as exc:
            self._lost(c, f"TLS: {exc}")
            return b""
        if reply:
            self._send_raw(c, reply)
        return plain

    def _send(self, c: _Conn, data: bytes) -> None:
        if c.tls is not None:
            data = c.tls.seal(data)
            if not data:
                return
        self._send_raw(c, data)

    def _send_raw(self, c: _Conn, data: bytes) -> None:
        if c.out:
            c.out += data
            return
        try:
            sent = c.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._lost(c, f"send: {exc}")
            return
        if sent < len(data):
            c.out = data[sent:]
            self.ep.modify(c.fd, _IN | _OUT)

    def _flush(self, c: _Conn) -> None:
        try:
            sent = c.sock.send(c.out)
        except BlockingIOError:
            return
        except OSError as exc:
            self._lost(c, f"send: {exc}")
            return
        c.out = c.out[sent:]
        if not c.out:
            self.ep.modify(c.fd, _IN)

    def _lost(self, c: _Conn, why: str) -> None:
        if c.fd not in self.conns:
            return
        del self.conns[c.fd]
        self.ep.unregister(c.fd)
        c.sock.close()
        if c.waiting_login:
            self.handshaking -= 1
            self.failed.append(why)
        else:
            self.lost.append(why)
            self.ready -= 1
            if self.running and (c.msgs < c.expect or c.acked < c.quota):
                self.incomplete -= 1  # it will never complete: the report shows the shortfall

    def _feed_handshake(self, c: _Conn, data: bytes, now: int) -> None:
        c.buf += data
        end = c.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        if not c.buf.startswith(b"HTTP/1.1 101"):
            self._lost(c, c.buf[: c.buf.find(b"\r\n")].decode("latin-1"))
            return
        rest, c.buf = c.buf[end + 4 :], b""
        c.feed = self._feed_login
        if rest:
            self._feed_login(c, rest, now)

    def _feed_login(self, c: _Conn, data: bytes, now: int) -> None:
        buf = c.buf + data
        pos, n = 0, len(buf)
        while c.waiting_login:
            frame = _next_frame(buf, pos, n)
            if frame is None:
                break
            first, start, end = frame
            pos = end
            if first & 0x0F != 0x1:
                self._control(c, first & 0x0F, buf[start:end])
                continue
            answer = _decode_answer(buf[start:end])
            if answer.type == "reply" and answer.id == 1:
                c.waiting_login = False
                self.handshaking -= 1
                self.ready += 1
                c.feed = {"recv": self._feed_lean, "lat": self._feed_latency,
                          "send": self._feed_sender}[c.role]
            else:
                self._lost(c, f"login refused: {answer.code} {answer.message}")
                return
        c.buf = b""
        if pos < n:
            if c.waiting_login:
                c.buf = buf[pos:]
            else:
                c.feed(c, buf[pos:], now)

    def _control(self, c: _Conn, opcode: int, payload: bytes) -> None:
        if opcode == OP_PING:
            self._send(c, pong_frame(payload))
        elif opcode == OP_CLOSE:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            self._lost(c, f"closed by the server: {code} {payload[2:].decode(errors='replace')}")

    def _other_text(self, c: _Conn, payload: bytes) -> None:
        self.other_frames += 1
        answer = _decode_answer(payload)
        if answer.type == "error":
            self.error_count += 1
            if len(self.errors) < 5:
                self.errors.append(f"{answer.code}: {answer.message}")

    # -- receiving ------------------------------------------------------------------------------

    def _feed_lean(self, c: _Conn, data: bytes, now: int) -> None:
        """The hot path: count pushes, decode one in `sample_every`."""
        if c.buf:
            data = c.buf + data
        n = len(data)
        pos = 0
        msgs = 0
        target = c.next_sample - c.msgs
        while n - pos >= 2:
            length = data[pos + 1]
            if length < 126:
                start = pos + 2
            elif length == 126:
                if n - pos < 4:
                    break
                start = pos + 4
                length = (data[pos + 2] << 8) | data[pos + 3]
            else:
                if n - pos < 10:
                    break
                start = pos + 10
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
            end = start + length
            if end > n:
                break
            if data[pos] == 0x81 and data[start + 9] == 0x6D:  # a text frame {"type":"m...
                msgs += 1
                if msgs == target:
                    self._sample(c, data[start:end])
                    target += self.sample_every
            elif data[pos] == 0x81:
                self._other_text(c, data[start:end])
            else:
                self._control(c, data[pos] & 0x0F, data[start:end])
            pos = end
        c.buf = data[pos:] if pos < n else b""
        if msgs:
            c.next_sample = c.msgs + target
            c.msgs += msgs
            c.t_last = now
            if c.msgs >= c.expect and c.msgs - msgs < c.expect:
                self.incomplete -= 1

    def _sample(self, c: _Conn, payload: bytes) -> None:
        try:
            push = _decode_push(payload)
        except msgspec.DecodeError as exc:
            self.samples_bad.append(f"undecodable push: {exc}")
            return
        if push.type == "msg" and push.conv == c.conv and push.msg is not None:
            self.samples_ok += 1
        else:
            self.samples_bad.append(f"unexpected push {payload[:120]!r}")

    def _feed_latency(self, c: _Conn, data: bytes, now: int) -> None:
        """Every push decoded: the body starts with the sender's monotonic_ns()."""
        if c.buf:
            data = c.buf + data
        pos, n = 0, len(data)
        msgs = 0
        latencies = self.latencies
        while True:
            frame = _next_frame(data, pos, n)
            if frame is None:
                break
            first, start, end = frame
            pos = end
            if first == 0x81 and data[start + 9] == 0x6D:
                push = _decode_push(data[start:end])
                if push.conv != c.conv or push.msg is None:
                    self.samples_bad.append(f"unexpected push {data[start:start + 120]!r}")
                    continue
                msgs += 1
                latencies.append(now - int(push.msg.body[:19]))
                self.samples_ok += 1
            elif first == 0x81:
                self._other_text(c, data[start:end])
            else:
                self._control(c, first & 0x0F, data[start:end])
        c.buf = data[pos:] if pos < n else b""
        if msgs:
            c.msgs += msgs
            c.t_last = now
            if c.msgs >= c.expect and c.msgs - msgs < c.expect:
                self.incomplete -= 1

    def _feed_sender(self, c: _Conn, data: bytes, now: int) -> None:
        """Acks (replies to sends) open the window for the next message; pushes are counted."""
        if c.buf:
            data = c.buf + data
        pos, n = 0, len(data)
        msgs = 0
        acks = 0
        while True:
            frame = _next_frame(data, pos, n)
            if frame is None:
                break
            first, start, end = frame
            pos = end
            if first != 0x81:
                self._control(c, first & 0x0F, data[start:end])
            elif data[start + 9] == 0x6D:
                msgs += 1
                if (c.msgs + msgs) % self.sample_every == 0:
                    self._sample(c, data[start:end])
            else:
                answer = _decode_answer(data[start:end])
                sent_at = c.inflight.pop(answer.id, None) if answer.id is not None else None
                if sent_at is None:
                    self._other_text(c, data[start:end])
                    continue
                acks += 1
                if answer.type == "reply":
                    self.ack_latencies.append(now - sent_at)
                else:
                    self.error_count += 1
                    if len(self.errors) < 5:
                        self.errors.append(f"{answer.code}: {answer.message}")
        c.buf = data[pos:] if pos < n else b""
        was_complete = c.msgs >= c.expect and c.acked >= c.quota
        if msgs:
            c.msgs += msgs
            c.t_last = now
        if acks:
            c.acked += acks
            self.t_last_ack = now
            more = min(acks, c.quota - c.sent)
            if more > 0:
                self._send_messages(c, more)
        if not was_complete and c.msgs >= c.expect and c.acked >= c.quota:
            self.incomplete -= 1

    def _send_messages(self, c: _Conn, count: int) -> None:
        frames = []
        fill = self.fill
        monotonic_ns = time.monotonic_ns
        for _ in range(count):
            c.next_id += 1
            c.sent += 1
            rid = c.next_id
            sent_at = monotonic_ns()
            payload = b'{"op":"send","id":%d,"conv":%d,"cmid":"%s%d","body":"%019d%s"}' % (
                rid, c.conv, c.cmid, rid, sent_at, fill)
            c.inflight[rid] = sent_at
            frames.append(client_frame(payload))
        self._send(c, b"".join(frames))

    # -- a run ----------------------------------------------------------------------------------

    def _go(self, params: dict[str, Any]) -> None:
        n, senders = params["n"], params["senders"]
        self.run_params = params
        self.latencies, self.ack_latencies = [], []
        self.samples_ok, self.samples_bad = 0, []
        self.other_frames = self.error_count = 0
        self.errors, self.lost = [], []
        self.t_last_ack = 0
        self.incomplete = 0
        self.recvs = 0
        for i, c in enumerate(self.conns.values()):
            expect = c.spec[3]
            c.quota = quota(n, senders, c.send_index) if c.send_index >= 0 else 0
            if expect == "all":
                c.expect = n - c.quota
            elif expect == "none":
                c.expect = 0
            else:
                c.expect = quota(n, senders, expect[1])
            c.msgs = c.sent = c.acked = 0
            c.t_last = 0
            c.inflight.clear()
            # Spread the samples: connection i decodes its (i mod k + 1)-th push first.
            c.next_sample = i % self.sample_every + 1
            if c.expect > 0 or c.quota > 0:
                self.incomplete += 1
        self.deadline = time.monotonic() + params["timeout_s"]
        self.last_progress = time.monotonic()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.cpu0 = (usage.ru_utime, usage.ru_stime)
        self.running = True
        self.t_start = time.monotonic_ns()
        for c in list(self.conns.values()):
            if c.quota:
                self._send_messages(c, min(self.window, c.quota))

    def _finish(self) -> None:
        self.running = False
        usage = resource.getrusage(resource.RUSAGE_SELF)
        conns = self.conns.values()
        has_senders = any(c.quota for c in conns)
        shortfall = sum(max(0, c.expect - c.msgs) for c in conns)
        unacked = sum(max(0, c.quota - c.acked) for c in conns)
        self.pipe.send(("done", {
            "worker": self.worker_id,
            "pid": os.getpid(),
            "connections": len(self.conns),
            "msgs": sum(c.msgs for c in conns),
            "msgs_lat": sum(c.msgs for c in conns if c.role == "lat"),
            "acked": sum(c.acked for c in conns),
            "sent": sum(c.sent for c in conns),
            "t_start": self.t_start if has_senders else None,
            "t_last_msg": max((c.t_last for c in conns), default=0),
            "t_last_ack": self.t_last_ack,
            "latencies_ns": self.latencies,
            "ack_latencies_ns": self.ack_latencies,
            "samples_ok": self.samples_ok,
            "samples_bad": self.samples_bad[:5],
            "samples_bad_count": len(self.samples_bad),
            "other_frames": self.other_frames,
            "error_count": self.error_count,
            "errors": self.errors,
            "lost": self.lost[:5],
            "lost_count": len(self.lost),
            "shortfall": shortfall,
            "unacked": unacked,
            "timed_out": self.incomplete > 0,
            "recvs": self.recvs,
            "cpu_user_s": usage.ru_utime - self.cpu0[0],
            "cpu_sys_s": usage.ru_stime - self.cpu0[1],
        }))


def _next_frame(buf: bytes, pos: int, n: int) -> tuple[int, int, int] | None:
    """(first byte, payload start, payload end) of the frame at `pos`, if it is complete."""
    if n - pos < 2:
        return None
    length = buf[pos + 1]
    if length < 126:
        start = pos + 2
    elif length == 126:
        if n - pos < 4:
            return None
        start = pos + 4
        length = (buf[pos + 2] << 8) | buf[pos + 3]
    else:
        if n - pos < 10:
            return None
        start = pos + 10
        length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
    end = start + length
    if end > n:
        return None
    return buf[pos], start, end


def worker_main(pipe: Pipe, params: dict[str, Any]) -> None:
    """The process entry point (multiprocessing target)."""
    with contextlib.suppress(KeyboardInterrupt):
        Worker(pipe, params).run()


def measure_parse_cost(body_bytes: int, frames: int = 200_000, chunk_bytes: int = 65_536) -> float:
    """Microseconds per frame of the lean receiver's parse, in-process (no syscalls), on
    frames shaped like the server's pushes, fed in `chunk_bytes` pieces cut anywhere."""
    fill = b"." * max(0, body_bytes - 19)
    parts = []
    for seq in range(frames):
        payload = (b'{"type":"msg","conv":12,"msg":{"seq":%d,"sender":3,"ts":1780000000000,'
                   b'"kind":"text","body":"%019d%s","cmid":"w0c1-%d"}}'
                   % (seq, time.monotonic_ns(), fill, seq))
        n = len(payload)
        head = bytes((0x81, n)) if n < 126 else bytes((0x81, 126)) + n.to_bytes(2, "big")
        parts.append(head + payload)
    stream = b"".join(parts)
    chunks = [stream[i : i + chunk_bytes] for i in range(0, len(stream), chunk_bytes)]
    worker = Worker.__new__(Worker)
    worker.sample_every = 50
    worker.samples_ok, worker.samples_bad, worker.incomplete = 0, [], 1
    with socket.socket() as sock:
        c = _Conn((("resume", ""), "recv", -1, "all", 12), sock, b"")
        c.conv, c.expect, c.next_sample = 12, frames, 1
        started = time.perf_counter()
        for chunk in chunks:
            worker._feed_lean(c, chunk, 0)
        elapsed = time.perf_counter() - started
    if c.msgs != frames or worker.samples_bad:
        raise AssertionError(f"parser miscounted: {c.msgs} of {frames}, {worker.samples_bad[:1]}")
    return elapsed * 1e6 / frames
