"""The admin API's frames and their line framing, sans-IO: whole, byte by byte, garbage."""

from __future__ import annotations

import pytest

from appliance.protocol.admin_frames import (
    AdminError,
    AdminFrameError,
    AdminLoginRequest,
    AdminRefusal,
    AdminReply,
    AdminTenant,
    AdminTenantsData,
    AdminUsersRequest,
    FrameLines,
    decode_admin_reply,
    decode_admin_request,
    encode_admin_frame,
)

LOGIN = AdminLoginRequest(id=7, login="ops", password="line one\nline two")


def test_a_frame_is_one_line_even_when_a_string_holds_a_newline() -> None:
    line = encode_admin_frame(LOGIN)
    assert line.count(b"\n") == 1 and line.endswith(b"\n")
    assert decode_admin_request(line[:-1]) == LOGIN


def test_lines_come_out_whole_fed_at_once_byte_by_byte_and_with_trailing_bytes() -> None:
    users = AdminUsersRequest(id=8, token="t" * 43, tenant="acme")
    wire = encode_admin_frame(LOGIN) + encode_admin_frame(users)
    assert [decode_admin_request(x) for x in FrameLines().receive_data(wire)] == [LOGIN, users]
    lines = FrameLines()
    got = [line for byte in wire for line in lines.receive_data(bytes([byte]))]
    assert [decode_admin_request(x) for x in got] == [LOGIN, users]
    partial = FrameLines()
    assert partial.receive_data(wire + b'{"id": 9') == got
    assert partial.receive_data(b', "op": "status", "token": "x"}\n') != []


def test_a_line_past_the_limit_is_refused_before_it_ends() -> None:
    lines = FrameLines(max_frame_bytes=16)
    with pytest.raises(AdminFrameError):
        lines.receive_data(b"x" * 17)
    with pytest.raises(AdminFrameError):
        FrameLines(max_frame_bytes=16).receive_data(b"y" * 20 + b"\n")


@pytest.mark.parametrize("line", [
    b"", b"garbage", b"[1, 2]", b'{"id": 3}', b'{"id": 3, "op": "nope"}',
    b'{"id": 3, "op": "status"}', b'\xff\xfe', b'{"id": "3", "op": "status", "token": "x"}',
])
def test_a_bad_request_is_a_frame_error_with_its_id_when_it_has_one(line: bytes) -> None:
    with pytest.raises(AdminFrameError) as refused:
        decode_admin_request(line)
    assert refused.value.request_id == (3 if line.startswith(b'{"id": 3') else None)


def test_answers_decode_as_data_or_refusal() -> None:
    data = AdminTenantsData(tenants=[AdminTenant(id=1, name="acme", created_ms=5)])
    reply = decode_admin_reply(encode_admin_frame(AdminReply(4, data)), AdminTenantsData)
    assert reply == AdminReply(4, data)
    refusal = AdminRefusal(4, AdminError("forbidden", "no"))
    assert decode_admin_reply(encode_admin_frame(refusal), AdminTenantsData) == refusal
    with pytest.raises(AdminFrameError):
        decode_admin_reply(b'{"id": 4, "data": {"tenants": 3}}', AdminTenantsData)
