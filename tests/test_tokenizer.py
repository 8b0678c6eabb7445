"""Tokenizer training, loading, round trips, special pieces, size errors, determinism and `cellmind tokenizer`."""

import hashlib
import random
import shutil
import subprocess
import sys

import pytest

from cellmind.cli import main
from cellmind.errors import MissingFileError, TokenizerError
from cellmind.tokenizer import (
    EOS_ID,
    PAD_ID,
    START_ID,
    USER_DEFINED_SYMBOLS,
    file_sha256,
    load_tokenizer,
    train_tokenizer,
)
from cellmind.tokens import END_OF_TEXT, NAME, PAD, PHOTO, PLACEHOLDERS, START

VOCAB_SIZE = 400


def write_korean_corpus(path, lines=1500, seed=0):
    """Write cleaned-looking chat lines: a few hundred Hangul words, jamo laughter, placeholders, some English."""
    rng = random.Random(seed)
    syllables = [chr(0xAC00 + index) for index in range(0, 11172, 211)]  # 53 syllables keep the vocabulary small
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(300)]
    words += ["ㅋㅋㅋ", "ㅠㅠ", "ok", "lol", *PLACEHOLDERS]
    with open(path, "w", encoding="utf-8") as file:
        for _ in range(lines):
            file.write(" ".join(rng.choice(words) for _ in range(rng.randint(1, 10))) + "\n")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_korean_corpus(tmp_path_factory.mktemp("corpus") / "textonly.txt")


@pytest.fixture(scope="module")
def tokenizer(corpus, tmp_path_factory):
    return load_tokenizer(train_tokenizer(corpus, tmp_path_factory.mktemp("tokenizer"), vocab_size=VOCAB_SIZE))


@pytest.fixture(scope="module")
def largest_vocab_size(corpus, tmp_path_factory):
    with pytest.raises(TokenizerError) as raised:
        train_tokenizer(corpus, tmp_path_factory.mktemp("too-large"), vocab_size=20000)
    return int(str(raised.value).split("the largest size that works is ")[1].split(".")[0])


HARD_TEXTS = [
    "ㅋㅋㅋㅋㅋ ㅠㅠ ㅎㅎ",
    "ㄱㄴㄷ ㅏㅑㅓ",
    "😀👍🏽 살아남은 emoji 🇰🇷",
    "ＡＢＣ　１２３ 全角",
    "two  spaces   three    four",
    "  leading and trailing  ",
    "first line\nsecond line\n\nafter a blank line\n",
    "\ttab\tseparated\t",
    "한국어 English 日本語 mixed",
    "literal <|endoftext|> and <|start|> and <|pad|> typed by a user",
    "<unk> typed literally",
    "a ▁ literal lower one eighth block▁",
    "<NAME>님 <PHOTO> <URL> <EMAIL> <PHONE> <MOVIE> <EMOJI>",
    "<name> typed in lowercase",
    "",
    " ",
    "\n",
    "\r\n windows line end",
    "é composed vs e\u0301 decomposed",
    "zero\u200bwidth and \ufeff bom",
]


@pytest.mark.parametrize("text", HARD_TEXTS)
def test_round_trip(tokenizer, text):
    ids = tokenizer.encode(text)

    assert tokenizer.decode(ids) == text


@pytest.mark.parametrize("text", HARD_TEXTS)
def test_encode_avoids_control_ids(tokenizer, text):
    ids = set(tokenizer.encode(text))

    assert not ids & {PAD_ID, START_ID, EOS_ID}
    assert tokenizer.processor.unk_id() not in ids


def test_unigram_round_trip(corpus, tmp_path):
    unigram = load_tokenizer(train_tokenizer(corpus, tmp_path, vocab_size=VOCAB_SIZE, model_type="unigram"))

    for text in HARD_TEXTS:
        assert unigram.decode(unigram.encode(text)) == text


def test_control_ids(tokenizer):
    assert (tokenizer.pad_id, tokenizer.start_id, tokenizer.eos_id) == (PAD_ID, START_ID, EOS_ID)
    assert tokenizer.id_to_piece(PAD_ID) == PAD
    assert tokenizer.id_to_piece(START_ID) == START
    assert tokenizer.id_to_piece(EOS_ID) == END_OF_TEXT
    assert tokenizer.decode([START_ID, EOS_ID, PAD_ID]) == ""


@pytest.mark.parametrize("symbol", USER_DEFINED_SYMBOLS)
def test_placeholder_is_one_piece(tokenizer, symbol):
    ids = tokenizer.encode(symbol)

    assert len(ids) == 1
    assert tokenizer.id_to_piece(ids[0]) == symbol
    assert ids[0] in tokenizer.encode(f"앞{symbol}뒤 x{symbol}")


