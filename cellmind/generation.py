"""Sampling text from the GPT, one token at a time, with or without the KV cache.

Context window policy, shared by the cached and the uncached path so that both see exactly the same tokens:

- a prompt longer than ``block_size`` is cropped to its last ``block_size`` tokens (see :func:`crop_prompt`);
- each new token is appended to the window. When the window would grow past ``block_size``, it is cut to its
  last ``block_size // 2`` tokens (at least one), and generation continues from there.

The cached path prefills the cache with the window and then feeds one token per step; at a cut it starts a new
cache and prefills it with the shortened window. Keeping half the context instead of sliding by one token means
the cache is rebuilt once every ``block_size // 2`` tokens rather than on every token, because learned position
embeddings make every cached key stale whenever the window slides. The uncached path runs the whole window on
every step. Greedy decoding therefore gives the same tokens on both paths, across any number of cuts.
"""

import logging
from collections.abc import Callable, Iterator

import torch

from cellmind.model import GPT, KVCache

logger = logging.getLogger(__name__)


def crop_prompt(prompt_ids: list[int], block_size: int) -> tuple[list[int], bool]:
    """Return the last ``block_size`` ids of the prompt and whether any were dropped."""
    if len(prompt_ids) <= block_size:
        return list(prompt_ids), False
    return list(prompt_ids[-block_size:]), True


def kept_after_cut(block_size: int) -> int:
    """Tokens of the window that survive a cut when generation runs past ``block_size``."""
    return max(block_size // 2, 1)


def generate_tokens(
    model: GPT,
    prompt_ids: list[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> Iterator[int]:
    """Yield up to ``max_new_tokens`` sampled token ids, one at a time, as soon as each is chosen.

    ``temperature`` 0 picks the most likely token (greedy). ``top_k`` keeps the k most likely tokens and is
    clamped to the vocabulary size. ``top_p`` keeps the smallest set of tokens whose probabilities add up to at
    least ``top_p``. Generation stops early when ``eos_id`` is sampled, and the eos id itself is not yielded. Sampling
    draws from ``generator`` (a CPU generator) so a seeded generator repeats the same text. The prompt is cropped
    as described in the module docstring; the model is put in eval mode.
    """
    _check_sampling_arguments(prompt_ids, max_new_tokens, temperature, top_k, top_p)
    block_size = model.config.block_size
    window, cropped = crop_prompt(prompt_ids, block_size)
    if cropped:
        logger.debug(f"Prompt of {len(prompt_ids)} tokens cropped to the last {block_size}")
    model.eval()
    next_logits = _CachedLogits(model) if use_cache else _UncachedLogits(model)

    for _step in range(max_new_tokens):
        logits = next_logits(window)
        token = sample_token(logits, temperature, top_k, top_p, generator)
        if token == eos_id:
            return
        yield token

        window.append(token)
        if len(window) > block_size:
            del window[: len(window) - kept_after_cut(block_size)]
            next_logits.reset()


def _check_sampling_arguments(prompt_ids, max_new_tokens, temperature, top_k, top_p) -> None:
    if not prompt_ids:
        raise ValueError("prompt_ids must hold at least one token (e.g. the start token)")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


class _UncachedLogits:
    """Next-token logits from a full forward pass over the window."""

    def __init__(self, model: GPT):
        self.model = model

    @torch.inference_mode()
    def __call__(self, window: list[int]) -> torch.Tensor:
        device = self.model.transformer.wte.weight.device
        idx = torch.tensor([window], dtype=torch.long, device=device)
        logits, _loss = self.model(idx)
        return logits[0, -1]

    def reset(self) -> None:
        pass


class _CachedLogits:
    """Next-token logits that feed the model only the tokens its KV cache has not seen yet."""

    def __init__(self, model: GPT):
        self.model = model
        self.cache: KVCache | None = None

    @torch.inference_mode()
    def __call__(self, window: list[int]) -> torch.Tensor:
        if self.cache is None:
            self.cache = self.model.new_cache(batch_size=1)
        unseen = window[self.cache.length :]
        device = self.model.transformer.wte.weight.device
        idx = torch.tensor([unseen], dtype=torch.long, device=device)
        logits, _loss = self.model(idx, cache=self.cache)
        return logits[0, -1]

    def reset(self) -> None:
        """Forget the cache, because the window was cut and every position changed."""
        self.cache = None


def sample_token(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None = None,
) -> int:
    """Choose one token id from next-token ``logits`` ``(vocab_size,)``; see :func:`generate_tokens` for the knobs."""
    logits = logits.detach().float().cpu()
    if temperature == 0:
        return int(torch.argmax(logits))

    logits = logits / temperature
    if top_k is not None:
        logits = _keep_top_k(logits, min(top_k, logits.size(-1)))
    probs = torch.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1:
        probs = _keep_top_p(probs, top_p)
    return int(torch.multinomial(probs, num_samples=1, generator=generator))


def _keep_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    threshold = torch.topk(logits, k).values[-1]
    return logits.masked_fill(logits < threshold, float("-inf"))


def _keep_top_p(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero every token outside the nucleus: the most likely tokens whose probabilities first reach ``top_p``."""
    sorted_probs, order = torch.sort(probs, descending=True)
    before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # probability mass ranked above each token
    sorted_probs[before >= top_p] = 0.0  # the most likely token always has 0 above it, so it stays
    kept = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return kept / kept.sum()


class TextStream:
    """Turns generated ids into the text they add, for printing while generation runs.

    SentencePiece decodes a token sequence as a whole: a piece's leading space depends on what precedes it, and a
    character split into byte-fallback pieces decodes to U+FFFD until its last byte arrives. So each step decodes
    the context plus everything generated and returns only the part not returned yet, holding back text that ends
    in an incomplete character.
    """

    def __init__(self, decode: Callable[[list[int]], str], context_ids: list[int]):
        self.decode = decode
        self.context_ids = list(context_ids)
        self.context_text = decode(self.context_ids)
        self.generated_ids: list[int] = []
        self.emitted = ""

    def push(self, token_id: int) -> str:
        """Add one generated id and return the new text that is safe to print (possibly empty)."""
        self.generated_ids.append(token_id)
        text = self._generated_text()
        if text.endswith("\ufffd"):
            return ""
        return self._advance(text)

    def finish(self) -> str:
        """Return whatever text is still held back, incomplete characters included."""
        return self._advance(self._generated_text())

    def _generated_text(self) -> str:
        full = self.decode(self.context_ids + self.generated_ids)
        if full.startswith(self.context_text):
            return full[len(self.context_text) :]
        return self.decode(self.generated_ids)

    def _advance(self, text: str) -> str:
        if not text.startswith(self.emitted):
            # NOTE: decoding rewrote text that was already printed; print only what lies past it.
            logger.debug(f"Decoded text changed from {self.emitted!r} to {text!r}")
        delta = text[len(self.emitted) :]
        self.emitted = text
        return delta
