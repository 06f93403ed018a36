"""One table of wire codes (appliance/protocol/codes.py): every refusal class's code is in it,
every member is used, the mapping from refusals to codes is complete, and no module spells a
code as a string literal of its own."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import msgspec

import appliance.cli.unlock  # noqa: F401  (defines NotInitialized, a key-layer refusal)
from appliance.gateway.wire import session_end_code
from appliance.keys.errors import KeyManagementError
from appliance.protocol.codes import ByeCode, ErrorCode
from appliance.protocol.frames import Bye, ErrorFrame, encode_frame
from engine import HeraldError, SessionEnd

ROOT = Path(__file__).resolve().parent.parent
APPLIANCE = ROOT / "appliance"
TABLE = APPLIANCE / "protocol" / "codes.py"
# The escrow service is a separate product with a wire protocol and codes of its own
# (appliance/escrow/wire.py): they never reach a Herald client or administrator as these codes.
OWN_PROTOCOL = APPLIANCE / "escrow"


def _tree(root: type[Exception]) -> list[type[Exception]]:
    found = [root]
    for sub in root.__subclasses__():
        found += _tree(sub)
    return found


def _engine_codes() -> set[str]:
    # HeraldError itself is abstract (never raised): its "error" is no code of the wire.
    return {cls.code for cls in _tree(HeraldError)[1:]}  # type: ignore[attr-defined]


def _key_layer_codes() -> set[str]:
    # KeyManagementError itself is raised (for a problem with no class of its own).
    return {cls.code for cls in _tree(KeyManagementError)}  # type: ignore[attr-defined]


def _sources() -> list[Path]:
    return [path for path in sorted(APPLIANCE.rglob("*.py"))
            if path != TABLE and OWN_PROTOCOL not in path.parents]


def test_every_engine_refusal_code_is_a_wire_code() -> None:
    assert _engine_codes() <= set(ErrorCode), _engine_codes() - set(ErrorCode)


def test_every_key_layer_code_is_a_wire_code() -> None:
    assert _key_layer_codes() <= set(ErrorCode), _key_layer_codes() - set(ErrorCode)


def test_every_wire_code_is_a_refusal_class_code_or_sent_by_name() -> None:
    named = set()
    for path in _sources():
        named |= set(re.findall(r"\bErrorCode\.([A-Z_]+)\b", path.read_text(encoding="utf-8")))
    unused = {code for code in ErrorCode
              if code.name not in named and code not in _engine_codes() | _key_layer_codes()}
    assert not unused, unused


def test_every_bye_code_is_sent_by_name_or_is_a_way_a_session_ends() -> None:
    named = set()
    for path in _sources():
        named |= set(re.findall(r"\bByeCode\.([A-Z_]+)\b", path.read_text(encoding="utf-8")))
    ends = {reason.value for reason in SessionEnd}
    assert ends <= set(ByeCode), ends - set(ByeCode)
    assert not {code for code in ByeCode if code.name not in named and code not in ends}


def test_every_way_a_session_ends_has_the_bye_code_of_the_same_name() -> None:
    for reason in SessionEnd:
        assert session_end_code(reason) == reason.value, reason


def test_codes_are_plain_strings_on_the_wire() -> None:
    assert encode_frame(ErrorFrame(3, ErrorCode.THROTTLED, "busy", retry_after=0.5)) == \
        b'{"type":"error","id":3,"code":"throttled","message":"busy","retry_after":0.5}'
    assert encode_frame(Bye(ByeCode.SHUTDOWN, "bye")) == \
        b'{"type":"bye","code":"shutdown","message":"bye"}'
    # A client decodes them as strings, and an enum member compares equal to its string.
    decoded = msgspec.json.decode(encode_frame(Bye(ByeCode.SHUTDOWN, "bye")), type=Bye)
    assert decoded.code == ByeCode.SHUTDOWN and type(decoded.code) is str


def _literal_codes(path: Path) -> list[str]:
    """Each string constant of `path` that spells a wire code, except docstrings, f-string
    text and an exception class's own `code = "..."` (the definition the tests above check)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    exempt: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            exempt |= {id(part) for part in node.values}
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)):
            exempt.add(id(body[0].value))
        if isinstance(node, ast.ClassDef):
            for statement in node.body:
                if (isinstance(statement, ast.Assign) and len(statement.targets) == 1
                        and isinstance(statement.targets[0], ast.Name)
                        and statement.targets[0].id == "code"):
                    exempt.add(id(statement.value))
    codes = set(ErrorCode) | set(ByeCode)
    return [f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and node.value in codes and id(node) not in exempt]


def test_no_module_spells_a_wire_code_as_a_string_literal() -> None:
    found = [hit for path in _sources() for hit in _literal_codes(path)]
    assert not found, "use ErrorCode / ByeCode (appliance/protocol/codes.py):\n" + "\n".join(found)


def test_the_gateway_builds_error_frames_in_one_module() -> None:
    builders = {path.name for path in (APPLIANCE / "gateway").glob("*.py")
                if "ErrorFrame(" in path.read_text(encoding="utf-8")}
    assert builders == {"wire.py"}
