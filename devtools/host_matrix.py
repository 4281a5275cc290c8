"""Run tests against each installable ComfyUI release (make test-hosts).

python -m devtools.host_matrix RELEASE... --tests PATH... [-- PYTEST_ARGS]

Each release is installed if needed (devtools/host.py), then pytest runs on the given test
paths that exist, with COMFYUI_DIR at that release's ComfyUI and its frontend overlay first on
PYTHONPATH (the server and the pack's workers inherit both). Ends with one line per release;
fails when any release failed (pytest's "no tests collected" is not a failure).
"""
import argparse
import importlib.metadata
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from devtools.host import RELEASES, REPO, frontend_pins, install_release


def check_frontend(comfyui_dir: Path, path: list[str]) -> None:
    """The frontend packages found first on `path` are the versions that ComfyUI pins."""
    for pin in frontend_pins(comfyui_dir):
        name, wanted = pin.split("==")
        found = next(importlib.metadata.distributions(name=name, path=path), None)
        if found is None or found.version != wanted:
            raise SystemExit(f"{comfyui_dir} pins {pin}, but {found and found.version} would be imported")


def run_release(release: str, tests: list[str], pytest_args: list[str]) -> tuple[int, dict, float]:
    comfyui_dir, site = install_release(release)
    env = {**os.environ, "COMFYUI_DIR": str(comfyui_dir)}
    if site:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    check_frontend(comfyui_dir, ([str(site)] if site else []) + sys.path)
    print(f"=== ComfyUI {release}: {comfyui_dir}", flush=True)
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "pytest", *tests, *pytest_args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last = ""
    for line in proc.stdout:
        print(line, end="", flush=True)
        last = line if line.strip() else last
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|errors?|skipped)", last)}
    return proc.wait(), counts, time.monotonic() - start


def main() -> None:
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("releases", nargs="+", choices=RELEASES)
    parser.add_argument("--tests", nargs="+", required=True)
    args = parser.parse_args(argv[:split])
    tests = [path for path in args.tests if (REPO / path).exists()]
    if not tests:  # pytest given no path would run its default testpaths, the whole suite
        parser.error(f"none of the test paths exist: {' '.join(args.tests)}")
    results = [(release, *run_release(release, tests, argv[split + 1:])) for release in args.releases]
    print(f"\nComfyUI releases ({' '.join(tests)}):")
    for release, rc, counts, seconds in results:
        errors = counts.get("error", 0) + counts.get("errors", 0)
        print(f"  {release:8} {'ok' if rc in (0, 5) else 'FAILED':6} passed {counts.get('passed', 0)}, "
              f"failed {counts.get('failed', 0)}, errors {errors}, skipped {counts.get('skipped', 0)}, "
              f"{seconds:.0f}s (pytest exit {rc})")
    raise SystemExit(0 if all(rc in (0, 5) for _, rc, _, _ in results) else 1)


if __name__ == "__main__":
    main()
