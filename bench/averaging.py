"""Averaging cost of the 23M model: seconds per all-reduce round and bytes each peer sends, per compression.

    python bench/averaging.py                     # 3 rounds per compression, alternating
    python bench/averaging.py --rounds 5

Two worker processes (this file with ``--worker``), each with its own Hivemind DHT and p2pd, average a vector of
gradients shaped like the 23M model's parameters (23.1M floats, the tied matrix once) with Hivemind's
``DecentralizedAverager`` and the gradient compression ``cellmind.peer.compression_options`` picks for
``swarm.compression`` = ``none``, ``fp16`` and ``uint8``. The rounds alternate between the three. A round is timed
from the moment both peers have formed a group (matchmaking, which waits for ``--matchmaking-time``, is reported
apart) to the end of the all-reduce. Bytes are real: the kernel's ``bytes_sent`` of every TCP socket of the
worker's p2pd, read with ``ss`` before and after the round. Each worker also checks the averaged vector against
the exact mean of both peers' vectors and reports the error's norm relative to the mean's norm.
With ``--patch-uint8`` the workers decode 8-bit parts with a copy of Hivemind's decoder that works on NumPy 2.4
(see :func:`patch_uint8_extract`); without it, 8-bit averaging runs as CellMind ships it.
"""

import argparse
import json
import sys
import time
from pathlib import Path

from common import (
    WORK_DIR, Processes, bytes_sent_between, median, print_machine, print_table, python_command, tcp_bytes_sent,
    tree_pids,
)

OUT_DIR = WORK_DIR / "averaging"
COMPRESSIONS = ("none", "fp16", "uint8")
VOCAB_SIZE = 8000


def model_shapes() -> list[tuple[int, ...]]:
    import torch

    from cellmind.model import GPT, GPTConfig

    with torch.device("meta"):
        model = GPT(GPTConfig(vocab_size=VOCAB_SIZE))
    return [tuple(parameter.shape) for parameter in model.parameters()]


def peer_gradients(seed: int, shapes) -> list:
    import torch

    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator) * 1e-3 for shape in shapes]


def start_worker_dht(role: str, address_file: Path):
    import hivemind

    if role == "first":
        dht = hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"])
        address_file.write_text(str(dht.get_visible_maddrs()[0]), encoding="utf-8")
        return dht
    deadline = time.monotonic() + 120
    while not address_file.is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    return hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"], initial_peers=[address_file.read_text()])


def patch_uint8_extract() -> None:
    """Make Hivemind's 8-bit decoding work on NumPy 2.4, for this process and the averagers it forks.

    hivemind 1.1.12's ``Quantization.extract`` calls ``int()`` on a one-element array, which NumPy 2.4 rejects
    with a TypeError, so every 8-bit part a peer receives fails to decode. This reads element 0 instead.
    """
    import numpy as np
    import torch
    from hivemind.compression.quantization import Quantization

    def extract(self, serialized_tensor):
        buffer = serialized_tensor.buffer
        codebook_size = int(np.frombuffer(buffer, count=1, dtype=np.int64)[0])
        codebook = np.frombuffer(buffer, offset=8, count=codebook_size, dtype=self.codebook_dtype)
        quantized = np.frombuffer(buffer, offset=8 + codebook.nbytes, dtype=self.indices_dtype)
        quantized = torch.as_tensor(quantized, dtype=torch.int64).reshape(tuple(serialized_tensor.size))
        codebook = torch.as_tensor(codebook).to(dtype=getattr(torch, serialized_tensor.dtype))
        return codebook[quantized].requires_grad_(serialized_tensor.requires_grad)

    Quantization.extract = extract


