"""Joining a running swarm of the 23M model, and the memory of its training peers.

    python bench/joining.py                       # 2 late joiners, one after the other
    python bench/joining.py --joiners 3

A bootstrap peer and a second peer train the 23M-parameter model together (the config's default micro-batch,
2 windows of 256 tokens; target batch 32, so that global steps happen within minutes). After their first global
step, late joiners start one after the other. For each, the table gives three times, counted from starting the process:
its DHT node is up; it has downloaded the swarm's parameters, optimizer statistics and global epoch ("Joined
the swarm"); it starts its first micro-step (the "before training" log line). The last column is the CPU time
the joiner's processes had used by then: where two training peers already keep the machine's cores busy, the
joiner waits for a core, and its wall time measures the machine more than the join.

The same run records the peak memory of each training peer's whole process tree (the training process, its
forked DHT and averager processes and p2pd), sampled twice a second through averaging rounds and the state
uploads to joiners: the sum of RSS, which counts pages shared between those processes once per process, and
the sum of PSS, which divides shared pages among the processes that map them.
"""

import argparse
import shutil
import sys
import time

import psutil

from common import (
    WORK_DIR, Processes, TreeSampler, median, peer_command, print_machine, print_table, read_join_address,
    watch_markers,
)
from corpus import ensure_corpus, write_config

from cellmind.config import TrainingSection

OUT_DIR = WORK_DIR / "joining"
MARKERS = ("DHT node", "Joined the swarm", "before training")
GIB = 1 << 30


def tree_cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of a process and its living descendants (its DHT, averagers and p2pd)."""
    total = 0.0
    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--joiners", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=TrainingSection().batch_size)
    parser.add_argument("--target-batch-size", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for the first global step")
    args = parser.parse_args()
    print_machine("Joining a running 2-peer swarm of the 23M model; memory of training peers", "1 per peer")

    shutil.rmtree(OUT_DIR, ignore_errors=True)  # peers would resume checkpoints left by an earlier run
    config = write_config(OUT_DIR / "config.json", ensure_corpus(),
                          training={"batch_size": args.batch_size, "checkpoint_every": 1000},
                          swarm={"target_batch_size": args.target_batch_size, "run_id": "bench-joining"})
    common = ["--config", str(config), "--threads", "1", "-v", "--host-maddrs", "/ip4/127.0.0.1/tcp/0"]
    joins, memory = [], []
    with Processes() as processes:
        bootstrap = processes.start(peer_command(
            "--bootstrap", "--identity", str(OUT_DIR / "identity.key"), "--checkpoint-dir",
            str(OUT_DIR / "peer-1"), *common), OUT_DIR / "peer-1.log")
        address = read_join_address(OUT_DIR / "join.txt", bootstrap)
        second = processes.start(peer_command("--initial-peers", address, "--checkpoint-dir",
                                              str(OUT_DIR / "peer-2"), *common), OUT_DIR / "peer-2.log")
        samplers = {"bootstrap peer": TreeSampler(bootstrap, marker=" | loss ", period=0.5, memory=True),
                    "second peer": TreeSampler(second, period=0.5, memory=True)}
        samplers["bootstrap peer"].wait_events(1, args.timeout)
        print(f"first global step: {samplers['bootstrap peer'].events[0][2]}", flush=True)

        for index in range(args.joiners):
            started = time.monotonic()
            joiner = processes.start(peer_command(
                "--initial-peers", address, "--checkpoint-dir", str(OUT_DIR / f"joiner-{index}"), *common),
                OUT_DIR / f"joiner-{index}.log")
            sampler = samplers[f"joiner {index + 1}"] = TreeSampler(joiner, period=0.5, memory=True)
            seen = watch_markers(joiner, list(MARKERS), timeout=600)
            joins.append([seen[marker] - started for marker in MARKERS] + [tree_cpu_seconds(joiner.pid)])
            print(f"joiner {index + 1}: " + ", ".join(f"{m} {t:.1f} s" for m, t in zip(MARKERS, joins[-1])),
                  flush=True)
            time.sleep(5)  # one more micro-step's worth of memory samples
            sampler.stop()
            processes.stop(joiner)
        for sampler in samplers.values():
            sampler.stop()

    print(f"23M model, micro-batch {args.batch_size} x 256 tokens, target batch {args.target_batch_size}, "
          f"{args.joiners} late joiners")
    rows = [[f"joiner {index + 1}", *times] for index, times in enumerate(joins)]
    rows.append(["median", *[median([times[i] for times in joins]) for i in range(len(MARKERS) + 1)]])
    print_table(["", "s to DHT up", "s to state downloaded", "s to first micro-step",
                 "CPU s of the joiner by then"], rows)
    memory = [[name, sampler.peak_rss / GIB, sampler.peak_pss / GIB] for name, sampler in samplers.items()]
    print_table(["process tree", "peak RSS sum (GiB)", "peak PSS sum (GiB)"], memory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
