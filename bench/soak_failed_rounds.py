"""Memory of a peer and its p2pd over many failed averaging rounds: does anything pile up?

    python bench/soak_failed_rounds.py [--cycles 40] [--averaging-timeout 5]

Two peers train a small model (one layer, 64 wide) on the benchmark corpus. Each cycle lets both train
together for a while, then freezes the second peer's whole process tree with SIGSTOP for longer than the
averaging timeout, so that the measured peer's matchmaking or all-reduce with it fails, and thaws it again.
After every cycle the measured peer's process tree (main process, DHT, averagers) and its p2pd are sampled:
PSS (shared pages split among the processes that map them) and RSS. A leak per failed round shows as a rising
line; the summary compares the first and last quarter of the cycles and fits a slope.
"""

import argparse
import os
import re
import signal
import statistics
import sys
import time

import psutil
from common import WORK_DIR, Processes, free_port, peer_command, print_machine, print_table
from corpus import ensure_corpus, write_config

MIB = 1 << 20
STEP_LINE = re.compile(r"global epoch (\d+) \| loss \S+ \| \d+ samples/s \| (\d+) peers in last round")
JOIN_LINE = re.compile(r"cellmind-peer --initial-peers (\S+)")


def read_log(path) -> str:
    return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""


def wait_for(path, pattern: re.Pattern, timeout: float) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = pattern.search(read_log(path))
        if match:
            return match
        time.sleep(0.5)
    raise SystemExit(f"no {pattern.pattern!r} in {path} within {timeout:.0f} s")


def memory(pid: int) -> tuple[float, float, float, float, float]:
    """MiB of a peer's process tree: (tree PSS, tree RSS, main process USS, forks' USS, p2pd RSS).

    USS counts the pages only that process maps, so it moves with the process's own allocations and not with
    how many other processes on the machine share torch's libraries (which moves PSS).
    """
    pss = rss = main = forks = p2pd = 0
    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        try:
            info = process.memory_full_info()
            name = process.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        pss, rss = pss + info.pss, rss + info.rss
        if name == "p2pd":
            p2pd += info.rss
        elif process.pid == pid:
            main += info.uss
        else:
            forks += info.uss
    return pss / MIB, rss / MIB, main / MIB, forks / MIB, p2pd / MIB


def signal_tree(pid: int, signum: int) -> None:
    """Send ``signum`` to a peer's whole session (it was started with its own), p2pd included."""
    os.killpg(os.getpgid(pid), signum)


def slope_per_hundred(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ``ys`` over ``xs``, per 100 units of x."""
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mean_x) ** 2 for x in xs) or 1.0
    return 100 * sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / spread


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=40, help="freeze-and-thaw cycles (each fails >= 1 round)")
    parser.add_argument("--averaging-timeout", type=float, default=5.0, help="seconds before a round is given up")
    parser.add_argument("--together", type=float, default=6.0, help="seconds both peers train between freezes")
    parser.add_argument("--no-freeze", action="store_true",
                        help="control run: same cycles without freezing, so that no round fails on purpose")
    parser.add_argument("--out", default="soak", help="folder under bench/work for configs and logs")
    args = parser.parse_args()
    print_machine("Memory of a peer and its p2pd over failed averaging rounds (1-layer, 64-wide model)", threads="1")
    paths = ensure_corpus()
    out_dir = WORK_DIR / args.out
    config = write_config(
        out_dir / "config.json", paths,
        model={"n_layer": 1, "n_head": 2, "n_embd": 64, "block_size": 64},
        training={"seq_len": 64, "batch_size": 8, "checkpoint_every": 100000},
        swarm={"target_batch_size": 64, "matchmaking_time": 1.0, "averaging_timeout": args.averaging_timeout,
               "average_state_every": 4, "compression": "none"},
    )
    frozen_for = args.averaging_timeout + 3.0
    with Processes() as processes:
        common = ["--config", str(config), "--threads", "1", "-v"]
        measured_log, other_log = out_dir / "measured.log", out_dir / "frozen.log"
        measured = processes.start(peer_command(
            *common, "--bootstrap", "--host-maddrs", f"/ip4/127.0.0.1/tcp/{free_port()}",
            "--identity", str(out_dir / "identity.key"), "--checkpoint-dir", str(out_dir / "measured-checkpoints"),
        ), measured_log)
        address = wait_for(measured_log, JOIN_LINE, 180).group(1)
        other = processes.start(peer_command(
            *common, "--initial-peers", address, "--host-maddrs", "/ip4/127.0.0.1/tcp/0",
            "--checkpoint-dir", str(out_dir / "frozen-checkpoints"),
        ), other_log)
        wait_for(measured_log, re.compile(r"\| 2 peers in last round"), 300)

        rows, started = [], time.monotonic()
        for cycle in range(args.cycles):
            time.sleep(args.together)
            if not args.no_freeze:
                signal_tree(other.pid, signal.SIGSTOP)
            time.sleep(frozen_for)
            if not args.no_freeze:
                signal_tree(other.pid, signal.SIGCONT)
            steps = STEP_LINE.findall(read_log(measured_log))
            alone = sum(1 for _epoch, peers in steps if peers == "1")
            sizes = memory(measured.pid)
            rows.append([cycle + 1, round(time.monotonic() - started), int(steps[-1][0]) if steps else 0, alone,
                         *(round(size, 1) for size in sizes)])
            print(rows[-1], flush=True)
        log = read_log(measured_log)
        failed = len(re.findall(r"\[ERROR\].*(?:Averaging step failed|Unable to run All-Reduce)", log))
        partial = len(re.findall(r"\[WARN\].*received [\d.]+% (?:results|of input tensors)", log))

    print_table(["cycle", "s", "global epoch", "steps alone", "tree PSS MiB", "tree RSS MiB", "main USS MiB",
                 "forks USS MiB", "p2pd RSS MiB"], rows)
    quarter = max(1, len(rows) // 4)
    for name, column in (("tree PSS", 4), ("tree RSS", 5), ("main USS", 6), ("forks USS", 7), ("p2pd RSS", 8)):
        first = statistics.median(row[column] for row in rows[:quarter])
        last = statistics.median(row[column] for row in rows[-quarter:])
        slope = slope_per_hundred([row[0] for row in rows[quarter:]], [row[column] for row in rows[quarter:]])
        print(f"{name}: median of first {quarter} cycles {first:.1f} MiB, of last {quarter} {last:.1f} MiB, "
              f"slope after warm-up {slope:+.1f} MiB per 100 cycles")
    print(f"the measured peer logged {failed} failed rounds and {partial} all-reduces with part of the results; "
          f"it took {rows[-1][3]} global steps alone")
    return 0


if __name__ == "__main__":
    sys.exit(main())
