"""`make bench`: run every benchmarks/bench_*.py, print each figure, write results.json.

Each module exposes `run() -> {name: {value, unit, better, what}}`, measuring the
compared variants side by side in one run. This runner registers the pack as
`comfyui_parallel` and configures ComfyUI before loading them; run one benchmark with
`python benchmarks/run_all.py bench_<name>` (its figures replace those in results.json, the others
stay). An unknown benchmark or option is refused before anything runs or is written. A failing
benchmark is reported and the others still run; the exit status says whether all succeeded.
"""
import argparse
import importlib.util
import json
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
REQUIRED_KEYS = {"value", "unit", "better", "what"}


def load(path: Path):
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check(name: str, figure: dict) -> None:
    missing = REQUIRED_KEYS - figure.keys()
    if missing or figure["better"] not in ("higher", "lower"):
        raise ValueError(f"{name}: malformed figure {figure}")


def parse(argv: list[str]) -> list[str]:
    """The benchmarks named on the command line (none: all); argparse exits on anything else."""
    names = sorted(path.stem for path in HERE.glob("bench_*.py"))
    parser = argparse.ArgumentParser(description="Run benchmarks/bench_*.py and write benchmarks/results.json.")
    parser.add_argument("only", nargs="*", metavar="bench_NAME",
                        help="run only these (" + ", ".join(names) + "); their figures replace those in results.json")
    only = parser.parse_args(argv).only
    unknown = [name for name in only if name not in names]
    if unknown:  # (argparse's choices= rejects an empty list with nargs="*" on Python 3.11)
        parser.error(f"unknown benchmark {', '.join(unknown)}; allowed: {', '.join(names)}")
    return only


def main(only: list[str]) -> int:
    sys.path.insert(0, str(REPO))
    from devtools.pack import comfy_on_path

    comfy_on_path()  # benchmarks import ComfyUI's model classes: configure it for this machine first
    results, failed = {}, []
    for path in sorted(HERE.glob("bench_*.py")):
        if only and path.stem not in only:
            continue
        print(f"== {path.stem}", flush=True)
        started = time.monotonic()
        try:
            figures = load(path).run()
            for name, figure in figures.items():
                check(name, figure)
                print(f"   {name} = {figure['value']:.4g} {figure['unit']} ({figure['better']} is better): "
                      f"{figure['what']}")
            results.update(figures)
        except Exception:
            traceback.print_exc()
            failed.append(path.stem)
        print(f"   ({time.monotonic() - started:.0f}s)", flush=True)
    out = HERE / "results.json"
    previous = json.loads(out.read_text()) if out.exists() and only else {}
    out.write_text(json.dumps({**previous, **results}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(results)} figures to {out}" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(parse(sys.argv[1:])))
