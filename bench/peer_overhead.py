"""Peer overhead: tokens per second of one ``cellmind-peer`` training alone against a bare PyTorch loop.

    python bench/peer_overhead.py                 # 3 alternating repetitions, 1 thread each
    python bench/peer_overhead.py --repeats 5 --global-steps 4

Both sides train the 23M-parameter model on the benchmark corpus with the same micro-batch (``--batch-size``
windows of 256 tokens), the same target batch (``--target-batch-size`` samples per AdamW step, gathered by
gradient accumulation), the same gradient clipping (of the mean gradient, once per AdamW step) and one math thread, each in its own process. The bare loop is
this file run with ``--bare-loop``. The peer is ``cellmind-peer --bootstrap`` alone in its swarm (nobody to
average with), checkpointing switched off inside the measured window. Each side is timed from its first AdamW
step to its last (``--global-steps`` steps), so start-up is not counted; the peer's CPU time is that of its whole
process tree (training process, DHT and averager processes, p2pd). The sides alternate, and the table gives
medians. Tokens per CPU second show the overhead independently of other load on the machine.
"""

import argparse
import json
import shutil
import sys
import time

from common import (
    WORK_DIR, Processes, TreeSampler, median, peer_command, print_machine, print_table, python_command,
)
from corpus import ensure_corpus, write_config

OUT_DIR = WORK_DIR / "peer_overhead"
SEQ_LEN = 256


def bare_loop(config_path: str, steps: int, precision: str) -> None:
    """Train like the peer without Hivemind; print one JSON line per AdamW step with wall and CPU time.

    ``precision`` ``bf16`` runs forward and loss in bf16 autocast, as the peer does with ``--precision bf16``.
    """
    import torch

    from cellmind.config import load_config
    from cellmind.dataset import TokenWindows, ensure_token_file
    from cellmind.peer import new_model, optimizer_factory, parameter_groups, scheduler_factory
    from cellmind.tokenizer import load_tokenizer

    torch.set_num_threads(1)
    config = load_config(config_path)
    tokenizer = load_tokenizer(config.tokenizer.model_path)
    windows = TokenWindows(ensure_token_file(config.training.dataset_path, tokenizer), SEQ_LEN, seed=1)
    model = new_model(config, tokenizer.vocab_size)
    optimizer = optimizer_factory(config)(parameter_groups(model, config.training.weight_decay))
    scheduler = scheduler_factory(config)(optimizer)
    micro_steps = config.swarm.target_batch_size // config.training.batch_size
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    model.train()
    for _step in range(steps):
        for _micro in range(micro_steps):
            x, y = windows.get_batch(config.training.batch_size)
            with autocast:
                _, loss = model(x, y)
            (loss / micro_steps).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.training.grad_clip)  # the mean, as a peer does
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        print(json.dumps({"time": time.monotonic(), "cpu": time.process_time(), "loss": loss.item()}), flush=True)


def measure_bare(processes: Processes, config_path, steps: int, tokens_per_step: int,
                 precision: str) -> tuple[float, float]:
    log = OUT_DIR / "bare.log"
    process = processes.start(python_command(__file__, "--bare-loop", str(config_path), "--global-steps",
                                             str(steps), "--precision", precision), log)
    process.wait()
    records = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    if process.returncode != 0 or len(records) != steps:
        raise RuntimeError(f"the bare loop failed; see {log}")
    first, last = records[0], records[-1]
    tokens = tokens_per_step * (steps - 1)
    return tokens / (last["time"] - first["time"]), tokens / (last["cpu"] - first["cpu"])


def measure_peer(processes: Processes, config_path, steps: int, tokens_per_step: int, index: int, precision: str):
    peer_dir = OUT_DIR / f"peer-{index}"
    shutil.rmtree(peer_dir, ignore_errors=True)  # a checkpoint left there would be resumed
    command = peer_command(
        "--bootstrap", "--config", str(config_path), "--threads", "1", "--max-steps", str(steps),
        "--host-maddrs", "/ip4/127.0.0.1/tcp/0", "--identity", str(peer_dir / "identity.key"),
        "--checkpoint-dir", str(peer_dir / "checkpoints"), "--run-id", f"bench-overhead-{index}",
        "--checkpoint-every", "100000", "--name", "overhead", "--precision", precision,
    )
    process = processes.start(command, OUT_DIR / f"peer-{index}.log")
    sampler = TreeSampler(process, marker=" | loss ", period=0.05)
    try:
        sampler.wait_events(steps, timeout=3600)
    finally:
        sampler.stop()
        processes.stop(process)
    (first_time, first_cpu, _), (last_time, last_cpu, _) = sampler.events[0], sampler.events[steps - 1]
    first, last = sampler.breakdowns[0], sampler.breakdowns[steps - 1]
    shares = {part: (last[part] - first[part]) / (last_cpu - first_cpu) for part in first}
    print(f"peer {index + 1}: share of its CPU time: " + ", ".join(f"{p} {v:.1%}" for p, v in shares.items()),
          flush=True)
    tokens = tokens_per_step * (steps - 1)
    return tokens / (last_time - first_time), tokens / (last_cpu - first_cpu)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bare-loop", metavar="CONFIG", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--global-steps", type=int, default=3, help="AdamW steps per run; the first starts the clock")
    parser.add_argument("--batch-size", type=int, default=4, help="windows of 256 tokens per micro-step")
    parser.add_argument("--target-batch-size", type=int, default=16)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="the same precision for the peer and the bare loop (bf16: autocast)")
    args = parser.parse_args()
    if args.bare_loop:
        bare_loop(args.bare_loop, args.global_steps, args.precision)
        return 0

    print_machine("Peer overhead: one cellmind-peer alone against a bare PyTorch loop", threads="1 per process")
    paths = ensure_corpus()
    config_path = write_config(
        OUT_DIR / "config.json", paths,
        training={"batch_size": args.batch_size, "seq_len": SEQ_LEN},
        swarm={"target_batch_size": args.target_batch_size},
    )
    tokens_per_step = args.target_batch_size * SEQ_LEN
    rates: dict[str, list[tuple[float, float]]] = {"bare loop": [], "cellmind-peer": []}
    with Processes() as processes:
        for index in range(args.repeats):
            rates["bare loop"].append(
                measure_bare(processes, config_path, args.global_steps, tokens_per_step, args.precision))
            rates["cellmind-peer"].append(
                measure_peer(processes, config_path, args.global_steps, tokens_per_step, index, args.precision))
            print(f"repetition {index + 1}: bare {rates['bare loop'][-1]}, peer {rates['cellmind-peer'][-1]}",
                  flush=True)

    print(f"23M model, micro-batch {args.batch_size} x {SEQ_LEN} tokens, target batch {args.target_batch_size} "
          f"samples, {args.global_steps - 1} timed AdamW steps per run, {args.repeats} alternating repetitions, "
          f"precision {args.precision}")
    ratios_wall = [peer[0] / bare[0] for bare, peer in zip(rates["bare loop"], rates["cellmind-peer"])]
    ratios_cpu = [peer[1] / bare[1] for bare, peer in zip(rates["bare loop"], rates["cellmind-peer"])]
    rows = [[name, median([r[0] for r in values]), median([r[1] for r in values])] for name, values in rates.items()]
    rows.append(["peer / bare (median of pairs)", median(ratios_wall), median(ratios_cpu)])
    print_table(["side", "tokens per wall-s", "tokens per CPU-s"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
