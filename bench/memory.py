"""Peak memory of ``cellmind generate`` and of a training peer, both with the 23M model.

    python bench/memory.py                        # cellmind generate, with and without the KV cache
    python bench/memory.py --peers 2              # training peers: per-process peaks
    python bench/memory.py --peers 2 --batch-size 2 --precision fp32

The seeded, untrained 23M-parameter model is saved as a checkpoint of the benchmark corpus's run (memory does
not depend on the weights' values), and ``cellmind generate`` continues a Korean prompt by 256 tokens from it,
as a user runs it. Its process is sampled every 50 ms: RSS and PSS (there is one process, so they nearly agree).

With ``--peers N`` it instead starts a swarm of N training peers of the 23M model on 127.0.0.1 (a bootstrap and
N - 1 joiners; target batch 2 x N x micro-batch unless given, so that global steps and, with two peers, averaging
rounds come within minutes). Every process of the first peer's tree is sampled twice a second with ``psutil.memory_full_info``:
the training process, its forked DHT and averager processes (named by start order), torch_shm_manager and p2pd.
The first table gives each process's peak PSS and USS (its private pages), the second the peak of each peer
tree's PSS sum, which is the memory the peer costs the device (the joiners' trees are sampled the same way). ``bench/joining.py`` measures the trees of a swarm with late joiners.
"""

import argparse
import shutil
import sys
import threading

import psutil
from common import (
    WORK_DIR, Processes, TreeSampler, cellmind_command, peer_command, print_machine, print_table, read_join_address,
)
from corpus import ensure_corpus, write_config, write_initial_checkpoint

OUT_DIR = WORK_DIR / "memory"
MIB = 1 << 20


FORK_NAMES = ("DHT process", "state averager", "gradient averager")


class ProcessSampler:
    """Poll every process of a tree for PSS and USS in a thread; keep each process's peaks and the tree's peak."""

    def __init__(self, pid: int, period: float = 0.5):
        self.root = psutil.Process(pid)
        self.period = period
        self.peaks: dict[int, dict] = {}  # pid -> name, start time, peak PSS, peak USS
        self.peak_tree_pss = self.peak_tree_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set() and self.root.is_running():
            tree_pss = tree_rss = 0
            try:
                processes = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for process in processes:
                try:
                    info = process.memory_full_info()
                    entry = self.peaks.setdefault(process.pid, dict(
                        name=process.name(), started=process.create_time(), pss=0, uss=0))
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                entry["pss"], entry["uss"] = max(entry["pss"], info.pss), max(entry["uss"], info.uss)
                tree_pss, tree_rss = tree_pss + info.pss, tree_rss + info.rss
            self.peak_tree_pss = max(self.peak_tree_pss, tree_pss)
            self.peak_tree_rss = max(self.peak_tree_rss, tree_rss)
            self._stop.wait(self.period)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def rows(self) -> list[list]:
        """Return one row per process: the training process, the Python forks by start time, then the others."""
        forks = sorted((entry for pid, entry in self.peaks.items()
                        if pid != self.root.pid and entry["name"].startswith("python")), key=lambda e: e["started"])
        others = [entry for pid, entry in self.peaks.items()
                  if pid != self.root.pid and not entry["name"].startswith("python")]
        named = [("training process", self.peaks[self.root.pid])]
        named += [(FORK_NAMES[i] if i < len(FORK_NAMES) else f"fork {i + 1}", e) for i, e in enumerate(forks)]
        named += [(entry["name"], entry) for entry in others]
        return [[name, entry["pss"] / MIB, entry["uss"] / MIB] for name, entry in named]


