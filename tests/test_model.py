"""The mini-GPT: size, weight tying on every load path, KV cache, causality and loss masking."""

import copy
import io

import pytest
import torch

from cellmind.checkpoints import build_model, load_checkpoint, save_checkpoint
from cellmind.config import Config
from cellmind.model import GPT, GPTConfig

TINY = GPTConfig(vocab_size=61, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0)


@pytest.fixture
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(TINY).eval()


def random_ids(length: int, batch: int = 1, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, TINY.vocab_size, (batch, length), generator=generator)


def expected_parameter_count(config: GPTConfig) -> int:
    """Count by formula: embeddings, per block 2 LayerNorms + attention + MLP, final LayerNorm; lm_head is tied."""
    C = config.n_embd
    embeddings = config.vocab_size * C + config.block_size * C
    attention = (C * 3 * C + 3 * C) + (C * C + C)
    mlp = (C * 4 * C + 4 * C) + (4 * C * C + C)
    block = 2 * (2 * C) + attention + mlp
    return embeddings + config.n_layer * block + 2 * C


def test_default_size_is_about_23m():
    with torch.device("meta"):
        model = GPT(GPTConfig(vocab_size=8000))
    count = model.num_parameters()
    assert count == expected_parameter_count(GPTConfig(vocab_size=8000))
    assert count == 23_142_400


def test_tiny_parameter_count_matches_formula(model):
    assert model.num_parameters() == expected_parameter_count(TINY)
    assert model.num_parameters(exclude_embeddings=True) == expected_parameter_count(TINY) - 16 * 16


def test_tie_after_construction(model):
    assert model.is_tied()
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()


def test_tie_survives_strict_load_state_dict(model):
    torch.manual_seed(5)
    other = GPT(TINY)
    other.load_state_dict(model.state_dict(), strict=True)
    assert other.is_tied()
    assert torch.equal(other.lm_head.weight, model.transformer.wte.weight)


def test_assign_load_unties_until_tie_weights(model):
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    state["lm_head.weight"] = state["lm_head.weight"].clone()  # as if each matrix had been stored on its own
    with torch.device("meta"):
        other = GPT(TINY)
    other.load_state_dict(state, strict=True, assign=True)
    assert not other.is_tied()

    other.tie_weights()
    assert other.is_tied()
    assert torch.equal(other(random_ids(8))[0], model(random_ids(8))[0])


def test_tie_survives_dtype_change_and_deepcopy(model):
    model.to(torch.float64)
    assert model.is_tied()
    assert model.lm_head.weight.dtype == torch.float64

    duplicate = copy.deepcopy(model)
    assert duplicate.is_tied()
    assert duplicate.lm_head.weight is not model.lm_head.weight


def test_tie_survives_checkpoint_load(model, tmp_path):
    config = Config.from_dict({"model": {"n_embd": 16, "n_head": 2, "n_layer": 2, "block_size": 16}})
    path = save_checkpoint(
        tmp_path, model=model, optimizer_state=None, global_epoch=1, config=config, tokenizer_sha256="0" * 64
    )
    loaded = build_model(load_checkpoint(path)).eval()
    assert loaded.is_tied()
    with torch.no_grad():
        loaded.transformer.wte.weight[0, 0] += 1.0
    assert loaded.lm_head.weight[0, 0] == loaded.transformer.wte.weight[0, 0]


def test_tied_gradient_reaches_one_matrix(model):
    model.train()
    _logits, loss = model(random_ids(8), targets=random_ids(8, seed=2))
    loss.backward()
    parameters = list(model.parameters())
    assert sum(p is model.transformer.wte.weight for p in parameters) == 1
    assert model.transformer.wte.weight.grad is not None


@torch.no_grad()
def test_cache_prefill_then_single_steps_match_full_forward(model):
    idx = random_ids(TINY.block_size, batch=2)
    full, _ = model(idx)
    cache = model.new_cache(batch_size=2)
    prefill, _ = model(idx[:, :5], cache=cache)
    steps = [model(idx[:, t : t + 1], cache=cache)[0] for t in range(5, TINY.block_size)]
    cached = torch.cat([prefill, *steps], dim=1)
    torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-5)
    assert cache.length == TINY.block_size


@torch.no_grad()
def test_cache_multi_token_chunks_match_full_forward(model):
    idx = random_ids(TINY.block_size)
    full, _ = model(idx)
    cache = model.new_cache()
    chunks = [model(idx[:, start:end], cache=cache)[0] for start, end in ((0, 3), (3, 7), (7, 8), (8, 16))]
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_future_tokens_leave_past_logits_unchanged(model):
    idx = random_ids(12)
    changed = idx.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % TINY.vocab_size
    logits, _ = model(idx)
    changed_logits, _ = model(changed)
    torch.testing.assert_close(logits[:, :8], changed_logits[:, :8])
    assert not torch.allclose(logits[:, 8:], changed_logits[:, 8:])


def test_loss_ignores_minus_100_targets(model):
    idx = random_ids(10)
    targets = random_ids(10, seed=3)
    masked = targets.clone()
    masked[0, 5:] = -100
    logits, masked_loss = model(idx, targets=masked)
    expected = torch.nn.functional.cross_entropy(logits[0, :5], targets[0, :5])
    torch.testing.assert_close(masked_loss, expected)
    _, full_loss = model(idx, targets=targets)
    assert not torch.isclose(full_loss, masked_loss)


def test_sequence_longer_than_block_size_is_rejected(model):
    with pytest.raises(ValueError, match="exceeds block_size=16"):
        model(random_ids(TINY.block_size + 1))


def test_cache_overflow_is_rejected(model):
    cache = model.new_cache()
    with torch.no_grad():
        model(random_ids(TINY.block_size - 1), cache=cache)
        with pytest.raises(ValueError, match="17 tokens exceeds block_size=16"):
            model(random_ids(2), cache=cache)


def test_attention_dropout_separate():
    torch.manual_seed(0)
    idx = torch.randint(0, 50, (2, 12))
    model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.0)).train()
    assert torch.equal(model(idx)[0], model(idx)[0])  # no dropout anywhere: training passes agree
    model.transformer.h[0].attn.attention_dropout = 0.5
    assert not torch.equal(model(idx)[0], model(idx)[0])


def test_old_config_lacks_attention_dropout():
    from cellmind.checkpoints import gpt_config_from

    old = {"model": {"n_embd": 16, "n_head": 2, "n_layer": 1, "block_size": 16, "dropout": 0.1}}
    assert gpt_config_from(old, vocab_size=9).attention_dropout == 0.0
    new = {"model": {**old["model"], "attention_dropout": 0.2}}
    assert gpt_config_from(new, vocab_size=9).attention_dropout == 0.2
    assert gpt_config_from(Config(), vocab_size=9).attention_dropout == Config().model.attention_dropout
