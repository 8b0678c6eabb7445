"""Record batches with pad-only masking, the packed token file, its staleness checks and window sampling."""

import json
import random
import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import cellmind.dataset as dataset_module
from cellmind.dataset import (
    IGNORE_INDEX,
    TextDataset,
    TokenFile,
    TokenWindows,
    build_token_file,
    collate_fn,
    encode_record,
    ensure_token_file,
    read_jsonl_texts,
    iter_eval_batches,
    token_file_path,
)
from cellmind.errors import InputFormatError, MissingFileError, TokenizerError
from cellmind.tokenizer import load_tokenizer, train_tokenizer
from cellmind.tokens import NAME, PHOTO


def korean_lines(count, seed):
    rng = random.Random(seed)
    syllables = [chr(0xAC00 + index) for index in range(0, 11172, 211)]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(200)]
    words += ["ㅋㅋㅋ", "ㅠㅠ", "ok", NAME, PHOTO]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 8))) for _ in range(count)]


def write_sessions(path, count, seed=0, messages=4):
    """Write ``count`` JSONL records, each a session of messages joined by newlines."""
    lines = korean_lines(count * messages, seed)
    with open(path, "w", encoding="utf-8") as file:
        for index in range(count):
            session = "\n".join(lines[index * messages : (index + 1) * messages])
            file.write(json.dumps({"text": session}, ensure_ascii=False) + "\n")
    return path


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tokenizer")
    (directory / "textonly.txt").write_text("\n".join(korean_lines(1500, seed=1)) + "\n", encoding="utf-8")
    return load_tokenizer(train_tokenizer(directory / "textonly.txt", directory, vocab_size=400))


@pytest.fixture(scope="module")
def other_tokenizer(tmp_path_factory):
    directory = tmp_path_factory.mktemp("other-tokenizer")
    (directory / "textonly.txt").write_text("\n".join(korean_lines(1500, seed=2)) + "\n", encoding="utf-8")
    return load_tokenizer(train_tokenizer(directory / "textonly.txt", directory, vocab_size=450))


@pytest.fixture
def train_jsonl(tmp_path):
    return write_sessions(tmp_path / "train.jsonl", 60)


# TextDataset and collate_fn


def test_dataset_wraps_records(tokenizer, train_jsonl):
    dataset = TextDataset(train_jsonl, tokenizer, block_size=10_000)
    first_text = next(read_jsonl_texts(train_jsonl))
    x, y = dataset[0]

    assert len(dataset) == 60
    assert x[0].item() == tokenizer.start_id
    assert y[-1].item() == tokenizer.eos_id
    assert x.tolist() + [y[-1].item()] == encode_record(tokenizer, first_text)
    assert torch.equal(x[1:], y[:-1])
    assert tokenizer.decode(x.tolist()) == first_text


def test_dataset_truncates_to_block(tokenizer, train_jsonl):
    dataset = TextDataset(train_jsonl, tokenizer, block_size=8)

    for index in range(len(dataset)):
        x, y = dataset[index]
        assert len(x) <= 8
        assert len(x) == len(y)


def pad_position_mask(lengths, width):
    return torch.arange(width)[None, :] >= torch.tensor(lengths)[:, None]


def test_collate_masks_only_pads(tokenizer, tmp_path):
    path = tmp_path / "records.jsonl"
    texts = ["짧아", "이건 조금 더 긴 메시지\nㅋㅋㅋㅋㅋ 그치?", ""]
    path.write_text("".join(json.dumps({"text": text}, ensure_ascii=False) + "\n" for text in texts), "utf-8")
    dataset = TextDataset(path, tokenizer, block_size=512)
    batch = [dataset[index] for index in range(3)]
    lengths = [len(x) for x, _y in batch]

    inputs, targets = dataset.collate_fn(batch)

    width = max(lengths)
    pads = pad_position_mask(lengths, width)
    assert inputs.shape == targets.shape == (3, width)
    assert torch.equal(targets == IGNORE_INDEX, pads)
    assert torch.all(inputs[pads] == tokenizer.pad_id)
    for row, length in enumerate(lengths):
        assert targets[row, length - 1].item() == tokenizer.eos_id  # the real end sits right before the pads
        assert torch.equal(targets[row, :length], batch[row][1])
        assert torch.equal(inputs[row, :length], batch[row][0])


