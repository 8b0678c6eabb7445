"""Generation speed at batch 1: the decoding path against the forward pass with the cache, no cache, and the bound.

    python bench/generation.py                    # 1 thread, 256 new tokens, 5 repetitions
    python bench/generation.py --threads 2 --repeats 3 --no-uncached

The 23M-parameter model (random weights: speed does not depend on their values) continues a 16-token prompt by
256 greedy tokens, measured in one process with the sides alternating:

- decoding: ``cellmind.generation.generate_tokens`` with the cache, that is single-token decoding steps over
  weight matrices stored transposed (``use_decoding_layout``), as ``cellmind generate`` runs;
- forward: the path before the decoding steps existed, ``GPT.forward`` with the cache for every token on a copy
  of the model in the ``(out, in)`` layout; both must produce the same tokens;
- uncached: ``generate_tokens`` without the cache, the whole window on every token;
- matrix-vector only: just the products of one step with each weight matrix in the decoding layout, once per
  token, which is the rate the decoding path would reach if nothing else took time.

16 + 256 tokens pass the 256-token context, so the cached runs also include one cut of the window and a new
prefill, as real use does. The bandwidth bound is the measured read bandwidth over the bytes one token must read
with the cache: every weight once (the tied embedding matrix once, as the output projection), plus the cached
keys and values of the mean context. Read bandwidth is measured by summing a 1 GiB tensor, and copy bandwidth by
cloning it (bytes read + written).
"""

import argparse
import copy
import sys
from collections.abc import Callable

import torch
from common import median, print_machine, print_table, timer

from cellmind.generation import crop_prompt, generate_tokens, kept_after_cut, use_decoding_layout
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


def prompt_ids() -> list[int]:
    return list(range(1, PROMPT_TOKENS + 1))


@torch.inference_mode()
def greedy_with_forward(model: GPT, prompt: list[int], new_tokens: int) -> list[int]:
    """Greedy tokens from ``GPT.forward`` with the KV cache for every token, under the same window policy.

    This is what ``generate_tokens`` ran before it had its own decoding step, kept here as the baseline.
    """
    block_size = model.config.block_size
    window, _cropped = crop_prompt(prompt, block_size)
    cache = model.new_cache(batch_size=1)
    tokens = []
    for _step in range(new_tokens):
        idx = torch.tensor([window[cache.length :]], dtype=torch.long)
        logits, _loss = model(idx, cache=cache)
        token = int(torch.argmax(logits[0, -1]))
        tokens.append(token)
        window.append(token)
        if len(window) > block_size:
            del window[: len(window) - kept_after_cut(block_size)]
            cache = model.new_cache(batch_size=1)
    return tokens


def greedy_with_generate(model: GPT, prompt: list[int], new_tokens: int, use_cache: bool) -> list[int]:
    return list(generate_tokens(model, prompt, new_tokens, temperature=0, use_cache=use_cache))


def token_rate(generate: Callable[[], list[int]], new_tokens: int) -> tuple[float, float, list[int]]:
    """Generated tokens per wall second and per CPU second, and the tokens."""
    with timer() as elapsed:
        tokens = generate()
    assert len(tokens) == new_tokens, f"generated {len(tokens)} tokens, expected {new_tokens}"
    return new_tokens / elapsed.wall, new_tokens / elapsed.cpu, tokens


def matrix_vector_rate(matrices: list[torch.Tensor], new_tokens: int) -> tuple[float, float, list[int]]:
    """Tokens per second if a token cost only ``x @ W`` with every weight matrix in the decoding layout."""
    inputs = [torch.randn(1, matrix.size(0)) for matrix in matrices]
    with timer() as elapsed:
        for _token in range(new_tokens):
            for x, matrix in zip(inputs, matrices):
                torch.matmul(x, matrix)
    return new_tokens / elapsed.wall, new_tokens / elapsed.cpu, []


def decoding_matrices(model: GPT) -> list[torch.Tensor]:
    """Return the contiguous ``(in, out)`` matrices that one decoding step multiplies by, the output projection too."""
    matrices = []
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            matrices.append(module.weight.detach().t())
    assert all(matrix.is_contiguous() for matrix in matrices), "call use_decoding_layout first"
    return matrices


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
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--no-uncached", action="store_true", help="skip the uncached side, the slowest one")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print_machine("Generation at batch 1: decoding path, forward with cache, no cache, bandwidth bound",
                  threads=str(torch.get_num_threads()))

    torch.manual_seed(0)
    forward_model = GPT(GPTConfig(vocab_size=8000)).eval()
    decoding_model = copy.deepcopy(forward_model)
    use_decoding_layout(decoding_model)
    matrices = decoding_matrices(decoding_model)
    prompt, count = prompt_ids(), args.new_tokens
    buffer = torch.ones(BUFFER_BYTES // 4)

    def bandwidth(measure):
        return lambda: (*measure(buffer), [])

    measurements = {
        "read bandwidth": bandwidth(read_bandwidth),
        "copy bandwidth": bandwidth(copy_bandwidth),
        "decoding": lambda: token_rate(lambda: greedy_with_generate(decoding_model, prompt, count, True), count),
        "forward": lambda: token_rate(lambda: greedy_with_forward(forward_model, prompt, count), count),
        "matrix-vector only": lambda: matrix_vector_rate(matrices, count),
    }
    if not args.no_uncached:
        measurements["uncached"] = lambda: token_rate(
            lambda: greedy_with_generate(forward_model, prompt, count, False), count
        )

    greedy_with_generate(decoding_model, prompt, 8, True)  # warm-up
    greedy_with_forward(forward_model, prompt, 8)
    wall: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    tokens: dict[str, list[int]] = {}
    for _repeat in range(args.repeats):
        for name, measure in measurements.items():
            per_wall, per_cpu, tokens[name] = measure()
            wall.setdefault(name, []).append(per_wall)
            cpu.setdefault(name, []).append(per_cpu)
    assert tokens["decoding"] == tokens["forward"], "the decoding path and the forward pass chose different tokens"

    mean_context = (PROMPT_TOKENS + args.new_tokens) // 2  # the cache contains from ~16 to 256 tokens over the run
    per_token = bytes_per_cached_token(forward_model, mean_context)
    print(f"model: {forward_model.num_parameters():,} parameters (fp32), {PROMPT_TOKENS}-token prompt, {count} new "
          f"greedy tokens, {args.repeats} repetitions, medians; one cached step reads {per_token / 1e6:.1f} MB; "
          f"decoding and forward chose the same {count} tokens")
    headers = ["clock", "read GB/s", "copy GB/s", "bound tok/s", "matrix-vector only tok/s", "decoding tok/s",
               "forward tok/s", "decoding / forward", "decoding / bound", "forward / bound"]
    if not args.no_uncached:
        headers += ["uncached tok/s", "decoding / uncached"]
    rows = []
    for clock, rates in (("CPU", cpu), ("wall", wall)):
        bound = median(rates["read bandwidth"]) / per_token
        decoding, forward = median(rates["decoding"]), median(rates["forward"])
        row = [clock, median(rates["read bandwidth"]) / 1e9, median(rates["copy bandwidth"]) / 1e9, bound,
               median(rates["matrix-vector only"]), decoding, forward, decoding / forward, decoding / bound,
               forward / bound]
        if not args.no_uncached:
            uncached = median(rates["uncached"])
            row += [uncached, decoding / uncached]
        rows.append(row)
    print_table(headers, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
