"""`herald chat` as a user runs it: real processes, a real server process, piped stdin."""

from __future__ import annotations

import io
import re
import signal
import subprocess
import sys
import time
import unicodedata
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import PASSWORD
from hypothesis import given
from hypothesis import strategies as st
from processes import ROOT, herald
from servers import running_server, seed_org

from appliance.chat.chat import (
    CONTINUATION,
    HELP,
    Chat,
    Command,
    PromptRefused,
    format_message,
    parse_command,
)
from appliance.chat.line_source import PipedLines
from appliance.client import (
    ClientOptions,
    HeraldClient,
    LoginFailed,
    Message,
    Reconnect,
    open_client,
)
from appliance.client.display import UNSAFE_CATEGORIES


async def test_two_people_chat_through_herald_chat_processes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            async with herald(nursery, "serve", "--demo", "--data-dir", str(data),
                              "--listen", "127.0.0.1:0") as server:
                url = (await server.expect(r"listening at (ws://\S+)")).group(1)
                passwords = dict(re.findall(r"login (\w+)\s+password (\S+)",
                                            (data / "demo-credentials.txt").read_text()))
                chat = ("chat", "--url", url, "--tenant", "demo", "--password-stdin", "--login")

                async with herald(nursery, *chat, "alice") as alice:
                    await alice.type(passwords["alice"])
                    await alice.expect(r"Logged in to demo as Alice Chen \(alice\)")
                    await alice.type("/dm bob", "before bob came")
                    await alice.expect(r"--- Bob Li ---")
                    await alice.expect(r"\d\d:\d\d #\d+ Alice Chen: before bob came$")

                    async with herald(nursery, *chat, "bob") as bob:
                        await bob.type(passwords["bob"])
                        await bob.expect(r"Logged in to demo as Bob Li \(bob\)")
                        # the direct conversation has the latest activity: listed first
                        # names come from the server, though bob has looked nobody up
                        await bob.expect(r"^  1\. Alice Chen \(direct\) - 1 unread$")
                        await bob.expect(r"^  2\. Welcome \(group, 2 members\)$")
                        await bob.type("/open 2")
                        await bob.expect(r"--- Welcome ---\n\d\d:\d\d #\d+ \* Alice Chen created "
                                         r"the group$")
                        await bob.type("/dm alice")
                        await bob.expect(r"--- Alice Chen ---\n.*\* Alice Chen opened the "
                                         r"conversation\n\d\d:\d\d #\d+ Alice Chen: before bob "
                                         r"came$")

                        await alice.type("hello bob")
                        await bob.expect(r"\d\d:\d\d #\d+ Alice Chen: hello bob$")
                        await bob.type("hi alice", "/convs")
                        await alice.expect(r"\d\d:\d\d #\d+ Bob Li: hi alice$")
                        await bob.expect(r"^  1\. Alice Chen \(direct\) \(open\)$")  # all read
                        await bob.type("/nonsense", "/password", "/quit")
                        await bob.expect(r"! unknown command /nonsense")
                        # Piped input is no terminal: passwords are never read from it.
                        await bob.expect(r"! /password asks for the passwords on a terminal")
                    assert bob.process.returncode == 0, bob.err.decode()

                    await alice.type("/convs")
                    # listed first now, but with the number it had: numbers never move
                    await alice.expect(r"^  2\. Bob Li \(direct\) \(open\)\n  1\. Welcome")
                    await alice.end_input()  # the end of input quits, like /quit
                assert alice.process.returncode == 0, alice.err.decode()
                assert alice.out.decode().count("Bob Li: hi alice") == 1  # delivered once
                assert b"Traceback" not in alice.err + bob.err

                server.process.send_signal(signal.SIGINT)
                await server.expect(r"Herald stopped\.")
            assert server.process.returncode == 0, server.err.decode()


async def test_herald_chat_says_when_the_login_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery, herald(
            nursery, "serve", "--demo", "--data-dir", str(data), "--listen", "127.0.0.1:0"
        ) as server:
            url = (await server.expect(r"listening at (ws://\S+)")).group(1)
            async with herald(nursery, "chat", "--url", url, "--tenant", "demo", "--login",
                              "alice", "--password-stdin") as alice:
                await alice.type("not the password")
                await alice.end_input()
            assert alice.process.returncode == 1
            assert "login refused: wrong login or password" in alice.err.decode()
            server.process.send_signal(signal.SIGINT)