def test_collate_keeps_eos_equal_to_pad_id():
    # A tokenizer whose pad id equals a real target id must still mask by position, not by value.
    batch = [(torch.tensor([2, 5, 7]), torch.tensor([5, 7, 0])), (torch.tensor([2]), torch.tensor([0]))]

    inputs, targets = collate_fn(batch, pad_id=0)

    assert targets.tolist() == [[5, 7, 0], [0, IGNORE_INDEX, IGNORE_INDEX]]
    assert inputs.tolist() == [[2, 5, 7], [2, 0, 0]]


def test_collate_with_data_loader(tokenizer, train_jsonl):
    dataset = TextDataset(train_jsonl, tokenizer, block_size=64)
    loader = torch.utils.data.DataLoader(dataset, batch_size=7, collate_fn=dataset.collate_fn)

    batches = list(loader)

    assert sum(len(inputs) for inputs, _targets in batches) == 60
    assert all(inputs.dtype == torch.long and targets.dtype == torch.long for inputs, targets in batches)


def test_blank_lines_skipped(tokenizer, tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text('{"text": "하나"}\n\n   \n{"text": "둘"}\n', encoding="utf-8")

    assert list(read_jsonl_texts(path)) == ["하나", "둘"]
    assert len(TextDataset(path, tokenizer, block_size=16)) == 2


@pytest.mark.parametrize(
    "bad_line, problem",
    [
        ('{"text": "잘림', "not a JSON record"),
        ('["a list"]', 'expected an object with a "text" string'),
        ('{"message": "다른 키"}', 'expected an object with a "text" string'),
        ('{"text": 5}', 'expected an object with a "text" string'),
    ],
)
def test_invalid_jsonl_names_line(tokenizer, tmp_path, bad_line, problem):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"text": "하나"}\n{"text": "둘"}\n' + bad_line + "\n", encoding="utf-8")

    with pytest.raises(InputFormatError, match=f"broken.jsonl, line 3: {problem}"):
        TextDataset(path, tokenizer, block_size=16)
    with pytest.raises(InputFormatError, match="line 3"):
        build_token_file(path, tokenizer, tmp_path / "broken.tokens.bin")


def test_invalid_utf8_names_line(tokenizer, tmp_path):
    path = tmp_path / "cp949.jsonl"
    path.write_bytes(b'{"text": "ok"}\n' + '{"text": "안녕"}\n'.encode("cp949"))

    with pytest.raises(InputFormatError, match="cp949.jsonl, line 2"):
        list(read_jsonl_texts(path))


def test_missing_jsonl(tokenizer, tmp_path):
    with pytest.raises(MissingFileError, match="cellmind prepare"):
        TextDataset(tmp_path / "train.jsonl", tokenizer, block_size=16)
    with pytest.raises(MissingFileError, match="train.jsonl"):
        ensure_token_file(tmp_path / "train.jsonl", tokenizer)


