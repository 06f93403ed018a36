"""`herald chat`: a small interactive client for using Herald from a terminal.

Lines typed are sent to the open conversation; lines starting with '/' are commands (`/help`),
and '//' sends a line that starts with '/'. On a terminal, lines are typed at a prompt that
incoming messages never garble (`line_source.py`); piped input is read a line at a time, and its
end quits after what was typed is sent. `/password` asks for passwords on the terminal only.

Everything another user or the server chose (bodies, names, titles, error messages, logins) is
printed through `appliance.client.display.visible`, so no message can drive the terminal.

The connection's ups and downs are said as they happen ("disconnected, reconnecting",
"reconnected", "the server is waiting for its keys; retrying"): the client library reconnects
and waits for the server's keys by itself. A server that cannot be reached at the start is
reported at once, with the reason, and the chat exits 1. A wrong password is asked again on a
terminal; with --password-stdin or piped input the chat exits 1 instead.

Conversations get a number the first time the chat sees them, and keep it: new activity
reorders `/convs`, never the numbers. Each message shows its seq (#N), which `/recall` takes.

Formatting and command parsing are plain functions; the Trio part is the two loops of `Chat`.
"""

from __future__ import annotations

import logging
import shlex
import signal
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import trio
from prompt_toolkit.patch_stdout import patch_stdout

from appliance.chat.line_source import LineSource, PipedLines, PromptLines
from appliance.client import (
    CertificateRejected,
    ClientClosed,
    ClientError,
    ClientOptions,
    ConnectionLost,
    ConnectionStatus,
    Disconnected,
    HeraldClient,
    LoginFailed,
    Message,
    Reconnect,
    Reconnected,
    ReconnectFailed,
    ServerUnreachable,
    WaitingForKeys,
    client_ssl_context,
    open_client,
)
from appliance.client.display import visible
from appliance.protocol.codes import ErrorCode
from appliance.protocol.frames import ConvSummary, WireMessage
from appliance.terminal import ask_secret

__all__ = [
    "CONTINUATION",
    "HELP",
    "Chat",
    "Command",
    "PromptRefused",
    "describe_status",
    "format_message",
    "parse_command",
    "run",
]

PAGE_MESSAGES = 10  # shown on /open and per /history
PASSWORD_TRIES = 3  # on a terminal, a refused password is asked again this many times in all
CONNECT_TIMEOUT_S = 10.0  # TCP, TLS and WebSocket handshakes together (--connect-timeout)
CONTINUATION = "  | "  # starts every further line of a multi-line body: never a chat line

HELP = """Commands:
  /convs               list your conversations, with unread counts (latest activity first;
                       each keeps its number)
  /open N              open conversation N of that list and show its latest messages
  /history             show older messages of the open conversation (older first, ending
                       just before the oldest shown so far)
  /dm LOGIN            open the direct conversation with LOGIN
  /group TITLE LOGIN...  create a group with these members and open it
                       (quote a title with spaces: /group "Project X" bob carol)
  /add LOGIN...        add people to the open group
  /kick LOGIN          remove someone from the open group
  /leave               leave the open group
  /recall N            recall your own message #N of the open conversation
  /password            change your password (asked on the terminal, not shown); your other
                       devices are signed out, this chat stays signed in
  /help                show this help
  /quit                leave (so do Ctrl-D and Ctrl-C)
  //TEXT               send "/TEXT": a line starting with // sends the rest starting with /
Any other line is sent to the open conversation. Each message shows its number (#N)."""

_EVENTS = {
    "group_created": "created the group",
    "direct_opened": "opened the conversation",
    "members_added": "added",
    "member_joined": "joined",
    "member_removed": "removed",
    "member_left": "left",
    "role_changed": "changed the role of",
}


class PromptRefused(Exception):
    """A password prompt gave no password: no terminal to ask on, cancelled, or the two
    entries of the new one differ. The message says which."""


_NO_TERMINAL = ("/password asks for the passwords on a terminal, and standard input is not "
                "one: run herald chat in a terminal to change your password")