async def test_herald_chat_ends_when_an_administrator_disables_the_user(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery, herald(
            nursery, "serve", "--demo", "--data-dir", str(data), "--listen", "127.0.0.1:0"
        ) as server:
            url = (await server.expect(r"listening at (ws://\S+)")).group(1)
            passwords = dict(re.findall(r"login (\w+)\s+password (\S+)",
                                        (data / "demo-credentials.txt").read_text()))
            async with herald(nursery, "chat", "--url", url, "--tenant", "demo", "--login",
                              "alice", "--password-stdin") as alice:
                await alice.type(passwords["alice"])
                await alice.expect(r"Logged in to demo as Alice Chen \(alice\)")
                async with herald(nursery, "user", "disable", "--data-dir", str(data),
                                  "--tenant", "demo", "alice") as admin:
                    await admin.expect(r"user 'alice' disabled; 1 session of 'alice' ended")
                with trio.fail_after(10):
                    await alice.process.wait()
            assert alice.process.returncode == 1
            assert "the session ended: this account is disabled" in alice.err.decode()
            assert b"Traceback" not in alice.err
            server.process.send_signal(signal.SIGINT)


async def test_herald_chat_over_wss_trusts_the_ca_it_is_given_and_only_that(
    tmp_path: Path,
) -> None:
    data, certs = tmp_path / "data", tmp_path / "certs"
    made = subprocess.run([sys.executable, "-m", "appliance.cli", "cert", "selfsigned",
                           "--out", str(certs)], cwd=ROOT, capture_output=True, check=False)
    assert made.returncode == 0, made.stderr
    cert, key = certs / "herald-cert.pem", certs / "herald-key.pem"
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery, herald(
            nursery, "serve", "--demo", "--data-dir", str(data), "--listen", "127.0.0.1:0",
            "--tls-cert", str(cert), "--tls-key", str(key),
        ) as server:
            url = (await server.expect(r"listening at (wss://\S+)")).group(1)
            passwords = dict(re.findall(r"login (\w+)\s+password (\S+)",
                                        (data / "demo-credentials.txt").read_text()))
            chat = ("chat", "--url", url, "--tenant", "demo", "--password-stdin", "--login",
                    "alice")
            async with herald(nursery, *chat) as untrusting:
                await untrusting.type(passwords["alice"])
                await untrusting.end_input()
            assert untrusting.process.returncode == 1
            assert "certificate is not trusted" in untrusting.err.decode()
            assert "--ca FILE" in untrusting.err.decode()
            async with herald(nursery, *chat, "--ca", str(cert)) as alice:
                await alice.type(passwords["alice"])
                await alice.expect(r"Logged in to demo as Alice Chen \(alice\)")
                await alice.end_input()
            assert alice.process.returncode == 0, alice.err.decode()
            server.process.send_signal(signal.SIGINT)
            await server.expect(r"Herald stopped\.")


@pytest.mark.parametrize(("line", "command"), [
    ("hello", Command("", "hello")),
    ("/open 2", Command("open", "2")),
    ("/DM  bob ", Command("dm", "bob")),
    ("/quit", Command("quit")),
    ("//not a command", Command("", "/not a command")),
])
def test_input_lines_are_text_or_commands(line: str, command: Command) -> None:
    assert parse_command(line) == command


def test_messages_are_shown_with_names_and_events_in_words() -> None:
    names = {1: "Alice Chen", 2: "Bob Li"}.get

    def show(message: Message, label: str = "") -> str:
        return format_message(message, lambda u: names(u) or f"user {u}", label,
                              local_time=time.gmtime)

    assert show(Message(7, 3, 1, 3_600_000, "text", "hi")) == "01:00 #3 Alice Chen: hi"
    assert show(Message(7, 3, 9, 0, "text", "hi"), "Team") == "[Team] 00:00 #3 user 9: hi"
    added = Message(7, 4, 1, 0, "system", "members_added", mentions=(2, 9))
    assert show(added) == "00:00 #4 * Alice Chen added Bob Li, user 9"
    created = Message(7, 1, 1, 0, "system", "group_created", mentions=(1, 2))
    assert show(created) == "00:00 #1 * Alice Chen created the group"
    assert show(Message(7, 5, 1, 0, "text", "", recalled_by=6)) == "00:00 #5 Alice Chen: (recalled)"
    recall = Message(7, 6, 1, 0, "recall", "", ref=5)
    assert show(recall) == "00:00 #6 * Alice Chen recalled message #5"


NEW_PASSWORD = "a password chosen in the chat"


async def test_the_password_command_asks_without_echo_and_changes_the_password(
    tmp_path: Path,
) -> None:
    prompts: list[tuple[str, bool]] = []
    answers: list[str | PromptRefused] = [
        "not my password", NEW_PASSWORD,  # a wrong current password
        PASSWORD, PromptRefused("the new passwords differ; nothing was changed"),
        PASSWORD, "short",  # refused by the policy
        PASSWORD, NEW_PASSWORD,
    ]

    def scripted(prompt: str, *, confirm: bool = False, **how: Any) -> str:
        assert how["error"] is PromptRefused and how["no_terminal"]
        prompts.append((prompt, confirm))
        answer = answers.pop(0)
        if isinstance(answer, PromptRefused):
            raise answer
        return answer

    options = ClientOptions(reconnect=Reconnect(first_delay_s=0.01, max_delay_s=0.05))
    out = io.StringIO()
    with trio.fail_after(30):
        async with running_server(tmp_path / "data") as running:
            seed_org(running.engine, "acme", ["alice"])
            async with open_client(running.url, "acme", "alice", PASSWORD,
                                   options=options) as client, \
                    open_client(running.url, "acme", "alice", PASSWORD,
                                options=options) as other_device:
                chat = Chat(client, out, ask=scripted)
                stdin = io.StringIO("/password\n" * 4 + "/quit\n")
                await chat.read_commands(PipedLines(stdin))
                with pytest.raises(LoginFailed) as ended:
                    await other_device.messages.receive()
                assert ended.value.code == "password_changed"
                await client.ping()  # the chat itself stays signed in
            async with open_client(running.url, "acme", "alice", NEW_PASSWORD,
                                   options=options) as again:
                await again.ping()
    assert not answers
    assert prompts == [("Current password: ", False), ("New password: ", True)] * 4
    shown = out.getvalue()
    assert shown.splitlines() == [
        "! the current password is wrong; nothing was changed",
        "! the new passwords differ; nothing was changed",
        "! a password needs at least 8 characters; choose a longer one",
        "Password changed. Your other devices were signed out; this chat stays signed in.",
    ]
    assert PASSWORD not in shown and NEW_PASSWORD not in shown


def test_the_help_inside_and_outside_the_chat_lists_the_password_command() -> None:
    assert "/password" in HELP
    result = subprocess.run([sys.executable, "-m", "appliance.cli", "chat", "--help"],
                            cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0 and "/password" in result.stdout


def test_what_others_chose_is_shown_escaped_and_a_body_cannot_forge_a_line() -> None:
    names = {1: "Eve\x1b]0;owned\x07", 2: "Bob Li"}.get

    def show(message: Message, label: str = "") -> str:
        return format_message(message, lambda u: names(u) or f"user {u}", label,
                              local_time=time.gmtime)

    hostile = Message(7, 3, 1, 0, "text", "\x1b[31mred\x0c\u202eevil\n00:00 Bob Li: fake")
    assert show(hostile, "Team\x9b2J") == (
        "[Team\\x9b2J] 00:00 #3 Eve\\x1b]0;owned\\x07: \\x1b[31mred\\x0c\\u202eevil\n"
        "  | 00:00 Bob Li: fake")
    event = Message(7, 4, 2, 0, "system", "members_added", mentions=(1,))
    assert show(event) == "00:00 #4 * Bob Li added Eve\\x1b]0;owned\\x07"


async def _chat_lines(client: HeraldClient, *lines: str) -> list[str]:
    """What the chat prints for these input lines (commands only: nothing incoming)."""
    out = io.StringIO()
    await Chat(client, out).read_commands(PipedLines(io.StringIO("".join(f"{line}\n"
                                                                          for line in lines))))
    return out.getvalue().splitlines()


def _seqs(lines: list[str]) -> list[int]:
    return [int(found.group(1)) for line in lines if (found := re.search(r" #(\d+) ", line))]


async def test_history_pages_read_older_first_each_ending_just_before_what_was_shown(
    tmp_path: Path,
) -> None:
    with trio.fail_after(30):
        async with running_server(tmp_path / "data") as running:
            ids = seed_org(running.engine, "acme", ["alice", "bob"])
            async with open_client(running.url, "acme", "alice", PASSWORD) as alice, \
                    open_client(running.url, "acme", "bob", PASSWORD) as bob:
                conv = await alice.open_direct(ids["bob"])  # #1: the conversation opened
                for n in range(2, 26):
                    await alice.send(conv, f"message {n}")
                shown = await _chat_lines(bob, "/open 1", "/history", "/history", "/history")
    opened, first, second = (shown.index(line) for line in shown if line.startswith("---"))
    assert shown[opened] == "--- Alice ---"
    assert _seqs(shown[opened:first]) == list(range(16, 26))
    assert shown[first] == "--- Alice: earlier messages, up to just before #16 ---"
    assert _seqs(shown[first + 1:second]) == list(range(6, 16))
    assert shown[second] == "--- Alice: earlier messages, up to just before #6 ---"
    assert _seqs(shown[second + 1:]) == list(range(1, 6))
    assert shown[-1] == "(no older messages)"


async def test_numbers_stay_with_their_conversations_while_activity_reorders_the_list(
    tmp_path: Path,
) -> None:
    with trio.fail_after(30):
        async with running_server(tmp_path / "data") as running:
            ids = seed_org(running.engine, "acme", ["alice", "bob", "carol"])
            async with open_client(running.url, "acme", "alice", PASSWORD) as alice, \
                    open_client(running.url, "acme", "bob", PASSWORD) as bob:
                older = await alice.create_group("Older", [ids["bob"]])
                await alice.create_group("Newer", [ids["bob"]])
                chat = Chat(bob, io.StringIO())
                out = chat._out
                assert isinstance(out, io.StringIO)
                await chat.list_convs()
                await alice.send(older, "back on top")
                await chat.list_convs()
                await chat.read_commands(PipedLines(io.StringIO("/open 2\n/open 9\n")))
    shown = out.getvalue().splitlines()
    assert shown[:3] == ["Conversations:", "  1. Newer (group, 2 members)",
                         "  2. Older (group, 2 members)"]
    assert shown[3:6] == ["Conversations:", "  2. Older (group, 2 members) - 1 unread",
                          "  1. Newer (group, 2 members)"]
    assert shown[6] == "--- Older ---"
    assert shown[-1] == "! /open takes the number of a conversation, from 1 to 2 (see /convs)"


async def test_groups_are_made_and_managed_and_own_messages_recalled_from_the_chat(
    tmp_path: Path,
) -> None:
    with trio.fail_after(30):
        async with running_server(tmp_path / "data") as running:
            seed_org(running.engine, "acme", ["alice", "bob", "carol", "dave"])
            async with open_client(running.url, "acme", "alice", PASSWORD) as alice, \
                    open_client(running.url, "acme", "bob", PASSWORD) as bob:
                chat = Chat(alice, io.StringIO())
                lines = ['/group "Project X" bob carol', "/add dave", "/kick carol",
                         "hello team", "//help is a word too"]
                await chat.read_commands(PipedLines(io.StringIO("\n".join(lines) + "\n")))
                (group,) = [s.conv for s in await bob.convs() if s.title == "Project X"]
                members = await bob.members(group)
                page = await bob.history(group)
                hello = next(m.seq for m in page.msgs if m.body == "hello team")
                system = page.msgs[0].seq  # the group's creation: not alice's message to recall
                await chat.read_commands(PipedLines(io.StringIO(
                    f"/recall {hello}\n/recall x\n/kick\n/leave\n/add bob\n")))
                after = await bob.history(group)
                left = await bob.members(group)
    logins = {user for user, _ in members.members}
    assert len(logins) == 3  # alice, bob, dave: carol was kicked
    assert [m.body for m in page.msgs if m.kind == "text"] == ["hello team",
                                                               "/help is a word too"]
    recall = [m for m in after.msgs if m.kind == "recall"]
    assert [m.ref for m in recall] == [hello] and system != hello
    assert len(left.members) == 2  # alice left
    out = chat._out
    assert isinstance(out, io.StringIO)
    shown = out.getvalue().splitlines()
    assert shown[0] == "--- Project X ---"
    assert "! /recall takes the number of one of your messages, e.g. /recall 12 (each message " \
           "shows its #N)" in shown
    assert "! /kick takes one login, e.g. /kick bob" in shown
    assert "You left Project X." in shown
    assert shown[-1] == "! /add works on the open group: /open N first"


def test_the_help_lists_every_command_and_the_double_slash() -> None:
    for command in ("/convs", "/open N", "/history", "/dm LOGIN", "/group TITLE LOGIN...",
                    "/add LOGIN...", "/kick LOGIN", "/leave", "/recall N", "/password",
                    "/help", "/quit", "//TEXT"):
        assert f"  {command} " in HELP, command
    assert "a line starting with // sends the rest starting with /" in HELP


@given(st.text(), st.text(), st.text())
def test_no_message_line_holds_a_control_character_and_only_the_body_continues(
    name: str, label: str, body: str,
) -> None:
    shown = format_message(Message(7, 3, 1, 0, "text", body), lambda _: name, label,
                           local_time=time.gmtime)
    first, *rest = shown.split("\n")
    assert len(rest) == body.count("\n")
    assert all(line.startswith(CONTINUATION) for line in rest)
    assert all(unicodedata.category(c) not in UNSAFE_CATEGORIES for c in "".join([first, *rest]))
