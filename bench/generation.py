"""Generation speed at batch 1: with the KV cache, without it, and against the memory-bandwidth bound.

    python bench/generation.py                    # 1 thread, 256 new tokens, 3 repetitions
    python bench/generation.py --threads 2 --repeats 5

The 23M-parameter model (random weights: speed does not depend on their values) continues a 16-token prompt by
256 greedy tokens through ``cellmind.generation.generate_tokens``, with and without the cache, alternating, in
one process. 16 + 256 tokens pass the 256-token context, so the cached run also includes one cut of the window
and a new prefill, as real use does. The bandwidth bound is the measured read bandwidth over the bytes one
token must read with the cache: every weight once (the tied embedding matrix once, as the output projection),
plus the cached keys and values. Read bandwidth is measured by summing a 1 GiB tensor, and copy bandwidth by
cloning it (bytes read + written).
"""

import argparse
import sys

import torch
from common import median, print_machine, print_table, timer

from cellmind.generation import generate_tokens
from cellmind.model import GPT, GPTConfig

BUFFER_BYTES = 1 << 30
PROMPT_TOKENS = 16


def read_bandwidth(buffer: torch.Tensor) -> tuple[float, float]:
    """Bytes per wall second and per CPU second that ``buffer.sum()`` reads."""
    with timer() as elapsed:
        buffer.sum()
    size = buffer.numel() * buffer.element_size()
    return size / elapsed.wall, size / elapsed.cpu


def copy_bandwidth(buffer: torch.Tensor) -> tuple[float, float]:
    target = torch.empty_like(buffer)
    target.copy_(buffer)  # first touch of the target's pages happens here, not in the timed copy
    with timer() as elapsed:
        target.copy_(buffer)
    size = 2 * buffer.numel() * buffer.element_size()
    return size / elapsed.wall, size / elapsed.cpu


def generation_rate(model: GPT, new_tokens: int, use_cache: bool) -> tuple[float, float]:
    """Generated tokens per wall second and per CPU second."""
    prompt = list(range(1, PROMPT_TOKENS + 1))
    with timer() as elapsed:
        produced = sum(1 for _ in generate_tokens(model, prompt, new_tokens, temperature=0, use_cache=use_cache))
    assert produced == new_tokens, f"generated {produced} tokens, expected {new_tokens}"
    return produced / elapsed.wall, produced / elapsed.cpu


def bytes_per_cached_token(model: GPT, context: int) -> int:
    """Bytes one cached decoding step reads: every parameter once, plus the keys and values of ``context`` tokens."""
    config = model.config
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    position_table = model.transformer.wpe.weight
    weights -= position_table.numel() * position_table.element_size()  # only one row is read
    kv = 2 * config.n_layer * context * config.n_embd * position_table.element_size()
    return weights + kv


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print_machine("Generation at batch 1: KV cache, no cache, bandwidth bound", threads=str(torch.get_num_threads()))

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=8000)).eval()
    buffer = torch.ones(BUFFER_BYTES // 4)
    measurements = {
        "read bandwidth": lambda: read_bandwidth(buffer),
        "copy bandwidth": lambda: copy_bandwidth(buffer),
        "cached": lambda: generation_rate(model, args.new_tokens, use_cache=True),
        "uncached": lambda: generation_rate(model, args.new_tokens, use_cache=False),
    }
    wall: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    generation_rate(model, 8, use_cache=True)  # warm-up
    for _repeat in range(args.repeats):
        for name, measure in measurements.items():
            per_wall, per_cpu = measure()
            wall.setdefault(name, []).append(per_wall)
            cpu.setdefault(name, []).append(per_cpu)

    mean_context = (PROMPT_TOKENS + args.new_tokens) // 2  # the cache contains from ~16 to 256 tokens over the run
    per_token = bytes_per_cached_token(model, mean_context)
    print(f"model: {model.num_parameters():,} parameters (fp32), {PROMPT_TOKENS}-token prompt, {args.new_tokens} new "
          f"greedy tokens, {args.repeats} repetitions; one cached step reads {per_token / 1e6:.1f} MB")
    rows = []
    for clock, rates in (("CPU", cpu), ("wall", wall)):
        bound = median(rates["read bandwidth"]) / per_token
        cached, uncached = median(rates["cached"]), median(rates["uncached"])
        rows.append([clock, median(rates["read bandwidth"]) / 1e9, median(rates["copy bandwidth"]) / 1e9, bound,
                     cached, uncached, cached / uncached, cached / bound])
    print_table(["clock", "read GB/s", "copy GB/s", "bound tok/s", "cached tok/s", "uncached tok/s",
                 "cached / uncached", "cached / bound"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