@dataclass(frozen=True, slots=True)
class Command:
    """A parsed input line: `name` is "" for text to send (then `arg` is the text)."""

    name: str
    arg: str = ""


def parse_command(line: str) -> Command:
    """'/open 2' -> Command("open", "2"); 'hello' -> Command("", "hello")."""
    if line.startswith("/") and not line.startswith("//"):
        name, _, arg = line[1:].partition(" ")
        return Command(name.strip().lower(), arg.strip())
    return Command("", line[1:] if line.startswith("//") else line)  # '//x' sends '/x'


def format_message(
    message: Message, name_of: Callable[[int], str], label: str = "", *,
    local_time: Callable[[float], time.struct_time] = time.localtime,
) -> str:
    """One message as a line: '[label] HH:MM #seq Name: text', or '* Name did something' for a
    membership event. `label` names the conversation when it is not the open one. Names, the
    label and the body are shown through `visible`; a multi-line body's further lines start
    with `CONTINUATION`."""
    clock = time.strftime("%H:%M", local_time(message.ts / 1000))
    prefix = f"[{visible(label)}] " if label else ""
    head = f"{prefix}{clock} #{message.seq}"
    sender = visible(name_of(message.sender))
    if message.kind == "system":
        event = _EVENTS.get(message.body, visible(message.body.replace("_", " ")))
        users = [visible(name_of(u)) for u in message.mentions if u != message.sender]
        listed = f" {', '.join(users)}" if users and message.body not in (
            "group_created", "direct_opened") else ""
        return f"{head} * {sender} {event}{listed}"
    if message.kind == "recall":
        return f"{head} * {sender} recalled message #{message.ref}"
    if message.recalled_by:  # its body is gone from the store; say so rather than print ""
        return f"{head} {sender}: (recalled)"
    return f"{head} {sender}: {visible(message.body, continuation=CONTINUATION)}"


def describe_status(status: ConnectionStatus) -> str:
    """A line saying what happened to the connection (server-chosen text made `visible`)."""
    if isinstance(status, Disconnected):
        return f"! disconnected, reconnecting ({visible(status.reason)})"
    if isinstance(status, ReconnectFailed):
        return (f"! still disconnected: {visible(status.reason)}; trying again in "
                f"{_seconds(status.retry_in_s)} s")
    if isinstance(status, Reconnected):
        return "! reconnected"
    assert isinstance(status, WaitingForKeys)
    return (f"! the server is waiting for its keys; retrying in {_seconds(status.retry_in_s)} "
            f"s ({visible(status.message)})")


def _seconds(seconds: float) -> str:
    return f"{seconds:.1f}" if seconds < 10 else f"{seconds:.0f}"


