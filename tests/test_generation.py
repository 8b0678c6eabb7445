"""Sampling: greedy cached == uncached across the context boundary, top-k/top-p, seeds, eos, cropping, streaming;
the decoding path against the plain forward pass; and `cellmind generate` on a saved checkpoint."""

import json
import logging

import pytest
import torch

import cellmind.cli.generate as generate_command
from cellmind.checkpoints import build_model, gpt_config_from, save_checkpoint
from cellmind.cli import main
from cellmind.config import Config
from cellmind.generation import (
    CachedLogits,
    TextStream,
    crop_prompt,
    generate_tokens,
    kept_after_cut,
    sample_token,
    use_decoding_layout,
)
from cellmind.model import GPT, GPTConfig
from cellmind.tokenizer import load_tokenizer, train_tokenizer

TINY = GPTConfig(vocab_size=53, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0)


def tiny_lively_model() -> GPT:
    """The same tiny model on every call, in the ``(out, in)`` layout that ``GPT`` creates."""
    torch.manual_seed(0)
    model = GPT(TINY)
    # A freshly initialized tied model just repeats its last token. Unit-variance matrices instead of GPT-2's
    # small initialization make greedy text keep changing, with choices far from ties.
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0.0, 1.0)
    return model.eval()


@pytest.fixture(scope="module")
def model() -> GPT:
    return tiny_lively_model()


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


def linear_weights(model: GPT) -> list[torch.Tensor]:
    return [module.weight for module in model.modules() if isinstance(module, torch.nn.Linear)]


def storage_bytes(model: GPT) -> int:
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in model.parameters()}
    return sum(storages.values())


def test_decoding_layout_keeps_parameters():
    plain, relaid = tiny_lively_model(), tiny_lively_model()
    bytes_before = storage_bytes(relaid)
    use_decoding_layout(relaid)

    assert relaid.is_tied()
    assert storage_bytes(relaid) == bytes_before  # the transposed copies replaced the originals
    assert list(relaid.state_dict()) == list(plain.state_dict())
    for (name, expected), (_name, actual) in zip(plain.named_parameters(), relaid.named_parameters()):
        assert actual.shape == expected.shape, name
        assert torch.equal(actual, expected), name
    for weight in linear_weights(relaid):
        assert weight.t().is_contiguous()
    assert relaid.transformer.wpe.weight.is_contiguous()  # a lookup table, not a matrix-vector product


def test_decoding_layout_twice_copies_nothing():
    model = tiny_lively_model()
    use_decoding_layout(model)
    pointers = [weight.data_ptr() for weight in linear_weights(model)]
    use_decoding_layout(model)
    assert [weight.data_ptr() for weight in linear_weights(model)] == pointers


def test_decoding_layout_leaves_other_devices_alone():
    with torch.device("meta"):
        model = GPT(TINY)
    use_decoding_layout(model)
    for weight in linear_weights(model):
        assert weight.is_contiguous()


def test_decoding_layout_forward_and_backward_match():
    plain, relaid = tiny_lively_model(), tiny_lively_model()
    use_decoding_layout(relaid)
    idx = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    targets = torch.tensor([[1, 4, 1, 5, 9, 2, 6, 5]])

    plain_logits, plain_loss = plain(idx, targets)
    relaid_logits, relaid_loss = relaid(idx, targets)
    torch.testing.assert_close(relaid_logits, plain_logits, rtol=1e-5, atol=1e-4)
    plain_loss.backward()
    relaid_loss.backward()
    for (name, expected), (_name, actual) in zip(plain.named_parameters(), relaid.named_parameters()):
        torch.testing.assert_close(actual.grad, expected.grad, rtol=1e-4, atol=1e-4, msg=name)


