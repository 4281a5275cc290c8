"""benchmarks/run_all.py refuses what it does not know before running or writing anything."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

RUNNER = REPO / "benchmarks" / "run_all.py"


def run(*args):
    before = (REPO / "benchmarks" / "results.json").read_bytes()
    done = subprocess.run([sys.executable, str(RUNNER), *args], capture_output=True, text=True, timeout=60)
    assert (REPO / "benchmarks" / "results.json").read_bytes() == before
    return done


def test_help_prints_usage_and_writes_nothing():
    done = run("--help")
    assert done.returncode == 0 and "bench_offload" in done.stdout


def test_unknown_benchmarks_and_options_are_refused_naming_them():
    done = run("bench_nope")
    assert done.returncode == 2 and "unknown benchmark bench_nope; allowed: " in done.stderr
    assert "bench_offload" in done.stderr
    done = run("--nope")
    assert done.returncode == 2 and "unrecognized arguments: --nope" in done.stderr
