"""`herald chat`: a small interactive client for trying Herald by hand.

Lines typed are sent to the open conversation; lines starting with '/' are commands (`/help`).
`/password` asks for passwords on the terminal only (never echoed, never read from piped input).
Incoming messages are printed as they arrive, each once and in order (the client library sees
to that). Standard input is read a line at a time in a worker thread, so the chat behaves the
same on a terminal and with piped input; the end of input quits, after what was typed is sent.

Formatting and command parsing are plain functions; the Trio part is the two loops of `Chat`.

Messages carry user ids; the chat learns the display names behind them with the `users`
request, once per user, before it prints a message that names someone new.
"""

from __future__ import annotations

import ssl
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import trio

from appliance.client import (
    CertificateRejected,
    ClientClosed,
    ClientError,
    ClientOptions,
    ConnectionLost,
    HeraldClient,
    LoginFailed,
    Message,
    ServerUnreachable,
    client_ssl_context,
    open_client,
)
from appliance.protocol.frames import ConvSummary, WireMessage
from appliance.terminal import ask_secret

__all__ = ["HELP", "Chat", "Command", "PromptRefused", "format_message", "parse_command", "run"]

PAGE_MESSAGES = 10  # shown on /open and per /history

HELP = """Commands:
  /convs        list your conversations, with unread counts
  /open N       open conversation N of that list and show its latest messages
  /history      show older messages of the open conversation
  /dm LOGIN     open the direct conversation with LOGIN
  /password     change your password (asked on the terminal, not shown); your other
                devices are signed out, this chat stays signed in
  /help         show this help
  /quit         leave (so does the end of input, e.g. Ctrl-D)
Any other line is sent to the open conversation."""

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
    """One message as a line: '[label] HH:MM Name: text', or '* Name did something' for a
    membership event. `label` names the conversation when it is not the open one."""
    clock = time.strftime("%H:%M", local_time(message.ts / 1000))
    prefix = f"[{label}] " if label else ""
    sender = name_of(message.sender)
    if message.kind == "system":
        event = _EVENTS.get(message.body, message.body.replace("_", " "))
        users = [name_of(u) for u in message.mentions if u != message.sender]
        listed = f" {', '.join(users)}" if users and message.body not in (
            "group_created", "direct_opened") else ""
        return f"{prefix}{clock} * {sender} {event}{listed}"
    if message.kind == "recall":
        return f"{prefix}{clock} * {sender} recalled message {message.ref}"
    return f"{prefix}{clock} {sender}: {message.body}"