def measure_peers(args) -> int:
    """Run a swarm of ``args.peers`` training peers and print the first peer's memory per process."""
    print_machine(f"Peak memory of a training peer of the 23M model ({args.peers} peers)", threads="1 per peer")
    out_dir = OUT_DIR / "peers"
    shutil.rmtree(out_dir, ignore_errors=True)  # peers would resume checkpoints left by an earlier run
    target = args.target_batch_size or 2 * args.peers * args.batch_size
    config = write_config(out_dir / "config.json", ensure_corpus(),
                          training={"batch_size": args.batch_size, "checkpoint_every": 1000},
                          swarm={"target_batch_size": target, "run_id": "bench-memory", "matchmaking_time": 2.0})
    common = ["--config", str(config), "--threads", "1", "-v", "--host-maddrs", "/ip4/127.0.0.1/tcp/0",
              "--max-steps", str(args.global_steps), *(["--precision", args.precision] if args.precision else [])]
    with Processes() as processes:
        first = processes.start(peer_command("--bootstrap", "--identity", str(out_dir / "identity.key"),
                                             "--checkpoint-dir", str(out_dir / "peer-1"), *common),
                                out_dir / "peer-1.log")
        sampler = ProcessSampler(first.pid)
        others = []
        if args.peers > 1:
            address = read_join_address(out_dir / "join.txt", first)
            others = [processes.start(peer_command("--initial-peers", address, "--checkpoint-dir",
                                                   str(out_dir / f"peer-{index}"), *common),
                                      out_dir / f"peer-{index}.log") for index in range(2, args.peers + 1)]
        other_samplers = [ProcessSampler(other.pid) for other in others]
        first.wait(timeout=args.timeout)
        sampler.stop()
        for other_sampler in other_samplers:
            other_sampler.stop()
        if first.returncode != 0:
            raise RuntimeError(f"the first peer exited with {first.returncode}; see {first.log_path}")
        for other in others:
            processes.stop(other)
    log = first.log_path.read_text(encoding="utf-8", errors="replace")
    rounds = sum(1 for line in log.splitlines() if " | loss " in line and "| 1 peers in last round" not in line)
    print(f"23M model, micro-batch {args.batch_size} x 256 tokens, target batch {target}, "
          f"{args.global_steps} global steps of the first peer, {rounds} of them averaged with other peers; "
          f"precision {args.precision or 'default'}")
    print_table(["process", "peak PSS (MiB)", "peak USS (MiB)"], sampler.rows())
    trees = [("first peer (bootstrap)", sampler)]
    trees += [(f"peer {index} (joined)", other) for index, other in enumerate(other_samplers, start=2)]
    print_table(["process tree", "peak PSS sum (MiB)", "peak RSS sum (MiB)"],
                [[name, tree.peak_tree_pss / MIB, tree.peak_tree_rss / MIB] for name, tree in trees])
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--peers", type=int, default=0, help="measure training peers instead of generation")
    parser.add_argument("--batch-size", type=int, default=None, help="micro-batch of the peers (default: config's)")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default=None)
    parser.add_argument("--global-steps", type=int, default=3, help="global steps the first peer takes")
    parser.add_argument("--target-batch-size", type=int, default=None,
                        help="samples per global step (default: 2 x peers x micro-batch)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds the first peer may run")
    args = parser.parse_args()
    if args.peers:
        if args.batch_size is None:
            from cellmind.config import TrainingSection

            args.batch_size = TrainingSection().batch_size
        return measure_peers(args)
    print_machine("Peak memory of cellmind generate (23M model)", threads="1")
    paths = ensure_corpus()
    config = write_config(OUT_DIR / "config.json", paths)
    checkpoint = write_initial_checkpoint(OUT_DIR / "checkpoints", config, paths)
    rows = []
    with Processes() as processes:
        for name, extra in (("cellmind generate", []), ("cellmind generate --no-cache", ["--no-cache"])):
            command = cellmind_command("generate", "--config", str(config), "--checkpoint", str(checkpoint),
                                       "--prompt", "오늘 날씨 어때?", "--max-new-tokens", str(args.new_tokens),
                                       "--temperature", "0.8", "--seed", "0", *extra)
            process = processes.start(command, OUT_DIR / f"generate{'-'.join(extra)}.log")
            sampler = TreeSampler(process, period=0.05, memory=True)
            process.wait(timeout=1800)
            sampler.stop()
            if process.returncode != 0:
                raise RuntimeError(f"{name} failed; see {process.log_path}")
            rows.append([name, sampler.peak_rss / MIB, sampler.peak_pss / MIB])
    size = checkpoint.stat().st_size / MIB
    print(f"checkpoint {checkpoint}: {size:.0f} MiB (fp32 model, no optimizer state); {args.new_tokens} new tokens")
    print_table(["command", "peak RSS (MiB)", "peak PSS (MiB)"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
