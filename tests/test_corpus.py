"""Sessions, the validation split, names files, rendering and atomic writing."""

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from cellmind import corpus, tokens
from cellmind.errors import CellMindError, MissingFileError

GAP = pd.Timedelta(minutes=30)


@dataclass
class FakeExport:
    """Stands in for cellmind.exports.ChatExport: the attributes prepare_corpus reads."""

    path: Path
    table: pd.DataFrame
    names: frozenset = frozenset()


def messages(times, chats=None, texts=None):
    times = pd.to_datetime(pd.Series(times, dtype=object))
    return pd.DataFrame(
        {
            "chat": chats or [0] * len(times),
            "timestamp": times,
            "text": texts or [f"m{i}" for i in range(len(times))],
        }
    )


def chat_table(rows):
    """Table in the parsers' layout from (time, sender, text) rows; an empty sender marks a system row."""
    return pd.DataFrame(
        {
            "timestamp": pd.to_datetime([row[0] for row in rows]),
            "sender": [row[1] for row in rows],
            "text": [row[2] for row in rows],
            "kind": ["message" if row[1] else "system" for row in rows],
        }
    )


@pytest.mark.parametrize(
    "times, expected",
    [
        (["2022-10-29 21:00", "2022-10-29 21:29", "2022-10-29 21:58"], [0, 0, 0]),
        (["2022-10-29 21:00", "2022-10-29 21:31", "2022-10-29 21:40"], [0, 1, 1]),
        (["2022-10-29 21:00", "2022-10-29 21:30"], [0, 0]),
        (["2022-10-29 21:00", None, "2022-10-29 21:20", "2022-10-29 23:00"], [0, 0, 0, 1]),
        ([None, None, None], [0, 0, 0]),
        (["2022-10-29 21:00", None, "2022-10-29 22:00"], [0, 0, 1]),
    ],
)
def test_session_ids(times, expected):
    assert corpus.session_ids(messages(times), GAP).tolist() == expected


def test_sessions_end_at_chat_boundary():
    frame = messages(["2022-10-29 21:00", "2022-10-29 21:01", "2022-10-29 21:02"], chats=[0, 1, 1])
    assert corpus.session_ids(frame, GAP).tolist() == [0, 1, 1]


def test_build_records_joins_session_messages():
    frame = messages(
        ["2022-10-29 21:00", "2022-10-29 21:05", "2022-10-30 08:00"], texts=["안녕", "반가워\n둘째 줄", "아침"]
    )
    records = corpus.build_records(frame, GAP)
    assert records["text"].tolist() == ["안녕\n반가워\n둘째 줄", "아침"]
    assert records["end"].tolist() == [pd.Timestamp("2022-10-29 21:05"), pd.Timestamp("2022-10-30 08:00")]


def test_build_records_per_message():
    frame = messages(["2022-10-29 21:00", "2022-10-29 21:05"], texts=["a", "b"])
    assert corpus.build_records(frame, GAP, unit="message")["text"].tolist() == ["a", "b"]


def test_build_records_rejects_unknown_unit():
    with pytest.raises(CellMindError, match="invalid unit 'line'"):
        corpus.build_records(messages(["2022-10-29 21:00"]), GAP, unit="line")


@pytest.mark.parametrize(
    "n_records, fraction, expected",
    [(0, 0.05, 0), (1, 0.05, 0), (2, 0.05, 1), (20, 0.05, 1), (100, 0.05, 5), (10, 0.5, 5), (3, 0.99, 2), (10, 0, 0)],
)
def test_validation_size(n_records, fraction, expected):
    assert corpus.validation_size(n_records, fraction) == expected


def test_validation_is_the_latest_records():
    records = pd.DataFrame(
        {
            "chat": [0, 0, 1, 1, 2],
            "text": ["a-old", "a-new", "b-newest", "b-old", "c-undated"],
            "end": pd.to_datetime(["2022-01-01", "2022-06-01", "2022-12-01", "2022-02-01", None]),
        }
    )
    train, val = corpus.split_validation(records, 0.4)
    assert val == ["a-new", "b-newest"]
    assert train == ["a-old", "b-old", "c-undated"]


