"""Reading KakaoTalk exports: the six specimens, every layout without a specimen, and broken inputs."""

import shutil
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest

from cellmind.errors import InputFormatError, MissingFileError
from cellmind.exports import ChatExport, read_export, read_exports
from cellmind.exports.reader import split_groups

REPO_ROOT = Path(__file__).resolve().parents[1]
SPECIMENS = REPO_ROOT.parent / "shared" / "specimens"
FIXTURES = Path(__file__).parent / "fixtures" / "exports"

needs_specimens = pytest.mark.skipif(
    not SPECIMENS.is_dir(), reason=f"specimen folder {SPECIMENS} is absent (CI checks it out next to the repository)"
)

KOREAN_FIVE = frozenset({"김도담", "박한결", "이윤슬", "정새봄", "최다온"})
LONG_MESSAGE = "그럼 일요일 아침 8시 역 앞에서 보자\n늦으면 커피 사기\n(윤슬이 너 말하는 거야)"

# file: (format, user messages, multi-line messages, system notices, participants, names, self labels)
SPECIMEN_EXPECTED = {
    "kakao_pc_csv_ko.csv": ("pc_csv", 21, 2, 4, KOREAN_FIVE, KOREAN_FIVE, frozenset()),
    "kakao_pc_txt_ko.txt": ("pc_txt", 22, 2, 3, KOREAN_FIVE, KOREAN_FIVE, frozenset()),
    "kakao_pc_txt_en.txt": (
        "pc_txt", 11, 1, 0, {"Hana K", "김도담", "이윤슬"}, {"Hana K", "김도담", "이윤슬"}, frozenset()
    ),
    "kakao_android_txt_ko.txt": (
        "android_txt",
        22,
        2,
        3,
        {"김도담", "박한결", "정새봄", "최다온", "회원님"},
        KOREAN_FIVE,
        {"회원님"},
    ),
    "kakao_android_txt_en.txt": (
        "android_txt", 11, 1, 1, {"Hana K", "you", "김도담"}, {"Hana K", "김도담", "이윤슬"}, {"you"}
    ),
    "kakao_ios_txt_ko.txt": ("ios_txt", 22, 2, 3, KOREAN_FIVE, KOREAN_FIVE, frozenset()),
}
SPECIMEN_FILES = sorted(SPECIMEN_EXPECTED)


def messages(export: ChatExport) -> pd.DataFrame:
    return export.table[export.table["kind"] == "message"]


def system_rows(export: ChatExport) -> pd.DataFrame:
    return export.table[export.table["kind"] == "system"]


def multi_line_count(export: ChatExport) -> int:
    return int(messages(export)["text"].str.contains("\n", regex=False).sum())


def participants(export: ChatExport) -> set[str]:
    return set(messages(export)["sender"])


def message_by_prefix(export: ChatExport, prefix: str) -> pd.Series:
    rows = messages(export)
    found = rows[rows["text"].str.startswith(prefix)]
    assert len(found) == 1, f"expected one message starting with {prefix!r}, found {len(found)}"
    return found.iloc[0]


def cached_reader(folder: Path):
    cache: dict[str, ChatExport] = {}

    def read(name: str) -> ChatExport:
        if name not in cache:
            cache[name] = read_export(folder / name)
        return cache[name]

    return read


@pytest.fixture(scope="module")
def specimen():
    return cached_reader(SPECIMENS)


@pytest.fixture(scope="module")
def fixture_export():
    return cached_reader(FIXTURES)