class Chat:
    """One chat: what is listed, what is open, who is who."""

    def __init__(
        self, client: HeraldClient, out: TextIO | None = None,
        ask: Callable[..., str] = ask_secret,
    ) -> None:
        """`out`: where to print (None: whatever `sys.stdout` is when printing, which under
        `patch_stdout` prints above the prompt). `ask` asks for a secret as
        `appliance.terminal.ask_secret` does (tests script it)."""
        self._client = client
        self._out = out
        self._ask = ask
        self._names: dict[int, str] = {client.user: client.display_name}
        self._numbers: dict[int, int] = {}  # conversation -> its number in this chat
        self._by_number: dict[int, int] = {}
        self._labels: dict[int, str] = {}
        self._kinds: dict[int, str] = {}
        self._open: int | None = None
        self._oldest_shown: int | None = None
        self.failure: BaseException | None = None

    def say(self, text: str) -> None:
        print(text, file=self._out or sys.stdout, flush=True)

    def name_of(self, user: int) -> str:
        return self._names.get(user, f"user {user}")

    def _number(self, conv: int) -> int:
        """The conversation's number, given the first time it is seen and kept."""
        if conv not in self._numbers:
            self._numbers[conv] = number = len(self._numbers) + 1
            self._by_number[number] = conv
        return self._numbers[conv]

    async def learn_names(self, users: Iterable[int]) -> None:
        """Ask the server for the names of the users not known yet (best effort: a user it
        does not name stays "user N")."""
        unknown = [user for user in dict.fromkeys(users) if user not in self._names]
        if not unknown:
            return
        try:
            for found in await self._client.users(unknown[:500]):
                self._names[found.user] = found.display_name
        except ClientError:
            pass

    async def _learn_message_names(self, messages: Iterable[Message]) -> None:
        await self.learn_names(
            user for message in messages for user in (message.sender, *message.mentions)
        )

    # -- incoming -----------------------------------------------------------------------------

    async def print_incoming(self, done: trio.CancelScope) -> None:
        """Print messages as they are delivered; mark those of the open conversation read."""
        try:
            async for message in self._client.messages:
                is_open = message.conv == self._open
                try:
                    label = "" if is_open else await self._label(message.conv, numbered=True)
                    await self._learn_message_names([message])
                except ClientError:
                    label = "" if is_open else f"{self._number(message.conv)}"
                self.say(format_message(message, self.name_of, label))
                if is_open:
                    try:
                        await self._client.mark_read(message.conv, message.seq)
                    except ClientError as exc:
                        self.say(f"! {visible(exc.message)}")
        except (ServerUnreachable, LoginFailed, CertificateRejected) as exc:
            self.failure = self.failure or exc
        done.cancel()

    async def _label(self, conv: int, *, numbered: bool = False) -> str:
        """The conversation's title ("N title" with `numbered`). Raises `ClientError`."""
        if conv not in self._labels:
            summaries = {s.conv: s for s in await self._client.convs()}
            if conv in summaries:
                self._labels[conv] = await self._title(summaries[conv])
        title = self._labels.get(conv, f"#{conv}")
        return f"{self._number(conv)} {title}" if numbered else title

    async def _title(self, summary: ConvSummary) -> str:
        self._kinds[summary.conv] = summary.kind
        if summary.kind != "direct":
            return summary.title or f"#{summary.conv}"
        members = await self._client.members(summary.conv)
        peers = [user for user, _ in members.members if user != self._client.user]
        await self.learn_names(peers)
        return self.name_of(peers[0]) if peers else f"#{summary.conv}"

    # -- commands -----------------------------------------------------------------------------

    async def read_commands(self, lines: LineSource) -> None:
        """Handle input lines until /quit, the end of input, or the client stops (then
        `failure` says why)."""
        while True:
            line = await lines.next_line()
            if line is None:
                return
            if not line.strip():
                continue
            try:
                if not await self.handle(parse_command(line)):
                    return
            except ConnectionLost:
                self.say("! the connection broke before the server answered: it may or may not "
                         "have been done; check (/convs) before trying again")
            except (ServerUnreachable, LoginFailed, CertificateRejected, ClientClosed) as exc:
                self.failure = self.failure or exc
                return
            except ClientError as exc:
                self.say(f"! {visible(exc.message)}")

    async def handle(self, command: Command) -> bool:
        """Do one command; False when the user leaves. Raises `ClientError` for refusals."""
        name, arg = command.name, command.arg
        if name == "":
            if self._open is None:
                self.say("! open a conversation first: /convs, then /open N (or /dm LOGIN)")
            else:
                await self._client.send(self._open, arg)
        elif name == "quit":
            return False
        elif name == "help":
            self.say(HELP)
        elif name in _COMMANDS:
            await _COMMANDS[name](self, arg)
        else:
            self.say(f"! unknown command /{visible(name)}; /help lists them")
        return True

    async def list_convs(self, _: str = "") -> None:
        listing = await self._client.convs()
        if not listing:
            self.say("No conversations yet. /dm LOGIN or /group TITLE LOGIN... starts one.")
            return
        self.say("Conversations:")
        for summary in listing:
            number = self._number(summary.conv)
            title = self._labels[summary.conv] = await self._title(summary)
            kind = ("direct" if summary.kind == "direct"
                    else f"group, {summary.member_count} members")
            unread = f" - {summary.unread} unread" if summary.unread else ""
            mark = " (open)" if summary.conv == self._open else ""
            self.say(f"  {number}. {visible(title)} ({kind}){unread}{mark}")

    async def _open_numbered(self, arg: str) -> None:
        if arg.isdigit() and int(arg) not in self._by_number:
            for summary in await self._client.convs():  # one seen for the first time
                self._number(summary.conv)
        if not arg.isdigit() or int(arg) not in self._by_number:
            self.say(f"! /open takes the number of a conversation, from 1 to "
                     f"{len(self._by_number)} (see /convs)")
            return
        await self._show(self._by_number[int(arg)])

    async def _user(self, login: str) -> int:
        """The id of the user with `login`, whose name is learnt. Raises `ClientError`."""
        peer = await self._client.lookup(login)
        self._names[peer.user] = peer.display_name
        return peer.user

    async def _direct(self, login: str) -> None:
        if not login:
            self.say("! /dm takes a login, e.g. /dm bob")
            return
        peer = await self._user(login)
        conv = await self._client.open_direct(peer)
        self._labels[conv], self._kinds[conv] = self.name_of(peer), "direct"
        await self._show(conv)

    async def _create_group(self, arg: str) -> None:
        try:
            title, *logins = shlex.split(arg)
        except ValueError as bad:  # an unclosed quote, or nothing at all
            title, logins = "", [str(bad)]
        if not title:
            self.say('! /group takes a title and logins, e.g. /group "Project X" bob carol')
            return
        members = [await self._user(login) for login in logins]
        conv = await self._client.create_group(title, members)
        self._labels[conv], self._kinds[conv] = title, "group"
        await self._show(conv)

    def _open_group(self, command: str) -> int | None:
        """The open conversation if it is a group; else says why not and gives None."""
        if self._open is None:
            self.say(f"! {command} works on the open group: /open N first")
            return None
        if self._kinds.get(self._open) == "direct":
            self.say(f"! {command} works on groups; this is a direct conversation")
            return None
        return self._open

    async def _add(self, arg: str) -> None:
        logins = arg.split()
        conv = self._open_group("/add")
        if conv is None:
            return
        if not logins:
            self.say("! /add takes logins, e.g. /add bob carol")
            return
        await self._client.add_members(conv, [await self._user(login) for login in logins])

    async def _kick(self, arg: str) -> None:
        conv = self._open_group("/kick")
        if conv is None:
            return
        if len(arg.split()) != 1:
            self.say("! /kick takes one login, e.g. /kick bob")
            return
        await self._client.kick(conv, await self._user(arg))

    async def _leave(self, _: str) -> None:
        conv = self._open_group("/leave")
        if conv is None:
            return
        await self._client.leave(conv)
        self.say(f"You left {visible(self._labels.get(conv, f'#{conv}'))}.")
        self._open = None

    async def _recall(self, arg: str) -> None:
        if self._open is None:
            self.say("! open a conversation first")
            return
        seq = arg.removeprefix("#")
        if not seq.isdigit() or int(seq) < 1:
            self.say("! /recall takes the number of one of your messages, e.g. /recall 12 "
                     "(each message shows its #N)")
            return
        await self._client.recall(self._open, int(seq))

    async def _change_password(self, _: str) -> None:
        """Ask the current and the new password (twice) without echo, then change it."""
        def ask() -> tuple[str, str]:
            current = self._ask("Current password: ", no_terminal=_NO_TERMINAL,
                                error=PromptRefused)
            new = self._ask("New password: ", confirm=True, no_terminal=_NO_TERMINAL,
                            differ="the new passwords differ; nothing was changed",
                            error=PromptRefused)
            return current, new

        try:
            current, new = await trio.to_thread.run_sync(ask)
        except PromptRefused as refused:
            self.say(f"! {refused}")
            return
        try:
            await self._client.change_password(current, new)
        except ConnectionLost:
            self.say("! the connection broke before the server answered: the password may or "
                     "may not have changed (the chat signs in again with whichever works)")
            return
        self.say("Password changed. Your other devices were signed out; this chat stays "
                 "signed in.")

    async def _show(self, conv: int) -> None:
        """Open `conv`: show its latest messages and mark them read."""
        self._open = conv
        page = await self._client.history(conv, limit=PAGE_MESSAGES)
        self.say(f"--- {visible(await self._label(conv))} ---")
        await self._print_page(conv, page.msgs)
        self._oldest_shown = page.msgs[0].seq if page.msgs else None
        if page.msgs:
            await self._client.mark_read(conv, page.msgs[-1].seq)

    async def _older(self, _: str) -> None:
        """The page before the oldest message shown, oldest first, so that it reads on into
        what was shown before it."""
        if self._open is None:
            self.say("! open a conversation first")
            return
        if self._oldest_shown is None or self._oldest_shown <= 1:
            self.say("(no older messages)")
            return
        page = await self._client.history(self._open, before=self._oldest_shown,
                                          limit=PAGE_MESSAGES)
        if not page.msgs:
            self.say("(no older messages)")
            return
        title = visible(await self._label(self._open))
        self.say(f"--- {title}: earlier messages, up to just before #{self._oldest_shown} ---")
        await self._print_page(self._open, page.msgs)
        self._oldest_shown = page.msgs[0].seq

    async def _print_page(self, conv: int, wires: list[WireMessage]) -> None:
        messages = sorted((Message.from_wire(conv, wire) for wire in wires),
                          key=lambda message: message.seq)
        await self._learn_message_names(messages)
        for message in messages:
            self.say(format_message(message, self.name_of))


