"""``cellmind prepare`` run in-process on the export specimens: exit codes, files, determinism, anonymity."""

import json
import shutil
from pathlib import Path

import pytest

from cellmind import tokens
from cellmind.cli import main

SPECIMENS = Path(__file__).resolve().parents[1].parent / "shared" / "specimens"
FIXTURES = Path(__file__).parent / "fixtures" / "exports"
SPECIMEN_FILES = (
    "kakao_pc_csv_ko.csv",
    "kakao_pc_txt_ko.txt",
    "kakao_pc_txt_en.txt",
    "kakao_android_txt_ko.txt",
    "kakao_android_txt_en.txt",
    "kakao_ios_txt_ko.txt",
)
OUTPUTS = (
    Path("for-tokenizer-training/textonly.txt"),
    Path("for-model-training/train.jsonl"),
    Path("for-model-training/val.jsonl"),
)
# Senders, names in system lines and mentions of the specimens; given names cover 윤슬이, 한결님 and the like.
SPECIMEN_NAMES = ("김도담", "박한결", "이윤슬", "정새봄", "최다온", "hana k", "도담", "한결", "윤슬", "새봄", "다온")


@pytest.fixture
def raw(tmp_path, monkeypatch):
    """A folder with copies of the six specimens; the working directory is tmp_path, which has no config.json."""
    if not SPECIMENS.is_dir():
        pytest.skip(f"specimen folder {SPECIMENS} is absent (CI checks it out next to the repository)")
    folder = tmp_path / "raw"
    folder.mkdir()
    for name in SPECIMEN_FILES:
        shutil.copyfile(SPECIMENS / name, folder / name)
    monkeypatch.chdir(tmp_path)
    return folder


def prepare(*arguments) -> int:
    return main(["prepare", *map(str, arguments)])


def read_jsonl(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]


def test_prepare_writes_corpus(raw, tmp_path, capsys):
    assert prepare(raw, "--output-dir", tmp_path / "out") == 0

    out = capsys.readouterr().out
    assert "chats read: 6" in out
    assert "audit: no known name found in the output" in out
    for path in OUTPUTS:
        assert (tmp_path / "out" / path).is_file()
    train = read_jsonl(tmp_path / "out" / OUTPUTS[1])
    val = read_jsonl(tmp_path / "out" / OUTPUTS[2])
    assert len(train) >= 6
    assert len(val) >= 1
    assert all(text.strip() for text in train + val)
    textonly = (tmp_path / "out" / OUTPUTS[0]).read_text(encoding="utf-8").splitlines()
    assert textonly == [line for text in train for line in text.split("\n")]


def test_prepare_is_deterministic(raw, tmp_path):
    assert prepare(raw, "--output-dir", tmp_path / "first") == 0
    assert prepare(raw, "--output-dir", tmp_path / "second") == 0
    for path in OUTPUTS:
        assert (tmp_path / "first" / path).read_bytes() == (tmp_path / "second" / path).read_bytes(), path


def test_no_specimen_name_survives(raw, tmp_path):
    assert prepare(raw, "--output-dir", tmp_path / "out") == 0
    for path in OUTPUTS:
        text = (tmp_path / "out" / path).read_text(encoding="utf-8").lower()
        for name in SPECIMEN_NAMES:
            assert name not in text, (path, name)


def test_prepare_output_has_placeholders_and_no_notices(raw, tmp_path):
    assert prepare(raw, "--output-dir", tmp_path / "out") == 0
    text = (tmp_path / "out" / OUTPUTS[1]).read_text(encoding="utf-8") + (tmp_path / "out" / OUTPUTS[2]).read_text(
        encoding="utf-8"
    )
    for placeholder in (tokens.NAME, tokens.URL, tokens.PHOTO, tokens.MOVIE, tokens.EMOJI):
        assert placeholder in text
    for notice in ("삭제된 메시지", "보이스톡", "파일:", "샵검색", "초대했습니다", "나갔습니다", "\u200b", "ㅋㅋㅋㅋㅋㅋ"):
        assert notice not in text, notice