class Chat:
    """One chat: what is listed, what is open, who is who."""

    def __init__(
        self, client: HeraldClient, out: TextIO, ask: Callable[..., str] = ask_secret,
    ) -> None:
        """`ask` asks for a secret as `appliance.terminal.ask_secret` does (tests script it)."""
        self._client = client
        self._out = out
        self._ask = ask
        self._names: dict[int, str] = {client.user: client.display_name}
        self._listing: list[ConvSummary] = []
        self._labels: dict[int, str] = {}
        self._open: int | None = None
        self._oldest_shown: int | None = None
        self.failure: BaseException | None = None

    def say(self, text: str) -> None:
        print(text, file=self._out, flush=True)

    def name_of(self, user: int) -> str:
        return self._names.get(user, f"user {user}")

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
                label = "" if is_open else await self._label(message.conv)
                await self._learn_message_names([message])
                self.say(format_message(message, self.name_of, label))
                if is_open:
                    try:
                        await self._client.mark_read(message.conv, message.seq)
                    except ClientError as exc:
                        self.say(f"! {exc.message}")
        except (ServerUnreachable, LoginFailed, CertificateRejected) as exc:
            self.failure = exc
        done.cancel()

    async def _label(self, conv: int) -> str:
        if conv not in self._labels:
            try:
                summaries = {s.conv: s for s in await self._client.convs()}
            except ClientError:
                return f"#{conv}"
            if conv in summaries:
                self._labels[conv] = await self._title(summaries[conv])
        return self._labels.get(conv, f"#{conv}")

    async def _title(self, summary: ConvSummary) -> str:
        if summary.kind != "direct":
            return summary.title or f"#{summary.conv}"
        members = await self._client.members(summary.conv)
        peers = [user for user, _ in members.members if user != self._client.user]
        await self.learn_names(peers)
        return self.name_of(peers[0]) if peers else f"#{summary.conv}"

    # -- commands -----------------------------------------------------------------------------

    async def read_commands(self, stdin: TextIO) -> None:
        """Handle input lines until /quit or the end of input."""
        while True:
            line = await trio.to_thread.run_sync(stdin.readline, abandon_on_cancel=True)
            if not line:
                return
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            try:
                if not await self.handle(parse_command(line)):
                    return
            except ConnectionLost:
                self.say("! the connection broke before the server answered; try again")
            except ClientError as exc:
                self.say(f"! {exc.message}")

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
        elif name == "convs":
            await self.list_convs()
        elif name == "open":
            await self._open_listed(arg)
        elif name == "history":
            await self._older()
        elif name == "dm":
            await self._direct(arg)
        elif name == "password":
            await self._change_password()
        else:
            self.say(f"! unknown command /{name}; /help lists them")
        return True

    async def list_convs(self) -> None:
        self._listing = await self._client.convs()
        if not self._listing:
            self.say("No conversations yet. /dm LOGIN starts one.")
            return
        self.say("Conversations:")
        for number, summary in enumerate(self._listing, 1):
            title = self._labels[summary.conv] = await self._title(summary)
            kind = ("direct" if summary.kind == "direct"
                    else f"group, {summary.member_count} members")
            unread = f" - {summary.unread} unread" if summary.unread else ""
            mark = " (open)" if summary.conv == self._open else ""
            self.say(f"  {number}. {title} ({kind}){unread}{mark}")

    async def _open_listed(self, arg: str) -> None:
        if not self._listing:
            self._listing = await self._client.convs()
        if not arg.isdigit() or not 1 <= int(arg) <= len(self._listing):
            self.say(f"! /open takes a number from 1 to {len(self._listing)} (see /convs)")
            return
        await self._show(self._listing[int(arg) - 1].conv)

    async def _direct(self, login: str) -> None:
        if not login:
            self.say("! /dm takes a login, e.g. /dm bob")
            return
        peer = await self._client.lookup(login)
        self._names[peer.user] = peer.display_name
        conv = await self._client.open_direct(peer.user)
        self._labels[conv] = peer.display_name
        await self._show(conv)

    async def _change_password(self) -> None:
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
        self.say(f"--- {await self._label(conv)} ---")
        await self._print_page(conv, page.msgs)
        self._oldest_shown = page.msgs[0].seq if page.msgs else None
        if page.msgs:
            await self._client.mark_read(conv, page.msgs[-1].seq)

    async def _older(self) -> None:
        if self._open is None:
            self.say("! open a conversation first")
            return
        if self._oldest_shown is None or self._oldest_shown <= 1:
            self.say("(no older messages)")
            return
        page = await self._client.history(self._open, before=self._oldest_shown,
                                          limit=PAGE_MESSAGES)
        await self._print_page(self._open, page.msgs)
        if page.msgs:
            self._oldest_shown = page.msgs[0].seq

    async def _print_page(self, conv: int, wires: list[WireMessage]) -> None:
        messages = [Message.from_wire(conv, wire) for wire in wires]
        await self._learn_message_names(messages)
        for message in messages:
            self.say(format_message(message, self.name_of))


async def _chat(url: str, tenant: str, login: str, password: str, stdin: TextIO,
                out: TextIO, ssl_context: ssl.SSLContext | None = None) -> int:
    failure: BaseException | None = None
    try:
        async with open_client(url, tenant, login, password, ssl_context=ssl_context,
                               options=ClientOptions(device="herald chat")) as client:
            chat = Chat(client, out)
            chat.say(f"Logged in to {tenant} as {client.display_name} ({login}). "
                     "/help lists the commands.")
            await chat.list_convs()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(chat.print_incoming, nursery.cancel_scope)
                await chat.read_commands(stdin)
                nursery.cancel_scope.cancel()
            failure = chat.failure
    except LoginFailed as exc:
        print(f"herald chat: login refused: {exc.message}", file=sys.stderr)
        return 1
    except CertificateRejected as exc:
        print(f"herald chat: TLS refused with {url}: {exc}", file=sys.stderr)
        return 1
    except (ServerUnreachable, ClientClosed) as exc:
        failure = exc
    if isinstance(failure, LoginFailed):  # the server ended the session (bye), not the network
        print(f"herald chat: the session ended: {failure.message}", file=sys.stderr)
        return 1
    if failure is not None:
        print(f"herald chat: the connection to {url} is lost: {failure}", file=sys.stderr)
        return 1
    return 0


def run(url: str, tenant: str, login: str, *, password_stdin: bool,
        stdin: TextIO | None = None, out: TextIO | None = None, ca_file: Path | None = None,
        cert_file: Path | None = None, key_file: Path | None = None) -> int:
    """`herald chat`: the process exit code (0; 1 when the login is refused, the server
    cannot be reached or its certificate is not trusted; 2 for a URL that is not ws:// or
    wss://, or TLS files given with ws:// or unreadable). With `password_stdin` the first input
    line is the password. `ca_file`, `cert_file`, `key_file`: see `client_ssl_context`."""
    stdin = stdin or sys.stdin
    out = out or sys.stdout
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
    if password_stdin:
        password = stdin.readline().rstrip("\r\n")
    else:
        password = ask_secret(
            f"Password for {login}: ",
            no_terminal="herald chat: a password is needed and there is no terminal to ask "
                        "on: pass --password-stdin and give it on standard input")
    try:
        return trio.run(_chat, url, tenant, login, password, stdin, out, ssl_context)
    except KeyboardInterrupt:
        print("", file=out)
        return 0