def test_empty_jsonl(tokenizer, tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("\n", encoding="utf-8")

    with pytest.raises(InputFormatError, match="contains no records"):
        TextDataset(path, tokenizer, block_size=16)
    with pytest.raises(InputFormatError, match="contains no records"):
        ensure_token_file(path, tokenizer)


# the packed token file


def test_token_file_contents(tokenizer, train_jsonl):
    expected = [encode_record(tokenizer, text) for text in read_jsonl_texts(train_jsonl)]

    token_file = build_token_file(train_jsonl, tokenizer, token_file_path(train_jsonl), show_progress=False)

    assert token_file.path.name == "train.tokens.bin"
    assert token_file.tokens.dtype == np.uint16
    assert token_file.tokens.tolist() == [token for record in expected for token in record]
    assert token_file.record_count == len(expected)
    assert token_file.offsets.tolist() == np.cumsum([0] + [len(record) for record in expected]).tolist()
    assert token_file.record(7).tolist() == expected[7]
    assert token_file.tokenizer_sha256 == tokenizer.sha256
    assert token_file.vocab_size == tokenizer.vocab_size


def test_token_file_header(tokenizer, train_jsonl):
    build_token_file(train_jsonl, tokenizer, token_file_path(train_jsonl), show_progress=False)

    header = json.loads((train_jsonl.parent / "train.tokens.json").read_text(encoding="utf-8"))
    index = np.fromfile(train_jsonl.parent / "train.tokens.idx", dtype=np.int64)
    assert header["token_count"] == index[-1] == (train_jsonl.parent / "train.tokens.bin").stat().st_size // 2
    assert header["record_count"] == len(index) - 1 == 60
    assert header["tokenizer_sha256"] == tokenizer.sha256
    assert header["source_size"] == train_jsonl.stat().st_size
    assert sorted(path.name for path in train_jsonl.parent.iterdir()) == [
        "train.jsonl", "train.tokens.bin", "train.tokens.idx", "train.tokens.json"
    ]


def test_token_file_chunked_writes_match(tokenizer, train_jsonl, monkeypatch):
    whole = build_token_file(train_jsonl, tokenizer, train_jsonl.with_name("whole.bin"), show_progress=False)
    monkeypatch.setattr(dataset_module, "ENCODE_BATCH_BYTES", 300)
    monkeypatch.setattr(dataset_module, "WRITE_CHUNK_TOKENS", 50)

    chunked = build_token_file(train_jsonl, tokenizer, train_jsonl.with_name("chunked.bin"), show_progress=False)

    assert np.array_equal(chunked.tokens, whole.tokens)
    assert np.array_equal(chunked.offsets, whole.offsets)
    assert chunked.header["source_sha256"] == whole.header["source_sha256"]


def traced_peak_bytes(function):
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_token_file_memory_flat(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setattr(dataset_module, "ENCODE_BATCH_BYTES", 8 << 10)
    monkeypatch.setattr(dataset_module, "WRITE_CHUNK_TOKENS", 4 << 10)
    small = write_sessions(tmp_path / "small.jsonl", 500, seed=3)
    large = write_sessions(tmp_path / "large.jsonl", 4000, seed=4)

    small_peak = traced_peak_bytes(lambda: build_token_file(small, tokenizer, tmp_path / "s.bin", show_progress=False))
    large_peak = traced_peak_bytes(lambda: build_token_file(large, tokenizer, tmp_path / "l.bin", show_progress=False))

    assert large.stat().st_size > 7 * small.stat().st_size
    assert large_peak < 1.5 * small_peak
    assert large_peak < large.stat().st_size / 2


def test_token_file_rejects_large_vocab(train_jsonl, tmp_path):
    huge = SimpleNamespace(vocab_size=70_000, path=tmp_path / "huge.model")

    with pytest.raises(TokenizerError, match="uint16"):
        build_token_file(train_jsonl, huge, tmp_path / "huge.bin")


def test_ensure_reuses_current_file(tokenizer, train_jsonl):
    first = ensure_token_file(train_jsonl, tokenizer, show_progress=False)
    built_at = first.path.stat().st_mtime_ns

    second = ensure_token_file(train_jsonl, tokenizer, show_progress=False)

    assert second.path.stat().st_mtime_ns == built_at
    assert np.array_equal(second.tokens, first.tokens)


def test_ensure_rebuilds_for_other_tokenizer(tokenizer, other_tokenizer, train_jsonl):
    ensure_token_file(train_jsonl, tokenizer, show_progress=False)

    rebuilt = ensure_token_file(train_jsonl, other_tokenizer, show_progress=False)

    assert rebuilt.tokenizer_sha256 == other_tokenizer.sha256
    assert rebuilt.vocab_size == 450
    assert rebuilt.record(0).tolist() == encode_record(other_tokenizer, next(read_jsonl_texts(train_jsonl)))


def test_ensure_rebuilds_for_changed_jsonl(tokenizer, train_jsonl):
    before = ensure_token_file(train_jsonl, tokenizer, show_progress=False)
    write_sessions(train_jsonl, 60, seed=9)  # same record count, other text

    after = ensure_token_file(train_jsonl, tokenizer, show_progress=False)

    assert after.header["source_sha256"] != before.header["source_sha256"]
    assert after.record(0).tolist() == encode_record(tokenizer, next(read_jsonl_texts(train_jsonl)))


def test_ensure_rebuilds_truncated_file(tokenizer, train_jsonl):
    built = ensure_token_file(train_jsonl, tokenizer, show_progress=False)
    expected = built.tokens.tolist()
    with open(built.path, "r+b") as file:
        file.truncate(10)

    with pytest.raises(InputFormatError, match="train.tokens.bin has 10 bytes"):
        TokenFile.open(built.path)
    assert ensure_token_file(train_jsonl, tokenizer, show_progress=False).tokens.tolist() == expected


def test_interrupted_build_leaves_no_header(tokenizer, train_jsonl, monkeypatch):
    ensure_token_file(train_jsonl, tokenizer, show_progress=False)
    monkeypatch.setattr(dataset_module, "ENCODE_BATCH_BYTES", 300)
    calls = []

    def failing_encode_batch(texts):
        calls.append(len(texts))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return [tokenizer.encode(text) for text in texts]

    monkeypatch.setattr(tokenizer, "encode_batch", failing_encode_batch)
    with pytest.raises(KeyboardInterrupt):
        build_token_file(train_jsonl, tokenizer, token_file_path(train_jsonl), show_progress=False)
    monkeypatch.undo()

    leftovers = sorted(path.name for path in train_jsonl.parent.iterdir())
    assert "train.tokens.json" not in leftovers
    assert not [name for name in leftovers if name.startswith(".")]
    assert ensure_token_file(train_jsonl, tokenizer, show_progress=False).record_count == 60


# window sampling


@pytest.fixture
def token_file(tokenizer, train_jsonl):
    return ensure_token_file(train_jsonl, tokenizer, show_progress=False)


def test_windows_shapes_and_shift(token_file):
    windows = TokenWindows(token_file, seq_len=32, seed=0)

    x, y = windows.get_batch(5)

    assert x.shape == y.shape == (5, 32)
    assert x.dtype == y.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])
    tokens = token_file.tokens.astype(np.int64).tolist()
    for row in x.tolist():
        starts = [i for i in range(len(tokens) - 32) if tokens[i : i + 32] == row]
        assert starts, "every window is a slice of the token file"