def test_lowercase_placeholder_is_not_placeholder(tokenizer):
    assert tokenizer.encode(NAME)[0] not in tokenizer.encode(NAME.lower())


def test_encode_batch_matches_encode(tokenizer):
    assert tokenizer.encode_batch(HARD_TEXTS) == [tokenizer.encode(text) for text in HARD_TEXTS]


def test_vocab_size_and_hash(tokenizer):
    assert tokenizer.vocab_size == VOCAB_SIZE
    assert tokenizer.sha256 == hashlib.sha256(tokenizer.path.read_bytes()).hexdigest()
    assert file_sha256(tokenizer.path) == tokenizer.sha256


def test_output_files_written_whole(tokenizer):
    files = sorted(path.name for path in tokenizer.path.parent.iterdir())
    vocab_lines = (tokenizer.path.parent / "tokenizer.vocab").read_text(encoding="utf-8").splitlines()

    assert files == ["tokenizer.model", "tokenizer.vocab"]
    assert len(vocab_lines) == VOCAB_SIZE
    assert vocab_lines[EOS_ID].split("\t")[0] == END_OF_TEXT
    assert "\\n\t0" in vocab_lines


def test_too_large_vocab_names_largest(corpus, tmp_path, largest_vocab_size):
    with pytest.raises(TokenizerError, match="the largest size that works is") as raised:
        train_tokenizer(corpus, tmp_path, vocab_size=20000)

    assert "20000" in str(raised.value)
    assert "--vocab-size auto" in str(raised.value)
    assert "INTERNAL" not in str(raised.value)
    assert not list(tmp_path.iterdir())


def test_largest_vocab_is_exact(corpus, tmp_path, largest_vocab_size):
    model_path = train_tokenizer(corpus, tmp_path, vocab_size=largest_vocab_size)

    assert load_tokenizer(model_path).vocab_size == largest_vocab_size
    with pytest.raises(TokenizerError, match=f"works is {largest_vocab_size}\\b"):
        train_tokenizer(corpus, tmp_path, vocab_size=largest_vocab_size + 1)


def test_auto_vocab_picks_largest(corpus, tmp_path, largest_vocab_size):
    auto = load_tokenizer(train_tokenizer(corpus, tmp_path, vocab_size="auto"))

    assert auto.vocab_size == largest_vocab_size
    assert auto.decode(auto.encode(HARD_TEXTS[0])) == HARD_TEXTS[0]


def test_too_small_vocab_names_smallest(corpus, tmp_path):
    with pytest.raises(TokenizerError, match=r"use at least --vocab-size (\d+)") as raised:
        train_tokenizer(corpus, tmp_path, vocab_size=100)

    smallest = int(str(raised.value).split("--vocab-size ")[1].split(",")[0])
    assert 256 + len(USER_DEFINED_SYMBOLS) + 4 < smallest <= VOCAB_SIZE
    assert "INTERNAL" not in str(raised.value)


@pytest.mark.parametrize("vocab_size", [0, -5, 70000, "big"])
def test_invalid_vocab_size(corpus, tmp_path, vocab_size):
    with pytest.raises(TokenizerError, match="invalid vocabulary size"):
        train_tokenizer(corpus, tmp_path, vocab_size=vocab_size)


@pytest.mark.parametrize("coverage", [0.0, 1.5])
def test_invalid_character_coverage(corpus, tmp_path, coverage):
    with pytest.raises(TokenizerError, match="invalid character coverage"):
        train_tokenizer(corpus, tmp_path, vocab_size=VOCAB_SIZE, character_coverage=coverage)


def test_missing_input(tmp_path):
    with pytest.raises(MissingFileError, match="cellmind prepare") as raised:
        train_tokenizer(tmp_path / "textonly.txt", tmp_path)

    assert "textonly.txt" in str(raised.value)


def test_empty_input(tmp_path):
    empty = tmp_path / "textonly.txt"
    empty.write_text("\n  \n", encoding="utf-8")

    with pytest.raises(TokenizerError, match="is empty; run `cellmind prepare` first"):
        train_tokenizer(empty, tmp_path)


def test_non_utf8_input(tmp_path):
    cp949 = tmp_path / "textonly.txt"
    cp949.write_bytes("안녕하세요\n".encode("cp949"))

    with pytest.raises(TokenizerError, match="is not UTF-8"):
        train_tokenizer(cp949, tmp_path)


