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
    assert len(engine.__all__) == 85  # + the audit log's ops, records and verdicts