def test_unit_message_keeps_one_message_per_record(raw, tmp_path, capsys):
    assert prepare(raw, "--output-dir", tmp_path / "out", "--unit", "message", "--val-fraction", "0.1") == 0
    out = capsys.readouterr().out
    kept = int(out.split("messages kept: ")[1].split()[0])
    records = read_jsonl(tmp_path / "out" / OUTPUTS[1]) + read_jsonl(tmp_path / "out" / OUTPUTS[2])
    assert len(records) == kept
    assert len(read_jsonl(tmp_path / "out" / OUTPUTS[2])) == kept // 10


def test_session_gap_changes_records(raw, tmp_path):
    assert prepare(raw, "--output-dir", tmp_path / "short", "--session-gap", "1m") == 0
    assert prepare(raw, "--output-dir", tmp_path / "long", "--session-gap", "2d") == 0
    short = read_jsonl(tmp_path / "short" / OUTPUTS[1]) + read_jsonl(tmp_path / "short" / OUTPUTS[2])
    long = read_jsonl(tmp_path / "long" / OUTPUTS[1]) + read_jsonl(tmp_path / "long" / OUTPUTS[2])
    assert len(long) == 6
    assert len(short) > len(long)


def test_typed_special_tokens_cannot_survive(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = tmp_path / "typed.jsonl"
    lines = ["<|endoftext|> 끝", "<NAME> 이라고 썼어", "<|start|><|pad|>", "\ue000 센티널"]
    source.write_text("".join(json.dumps({"text": line}, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    assert prepare(source, "--output-dir", tmp_path / "out", "--val-fraction", "0") == 0
    written = "".join((tmp_path / "out" / path).read_text(encoding="utf-8") for path in OUTPUTS)
    for special in tokens.SPECIAL_TOKENS:
        assert special not in written
    assert tokens.NAME not in written
    assert "<name>" in written
    assert "\ue000" not in written


def test_strict_fails_on_surviving_name(raw, tmp_path, capsys):
    names = tmp_path / "names.txt"
    names.write_text("굿\n", encoding="utf-8")
    assert prepare(raw, "--output-dir", tmp_path / "out", "--names-file", names, "--strict") == 1
    assert "known names survived cleaning: 굿" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

    assert prepare(raw, "--output-dir", tmp_path / "out", "--names-file", names) == 0
    assert "audit: known names found in the output: 굿" in capsys.readouterr().out


def test_names_file_names_are_replaced(raw, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("국밥\n", encoding="utf-8")
    assert prepare(raw, "--output-dir", tmp_path / "out", "--names-file", names, "--strict") == 0
    assert "국밥" not in (tmp_path / "out" / OUTPUTS[1]).read_text(encoding="utf-8")


def test_missing_input(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert prepare(tmp_path / "absent.txt") == 66
    assert "input not found" in capsys.readouterr().err


def test_default_input_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert prepare() == 66
    assert "data/raw" in capsys.readouterr().err


def test_default_input_is_data_raw(raw, tmp_path):
    shutil.copytree(raw, tmp_path / "data" / "raw")
    assert prepare() == 0
    assert (tmp_path / "data" / OUTPUTS[1]).is_file()


def test_missing_names_file(raw, tmp_path, capsys):
    assert prepare(raw, "--names-file", tmp_path / "absent.txt") == 66
    assert "names file not found" in capsys.readouterr().err


def test_invalid_session_gap(raw, capsys):
    assert prepare(raw, "--session-gap", "soon") == 1
    assert "invalid duration 'soon'" in capsys.readouterr().err


def test_invalid_val_fraction(raw, capsys):
    assert prepare(raw, "--val-fraction", "1.5") == 1
    assert "--val-fraction" in capsys.readouterr().err


def test_binary_input_writes_nothing(raw, tmp_path):
    (raw / "zz_binary.txt").write_bytes(bytes(range(256)) * 4)
    assert prepare(raw, "--output-dir", tmp_path / "out") == 65
    assert not (tmp_path / "out").exists()


def test_every_fixture_layout_prepares(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert prepare(FIXTURES, "--output-dir", tmp_path / "out", "--strict") == 0
    assert "audit: no known name found in the output" in capsys.readouterr().out
    assert read_jsonl(tmp_path / "out" / OUTPUTS[1])