_COMMANDS: dict[str, Callable[[Chat, str], Awaitable[None]]] = {
    "convs": Chat.list_convs,
    "open": Chat._open_numbered,
    "history": Chat._older,
    "dm": Chat._direct,
    "group": Chat._create_group,
    "add": Chat._add,
    "kick": Chat._kick,
    "leave": Chat._leave,
    "recall": Chat._recall,
    "password": Chat._change_password,
}


@dataclass(frozen=True, slots=True)
class _Target:
    url: str
    tenant: str
    login: str
    ssl_context: ssl.SSLContext | None
    connect_timeout_s: float


def _options(target: _Target) -> ClientOptions:
    # One attempt before the first login: a server that is down, a wrong port or host is said
    # at once. Once logged in, the chat never gives up reconnecting: it says what happens.
    return ClientOptions(device="herald chat", connect_timeout_s=target.connect_timeout_s,
                         reconnect=Reconnect(initial_attempts=1, max_attempts=None))


async def _session(target: _Target, password: str, lines: LineSource, out: TextIO | None,
                   say: Callable[[str], None]) -> int | LoginFailed:
    """Log in and chat until the user leaves: the exit code, or the refused login."""
    def on_status(status: ConnectionStatus) -> None:
        say(describe_status(status))

    failure: BaseException | None = None
    try:
        async with open_client(target.url, target.tenant, target.login, password,
                               ssl_context=target.ssl_context, options=_options(target),
                               on_status=on_status) as client:
            chat = Chat(client, out)
            chat.say(f"Logged in to {visible(target.tenant)} as {visible(client.display_name)} "
                     f"({visible(target.login)}). /help lists the commands.")
            try:
                try:
                    await chat.list_convs()
                except ClientError as exc:  # e.g. the keys lapsed since the login
                    chat.say(f"! {visible(exc.message)}")
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(chat.print_incoming, nursery.cancel_scope)
                    await chat.read_commands(lines)
                    nursery.cancel_scope.cancel()
            except (ServerUnreachable, LoginFailed, CertificateRejected) as exc:
                chat.failure = chat.failure or exc
            finally:
                with trio.CancelScope(shield=True):
                    await lines.aclose()
            failure = chat.failure
    except LoginFailed as refused:
        return refused
    except CertificateRejected as exc:
        print(f"herald chat: TLS refused with {target.url}: {visible(str(exc))}",
              file=sys.stderr)
        return 1
    except ServerUnreachable as exc:
        print(f"herald chat: {visible(str(exc))}", file=sys.stderr)
        return 1
    except ClientClosed as exc:
        failure = exc
    if isinstance(failure, LoginFailed):  # the server ended the session (bye), not the network
        print(f"herald chat: the session ended: {visible(failure.message)}", file=sys.stderr)
        return 1
    if failure is not None:
        print(f"herald chat: the connection to {target.url} is lost: {visible(str(failure))}",
              file=sys.stderr)
        return 1
    return 0


