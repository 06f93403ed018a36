"""docs/protocol.md cannot drift from the code: every JSON example in it is decoded by the
server's own codec, and every op, frame type, error code and close code is documented."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

from appliance.protocol.codes import ByeCode, ErrorCode
from appliance.protocol.frames import (
    CLIENT_OPS,
    ChangeData,
    ConvData,
    ConvsData,
    HistoryData,
    LoginData,
    LookupData,
    MembersData,
    OkData,
    PasswordData,
    ReadData,
    Reply,
    SendData,
    ServerFrame,
    SyncData,
    UserData,
    UsersData,
    decode_client_frame,
    decode_server_frame,
    encode_frame,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"

# What the router answers each op with (appliance/gateway/router.py).
REPLY_DATA: dict[str, type[msgspec.Struct]] = {
    "login": LoginData,
    "resume": LoginData,
    "logout": OkData,
    "password": PasswordData,
    "ping": OkData,
    "send": SendData,
    "sync": SyncData,
    "history": HistoryData,
    "read": ReadData,
    "members": MembersData,
    "convs": ConvsData,
    "lookup": UserData,
    "users": UsersData,
    "create_group": ConvData,
    "open_direct": ConvData,
    "add": ChangeData,
    "kick": ChangeData,
    "leave": ChangeData,
    "join": ChangeData,
}
CLOSE_CODES = {1000, 1001, 1002, 1003, 1006, 1007, 1008, 1009, 1013}


def _text() -> str:
    return DOC.read_text(encoding="utf-8")


def _examples() -> list[dict[str, Any]]:
    blocks = re.findall(r"^```json\n(.*?)^```$", _text(), flags=re.DOTALL | re.MULTILINE)
    assert blocks, "docs/protocol.md has no ```json examples"
    decoded = []
    for block in blocks:
        example = json.loads(block)
        assert isinstance(example, dict), block
        assert ("op" in example) != ("type" in example), f"neither clearly a request nor a " \
                                                         f"server frame: {block}"
        decoded.append(example)
    return decoded


def _server_types() -> set[str]:
    return {t.__struct_config__.tag for t in ServerFrame.__args__}  # type: ignore[attr-defined]


def _section(title: str) -> str:
    """The text of docs/protocol.md's section `## <title>`, up to the next `## `."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", _text(),
                      flags=re.DOTALL | re.MULTILINE)
    assert match, f"docs/protocol.md has no section '## {title}'"
    return match.group(1)


def _table_codes(text: str) -> set[str]:
    """The codes of the rows of `text`'s tables that begin with a code in backquotes."""
    return set(re.findall(r"^\| `([a-z_]+)` \|", text, flags=re.MULTILINE))


def _bye_table() -> str:
    section = _section("4. Frames the server sends")
    start = section.index("`bye`: sent just before")
    return section[start:]


def test_every_request_example_decodes_and_uses_only_fields_the_server_reads() -> None:
    for example in _examples():
        if "op" not in example:
            continue
        frame = decode_client_frame(json.dumps(example))
        fields = {f.name for f in msgspec.structs.fields(type(frame))}
        unread = set(example) - fields - {"op"}
        assert not unread, f"{example['op']} example has fields the server ignores: {unread}"


def test_every_server_frame_example_is_exactly_what_the_server_sends() -> None:
    request: dict[str, Any] | None = None
    for example in _examples():
        if "op" in example:
            request = example
            continue
        frame = decode_server_frame(json.dumps(example))
        assert json.loads(encode_frame(frame)) == example, example
        if isinstance(frame, Reply):
            # A reply answers the request shown just before it: same id, that op's data.
            assert request is not None, f"a reply with no request before it: {example}"
            assert frame.id == request["id"], (request, example)
            data_type = REPLY_DATA[request["op"]]
            if request["op"] == "lookup" and "logins" in request:  # many users at once
                data_type = LookupData
            data = msgspec.convert(example["data"], data_type)
            as_sent = json.loads(msgspec.json.encode(data))
            assert as_sent == example["data"], (request["op"], example)


def test_every_op_has_a_request_and_a_reply_example() -> None:
    assert set(REPLY_DATA) == CLIENT_OPS
    requested: set[str] = set()
    answered: set[str] = set()
    request: dict[str, Any] | None = None
    for example in _examples():
        if "op" in example:
            request = example
            requested.add(example["op"])
        elif example["type"] == "reply" and request is not None:
            answered.add(request["op"])
    assert requested == CLIENT_OPS
    assert answered == CLIENT_OPS


def test_every_server_frame_type_has_an_example() -> None:
    shown = {example["type"] for example in _examples() if "type" in example}
    assert shown == _server_types()


@pytest.mark.parametrize("code", sorted(ErrorCode))
def test_every_error_code_has_a_row_in_the_error_tables(code: str) -> None:
    assert code in _table_codes(_section("5. Error codes")), code


def test_the_error_tables_document_no_code_the_code_does_not_have() -> None:
    documented = _table_codes(_section("5. Error codes"))
    assert documented - set(ErrorCode) == set(), "not in appliance/protocol/codes.py"


def test_the_bye_table_lists_exactly_the_bye_codes() -> None:
    assert _table_codes(_bye_table()) == set(ByeCode)


@pytest.mark.parametrize("code", sorted(CLOSE_CODES))
def test_every_close_code_has_a_row_in_the_close_table(code: int) -> None:
    assert re.search(rf"^\| {code} \|", _text(), flags=re.MULTILINE), code