def test_validation_of_undated_records_takes_the_last():
    records = pd.DataFrame({"chat": [0, 0, 1], "text": ["x", "y", "z"], "end": pd.to_datetime([None, None, None])})
    assert corpus.split_validation(records, 0.3) == (["x", "y"], ["z"])


@pytest.mark.parametrize(
    "text, expected",
    [
        ("30m", pd.Timedelta(minutes=30)),
        ("30", pd.Timedelta(minutes=30)),
        ("90s", pd.Timedelta(seconds=90)),
        ("1.5h", pd.Timedelta(minutes=90)),
        ("2d", pd.Timedelta(days=2)),
        (" 45 MIN ", pd.Timedelta(minutes=45)),
    ],
)
def test_parse_duration(text, expected):
    assert corpus.parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "-5m", "10 weeks"])
def test_parse_duration_rejects(text):
    with pytest.raises(CellMindError, match="invalid duration"):
        corpus.parse_duration(text)


def test_read_names_file(tmp_path):
    path = tmp_path / "names.txt"
    path.write_text("\ufeff홍길동\n\n# comment\n  Open Chat 🐰 \n", encoding="utf-8")
    assert corpus.read_names_file(path) == ["홍길동", "Open Chat 🐰"]


def test_read_names_file_missing(tmp_path):
    with pytest.raises(MissingFileError, match="names file not found"):
        corpus.read_names_file(tmp_path / "absent.txt")


def test_read_names_file_not_utf8(tmp_path):
    path = tmp_path / "names.txt"
    path.write_bytes("홍길동".encode("cp949"))
    with pytest.raises(CellMindError, match="save it as UTF-8"):
        corpus.read_names_file(path)


def test_render_jsonl_keeps_unicode():
    rendered = corpus.render_jsonl(["안녕\n<NAME>", 'quote " and \\'])
    lines = rendered.splitlines()
    assert lines[0] == '{"text": "안녕\\n<NAME>"}'
    assert [json.loads(line)["text"] for line in lines] == ["안녕\n<NAME>", 'quote " and \\']


def test_render_textonly_one_line_per_message_line():
    assert corpus.render_textonly(["a\nb", "c"]) == "a\nb\nc\n"


def test_write_atomically_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "deep" / "file.txt"
    corpus.write_atomically(path, b"one")
    corpus.write_atomically(path, b"two")
    assert path.read_bytes() == b"two"
    assert [p.name for p in path.parent.iterdir()] == ["file.txt"]


def test_prepare_corpus_uses_names_of_every_chat(tmp_path):
    first = FakeExport(
        tmp_path / "b.txt",
        chat_table([("2022-10-29 21:00", "김도담", "윤슬아 안녕"), ("2022-10-29 21:01", "", "김도담님이 나갔습니다.")]),
        frozenset({"김도담"}),
    )
    second = FakeExport(
        tmp_path / "a.txt",
        chat_table([("2022-10-30 09:00", "이윤슬", "도담님 사진 봤어요"), ("2022-10-30 09:01", "이윤슬", "사진")]),
        frozenset({"이윤슬"}),
    )
    prepared = corpus.prepare_corpus([first, second], extra_names=["박한결"], val_fraction=0)
    assert prepared.train == [f"{tokens.NAME} 사진 봤어요\n{tokens.PHOTO}", f"{tokens.NAME} 안녕"]  # a.txt first
    assert prepared.val == []
    assert prepared.report.names_known == 3
    assert prepared.report.dropped == {"system notice": 1}
    assert prepared.report.surviving_names == {}


def test_prepare_corpus_reports_surviving_short_name(tmp_path):
    export = FakeExport(tmp_path / "a.txt", chat_table([("2022-10-29 21:00", "별", "별 보러 가자")]), frozenset({"별"}))
    prepared = corpus.prepare_corpus([export])
    assert prepared.report.names_skipped == ["별"]
    assert prepared.report.surviving_names == {"별": 1}


def test_prepare_corpus_without_messages_fails(tmp_path):
    export = FakeExport(tmp_path / "a.txt", chat_table([("2022-10-29 21:00", "김도담", "삭제된 메시지입니다.")]))
    with pytest.raises(CellMindError, match="no trainable messages"):
        corpus.prepare_corpus([export])
