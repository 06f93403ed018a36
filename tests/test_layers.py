"""The arrows point one way: admin_console -> appliance -> engine. The engine knows no network."""

from __future__ import annotations

import ast
from pathlib import Path

import engine

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN_IN_ENGINE = {"trio", "trio_websocket", "wsproto", "socket", "threading", "appliance",
                       "admin_console", "prompt_toolkit", "_thread", "concurrent",
                       "multiprocessing", "asyncio"}
# The engine starts no thread, but its callers run it in several: the one module that keeps
# shared mutable state across calls (the cache of opened messages) guards it with a lock, and
# may use nothing else of `threading`.
ENGINE_LOCK_USER = "message_cache.py"


def _imported_roots(package: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(path.name)
    return found


def test_engine_imports_no_trio_no_network_and_no_upper_layer() -> None:
    imported = _imported_roots("engine")
    if imported.get("threading") == {ENGINE_LOCK_USER}:
        del imported["threading"]  # checked below: a Lock and nothing else
    assert FORBIDDEN_IN_ENGINE.isdisjoint(imported), {
        name: imported[name] for name in FORBIDDEN_IN_ENGINE & set(imported)
    }


def test_the_engine_uses_only_a_lock_from_threading_and_starts_no_thread() -> None:
    tree = ast.parse((ROOT / "engine" / ENGINE_LOCK_USER).read_text())
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "threading":
            used |= {alias.name for alias in node.names}
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
              and node.value.id == "threading"):
            used.add(node.attr)
        elif isinstance(node, ast.Import):
            assert all(a.asname is None for a in node.names if a.name == "threading")
    assert used <= {"Lock"}, used


def test_only_the_crypto_modules_touch_cryptography_hazmat() -> None:
    users = set()
    for path in (ROOT / "engine").rglob("*.py"):
        if "cryptography.hazmat" in path.read_text():
            users.add(path.name)
    assert users <= {"passwords.py", "crypto.py"}


def test_engine_public_surface_is_pinned() -> None:
    assert sorted(engine.__all__) == engine.__all__
    for name in engine.__all__:
        assert hasattr(engine, name), name
    assert len(engine.__all__) == 93  # + administrators: their ops, results and records


# Inside appliance/, which part may import which (docs/architecture.md draws them). A part is a
# subpackage; SHARED are the modules at appliance/'s top, which several parts use and which
# import nothing of ours. The command line is the top: it may import every part, none imports it.
SHARED = {"config", "terminal", "cert_expiry", "lock_file"}
PARTS = {"protocol", "client", "chat", "keys", "escrow", "gateway", "admin", "cli"}
MAY_IMPORT = {
    "protocol": set(),
    "client": {"protocol"},
    "chat": {"client", "protocol", "terminal"},
    "keys": {"escrow", "config"},
    "escrow": {"keys", "terminal", "cert_expiry", "lock_file"},
    "gateway": {"protocol", "keys", "config", "cert_expiry"},
    # The admin API shares the gateway's writer, login gate, tokens and metrics.
    "admin": {"protocol", "gateway"},
    "cli": (PARTS | SHARED) - {"cli"},
    **{module: set() for module in SHARED},
}
# The one name of the escrow service the appliance's keys use: its client.
KEYS_USE_OF_ESCROW = {"appliance.escrow", "appliance.escrow.client"}


def _appliance_part(path: Path) -> str:
    relative = path.relative_to(ROOT / "appliance")
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def _appliance_imports(path: Path) -> set[str]:
    """Every `appliance...` module the file imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if node.module == "appliance":
                found |= {f"appliance.{alias.name}" for alias in node.names}
    return {name for name in found if name.startswith("appliance.")}


def test_each_part_of_the_appliance_imports_only_the_parts_below_it() -> None:
    wrong = {}
    for path in sorted((ROOT / "appliance").rglob("*.py")):
        if path == ROOT / "appliance" / "__init__.py":
            continue
        part = _appliance_part(path)
        assert part in MAY_IMPORT, (
            f"{path} is in no known part: move it to the folder of its role, or give its part "
            f"a line in MAY_IMPORT (and docs/architecture.md) saying what it may import")
        for name in _appliance_imports(path):
            target = name.split(".")[1]
            if target == part:
                continue
            if target not in MAY_IMPORT[part] or (
                    part == "keys" and target == "escrow" and name not in KEYS_USE_OF_ESCROW):
                wrong.setdefault(str(path.relative_to(ROOT)), set()).add(name)
    assert not wrong, wrong


def test_every_part_of_the_appliance_says_what_it_is_and_who_may_import_it() -> None:
    for part in PARTS:
        init = ROOT / "appliance" / part / "__init__.py"
        docstring = ast.get_docstring(ast.parse(init.read_text()))
        assert docstring and "import" in docstring, init


def test_the_public_surfaces_of_the_command_line_and_the_escrow_service_are_pinned() -> None:
    import appliance.cli
    import appliance.escrow

    assert appliance.cli.__all__ == ["build_parser", "main", "version_text"]
    assert appliance.escrow.__all__ == ["ServiceEscrow"]  # what appliance/keys/ may use