def write_bytes(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_text(tmp_path: Path, name: str, text: str) -> Path:
    return write_bytes(tmp_path, name, text.encode("utf-8"))


# --- the six specimens ---------------------------------------------------------------------------------------


@needs_specimens
@pytest.mark.parametrize("name", SPECIMEN_FILES)
def test_specimen_format(specimen, name):
    assert specimen(name).format == SPECIMEN_EXPECTED[name][0]


@needs_specimens
@pytest.mark.parametrize("name", SPECIMEN_FILES)
def test_specimen_message_count(specimen, name):
    assert len(messages(specimen(name))) == SPECIMEN_EXPECTED[name][1]


@needs_specimens
@pytest.mark.parametrize("name", SPECIMEN_FILES)
def test_specimen_multi_line_count(specimen, name):
    assert multi_line_count(specimen(name)) == SPECIMEN_EXPECTED[name][2]


@needs_specimens
@pytest.mark.parametrize("name", SPECIMEN_FILES)
def test_specimen_system_count(specimen, name):
    assert len(system_rows(specimen(name))) == SPECIMEN_EXPECTED[name][3]


@needs_specimens
@pytest.mark.parametrize("name", SPECIMEN_FILES)
def test_specimen_participants(specimen, name):
    assert participants(specimen(name)) == set(SPECIMEN_EXPECTED[name][4])


@needs_specimens
@pytest.mark.parametrize("name", SPECIMEN_FILES)
def test_specimen_names(specimen, name):
    assert specimen(name).names == frozenset(SPECIMEN_EXPECTED[name][5])


@needs_specimens
@pytest.mark.parametrize("name", SPECIMEN_FILES)
def test_specimen_self_labels(specimen, name):
    assert specimen(name).self_labels == frozenset(SPECIMEN_EXPECTED[name][6])


@needs_specimens
@pytest.mark.parametrize("name", SPECIMEN_FILES)
def test_specimen_table_shape(specimen, name):
    table = specimen(name).table
    assert list(table.columns) == ["timestamp", "sender", "text", "kind"]
    assert table["timestamp"].dtype == "datetime64[ns]"
    assert set(table["kind"]) <= {"message", "system"}
    assert (system_rows(specimen(name))["sender"] == "").all()
    assert specimen(name).parts == (SPECIMENS / name,)


@needs_specimens
@pytest.mark.parametrize("name", SPECIMEN_FILES)
def test_specimen_no_line_end_or_bom_left(specimen, name):
    table = specimen(name).table
    for column in ("sender", "text"):
        assert not table[column].str.contains("\r", regex=False).any()
        assert not table[column].str.contains("\ufeff", regex=False).any()


@needs_specimens
@pytest.mark.parametrize("name", SPECIMEN_FILES)
def test_specimen_multi_line_message_whole(specimen, name):
    row = message_by_prefix(specimen(name), "그럼 일요일")
    assert row["text"] == LONG_MESSAGE
    assert row["sender"] == "김도담"


NOON_AND_MIDNIGHT = {
    # file: (prefix of the noon message, its timestamp, timestamp of the message just after midnight)
    "kakao_pc_csv_ko.csv": ("점심은", datetime(2022, 10, 30, 12, 3, 27), datetime(2022, 10, 31, 0, 5, 12)),
    "kakao_pc_txt_ko.txt": ("점심은", datetime(2022, 10, 30, 12, 3), datetime(2022, 10, 31, 0, 5)),
    "kakao_pc_txt_en.txt": ("Lunch at noon", datetime(2022, 10, 30, 12, 3), datetime(2022, 10, 31, 0, 5)),
    "kakao_android_txt_ko.txt": ("점심은", datetime(2022, 10, 30, 12, 3), datetime(2022, 10, 31, 0, 5)),
    "kakao_android_txt_en.txt": ("Lunch at noon", datetime(2022, 10, 30, 12, 3), datetime(2022, 10, 31, 0, 5)),
    "kakao_ios_txt_ko.txt": ("점심은", datetime(2022, 10, 30, 12, 3), datetime(2022, 10, 31, 0, 5)),
}


@needs_specimens
@pytest.mark.parametrize("name", SPECIMEN_FILES)
def test_specimen_noon_is_twelve(specimen, name):
    prefix, noon, _midnight = NOON_AND_MIDNIGHT[name]
    assert message_by_prefix(specimen(name), prefix)["timestamp"] == noon


@needs_specimens
@pytest.mark.parametrize("name", SPECIMEN_FILES)
def test_specimen_after_midnight_is_zero_hour(specimen, name):
    last = specimen(name).table.iloc[-1]
    assert last["timestamp"] == NOON_AND_MIDNIGHT[name][2]
    assert last["kind"] == "message"


@needs_specimens
def test_specimen_first_record_time(specimen):
    first = message_by_prefix(specimen("kakao_android_txt_ko.txt"), "다들 주말에")
    assert first["timestamp"] == datetime(2022, 10, 29, 21, 3)


@needs_specimens
def test_ios_u2028_stays_inside_message(specimen):
    row = message_by_prefix(specimen("kakao_ios_txt_ko.txt"), "준비물")
    assert row["text"] == "준비물\u2028\t1.\t물\u2028\t2.\t✅\xa0간식"
    assert row["sender"] == "이윤슬"


@needs_specimens
def test_ios_sender_split_at_first_separator(specimen):
    row = message_by_prefix(specimen("kakao_ios_txt_ko.txt"), "샵검색")
    assert row["sender"] == "박한결"
    assert row["text"] == "샵검색 : #일요일날씨"


@needs_specimens
def test_ios_placeholders_keep_trailing_space(specimen):
    texts = list(messages(specimen("kakao_ios_txt_ko.txt"))["text"])
    assert "이모티콘 " in texts
    assert "이모티콘 저도 갈래요" in texts
    assert "삭제된 메시지입니다. " in texts


@needs_specimens
def test_ios_system_records_after_colon(specimen):
    texts = list(system_rows(specimen("kakao_ios_txt_ko.txt"))["text"])
    assert texts == [
        "김도담님이 박한결님, 이윤슬님과 정새봄님을 초대했습니다.",
        "박한결님이 최다온님을 초대했습니다.",
        "정새봄님이 나갔습니다.",
    ]


@needs_specimens
def test_ios_control_characters_and_zwj_kept(specimen):
    export = specimen("kakao_ios_txt_ko.txt")
    assert message_by_prefix(export, "윤슬아")["text"] == "윤슬아 \x0810분 안에 못 오면 커피 당첨이다"
    assert message_by_prefix(export, "오늘 너무")["text"].endswith("🤸\u200d♂️ 스트레칭 필수!")


@needs_specimens
def test_pc_txt_bare_notices_are_own_rows(specimen):
    export = specimen("kakao_pc_txt_ko.txt")
    assert list(system_rows(export)["text"]) == [
        "김도담님이 박한결님, 이윤슬님, 정새봄님을 초대하였습니다.",
        "박한결님이 최다온님을 초대하였습니다.",
        "정새봄님이 나갔습니다.",
    ]
    assert message_by_prefix(export, "점심은")["text"] == "점심은 국밥 어때요? 도담님이 쏜대요ㅋㅋㅋㅋㅋㅋ"
    assert system_rows(export)["timestamp"].isna().all()


@needs_specimens
def test_pc_txt_zero_width_space_kept(specimen):
    row = message_by_prefix(specimen("kakao_pc_txt_ko.txt"), "내일")
    assert row["text"] == "내일\u200b봐요 다들 👋"


@needs_specimens
def test_android_day_line_is_not_continuation(specimen):
    export = specimen("kakao_android_txt_ko.txt")
    assert message_by_prefix(export, "내일")["text"] == "내일\u200b봐요 다들 👋"
    assert message_by_prefix(export, "다들 잘 자")["text"] == "다들 잘 자 🌙"


@needs_specimens
def test_android_exporter_named_only_in_notice(specimen):
    export = specimen("kakao_android_txt_ko.txt")
    assert "이윤슬" not in participants(export)
    assert "이윤슬" in export.names
    assert "회원님" not in export.names


@needs_specimens
def test_android_mixed_line_ends_in_message(specimen):
    row = message_by_prefix(specimen("kakao_android_txt_ko.txt"), "오늘 너무")
    assert row["text"] == "오늘 너무 즐거웠어요❤️\n다음엔 바다 가요 🌊\n👨\u200d👩\u200d👧 가족이랑도 같이!"


@needs_specimens
def test_android_placeholders_stay_messages(specimen):
    texts = set(messages(specimen("kakao_android_txt_ko.txt"))["text"])
    for placeholder in ("<사진 읽지 않음>", "<동영상 읽지 않음>", "이모티콘", "삭제된 메시지입니다.", "보이스톡 0:42"):
        assert placeholder in texts


@needs_specimens
def test_csv_quotes_commas_and_escapes(specimen):
    export = specimen("kakao_pc_csv_ko.csv")
    assert message_by_prefix(export, "윤슬아")["text"] == '윤슬아 "10분 안에" 못 오면 커피 당첨이다'
    assert message_by_prefix(export, "와아")["text"] == "와아아아아아아 경치 미쳤다, 진짜로"


@needs_specimens
def test_csv_notice_rows(specimen):
    rows = system_rows(specimen("kakao_pc_csv_ko.csv"))
    assert list(rows["text"]) == [
        "김도담 invited 박한결 and.",
        "박한결 invited 최다온 and.",
        "메시지가 삭제되었습니다.",
        "정새봄님이 나갔습니다.",
    ]
    assert rows["timestamp"].isna().tolist() == [False, False, True, False]


# --- layouts with no specimen --------------------------------------------------------------------------------

# file: (format, user messages, multi-line messages, system notices, participants, names, self labels)
FIXTURE_EXPECTED = {
    "csv_en.csv": (
        "pc_csv",
        8,
        1,
        5,
        {"Mina Park", "Joon Lee", "Alex Kim", "Sora Han"},
        {"Mina Park", "Joon Lee", "Alex Kim", "Sora Han", "Bot 99"},
        set(),
    ),
    "ios_en.txt": (
        "ios_txt", 6, 1, 2, {"Mina Park", "Joon Lee", "서하린"}, {"Mina Park", "Joon Lee", "서하린"}, set()
    ),
    "ios_ko_24h.txt": ("ios_txt", 4, 1, 2, {"김하늘", "박지호", "윤서연"}, {"김하늘", "박지호", "윤서연"}, set()),
    "open_chat_android_ko.txt": (
        "android_txt",
        5,
        1,
        7,
        {"방장봇", "산타는 🐻곰돌이 / 서울", "광고맨 2호", "🌸 봄날 / 인천 / 30", "회원님"},
        {"방장봇", "산타는 🐻곰돌이 / 서울", "광고맨 2호", "🌸 봄날 / 인천 / 30"},
        {"회원님"},
    ),
    "open_chat_pc_ko.txt": (
        "pc_txt",
        5,
        1,
        6,
        {"방장봇", "산타는 🐻곰돌이 / 서울", "광고맨 2호", "🌸 봄날 / 인천 / 30"},
        {"방장봇", "산타는 🐻곰돌이 / 서울", "광고맨 2호", "🌸 봄날 / 인천 / 30"},
        set(),
    ),
    "open_chat_ios_ko.txt": (
        "ios_txt",
        2,
        0,
        3,
        {"방장봇", "광고맨 2호"},
        {"방장봇", "산타는 🐻곰돌이 / 서울", "광고맨 2호"},
        set(),
    ),
    "android_en_2015.txt": ("android_txt", 6, 1, 1, {"Mina Park", "Joon Lee"}, {"Mina Park", "Joon Lee"}, set()),
    "android_ko_2015.txt": ("android_txt", 5, 0, 1, {"김하늘", "박지호"}, {"김하늘", "박지호"}, set()),
    "ios_ko_2015.txt": ("ios_txt", 3, 0, 0, {"김하늘", "박지호"}, {"김하늘", "박지호"}, set()),
    "excel_cp949.csv": ("pc_csv", 5, 1, 2, {"김하늘", "박지호"}, {"김하늘", "박지호"}, set()),
}
FIXTURE_FILES = sorted(FIXTURE_EXPECTED)


@pytest.mark.parametrize("name", FIXTURE_FILES)
def test_fixture_format(fixture_export, name):
    assert fixture_export(name).format == FIXTURE_EXPECTED[name][0]


@pytest.mark.parametrize("name", FIXTURE_FILES)
def test_fixture_counts(fixture_export, name):
    export = fixture_export(name)
    _format, message_count, multi_line, system_count, *_rest = FIXTURE_EXPECTED[name]
    assert len(messages(export)) == message_count
    assert multi_line_count(export) == multi_line
    assert len(system_rows(export)) == system_count


@pytest.mark.parametrize("name", FIXTURE_FILES)
def test_fixture_people(fixture_export, name):
    export = fixture_export(name)
    *_counts, expected_participants, expected_names, expected_self_labels = FIXTURE_EXPECTED[name]
    assert participants(export) == expected_participants
    assert export.names == frozenset(expected_names)
    assert export.self_labels == frozenset(expected_self_labels)


@pytest.mark.parametrize(
    ("name", "prefix", "timestamp"),
    [
        ("csv_en.csv", "Lunch at noon", datetime(2023, 4, 1, 12, 0)),
        ("csv_en.csv", "good night", datetime(2023, 4, 2, 0, 5)),
        ("ios_en.txt", "Lunch at noon", datetime(2023, 4, 1, 12, 0)),
        ("ios_en.txt", "good night", datetime(2023, 4, 2, 0, 5)),
        ("ios_ko_24h.txt", "점심 먹고", datetime(2023, 3, 1, 12, 0)),
        ("ios_ko_24h.txt", "내일 준비물", datetime(2023, 3, 1, 21, 31)),
        ("ios_ko_24h.txt", "잘 자요", datetime(2023, 3, 2, 0, 5)),
        ("android_en_2015.txt", "noon check", datetime(2015, 7, 10, 12, 3)),
        ("android_en_2015.txt", "good night", datetime(2015, 7, 11, 0, 5)),
        ("android_en_2015.txt", "Who's in", datetime(2015, 7, 9, 20, 34)),
        ("android_ko_2015.txt", "점심 먹었어", datetime(2015, 7, 10, 12, 3)),
        ("android_ko_2015.txt", "잘 자", datetime(2015, 7, 11, 0, 5)),
        ("excel_cp949.csv", "점심 먹어요", datetime(2022, 10, 30, 12, 3)),
        ("excel_cp949.csv", "잘 자", datetime(2022, 10, 31, 0, 5)),
        ("open_chat_pc_ko.txt", "저도 갈래요", datetime(2023, 3, 1, 21, 45)),
    ],
)
def test_fixture_timestamp(fixture_export, name, prefix, timestamp):
    assert message_by_prefix(fixture_export(name), prefix)["timestamp"] == timestamp


def test_csv_english_invite_needs_user_as_inviter():
    export = read_export(FIXTURES / "csv_en.csv")
    row = message_by_prefix(export, "Hi all.")
    assert row["sender"] == "Sora Han"
    assert "Sora Han invited" not in set(system_rows(export)["text"])


def test_csv_english_deleted_row_has_no_time():
    rows = system_rows(read_export(FIXTURES / "csv_en.csv"))
    deleted = rows[rows["text"] == "The message has been deleted."]
    assert len(deleted) == 1
    assert pd.isna(deleted.iloc[0]["timestamp"])


def test_ios_english_sender_split_at_first_separator():
    row = message_by_prefix(read_export(FIXTURES / "ios_en.txt"), "Me :")
    assert row["sender"] == "Joon Lee"
    assert row["text"] == "Me : definitely"


@pytest.mark.parametrize("name", ["open_chat_android_ko.txt", "open_chat_pc_ko.txt"])
def test_open_chat_policy_line_follows_join(name):
    table = read_export(FIXTURES / name).table
    joins = table.index[table["text"].str.endswith("님이 들어왔습니다.")]
    assert len(joins) == 2
    for join in joins:
        policy = table.loc[join + 1]
        assert policy["kind"] == "system"
        assert policy["text"].endswith("운영정책을 위반한 메시지로 신고 접수 시 카카오톡 이용에 제한이 있을 수 있습니다.")


@pytest.mark.parametrize("name", ["open_chat_android_ko.txt", "open_chat_pc_ko.txt", "open_chat_ios_ko.txt"])
def test_open_chat_admin_notices_are_system(name):
    texts = set(system_rows(read_export(FIXTURES / name))["text"])
    assert "채팅방 관리자가 메시지를 가렸습니다." in texts
    assert "광고맨 2호님을 내보냈습니다." in texts


def test_open_chat_nickname_with_slashes_keeps_message():
    row = message_by_prefix(read_export(FIXTURES / "open_chat_android_ko.txt"), "저도 갈래요")
    assert row["sender"] == "🌸 봄날 / 인천 / 30"
    assert row["text"] == "저도 갈래요\n내일 몇 시예요?"


@pytest.mark.parametrize(
    ("name", "placeholder"),
    [
        ("android_ko_2015.txt", "(사진)"),
        ("android_ko_2015.txt", "(이모티콘) "),
        ("android_en_2015.txt", "(photo)"),
        ("ios_ko_2015.txt", "<사진>"),
        ("csv_en.csv", "Photo"),
        ("csv_en.csv", "Video"),
    ],
)
def test_old_placeholders_stay_messages(name, placeholder):
    assert placeholder in set(messages(read_export(FIXTURES / name))["text"])


def test_cp949_multi_line_and_comma():
    export = read_export(FIXTURES / "excel_cp949.csv")
    assert message_by_prefix(export, "그럼 일요일")["text"] == "그럼 일요일 8시\n역 앞에서"
    assert message_by_prefix(export, "좋아요")["text"] == "좋아요, 일요일 어때요"


def test_cp949_text_file(tmp_path):
    text = "2022년 10월 29일 오후 9:03, 김하늘 : 안녕하세요\r\n"
    export = read_export(write_bytes(tmp_path, "chat.txt", text.encode("cp949")))
    assert export.format == "android_txt"
    assert list(export.table["text"]) == ["안녕하세요"]


def test_utf16_file(tmp_path):
    text = "2022. 10. 29. 오후 9:03, 김하늘 : 안녕\n"
    export = read_export(write_bytes(tmp_path, "chat.txt", text.encode("utf-16")))
    assert export.format == "ios_txt"
    assert list(export.table["sender"]) == ["김하늘"]


def test_pc_txt_english_bare_notice(tmp_path):
    lines = [
        "Hiking Crew with KakaoTalk Chats",
        "Date Saved : 2022-10-31 09:14:05",
        "",
        "--------------- Saturday, October 29, 2022 ---------------",
        "[Hana K] [9:03 PM] hello",
        "Mina Park joined this chatroom.",
        "[Mina Park] [9:05 PM] hi",
        "Mina Park left this chatroom.",
    ]
    export = read_export(write_text(tmp_path, "chat.txt", "\r\n".join(lines)))
    assert list(export.table["kind"]) == ["message", "system", "message", "system"]
    assert list(export.table["text"])[0] == "hello"
    assert export.names == {"Hana K", "Mina Park"}


# --- split iOS exports ---------------------------------------------------------------------------------------


def test_split_parts_merge_into_one_chat():
    exports = read_exports([FIXTURES / "split"])
    assert len(exports) == 1
    export = exports[0]
    folder = FIXTURES / "split"
    assert export.parts == tuple(folder / f"Talk_2023.03.05 2220-{number}.txt" for number in (1, 2, 3))
    assert export.path == export.parts[0]
    assert export.format == "ios_txt"
    assert len(messages(export)) == 4
    assert len(system_rows(export)) == 1
    assert export.names == {"김하늘", "박지호", "윤서연"}


def test_split_message_continues_across_parts():
    export = read_exports([FIXTURES / "split"])[0]
    assert list(messages(export)["text"]) == [
        "첫 번째 파일의 첫 메시지",
        "첫 번째 파일의 끝",
        "두 번째 파일의 메시지가\n여기서 끊겨서\n다음 파일로 이어집니다",
        "마지막 메시지",
    ]


def test_split_parts_sorted_by_number(tmp_path):
    paths = [
        write_text(tmp_path, f"chat-{number}.txt", f"2023. 3. 4. 오후 8:{number:02d}, 김하늘 : part {number}\n")
        for number in range(1, 12)
    ]
    groups = split_groups(sorted(paths))
    assert groups[paths[0]] == tuple(paths)
    export = read_exports([tmp_path])[0]
    assert list(export.table["text"]) == [f"part {number}" for number in range(1, 12)]


def test_split_with_gap_is_not_merged(tmp_path):
    for number in (1, 3):
        write_text(tmp_path, f"chat-{number}.txt", f"2023. 3. 4. 오후 8:0{number}, 김하늘 : part {number}\n")
    exports = read_exports([tmp_path])
    assert [len(export.parts) for export in exports] == [1, 1]


def test_split_error_names_part_and_its_line(tmp_path):
    write_text(tmp_path, "chat-1.txt", "Talk_chat-1.txt\n저장한 날짜 : 2023. 3. 5. 오후 10:20\n\n2023. 3. 4. 오후 8:00, A : a\n")
    part_two = write_text(
        tmp_path, "chat-2.txt", "Talk_chat-2.txt\n저장한 날짜 : 2023. 3. 5. 오후 10:20\n\n2023. 3. 4. 오후 8:01 B : b\n"
    )
    with pytest.raises(InputFormatError) as error:
        read_exports([tmp_path])
    assert f"{part_two}, line 4" in str(error.value)


# --- folders, plain text and JSON Lines ------------------------------------------------------------------------


def test_folder_read_sorted_and_hidden_skipped(tmp_path):
    shutil.copy(FIXTURES / "ios_en.txt", tmp_path / "b.txt")
    shutil.copy(FIXTURES / "csv_en.csv", tmp_path / "a.csv")
    write_bytes(tmp_path, ".DS_Store", b"\x00\x00\x00\x01Bud1")
    write_bytes(tmp_path, "__MACOSX/._a.csv", b"\x00\x05\x16\x07")
    exports = read_exports([tmp_path])
    assert [export.path.name for export in exports] == ["a.csv", "b.txt"]


def test_folder_skips_files_with_no_export_extension(tmp_path):
    shutil.copy(FIXTURES / "ios_en.txt", tmp_path / "chat.txt")
    write_bytes(tmp_path, "photo.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF")
    (tmp_path / "README.md").write_text("# notes about this export\n", encoding="utf-8")
    exports = read_exports([tmp_path])
    assert [export.path.name for export in exports] == ["chat.txt"]


def test_named_file_read_whatever_its_extension(tmp_path):
    path = shutil.copy(FIXTURES / "ios_en.txt", tmp_path / "chat.md")
    assert read_exports([path])[0].format == "ios_txt"


def test_same_file_twice_read_once(tmp_path):
    path = shutil.copy(FIXTURES / "ios_en.txt", tmp_path / "chat.txt")
    assert len(read_exports([path, tmp_path])) == 1


def test_missing_input_path(tmp_path):
    with pytest.raises(MissingFileError, match="does not exist"):
        read_exports([tmp_path / "nowhere.txt"])


def test_plain_text_one_message_per_line():
    export = read_export(FIXTURES / "plain.txt")
    assert export.format == "plain_txt"
    assert list(export.table["text"]) == ["첫 번째 메시지", "두 번째 메시지: 시간 없음", "세 번째\u2028같은 줄"]
    assert (export.table["sender"] == "").all()
    assert export.table["timestamp"].isna().all()
    assert export.names == frozenset()


def test_jsonl_text_field():
    export = read_export(FIXTURES / "messages.jsonl")
    assert export.format == "jsonl"
    assert list(export.table["text"]) == ["첫 번째 메시지", "여러 줄\n메시지"]
    assert (export.table["kind"] == "message").all()


def test_jsonl_invalid_json_names_line(tmp_path):
    path = write_text(tmp_path, "data.jsonl", '{"text": "a"}\n\n{"text": "b"\n')
    with pytest.raises(InputFormatError, match="line 3: invalid JSON") as error:
        read_export(path)
    assert str(path) in str(error.value)


def test_jsonl_missing_text_names_line(tmp_path):
    path = write_text(tmp_path, "data.jsonl", '{"text": "a"}\n{"body": "b"}\n')
    with pytest.raises(InputFormatError, match='line 2: no "text" string'):
        read_export(path)


def test_jsonl_text_must_be_string(tmp_path):
    path = write_text(tmp_path, "data.jsonl", '{"text": 5}\n')
    with pytest.raises(InputFormatError, match='line 1: no "text" string'):
        read_export(path)


def test_format_from_content_not_extension(tmp_path):
    android = write_text(tmp_path, "chat.csv", "2022년 10월 29일 오후 9:03, 김하늘 : 안녕\n")
    csv_text = write_text(tmp_path, "chat.txt", 'Date,User,Message\n2022-10-29 21:03:11,"김하늘","안녕"\n')
    assert read_export(android).format == "android_txt"
    assert read_export(csv_text).format == "pc_csv"


# --- empty, binary and unreadable files ----------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"   \r\n\n", b"\xef\xbb\xbf", b"\xef\xbb\xbf\r\n"])
def test_empty_file(tmp_path, data):
    path = write_bytes(tmp_path, "empty.txt", data)
    with pytest.raises(InputFormatError, match="is empty") as error:
        read_export(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("data", [b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", b"abc\x80\xff\xfe\x80def"])
def test_binary_file(tmp_path, data):
    path = write_bytes(tmp_path, "photo.jpg", data)
    with pytest.raises(InputFormatError, match="binary file") as error:
        read_export(path)
    assert str(path) in str(error.value)


def test_kakao_header_then_unknown_line(tmp_path):
    text = "등산 모임 님과 카카오톡 대화\n저장한 날짜 : 2022년 10월 31일 오전 9:14\n이 줄은 기록이 아닙니다\n"
    path = write_text(tmp_path, "chat.txt", text)
    with pytest.raises(InputFormatError, match="line 3") as error:
        read_export(path)
    assert "'이 줄은 기록이 아닙니다'" in str(error.value)
    assert str(path) in str(error.value)


def test_broken_record_in_kakao_file_quoted(tmp_path):
    lines = [
        "2022년 10월 29일 오후 9:03, 김하늘 : 안녕",
        "2022년 10월 29일 오후 9:04 박지호 : 쉼표가 빠진 줄",
        "2022년 10월 29일 오후 9:05, 김하늘 : 다음",
    ]
    path = write_text(tmp_path, "chat.txt", "\r\n".join(lines))
    with pytest.raises(InputFormatError, match="line 2: cannot read this line as an Android TXT export") as error:
        read_export(path)
    assert "쉼표가 빠진 줄" in str(error.value)


def test_plain_lines_before_kakao_record_rejected(tmp_path):
    lines = ["그냥 메모입니다", "두 번째 메모", "2022. 10. 29. 오후 9:03, 김하늘 : 대화 한 줄"]
    with pytest.raises(InputFormatError, match="line 1: cannot read this line as an iOS TXT export"):
        read_export(write_text(tmp_path, "notes.txt", "\n".join(lines)))


@pytest.mark.parametrize(
    "line",
    [
        "2022년 2월 30일 오후 9:03, 김하늘 : 없는 날짜",
        "2022년 10월 29일 오후 13:03, 김하늘 : 없는 시각",
        "2022년 10월 29일 9:63, 김하늘 : 없는 분",
    ],
)
def test_impossible_timestamp_rejected(tmp_path, line):
    path = write_text(tmp_path, "chat.txt", "2022년 10월 29일 오후 9:03, 김하늘 : 안녕\n" + line + "\n")
    with pytest.raises(InputFormatError, match="line 2.*does not exist"):
        read_export(path)


def test_csv_row_with_wrong_field_count(tmp_path):
    text = 'Date,User,Message\n2022-10-29 21:03:11,"김하늘","안녕"\n2022-10-29 21:04:00,"박지호","a","b"\n'
    with pytest.raises(InputFormatError, match="line 3.*4 fields"):
        read_export(write_text(tmp_path, "chat.csv", text))


def test_csv_row_with_bad_date(tmp_path):
    text = 'Date,User,Message\n어제 저녁,"김하늘","안녕"\n'
    with pytest.raises(InputFormatError, match="line 2.*Date field"):
        read_export(write_text(tmp_path, "chat.csv", text))


def test_csv_unclosed_quote(tmp_path):
    text = 'Date,User,Message\n2022-10-29 21:03:11,"김하늘","안녕\n'
    with pytest.raises(InputFormatError, match="line 2.*CSV error"):
        read_export(write_text(tmp_path, "chat.csv", text))


def test_csv_extension_without_kakao_header(tmp_path):
    path = write_text(tmp_path, "table.csv", "name,score\nkim,3\n")
    with pytest.raises(InputFormatError, match="line 1") as error:
        read_export(path)
    assert "'name,score'" in str(error.value)


def test_plain_text_file_with_kakao_words_stays_plain(tmp_path):
    text = "오늘 카카오톡 대화 내보내기를 했다\n[공지] 내일 모임\n2022년 10월 29일 토요일에 만나요\n"
    export = read_export(write_text(tmp_path, "diary.txt", text))
    assert export.format == "plain_txt"
    assert len(export.table) == 3


# --- lines inside messages that look like structure ----------------------------------------------------------


def test_date_line_inside_message_is_text(tmp_path):
    lines = [
        "2022. 10. 28. 오후 9:03, 김하늘 : 다음 모임 일정",
        "2022년 10월 29일 토요일",
        "오전 8시 역 앞",
        "2022. 10. 28. 오후 9:04, 박지호 : 좋아요",
    ]
    export = read_export(write_text(tmp_path, "chat.txt", "\n".join(lines)))
    assert list(export.table["text"]) == ["다음 모임 일정\n2022년 10월 29일 토요일\n오전 8시 역 앞", "좋아요"]


def test_dashes_and_dates_inside_pc_message_are_text(tmp_path):
    lines = [
        "--------------- 2022년 10월 28일 금요일 ---------------",
        "[김하늘] [오후 9:03] 공지",
        "--------------- 준비물 ---------------",
        "2022년 10월 29일 오후 9:30에 출발 : 늦지 마세요",
    ]
    export = read_export(write_text(tmp_path, "chat.txt", "\r\n".join(lines)))
    assert list(export.table["text"]) == [
        "공지\n--------------- 준비물 ---------------\n2022년 10월 29일 오후 9:30에 출발 : 늦지 마세요"
    ]


def test_message_line_starting_with_date_is_text(tmp_path):
    lines = ["2022년 10월 28일 오후 9:03, 김하늘 : 일정", "2022년 10월 29일 오후 9:30에 출발", "2022년 10월 28일 오후 9:04, 박지호 : 네"]
    export = read_export(write_text(tmp_path, "chat.txt", "\n".join(lines)))
    assert list(export.table["text"]) == ["일정\n2022년 10월 29일 오후 9:30에 출발", "네"]


@pytest.mark.parametrize(
    ("clock", "hour"), [("오전 12:05", 0), ("오전 0:05", 0), ("오전 9:05", 9), ("오후 12:05", 12), ("오후 0:05", 12), ("오후 9:05", 21)]
)
def test_twelve_hour_clock(tmp_path, clock, hour):
    path = write_text(tmp_path, "chat.txt", f"2022. 10. 29. {clock}, 김하늘 : 안녕\n")
    assert read_export(path).table["timestamp"].tolist() == [datetime(2022, 10, 29, hour, 5)]


def test_old_mac_line_ends(tmp_path):
    text = "2022. 10. 29. 오후 9:03, 김하늘 : 안녕\r둘째 줄\r2022. 10. 29. 오후 9:04, 박지호 : 네\r"
    export = read_export(write_text(tmp_path, "chat.txt", text))
    assert list(export.table["text"]) == ["안녕\n둘째 줄", "네"]


def test_brace_line_in_text_file_is_plain(tmp_path):
    export = read_export(write_text(tmp_path, "notes.txt", "{중괄호 메모}\n둘째 줄\n"))
    assert export.format == "plain_txt"
    assert list(export.table["text"]) == ["{중괄호 메모}", "둘째 줄"]


def test_json_object_lines_in_text_file(tmp_path):
    export = read_export(write_text(tmp_path, "data.txt", '{"text": "안녕"}\n'))
    assert export.format == "jsonl"


@pytest.mark.parametrize(
    ("date_text", "timestamp"),
    [
        ("2022-10-29 21:03:11", datetime(2022, 10, 29, 21, 3, 11)),
        ("2022-10-29 21:03", datetime(2022, 10, 29, 21, 3)),
        ("2022-10-29 오후 9:03:11", datetime(2022, 10, 29, 21, 3, 11)),
        ("2022-10-30 오전 12:05", datetime(2022, 10, 30, 0, 5)),
        ("2022/10/29 21:03", datetime(2022, 10, 29, 21, 3)),
        ("2022. 10. 29. 21:03", datetime(2022, 10, 29, 21, 3)),
        ("2022-10-29 9:03:11 PM", datetime(2022, 10, 29, 21, 3, 11)),
    ],
)
def test_csv_date_shapes_after_excel(tmp_path, date_text, timestamp):
    path = write_text(tmp_path, "chat.csv", f"Date,User,Message\r\n{date_text},김하늘,안녕\r\n")
    assert read_export(path).table["timestamp"].tolist() == [timestamp]


def test_first_bad_file_stops_reading(tmp_path):
    shutil.copy(FIXTURES / "ios_en.txt", tmp_path / "a.txt")
    bad = write_bytes(tmp_path, "b.txt", b"\x00\x01\x02")
    write_bytes(tmp_path, "c.txt", b"")
    with pytest.raises(InputFormatError) as error:
        read_exports([tmp_path])
    assert str(bad) in str(error.value)
