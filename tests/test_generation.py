"""Sampling: greedy cached == uncached across the context boundary, top-k/top-p, seeds, eos, cropping, streaming."""

import pytest
import torch

from cellmind.generation import TextStream, crop_prompt, generate_tokens, kept_after_cut, sample_token
from cellmind.model import GPT, GPTConfig

TINY = GPTConfig(vocab_size=53, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0)


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    model = GPT(TINY)
    # Unit-variance matrices instead of GPT-2's small initialization, because a freshly initialized tied model
    # just repeats its last token; with these, greedy text keeps changing and choices are far from ties.
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0.0, 1.0)
    return model.eval()


def greedy(model, prompt, count, use_cache, **kwargs) -> list[int]:
    return list(generate_tokens(model, prompt, count, temperature=0, use_cache=use_cache, **kwargs))


def test_greedy_cached_equals_uncached_past_context(model):
    prompt = [3, 1, 4, 1, 5]
    count = 3 * TINY.block_size
    cached = greedy(model, prompt, count, use_cache=True)
    uncached = greedy(model, prompt, count, use_cache=False)
    assert len(cached) == count
    assert len(set(cached[TINY.block_size :])) > 5  # text past the boundary still varies
    assert cached == uncached


def test_greedy_cached_equals_uncached_from_full_prompt(model):
    prompt = [(7 * i) % TINY.vocab_size for i in range(TINY.block_size)]
    assert greedy(model, prompt, 20, use_cache=True) == greedy(model, prompt, 20, use_cache=False)


def test_uncached_steps_follow_window_policy(model):
    """Each greedy token equals the argmax of a full forward pass over the documented window."""
    prompt = [2, 7, 1]
    tokens = greedy(model, prompt, 2 * TINY.block_size, use_cache=False)
    window = list(prompt)
    for token in tokens:
        with torch.no_grad():
            logits, _ = model(torch.tensor([window]))
        assert token == int(logits[0, -1].argmax())
        window.append(token)
        if len(window) > TINY.block_size:
            window = window[-kept_after_cut(TINY.block_size) :]


def test_kept_after_cut():
    assert kept_after_cut(256) == 128
    assert kept_after_cut(3) == 1
    assert kept_after_cut(1) == 1


def test_same_seed_repeats_sampling(model):
    def sample(seed):
        generator = torch.Generator().manual_seed(seed)
        return list(generate_tokens(model, [1, 2], 30, temperature=1.0, generator=generator))

    assert sample(11) == sample(11)
    assert sample(11) != sample(12)


def test_seeded_sampling_equal_with_and_without_cache(model):
    def sample(use_cache):
        generator = torch.Generator().manual_seed(4)
        return list(generate_tokens(model, [5], 40, temperature=0.9, top_k=10, generator=generator, use_cache=use_cache))

    assert sample(True) == sample(False)


def test_top_k_is_clamped_to_vocabulary():
    logits = torch.randn(TINY.vocab_size, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(1)
    huge = [sample_token(logits, 1.0, 10_000, None, generator) for _ in range(50)]
    generator = torch.Generator().manual_seed(1)
    unfiltered = [sample_token(logits, 1.0, None, None, generator) for _ in range(50)]
    assert huge == unfiltered


def test_top_k_one_is_greedy():
    logits = torch.tensor([0.1, 2.0, 1.9, -1.0])
    generator = torch.Generator().manual_seed(0)
    assert {sample_token(logits, 5.0, 1, None, generator) for _ in range(30)} == {1}


def test_top_k_keeps_only_k_tokens():
    logits = torch.tensor([3.0, 2.9, 2.8, -5.0, -5.0, -5.0])
    generator = torch.Generator().manual_seed(0)
    drawn = {sample_token(logits, 50.0, 3, None, generator) for _ in range(300)}
    assert drawn == {0, 1, 2}


def test_tiny_top_p_is_greedy(model):
    generator = torch.Generator().manual_seed(0)
    sampled = list(generate_tokens(model, [3, 1], 25, temperature=1.5, top_p=1e-6, generator=generator))
    assert sampled == greedy(model, [3, 1], 25, use_cache=True)


def test_top_p_keeps_the_nucleus():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    generator = torch.Generator().manual_seed(0)
    drawn = {sample_token(probs.log(), 1.0, None, 0.75, generator) for _ in range(300)}
    assert drawn == {0, 1}


def test_generation_stops_at_eos(model):
    free = greedy(model, [1], 30, use_cache=True)
    eos_id = free[5]
    first_eos = free.index(eos_id)
    stopped = greedy(model, [1], 30, use_cache=True, eos_id=eos_id)
    assert stopped == free[:first_eos]
    assert eos_id not in stopped


def test_zero_new_tokens_yields_nothing(model):
    assert greedy(model, [1, 2], 0, use_cache=True) == []


def test_long_prompt_is_cropped_to_block_size(model):
    tail = [(3 * i + 1) % TINY.vocab_size for i in range(TINY.block_size)]
    long_prompt = [9] * 40 + tail
    assert greedy(model, long_prompt, 10, use_cache=True) == greedy(model, tail, 10, use_cache=True)
    assert greedy(model, long_prompt, 10, use_cache=False) == greedy(model, tail, 10, use_cache=False)


def test_crop_prompt_reports_cropping():
    assert crop_prompt([1, 2, 3], 3) == ([1, 2, 3], False)
    assert crop_prompt([1, 2, 3, 4, 5], 3) == ([3, 4, 5], True)


@pytest.mark.parametrize(
    "arguments",
    [
        dict(prompt_ids=[], max_new_tokens=1),
        dict(prompt_ids=[1], max_new_tokens=-1),
        dict(prompt_ids=[1], max_new_tokens=1, temperature=-0.5),
        dict(prompt_ids=[1], max_new_tokens=1, top_k=0),
        dict(prompt_ids=[1], max_new_tokens=1, top_p=0.0),
        dict(prompt_ids=[1], max_new_tokens=1, top_p=1.5),
    ],
)
def test_invalid_sampling_arguments_are_rejected(model, arguments):
    with pytest.raises(ValueError):
        list(generate_tokens(model, **arguments))


def test_grad_mode_is_untouched_between_tokens(model):
    for _token in generate_tokens(model, [1], 3, temperature=0):
        assert torch.is_grad_enabled()
        assert not torch.is_inference_mode_enabled()


def test_text_stream_holds_back_incomplete_characters():
    # A byte-level "tokenizer": each id is one UTF-8 byte, as SentencePiece's byte-fallback pieces are.
    def decode(ids):
        return bytes(ids).decode("utf-8", errors="replace")

    stream = TextStream(decode, list("안".encode()))
    pieces = [stream.push(byte) for byte in "녕 GPT".encode()]
    assert pieces[:2] == ["", ""]
    assert "".join(pieces) == "녕 GPT"
    assert stream.finish() == ""


def test_text_stream_finish_returns_held_bytes():
    def decode(ids):
        return bytes(ids).decode("utf-8", errors="replace")

    stream = TextStream(decode, [])
    assert stream.push("가".encode()[0]) == ""
    assert stream.finish() == "\ufffd"
