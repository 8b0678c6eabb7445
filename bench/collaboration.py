"""Collaboration speedup and the original design's baseline: time to a fixed validation loss.

    python bench/collaboration.py                 # 2 alternating repetitions of each setup, then the leave test
    python bench/collaboration.py --repeats 3 --target-loss 6.0
    python bench/collaboration.py --model 23m --precision bf16 --target-batch-size 32 --target-loss 7.5

Setups, each on the benchmark corpus with the same model, data, target batch size (``--target-batch-size``
samples per optimizer step, micro-batches of 8) and learning-rate schedule, one math thread per process:

- one ``cellmind-peer`` alone;
- two ``cellmind-peer`` processes (a bootstrap and a peer that joins it) in one swarm;
- ``torch.distributed`` DDP over gloo with two ranks on 127.0.0.1 (``init_method="tcp://127.0.0.1:PORT"``), the
  design CellMind replaced: each rank accumulates target/2 samples, DDP averages the gradients, AdamW steps.
  This file runs the ranks itself (``--ddp-rank``).

Every setup validates on the same 8 validation batches every 2 optimizer steps (and saves a checkpoint then, as
the peers do). The clock starts when the first process starts training: the peer's "before training" log line,
or DDP's first step. It stops at the first validation loss at or below ``--target-loss``, so process start-up
is not counted. By default the model is small (``--model tiny``: 2 layers, 128 wide, 64-token context, 1.2M
parameters) so that every setup reaches the target within minutes on two shared cores; its compute per
optimizer step is far smaller than the 23M model's (``--model 23m``), which makes the averaging overhead weigh
more. ``--precision`` applies to the peers and the DDP ranks alike.

The leave test then SIGKILLs one of two processes after a few optimizer steps and counts the optimizer steps the
survivor takes in the next ``--leave-watch`` seconds: DDP's surviving rank fails in its next all-reduce, while
the surviving peer keeps training.
"""

import argparse
import json
import re
import shutil
import sys
import time
from datetime import timedelta
from pathlib import Path

from common import (
    WORK_DIR, Processes, free_port, log_seconds, median, now_seconds, print_machine, print_table, python_command,
    read_join_address,
)
from corpus import ensure_corpus, write_config

OUT_DIR = WORK_DIR / "collaboration"
TINY_MODEL = {"n_embd": 128, "n_head": 4, "n_layer": 2, "block_size": 64, "dropout": 0.1}
VALIDATE_EVERY = 2
VAL_BATCHES = 8  # cellmind.peer.EVAL_BATCHES
# cellmind-peer with hivemind.optim.optimizer's DEBUG lines let through, because they mark the start
# ("Beginning optimizer step") and end ("Transitioning to epoch") of each global step. Only logging changes.
PEER_PROGRAM = (
    "import logging, sys; import cellmind.cli as cli; configure = cli.configure_logging; "
    "cli.configure_logging = lambda verbose: (configure(verbose), "
    "logging.getLogger('hivemind.optim.optimizer').setLevel(logging.DEBUG)); sys.exit(cli.peer_main())"
)
VALIDATION = re.compile(r"validation loss ([0-9.]+) at global epoch (\d+)")


def peer_command(*arguments: str) -> list[str]:
    return [sys.executable, "-c", PEER_PROGRAM, *arguments]


MODELS = {
    # 1.2M parameters: every setup reaches the target within minutes, but a round's fixed costs weigh heavily
    "tiny": dict(model=TINY_MODEL, seq_len=TINY_MODEL["block_size"], batch_size=8, lr=3e-3),
    # the product's 23M model at its default micro-batch, with a faster warm-up than the default config
    "23m": dict(model={}, seq_len=256, batch_size=2, lr=1e-3),
}


def make_config(args, run_id: str):
    """Write the run's config, removing what an earlier run of the same name left (a peer would resume it)."""
    shutil.rmtree(OUT_DIR / run_id, ignore_errors=True)
    paths = ensure_corpus()
    setup = MODELS[args.model]
    return write_config(
        OUT_DIR / f"{run_id}.json", paths, small=args.model == "tiny", model=setup["model"],
        training={"seq_len": setup["seq_len"], "batch_size": setup["batch_size"], "lr": setup["lr"],
                  "warmup_steps": 5, "checkpoint_every": VALIDATE_EVERY},
        swarm={"target_batch_size": args.target_batch_size, "matchmaking_time": 2.0, "averaging_timeout": 30.0,
               "run_id": run_id, "compression": args.compression},
    )


# DDP ranks