def test_relaid_state_dict_loads_into_plain_model():
    relaid = tiny_lively_model()
    use_decoding_layout(relaid)
    fresh = GPT(TINY).eval()
    fresh.load_state_dict(relaid.state_dict())
    fresh.tie_weights()
    idx = torch.tensor([[2, 7, 1, 8]])
    with torch.no_grad():
        torch.testing.assert_close(fresh(idx)[0], tiny_lively_model()(idx)[0], rtol=0, atol=0)


def test_decoding_steps_match_forward_logits_past_context():
    """Logits of every decoding step equal the plain forward pass over the same window, across three cuts."""
    plain = tiny_lively_model()
    decoder = CachedLogits(tiny_lively_model())
    window = [3, 1, 4, 1, 5]
    cuts = 0
    for _step in range(3 * TINY.block_size):
        with torch.no_grad():
            expected = plain(torch.tensor([window]))[0][0, -1]
        actual = decoder(window)
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-4)
        assert int(actual.argmax()) == int(expected.argmax())

        window.append(int(expected.argmax()))
        if len(window) > TINY.block_size:
            del window[: len(window) - kept_after_cut(TINY.block_size)]
            decoder.reset()
            cuts += 1
    assert cuts >= 3


def test_decoding_step_is_used_after_prefill(monkeypatch):
    decoder = CachedLogits(tiny_lively_model())
    steps = []
    original_step = decoder._decode_step
    monkeypatch.setattr(decoder, "_decode_step", lambda token: steps.append(token) or original_step(token))
    decoder([1, 2, 3])
    decoder([1, 2, 3, 4])
    decoder([1, 2, 3, 4, 5])
    assert steps == [4, 5]
    assert decoder.cache.length == 5


def test_greedy_decoding_equals_plain_forward_past_context():
    plain = tiny_lively_model()
    prompt = [2, 7, 1]
    tokens = greedy(tiny_lively_model(), prompt, 3 * TINY.block_size, use_cache=True)

    window = list(prompt)
    expected = []
    for _token in tokens:
        with torch.no_grad():
            logits, _ = plain(torch.tensor([window]))
        expected.append(int(logits[0, -1].argmax()))
        window.append(expected[-1])
        if len(window) > TINY.block_size:
            window = window[-kept_after_cut(TINY.block_size) :]
    assert tokens == expected
    assert all(weight.is_contiguous() for weight in linear_weights(plain))  # the reference kept its layout


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
        tokens = generate_tokens(model, [5], 40, temperature=0.9, top_k=10, generator=generator, use_cache=use_cache)
        return list(tokens)

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


# `cellmind generate`, run in-process on a checkpoint saved with a tokenizer trained here

KOREAN_LINES = [
    "안녕 GPT! 오늘 날씨 어때?",
    "점심 뭐 먹을까 ㅋㅋ",
    "나는 김치찌개 먹고 싶어",
    "내일 회의는 몇 시야?",
    "세 시에 보자 안녕",
]
RUN_CONFIG = Config.from_dict({"model": {"n_embd": 16, "n_head": 2, "n_layer": 2, "block_size": 16, "dropout": 0.0}})


def train_small_tokenizer(directory, lines):
    directory.mkdir(parents=True, exist_ok=True)
    text_path = directory / "text.txt"
    text_path.write_text("\n".join(lines * 20), encoding="utf-8")
    return load_tokenizer(train_tokenizer(text_path, directory, vocab_size="auto"))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return train_small_tokenizer(tmp_path_factory.mktemp("tokenizer"), KOREAN_LINES)


def lively_model(tokenizer, seed: int) -> GPT:
    """A random model over the tokenizer's vocabulary whose greedy text keeps changing."""
    torch.manual_seed(seed)
    model = GPT(gpt_config_from(RUN_CONFIG, tokenizer.vocab_size))
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0.0, 1.0)
    return model.eval()