def test_windows_seeding(token_file):
    same = [TokenWindows(token_file, seq_len=16, seed=7).get_batch(4)[0] for _ in range(2)]
    other = TokenWindows(token_file, seq_len=16, seed=8).get_batch(4)[0]

    assert torch.equal(same[0], same[1])
    assert not torch.equal(same[0], other)


def test_windows_epoch_size(token_file):
    assert TokenWindows(token_file, seq_len=16, seed=0).epoch_size == token_file.token_count // 16


def test_windows_cover_both_ends(tokenizer, tmp_path):
    path = tmp_path / "one.jsonl"
    path.write_text('{"text": "ㅋㅋㅋ 하나 둘 셋 ok"}\n', encoding="utf-8")
    token_file = ensure_token_file(path, tokenizer, show_progress=False)
    tokens = token_file.tokens.astype(np.int64)
    windows = TokenWindows(token_file, seq_len=len(tokens) - 2, seed=0)  # exactly two windows fit

    x, y = windows.get_batch(64)

    fitting = {start: tokens[start : start + len(tokens) - 1].tolist() for start in (0, 1)}
    drawn = [start for row_x, row_y in zip(x, y) for start, window in fitting.items()
             if row_x.tolist() + row_y[-1:].tolist() == window]
    assert len(drawn) == 64
    assert set(drawn) == {0, 1}


def test_eval_batches_deterministic(token_file):
    windows = TokenWindows(token_file, seq_len=16, seed=0)
    first_pass = list(windows.iter_eval_batches(batch_size=4))
    windows.get_batch(3)
    second_pass = list(windows.iter_eval_batches(batch_size=4))

    window_count = (token_file.token_count - 1) // 16
    stacked = torch.cat([x for x, _y in first_pass])
    assert len(stacked) == window_count
    assert torch.equal(stacked.flatten(), torch.from_numpy(token_file.tokens[: window_count * 16].astype(np.int64)))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first_pass, second_pass))
    assert len(list(windows.iter_eval_batches(batch_size=4, max_batches=2))) == 2


def test_windows_reject_short_file(tokenizer, tmp_path):
    path = tmp_path / "val.jsonl"
    path.write_text('{"text": "짧아"}\n', encoding="utf-8")
    short = ensure_token_file(path, tokenizer, show_progress=False)

    with pytest.raises(InputFormatError, match="fewer than one window of 257"):
        TokenWindows(short, seq_len=256, seed=0)


def test_eval_batches_short_file(tokenizer, tmp_path):
    path = tmp_path / "val.jsonl"
    path.write_text('{"text": "짧아"}\n', encoding="utf-8")
    short = ensure_token_file(path, tokenizer, show_progress=False)
    tokens = torch.from_numpy(short.tokens.astype(np.int64))

    batches = list(iter_eval_batches(short, seq_len=256, batch_size=4))

    assert len(batches) == 1
    assert torch.equal(batches[0][0], tokens[None, :-1])
    assert torch.equal(batches[0][1], tokens[None, 1:])
