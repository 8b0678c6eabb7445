"""Run every benchmark one after the other: ``make bench``.

    python bench/run_all.py                       # all of them, about an hour on two shared cores
    python bench/run_all.py hardware generation   # a selection, by script name

Each script's output (a header with the CPU, thread counts and torch version, then Markdown tables) is printed
and also saved to ``bench/work/results/NAME.txt``. The corpus is prepared first. A failing benchmark is
reported and the others still run; the exit status is 1 if any failed.
"""

import argparse
import subprocess
import sys
import time

from common import BENCH_DIR, REPO_DIR, WORK_DIR
from corpus import ensure_corpus

RESULTS_DIR = WORK_DIR / "results"
BENCHMARKS = {  # name: extra arguments; the order puts the single-process ones first
    "prepare": [],
    "hardware": [],
    "generation": [],
    "memory": [],
    "peer_overhead": [],
    "averaging": [],
    "averaging_patched": ["--compressions", "uint8", "--patch-uint8"],
    "joining": [],
    "collaboration": [],
}


def script_of(name: str) -> str:
    return str(BENCH_DIR / f"{name.removesuffix('_patched')}.py")


def run(name: str) -> bool:
    print(f"\n=== {name}", flush=True)
    started = time.monotonic()
    with open(RESULTS_DIR / f"{name}.txt", "w", encoding="utf-8") as output:
        process = subprocess.Popen([sys.executable, script_of(name), *BENCHMARKS[name]], cwd=REPO_DIR,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in process.stdout:
            print(line, end="", flush=True)
            output.write(line)
        process.wait()
    print(f"=== {name}: exit status {process.returncode} after {time.monotonic() - started:.0f} s", flush=True)
    return process.returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run (default: all): {', '.join(BENCHMARKS)}")
    args = parser.parse_args()
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    ensure_corpus()
    failed = [name for name in (args.names or BENCHMARKS) if not run(name)]
    if failed:
        print(f"failed: {', '.join(failed)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