async def _until_interrupted(target: _Target, password: str, lines: LineSource,
                             out: TextIO | None) -> int | LoginFailed:
    """`_session`, ended cleanly by SIGINT (Ctrl-C while no prompt has the terminal): the
    connection is closed normally and the exit code is 130, with no traceback."""
    def say(text: str) -> None:
        print(text, file=out or sys.stdout, flush=True)

    outcome: int | LoginFailed = 130
    with trio.open_signal_receiver(signal.SIGINT) as interrupts:
        async with trio.open_nursery() as nursery:
            async def watch() -> None:
                async for _ in interrupts:
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(watch)
            outcome = await _session(target, password, lines, out, say)
            nursery.cancel_scope.cancel()
    return outcome


def run(url: str, tenant: str, login: str, *, password_stdin: bool,
        stdin: TextIO | None = None, out: TextIO | None = None, ca_file: Path | None = None,
        cert_file: Path | None = None, key_file: Path | None = None,
        connect_timeout_s: float = CONNECT_TIMEOUT_S) -> int:
    """`herald chat`: the process exit code (0; 1 when the login is refused, the server
    cannot be reached or its certificate is not trusted; 2 for a URL that is not ws:// or
    wss://, or TLS files given with ws:// or unreadable; 130 after SIGINT). With
    `password_stdin` the first input line is the password. `ca_file`, `cert_file`, `key_file`:
    see `client_ssl_context`. On a terminal (standard input and output both, and no
    `password_stdin`), lines are typed at a prompt and a refused password is asked again."""
    stdin = stdin or sys.stdin
    # The chat says what the client library logs (reconnecting, waiting for keys) in its own
    # words: its warnings must not reach the terminal a second time through logging's last
    # resort handler.
    logging.getLogger("herald.client").addHandler(logging.NullHandler())
    logging.getLogger("herald.client").propagate = False
    if not url.startswith(("ws://", "wss://")):
        print(f"herald chat: {url!r} is not a WebSocket URL, e.g. ws://127.0.0.1:8470/ws",
              file=sys.stderr)
        return 2
    ssl_context = None
    if ca_file or cert_file:
        if not url.startswith("wss://"):
            print("herald chat: --ca and --cert are for wss:// URLs", file=sys.stderr)
            return 2
        try:
            ssl_context = client_ssl_context(ca_file, cert_file, key_file)
        except (OSError, ssl.SSLError) as exc:
            print(f"herald chat: cannot use the TLS files given ({exc}); --ca takes a PEM "
                  f"certificate file, --cert a PEM certificate and --key its key",
                  file=sys.stderr)
            return 2
    target = _Target(url, tenant, login, ssl_context, connect_timeout_s)
    on_terminal = (not password_stdin and out is None and stdin is sys.stdin
                   and stdin.isatty() and sys.stdout.isatty())
    lines: LineSource = PromptLines() if on_terminal else PipedLines(stdin)
    for attempt in range(1, PASSWORD_TRIES + 1):
        if password_stdin:
            password = stdin.readline().rstrip("\r\n")
        else:
            password = ask_secret(
                f"Password for {login}: ",
                no_terminal="herald chat: a password is needed and there is no terminal to "
                            "ask on: pass --password-stdin and give it on standard input")
        with patch_stdout() if on_terminal else nullcontext():
            outcome = trio.run(_until_interrupted, target, password, lines, out)
        if isinstance(outcome, int):
            if outcome == 130:
                print("", file=out or sys.stdout)
            return outcome
        again = (on_terminal and outcome.code == ErrorCode.UNAUTHENTICATED
                 and attempt < PASSWORD_TRIES)
        print(f"herald chat: login refused: {visible(outcome.message)}"
              + ("; try again" if again else ""), file=sys.stderr)
        if not again:
            return 1
    return 1