def test_load_missing(tmp_path):
    with pytest.raises(MissingFileError, match="cellmind tokenizer train") as raised:
        load_tokenizer(tmp_path / "tokenizer.model")

    assert "tokenizer.model" in str(raised.value)


def test_load_not_a_model(corpus):
    with pytest.raises(TokenizerError, match="is not a SentencePiece model"):
        load_tokenizer(corpus)


def test_load_foreign_model(corpus, tmp_path):
    import sentencepiece

    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(tmp_path / "foreign"), vocab_size=200, minloglevel=2
    )

    with pytest.raises(TokenizerError, match="was not trained by `cellmind tokenizer train`"):
        load_tokenizer(tmp_path / "foreign.model")


TRAIN_IN_CHILD = """
import sys
from cellmind.tokenizer import file_sha256, train_tokenizer
print(file_sha256(train_tokenizer(sys.argv[1], sys.argv[2], vocab_size=int(sys.argv[3]), model_type=sys.argv[4])))
"""


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_training_deterministic_across_processes(corpus, tmp_path, model_type):
    copy = tmp_path / "elsewhere.txt"
    shutil.copyfile(corpus, copy)
    digests = []
    for source, output in ((corpus, tmp_path / "first"), (copy, tmp_path / "second")):
        child = subprocess.run(
            [sys.executable, "-c", TRAIN_IN_CHILD, str(source), str(output), str(VOCAB_SIZE), model_type],
            capture_output=True, text=True, timeout=60, check=True,
        )
        digests.append(child.stdout.strip())

    assert len(digests[0]) == 64
    assert digests[0] == digests[1]
    vocab_files = [tmp_path / output / "tokenizer.vocab" for output in ("first", "second")]
    assert vocab_files[0].read_bytes() == vocab_files[1].read_bytes()


# `cellmind tokenizer train`, run in-process


def test_cli_train(corpus, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)

    status = main(["tokenizer", "train", "--input", str(corpus), "--output-dir", "out", "--vocab-size", "450"])

    output = capsys.readouterr().out
    trained = load_tokenizer(tmp_path / "out" / "tokenizer.model")
    assert status == 0
    assert trained.vocab_size == 450
    assert f"SHA-256: {trained.sha256}" in output
    assert "vocabulary size: 450" in output
    assert "out/tokenizer.model" in output


def test_cli_defaults_from_config(corpus, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "run.json"
    config.write_text(
        '{"tokenizer": {"model_path": "shared/chat.model", "vocab_size": 420, "model_type": "unigram"}}',
        encoding="utf-8",
    )

    status = main(["tokenizer", "train", "--input", str(corpus), "--config", str(config)])

    trained = load_tokenizer(tmp_path / "shared" / "chat.model")
    assert status == 0
    assert trained.vocab_size == 420
    assert trained.processor.encode("ㅋㅋㅋ") == trained.encode("ㅋㅋㅋ")
    assert (tmp_path / "shared" / "chat.vocab").exists()


def test_cli_auto_vocab(corpus, tmp_path, monkeypatch, capsys, largest_vocab_size):
    monkeypatch.chdir(tmp_path)

    status = main(["tokenizer", "train", "--input", str(corpus), "--vocab-size", "auto"])

    assert status == 0
    assert load_tokenizer(tmp_path / "tokenizer" / "tokenizer.model").vocab_size == largest_vocab_size
    assert f"vocabulary size: {largest_vocab_size}" in capsys.readouterr().out


def test_cli_vocab_too_large(corpus, tmp_path, monkeypatch, capsys, largest_vocab_size):
    monkeypatch.chdir(tmp_path)

    status = main(["tokenizer", "train", "--input", str(corpus), "--vocab-size", "20000"])

    error = capsys.readouterr().err
    assert status == TokenizerError.exit_status
    assert f"the largest size that works is {largest_vocab_size}" in error
    assert "Traceback" not in error


def test_cli_missing_input(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)

    status = main(["tokenizer", "train"])

    assert status == MissingFileError.exit_status
    assert "data/for-tokenizer-training/textonly.txt" in capsys.readouterr().err


def test_cli_rejects_bad_vocab_flag(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)

    with pytest.raises(SystemExit) as raised:
        main(["tokenizer", "train", "--vocab-size", "many"])

    assert raised.value.code == 2
    assert "expected a whole number or 'auto'" in capsys.readouterr().err


def test_record_round_trip(tokenizer):
    record = f"<NAME>: 이거 봐\n{PHOTO}\nㅋㅋㅋㅋㅋ 대박"

    assert tokenizer.decode(tokenizer.encode(record)) == record
    assert tokenizer.encode(record).count(tokenizer.encode(PHOTO)[0]) == 1