def worker(role: str, address_file: Path, rounds: int, matchmaking_time: float, compressions: list[str],
           patch_uint8: bool) -> None:
    """Run ``rounds`` averaging rounds per compression; print one JSON line per round."""
    import os

    import torch
    from hivemind.averaging import DecentralizedAverager
    from hivemind.averaging.control import AveragingStage

    from cellmind.peer import compression_options

    torch.set_num_threads(1)
    if patch_uint8:
        patch_uint8_extract()
    dht = start_worker_dht(role, address_file)
    shapes = model_shapes()
    own_seed, other_seed = (1, 2) if role == "first" else (2, 1)
    own = peer_gradients(own_seed, shapes)
    expected = [(a + b) / 2 for a, b in zip(own, peer_gradients(other_seed, shapes))]
    averagers = {
        name: DecentralizedAverager(
            [tensor.clone() for tensor in own], dht, start=True, prefix=f"bench_averaging_{name}",
            target_group_size=2, min_group_size=2, min_matchmaking_time=matchmaking_time,
            request_timeout=min(3.0, matchmaking_time / 2), compression=compression_options(name)["grad_compression"],
        )
        for name in compressions
    }
    p2pd = tree_pids(os.getpid(), "p2pd")
    for round_index in range(rounds):
        for name, averager in averagers.items():
            with averager.get_tensors() as tensors:
                for tensor, source in zip(tensors, own):
                    tensor.copy_(source)
            started = time.perf_counter()
            control = averager.step(wait=False, require_trigger=True, timeout=120)
            while control.stage == AveragingStage.LOOKING_FOR_GROUP and not control.done():
                time.sleep(0.005)
            grouped = time.perf_counter()
            before = tcp_bytes_sent(p2pd)
            control.allow_allreduce()
            group = control.result(timeout=300)
            finished = time.perf_counter()
            time.sleep(0.5)  # lets the last acknowledgements arrive before the counters are read
            sent = bytes_sent_between(before, tcp_bytes_sent(p2pd))
            with averager.get_tensors() as tensors:
                error = sum(float((t - e).square().sum()) for t, e in zip(tensors, expected)) ** 0.5
            scale = sum(float(e.square().sum()) for e in expected) ** 0.5
            print(json.dumps(dict(role=role, round=round_index, compression=name, peers=len(group or {}),
                                  matchmaking=grouped - started, allreduce=finished - grouped, bytes_sent=sent,
                                  relative_error=error / scale)), flush=True)
    for averager in averagers.values():
        averager.shutdown()
    dht.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=["first", "second"], help=argparse.SUPPRESS)
    parser.add_argument("--address-file", type=Path, default=OUT_DIR / "address.txt", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per compression")
    parser.add_argument("--matchmaking-time", type=float, default=2.0)
    parser.add_argument("--compressions", nargs="+", choices=COMPRESSIONS, default=list(COMPRESSIONS))
    parser.add_argument("--patch-uint8", action="store_true",
                        help="decode 8-bit parts with a NumPy-2.4-compatible copy of Hivemind's code")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.address_file, args.rounds, args.matchmaking_time, args.compressions,
               args.patch_uint8)
        return 0

    print_machine("Averaging cost of the 23M model per compression", threads="1 per worker")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    args.address_file.unlink(missing_ok=True)
    common = ["--address-file", str(args.address_file), "--rounds", str(args.rounds),
              "--matchmaking-time", str(args.matchmaking_time), "--compressions", *args.compressions,
              *(["--patch-uint8"] if args.patch_uint8 else [])]
    with Processes() as processes:
        workers = [processes.start(python_command(__file__, "--worker", role, *common), OUT_DIR / f"{role}.log")
                   for role in ("first", "second")]
        for process in workers:
            process.wait(timeout=1800)
    records = []
    for process in workers:
        lines = Path(process.log_path).read_text(encoding="utf-8").splitlines()
        records += [json.loads(line) for line in lines if line.startswith("{")]
        if process.returncode != 0:
            raise RuntimeError(f"a worker failed; see {process.log_path}")

    parameter_bytes = sum(4 * _numel(shape) for shape in model_shapes())
    print(f"23M model: {parameter_bytes / 1e6:.1f} MB of fp32 parameters; {args.rounds} rounds per compression, "
          f"2 peers on 127.0.0.1, matchmaking time {args.matchmaking_time} s")
    if args.patch_uint8:
        print("8-bit parts decoded with the NumPy-2.4-compatible copy of hivemind's Quantization.extract")
    rows = []
    for name in args.compressions:
        mine = [record for record in records if record["compression"] == name and record["peers"] == 2]
        if not mine:
            rows.append([name, "failed", "", "", "", ""])
            continue
        sent = median([record["bytes_sent"] for record in mine])
        rows.append([name, median([r["allreduce"] for r in mine]), median([r["matchmaking"] for r in mine]),
                     sent / 1e6, sent / parameter_bytes, max(r["relative_error"] for r in mine)])
    print_table(["compression", "all-reduce s", "matchmaking s", "MB sent per peer", "/ fp32 parameters",
                 "relative error (max)"], rows)
    return 0


def _numel(shape) -> int:
    total = 1
    for size in shape:
        total *= size
    return total


if __name__ == "__main__":
    sys.exit(main())
