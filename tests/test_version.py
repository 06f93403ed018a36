"""`herald --version`: which build this is, which store formats it opens and which wire
protocol it speaks, as an operator asks before an upgrade or in a bug report."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

from appliance.protocol import PROTOCOL_VERSION
from engine.records import FORMAT_VERSION, SEALED_FORMAT_VERSION

ROOT = Path(__file__).resolve().parent.parent


def test_version_names_the_package_the_store_formats_and_the_protocol() -> None:
    result = subprocess.run([sys.executable, "-m", "appliance.cli", "--version"],
                            capture_output=True, text=True, timeout=60, check=False, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.splitlines() == [
        f"herald {importlib.metadata.version('herald')}",
        f"store format {SEALED_FORMAT_VERSION} (sealed), {FORMAT_VERSION} (plain, opened for "
        f"the account commands only)",
        f"wire protocol {PROTOCOL_VERSION}",
    ]


def test_the_package_version_is_the_one_in_pyproject() -> None:
    declared = re.search(r'^version = "([^"]+)"$', (ROOT / "pyproject.toml").read_text(),
                         re.MULTILINE)
    assert declared is not None
    assert importlib.metadata.version("herald") == declared.group(1)


def test_the_protocol_document_states_the_protocol_version() -> None:
    text = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    assert f"protocol version is **{PROTOCOL_VERSION}**" in text