def ddp_rank(config_path: str, rank: int, port: int, max_steps: int, precision: str) -> None:
    """Train as one DDP rank; print a JSON line per optimizer step and, on rank 0, per validation.

    ``precision`` ``bf16`` runs forward and loss in bf16 autocast, as a peer does with ``--precision bf16``.
    """
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from cellmind.checkpoints import save_checkpoint
    from cellmind.config import load_config
    from cellmind.dataset import TokenWindows, ensure_token_file
    from cellmind.evaluation import validation_loss
    from cellmind.peer import new_model, optimizer_factory, parameter_groups, scheduler_factory
    from cellmind.tokenizer import load_tokenizer

    torch.set_num_threads(1)
    config = load_config(config_path)
    training = config.training
    tokenizer = load_tokenizer(config.tokenizer.model_path)
    windows = TokenWindows(ensure_token_file(training.dataset_path, tokenizer), training.seq_len, seed=rank + 1)
    val_file = ensure_token_file(training.val_path, tokenizer, show_progress=False)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))
    model = new_model(config, tokenizer.vocab_size)
    ddp = DistributedDataParallel(model)
    optimizer = optimizer_factory(config)(parameter_groups(model, training.weight_decay))
    scheduler = scheduler_factory(config)(optimizer)
    micro_steps = max(1, config.swarm.target_batch_size // (2 * training.batch_size))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    _emit(event="start", rank=rank)
    for step in range(1, max_steps + 1):
        ddp.train()
        for micro in range(micro_steps):
            x, y = windows.get_batch(training.batch_size)
            if micro < micro_steps - 1:
                with ddp.no_sync():
                    with autocast:
                        loss = ddp(x, y)[1]
                    (loss / micro_steps).backward()
            else:
                with autocast:
                    loss = ddp(x, y)[1]
                (loss / micro_steps).backward()  # this backward all-reduces the accumulated gradients
        torch.nn.utils.clip_grad_norm_(model.parameters(), training.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        _emit(event="step", rank=rank, step=step)
        if rank == 0 and step % VALIDATE_EVERY == 0:
            with autocast:
                loss = validation_loss(model, val_file, seq_len=training.seq_len, batch_size=training.batch_size,
                                       max_batches=VAL_BATCHES)
            save_checkpoint(Path(config_path).with_suffix(""), model=model, optimizer_state=optimizer.state_dict(),
                            global_epoch=step, config=config, tokenizer_sha256=tokenizer.sha256, keep=0)
            _emit(event="validation", rank=rank, step=step, loss=loss)
    dist.destroy_process_group()


def _emit(**record) -> None:
    print(json.dumps({"time": now_seconds(), **record}), flush=True)


# runs


class Run:
    """Timeline of one setup: when training started, validation losses and optimizer-step intervals."""

    def __init__(self, name: str):
        self.name = name
        self.train_start: float | None = None
        self.launched = now_seconds()
        self.validations: list[tuple[float, int, float]] = []  # (time, step, loss)
        self.step_times: list[float] = []  # end of each optimizer step, first process only
        self.in_step = 0.0  # seconds inside global steps (averaging and update), first process only

    def reached(self, target: float) -> tuple[float, int] | None:
        for moment, step, loss in self.validations:
            if loss <= target:
                return moment - self.train_start, step
        return None


def parse_peer_log(path: Path, run: Run, first: bool) -> None:
    began = None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        moment = log_seconds(line)
        if moment is None:
            continue
        if "before training" in line:
            run.train_start = moment if run.train_start is None else min(run.train_start, moment)
        elif (found := VALIDATION.search(line)) is not None:
            run.validations.append((moment, int(found.group(2)), float(found.group(1))))
        elif first and "Beginning optimizer step" in line:
            began = moment
        elif first and "Transitioning to epoch" in line and began is not None:
            run.step_times.append(moment)
            run.in_step += moment - began
            began = None
    run.validations.sort()


def run_peers(processes: Processes, count: int, args, index: int) -> Run:
    run_id = f"bench-collab-{count}p-{index}"
    config = make_config(args, run_id)
    run_dir = OUT_DIR / run_id
    common = ["--config", str(config), "--threads", "1", "-v", "--max-time", f"{args.max_time:.0f}s",
              "--host-maddrs", "/ip4/127.0.0.1/tcp/0", "--precision", args.precision]
    run = Run(f"{count} peer" + ("s" if count > 1 else ""))
    bootstrap = processes.start(peer_command(
        "--bootstrap", "--identity", str(run_dir / "identity.key"), "--seed", "1",
        "--checkpoint-dir", str(run_dir / "peer-1"), *common), run_dir / "peer-1.log")
    peers = [bootstrap]
    if count > 1:
        address = read_join_address(run_dir / "join.txt", bootstrap)
        peers.append(processes.start(peer_command(
            "--initial-peers", address, "--seed", "2", "--checkpoint-dir", str(run_dir / "peer-2"), *common),
            run_dir / "peer-2.log"))
    _wait_for_target(peers, lambda: _peer_run(run, peers), args)
    for peer in peers:
        processes.stop(peer)
    return _peer_run(run, peers)


def _peer_run(run: Run, peers) -> Run:
    run.validations, run.step_times, run.in_step, run.train_start = [], [], 0.0, None
    for position, peer in enumerate(peers):
        parse_peer_log(Path(peer.log_path), run, first=position == 0)
    return run


def run_ddp(processes: Processes, args, index: int, max_steps: int = 100000) -> tuple[Run, list]:
    config = make_config(args, f"bench-collab-ddp-{index}")
    port = free_port()
    run = Run("DDP gloo, 2 ranks")
    ranks = [processes.start(python_command(__file__, "--ddp-rank", str(rank), "--ddp-config", str(config),
                                            "--ddp-port", str(port), "--ddp-max-steps", str(max_steps),
                                            "--precision", args.precision),
                             OUT_DIR / f"ddp-{index}-rank{rank}.log") for rank in (0, 1)]
    _wait_for_target(ranks, lambda: _ddp_run(run, ranks[0]), args)
    for rank in ranks:
        processes.stop(rank, timeout=5)
    return _ddp_run(run, ranks[0]), ranks


def _ddp_run(run: Run, rank0) -> Run:
    records = _json_lines(Path(rank0.log_path))
    starts = [record["time"] for record in records if record["event"] == "start"]
    run.train_start = starts[0] if starts else None
    run.validations = [(r["time"], r["step"], r["loss"]) for r in records if r["event"] == "validation"]
    run.step_times = [record["time"] for record in records if record["event"] == "step"]
    return run


def _json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("{")]


def _wait_for_target(processes, current_run, args) -> None:
    deadline = time.monotonic() + args.max_time + 60
    while time.monotonic() < deadline:
        run = current_run()
        if run.train_start is not None and run.reached(args.target_loss) is not None:
            return
        if any(process.poll() is not None for process in processes):
            return
        time.sleep(1.0)


# the leave test


def leave_test(processes: Processes, args) -> list[list]:
    """SIGKILL one of two DDP ranks and one of two peers after a few steps; count the survivor's later steps."""
    rows = []
    run, ranks = None, None
    config = make_config(args, "bench-leave-ddp")
    port = free_port()
    ranks = [processes.start(python_command(__file__, "--ddp-rank", str(rank), "--ddp-config", str(config),
                                            "--ddp-port", str(port), "--ddp-max-steps", "100000",
                                            "--precision", args.precision),
                             OUT_DIR / f"leave-ddp-rank{rank}.log") for rank in (0, 1)]
    rows.append(_kill_and_watch("DDP gloo, 2 ranks", processes, ranks,
                                lambda: len(_ddp_run(Run("ddp"), ranks[0]).step_times), args))

    config = make_config(args, "bench-leave-peers")
    run_dir = OUT_DIR / "bench-leave-peers"
    common = ["--config", str(config), "--threads", "1", "-v", "--host-maddrs", "/ip4/127.0.0.1/tcp/0"]
    bootstrap = processes.start(peer_command(
        "--bootstrap", "--identity", str(run_dir / "identity.key"), "--checkpoint-dir", str(run_dir / "peer-1"),
        *common), run_dir / "peer-1.log")
    address = read_join_address(run_dir / "join.txt", bootstrap)
    joiner = processes.start(peer_command("--initial-peers", address, "--checkpoint-dir", str(run_dir / "peer-2"),
                                          *common), run_dir / "peer-2.log")
    run = Run("peers")
    rows.append(_kill_and_watch("2 cellmind-peers", processes, [bootstrap, joiner],
                                lambda: len(_peer_run(run, [bootstrap]).step_times), args))
    return rows


def _kill_and_watch(name: str, processes: Processes, pair, steps_of_first, args) -> list:
    deadline = time.monotonic() + 600
    while steps_of_first() < args.leave_after and time.monotonic() < deadline:
        if any(process.poll() is not None for process in pair):
            raise RuntimeError(f"{name}: a process exited early; see {pair[0].log_path}")
        time.sleep(0.5)
    before = steps_of_first()
    processes.kill(pair[1])
    time.sleep(args.leave_watch)
    after = steps_of_first()
    status = "running" if pair[0].poll() is None else f"exited with status {pair[0].returncode}"
    processes.stop(pair[0], timeout=30)
    return [name, before, after - before, status]


# the report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ddp-rank", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ddp-config", help=argparse.SUPPRESS)
    parser.add_argument("--ddp-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ddp-max-steps", type=int, default=100000, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny",
                        help="tiny: 2 layers, 128 wide, 64 tokens (1.2M parameters); 23m: the product's model")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="the same precision for peers and DDP ranks (bf16: autocast)")
    parser.add_argument("--target-loss", type=float, default=7.0, help="validation loss to reach (nats per token)")
    parser.add_argument("--target-batch-size", type=int, default=64)
    parser.add_argument("--compression", default="fp16", choices=["none", "fp16", "uint8"])
    parser.add_argument("--max-time", type=float, default=300,
                        help="seconds a setup may train before it counts as failed")
    parser.add_argument("--setups", nargs="+", default=["1", "2", "ddp"], choices=["1", "2", "ddp"])
    parser.add_argument("--leave-after", type=int, default=3, help="optimizer steps before one process is killed")
    parser.add_argument("--leave-watch", type=float, default=45.0, help="seconds the survivor is watched")
    parser.add_argument("--no-leave-test", dest="leave_test", action="store_false")
    args = parser.parse_args()
    if args.ddp_rank is not None:
        ddp_rank(args.ddp_config, args.ddp_rank, args.ddp_port, args.ddp_max_steps, args.precision)
        return 0

    print_machine("Collaboration speedup and DDP baseline: time to a fixed validation loss", threads="1 per process")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[Run]] = {}
    with Processes() as processes:
        for index in range(args.repeats):
            for setup in args.setups:
                run = run_ddp(processes, args, index)[0] if setup == "ddp" else run_peers(
                    processes, int(setup), args, index)
                results.setdefault(run.name, []).append(run)
                print(f"repetition {index + 1}, {run.name}: reached {run.reached(args.target_loss)}, "
                      f"validations {[(step, round(loss, 3)) for _t, step, loss in run.validations]}", flush=True)
        leave_rows = leave_test(processes, args) if args.leave_test else []

    model_setup = MODELS[args.model]
    print(f"model: {args.model} {model_setup['model']}, target batch {args.target_batch_size} samples of "
          f"{model_setup['seq_len']} tokens, micro-batch {model_setup['batch_size']}, lr {model_setup['lr']}, "
          f"precision {args.precision}, "
          f"compression {args.compression}, target validation loss {args.target_loss}, "
          f"{args.repeats} repetitions (alternating)")
    print_table(["setup", "s to target", "steps to target", "steps/min", "share of time in global steps",
                 "/ 1 peer", "/ DDP"], _summary_rows(results, args.target_loss))
    if leave_rows:
        print(f"leave test: one process SIGKILLed after {args.leave_after} optimizer steps, survivor watched "
              f"for {args.leave_watch:.0f} s")
        print_table(["setup", "steps before the kill", "survivor's steps after", "survivor"], leave_rows)
    return 0


def _summary_rows(results: dict[str, list[Run]], target: float) -> list[list]:
    medians = {}
    for name, runs in results.items():
        reached = [run.reached(target) for run in runs]
        times = [r[0] for r in reached if r is not None]
        medians[name] = median(times) if len(times) == len(runs) else None
    rows = []
    for name, runs in results.items():
        reached = [run.reached(target) for run in runs]
        if medians[name] is None:
            rows.append([name, f"not reached in {sum(r is None for r in reached)} of {len(runs)}", "", "", "", "", ""])
            continue
        steps = median([r[1] for r in reached])
        rates = [60 * (len(run.step_times) - 1) / (run.step_times[-1] - run.step_times[0])
                 for run in runs if len(run.step_times) > 1]
        shares = [run.in_step / (run.step_times[-1] - run.train_start) for run in runs
                  if run.in_step and run.step_times]
        one, ddp = medians.get("1 peer"), medians.get("DDP gloo, 2 ranks")
        rows.append([name, medians[name], steps, median(rates) if rates else "", median(shares) if shares else "-",
                     medians[name] / one if one else "", medians[name] / ddp if ddp else ""])
    return rows


if __name__ == "__main__":
    sys.exit(main())