@pytest.fixture
def run_dir(tmp_path, tokenizer):
    """A config file naming the tokenizer and a checkpoint directory that does not exist yet."""
    config = {
        "model": {"n_embd": 16, "n_head": 2, "n_layer": 2, "block_size": 16, "dropout": 0.0,
                  "checkpoint": str(tmp_path / "checkpoints" / "latest.pt")},
        "tokenizer": {"model_path": str(tokenizer.path)},
    }
    (tmp_path / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return tmp_path


def save_run_checkpoint(run_dir, model, tokenizer, global_epoch, sha256=None):
    return save_checkpoint(
        run_dir / "checkpoints",
        model=model,
        optimizer_state=None,
        global_epoch=global_epoch,
        config=RUN_CONFIG,
        tokenizer_sha256=sha256 or tokenizer.sha256,
    )


def expected_greedy_text(model, tokenizer, prompt, count):
    ids = [tokenizer.start_id, *tokenizer.encode(prompt)]
    tokens = list(generate_tokens(model, ids, count, temperature=0, eos_id=tokenizer.eos_id))
    return tokenizer.decode(ids + tokens)[len(tokenizer.decode(ids)) :]


def generate(run_dir, *flags):
    return main(["generate", "--config", str(run_dir / "config.json"), "--device", "cpu", *flags])


def test_cli_greedy_text_matches_saved_model(run_dir, tokenizer, capsys, monkeypatch):
    model = lively_model(tokenizer, seed=1)
    save_run_checkpoint(run_dir, model, tokenizer, global_epoch=3)
    built = []

    def recording_build_model(checkpoint):
        built.append(build_model(checkpoint))
        return built[-1]

    monkeypatch.setattr(generate_command, "build_model", recording_build_model)

    status = generate(run_dir, "--prompt", "안녕 GPT!", "--temperature", "0", "--max-new-tokens", "40")
    output = capsys.readouterr().out
    assert status == 0
    assert output == expected_greedy_text(model, tokenizer, "안녕 GPT!", 40) + "\n"
    assert len(output.strip()) > 0

    loaded = built[0]
    assert loaded.is_tied()
    idx = torch.tensor([[tokenizer.start_id, *tokenizer.encode("점심 뭐 먹을까")]])
    with torch.no_grad():
        assert torch.equal(loaded(idx)[0], model(idx)[0])


def test_cli_no_cache_gives_same_text(run_dir, tokenizer, capsys):
    save_run_checkpoint(run_dir, lively_model(tokenizer, seed=2), tokenizer, global_epoch=1)
    flags = ("--prompt", "내일 회의는", "--temperature", "0", "--max-new-tokens", "50")
    assert generate(run_dir, *flags) == 0
    cached = capsys.readouterr().out
    assert generate(run_dir, *flags, "--no-cache") == 0
    assert capsys.readouterr().out == cached


def test_cli_seed_repeats_sample(run_dir, tokenizer, capsys):
    save_run_checkpoint(run_dir, lively_model(tokenizer, seed=2), tokenizer, global_epoch=1)
    flags = ("--prompt", "안녕", "--max-new-tokens", "30", "--temperature", "1.0", "--top-p", "1")
    outputs = []
    for seed in ("5", "5", "6"):
        assert generate(run_dir, *flags, "--seed", seed) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]
    assert outputs[0] != outputs[2]


def test_cli_prompt_file_and_flag_overrides(tmp_path, run_dir, tokenizer, capsys):
    model = lively_model(tokenizer, seed=3)
    elsewhere = tmp_path / "elsewhere"
    save_run_checkpoint(elsewhere, model, tokenizer, global_epoch=1)
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text("세 시에 보자", encoding="utf-8")

    status = generate(
        run_dir, "--prompt-file", str(prompt_file), "--checkpoint", str(elsewhere / "checkpoints"),
        "--tokenizer", str(tokenizer.path), "--temperature", "0", "--max-new-tokens", "20",
    )
    assert status == 0
    assert capsys.readouterr().out == expected_greedy_text(model, tokenizer, "세 시에 보자", 20) + "\n"


