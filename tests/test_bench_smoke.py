"""The benchmark tools still run: tiny runs of bench/load.py and bench/engine_append.py, checked
for their report, never for their figures (docs/benchmarks.md holds those). Encryption at rest
once left bench/load.py seeding stores `herald serve` refuses, unnoticed until a bench run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def run_bench(*args: str) -> str:
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=300, check=False, cwd=BENCH.parent)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize("scenario", ["group", "history"])
def test_the_load_generator_runs_a_scenario_against_a_sealed_server(scenario: str) -> None:
    out = run_bench(str(BENCH / "load.py"), "--scenario", scenario, "-M", "20", "-C", "10",
                    "-S", "2", "-N", "100", "--warmup", "10", "--procs", "1",
                    "--latency-receivers", "2", "--history-fill", "200",
                    "--history-requests", "20", "--history-warmup", "5", "--timeout", "60")
    assert f"{scenario}: median of 1 run(s)" in out  # whatever the figures of so tiny a run


# The shared chat corpus lives beside the repository (../shared/bench), not in a clean clone:
# the smoke run gets a stand-in with the same interface.
STAND_IN_CORPUS = """
import random


def make_corpus(n_total, seed=1, **_):
    rng = random.Random(seed)
    return [{"text": "a line of chat " * rng.randint(1, 12), "mentions": []}
            for _ in range(n_total)]
"""


def test_the_engine_benchmark_compares_plain_and_sealed_stores(tmp_path: Path) -> None:
    corpus = tmp_path / "chat_corpus.py"
    corpus.write_text(STAND_IN_CORPUS)
    out = run_bench(str(BENCH / "engine_append.py"), "--sealer", "both", "--cache", "off",
                    "--reps", "1", "--corpus-module", str(corpus))
    assert "| 100 |" in out
    assert "page_before latest 50" in out and "page_before older 50" in out


@pytest.mark.parametrize("cache_bytes", ["0", str(64 * 2**20)])
def test_the_wire_benchmark_reads_pages_from_a_plain_and_a_sealed_server(
    tmp_path: Path, cache_bytes: str,
) -> None:
    corpus = tmp_path / "chat_corpus.py"
    corpus.write_text(STAND_IN_CORPUS)
    out = run_bench(str(BENCH / "page_sealing_wire.py"), "--reps", "1", "--requests", "10",
                    "--corpus-module", str(corpus), "--message-cache-bytes", cache_bytes)
    for read in ("history latest 50", "history older 50"):
        for measure in ("round trip, median", "round trip, p99", "server CPU per request"):
            assert f"| {read} | {measure} |" in out, out