def test_cli_long_prompt_warns_once_and_crops(run_dir, tokenizer, capsys, caplog):
    model = lively_model(tokenizer, seed=4)
    save_run_checkpoint(run_dir, model, tokenizer, global_epoch=1)
    long_prompt = " ".join(KOREAN_LINES * 3)
    assert len(tokenizer.encode(long_prompt)) > RUN_CONFIG.model.block_size

    with caplog.at_level(logging.WARNING):
        status = generate(run_dir, "--prompt", long_prompt, "--temperature", "0", "--max-new-tokens", "40")
    assert status == 0
    warnings = [r.getMessage() for r in caplog.records if "longer than the model's context" in r.getMessage()]
    assert len(warnings) == 1
    ids, cropped = crop_prompt([tokenizer.start_id, *tokenizer.encode(long_prompt)], RUN_CONFIG.model.block_size)
    assert cropped
    tokens = list(generate_tokens(model, ids, 40, temperature=0, eos_id=tokenizer.eos_id))
    expected = tokenizer.decode(ids + tokens)[len(tokenizer.decode(ids)) :]
    assert capsys.readouterr().out == expected + "\n"


def test_cli_missing_checkpoint(run_dir, capsys):
    status = generate(run_dir, "--prompt", "안녕")
    error = capsys.readouterr().err
    assert status == 66
    assert "checkpoint not found" in error
    assert "latest.pt" in error
    assert "cellmind checkpoint pull --initial-peers" in error


def test_cli_tokenizer_hash_mismatch(tmp_path, run_dir, tokenizer, capsys):
    other = train_small_tokenizer(tmp_path / "other-tokenizer", ["전혀 다른 문장들", "토크나이저가 다르다"])
    model = lively_model(tokenizer, seed=1)
    save_run_checkpoint(run_dir, model, tokenizer, global_epoch=1, sha256=other.sha256)
    status = generate(run_dir, "--prompt", "안녕")
    error = capsys.readouterr().err
    assert status == 65
    assert tokenizer.sha256 in error
    assert other.sha256 in error


def test_cli_falls_back_from_corrupted_checkpoint(run_dir, tokenizer, capsys, caplog):
    good = lively_model(tokenizer, seed=5)
    save_run_checkpoint(run_dir, good, tokenizer, global_epoch=1)
    latest = save_run_checkpoint(run_dir, lively_model(tokenizer, seed=6), tokenizer, global_epoch=2)
    data = latest.read_bytes()
    with open(latest, "r+b") as file:  # truncate through the inode step-00000002.pt shares
        file.truncate(len(data) - 10)

    with caplog.at_level(logging.WARNING):
        status = generate(run_dir, "--prompt", "안녕", "--temperature", "0", "--max-new-tokens", "30")
    assert status == 0
    messages = " ".join(record.getMessage() for record in caplog.records)
    assert "truncated" in messages
    assert "step-00000001.pt" in messages
    assert capsys.readouterr().out == expected_greedy_text(good, tokenizer, "안녕", 30) + "\n"


def test_cli_every_checkpoint_corrupted(run_dir, tokenizer, capsys):
    latest = save_run_checkpoint(run_dir, lively_model(tokenizer, seed=5), tokenizer, global_epoch=1)
    with open(latest, "r+b") as file:
        file.truncate(100)
    status = generate(run_dir, "--prompt", "안녕")
    assert status == 65
    assert "every file was rejected" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, named",
    [
        (("--top-p", "0"), "--top-p"),
        (("--temperature", "-1"), "--temperature"),
        (("--top-k", "-3"), "--top-k"),
        (("--max-new-tokens", "-1"), "--max-new-tokens"),
    ],
)
def test_cli_invalid_sampling_flags(run_dir, capsys, flags, named):
    status = generate(run_dir, "--prompt", "안녕", *flags)
    assert status == 78
    assert named in capsys.readouterr().err
