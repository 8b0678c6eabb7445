"""Cleaning rules, one table of cases per rule, and the name matcher."""

import re

import pandas as pd
import pytest

from cellmind import cleaning, tokens
from cellmind.cleaning import NameMatcher, clean_table, clean_texts

NAMES = ["김도담", "박한결", "이윤슬", "정새봄", "최다온", "Hana K", "남궁민수", "🐰토끼/Bunny (방장)", "a.b*c+"]
MATCHER = NameMatcher(NAMES)


def clean_one(text: str, matcher: NameMatcher = MATCHER) -> str:
    cleaned, _ = clean_texts(pd.Series([text]), matcher)
    return cleaned.iloc[0]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("내일\u200b봐요", "내일봐요"),
        ("\ufeff안녕", "안녕"),
        ("a\u200cb\u2060c\u200ed\u00ade", "abcde"),
        ("왜\x08요", "왜요"),
        ("zwj\u200d alone", "zwj alone"),
        ("사설\ue000문자\uf8ff", "사설문자"),
        ("nul\x00inside", "nulinside"),
    ],
)
def test_invisible_characters_removed(text, expected):
    assert clean_one(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a\n\n\nb", "a\nb"),
        ("a\r\n\r\nb", "a\nb"),
        ("a \n \n b", "a\nb"),
        ("준비물 \u2028\t1.\t물", "준비물\n1. 물"),
        ("a\u2029b", "a\nb"),
        ("  가운데  ", "가운데"),
        ("\n\n맨 앞 줄바꿈", "맨 앞 줄바꿈"),
        ("nbsp\u00a0space", "nbsp space"),
    ],
)
def test_newlines_and_spaces(text, expected):
    assert clean_one(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("사진", tokens.PHOTO),
        ("사진 3장", tokens.PHOTO),
        ("사진 12장", tokens.PHOTO),
        ("(사진)", tokens.PHOTO),
        ("<사진>", tokens.PHOTO),
        ("<사진 읽지 않음>", tokens.PHOTO),
        ("Photo", tokens.PHOTO),
        ("photo", tokens.PHOTO),
        ("Photos", tokens.PHOTO),
        ("3 photos", tokens.PHOTO),
        ("사진 ", tokens.PHOTO),
        ("사진 보여줘", "사진 보여줘"),
        ("photo of the trail", "photo of the trail"),
    ],
)
def test_photo_messages(text, expected):
    assert clean_one(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("동영상", tokens.MOVIE),
        ("(동영상)", tokens.MOVIE),
        ("<동영상 읽지 않음>", tokens.MOVIE),
        ("Video", tokens.MOVIE),
        ("2 videos", tokens.MOVIE),
        ("동영상 봤어?", "동영상 봤어?"),
    ],
)
def test_video_messages(text, expected):
    assert clean_one(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("이모티콘", tokens.EMOJI),
        ("이모티콘 ", tokens.EMOJI),
        ("이모티콘 저도 갈래요", f"{tokens.EMOJI} 저도 갈래요"),
        ("(이모티콘) ", tokens.EMOJI),
        ("(이모티콘) 좋아요", f"{tokens.EMOJI} 좋아요"),
        ("Emoticons", tokens.EMOJI),
        ("emoticon", tokens.EMOJI),
        ("이모티콘이 귀엽다", "이모티콘이 귀엽다"),
    ],
)
def test_emoticon_messages(text, expected):
    assert clean_one(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("코스 https://example.com/trail/map?id=42&lang=ko", f"코스 {tokens.URL}"),
        ("봐 http://a.kr/x.", f"봐 {tokens.URL}."),
        ("(https://example.com/a)", f"({tokens.URL})"),
        ("www.naver.com 접속", f"{tokens.URL} 접속"),
        ("여기 open.kakao.com/o/abc 들어와", f"여기 {tokens.URL} 들어와"),
        ("youtu.be/xyz123", tokens.URL),
        ("버전 3.5 입니다", "버전 3.5 입니다"),
        ("file.pdf", "file.pdf"),
    ],
)
def test_urls(text, expected):
    assert clean_one(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("억울하다 😂😂", f"억울하다 {tokens.EMOJI}{tokens.EMOJI}"),
        ("👨\u200d👩\u200d👧 가족", f"{tokens.EMOJI} 가족"),
        ("🤸\u200d♂️ 스트레칭", f"{tokens.EMOJI} 스트레칭"),
        ("좋아요👍🏽", f"좋아요{tokens.EMOJI}"),
        ("즐거웠어요❤️", f"즐거웠어요{tokens.EMOJI}"),
        ("🇰🇷 화이팅", f"{tokens.EMOJI} 화이팅"),
        ("1️⃣ 번", f"{tokens.EMOJI} 번"),
        ("✅\u00a0간식", f"{tokens.EMOJI} 간식"),
        ("🏴\U000E0067\U000E0062\U000E0065\U000E006E\U000E0067\U000E007F", tokens.EMOJI),
        ("화살표 → 그대로", "화살표 → 그대로"),
    ],
)
def test_emoji(text, expected):
    assert clean_one(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("좋아ㅋㅋㅋㅋㅋㅋㅋㅋ", "좋아ㅋㅋㅋㅋㅋ"),
        ("ㅋㅋㅋㅋㅋ", "ㅋㅋㅋㅋㅋ"),
        ("괜찮아요!!!!!!!", "괜찮아요!!!!!"),
        ("와아아아아아아 경치", "와아아아아아 경치"),
        ("a      b", "a      b"),
        ("😂😂😂😂😂😂😂", tokens.EMOJI * 5),
        ("ㅠㅠㅠㅠㅠㅠ", "ㅠㅠㅠㅠㅠ"),
    ],
)
def test_repeats_cut_to_five(text, expected):
    assert clean_one(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("()", ""),
        ("웃음 ()", "웃음"),
        ("( ) 빈칸", "빈칸"),
        ("(내용) 유지", "(내용) 유지"),
        ("（）전각", "전각"),
    ],
)
def test_empty_parentheses_removed(text, expected):
    assert clean_one(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Sunday Works", "sunday works"),
        ("ÄBC", "äbc"),
        ("한글 그대로", "한글 그대로"),
    ],
)
def test_lowercase(text, expected):
    assert clean_one(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("김도담 왔어", f"{tokens.NAME} 왔어"),
        ("(윤슬이 너 말하는 거야)", f"({tokens.NAME} 너 말하는 거야)"),
        ("윤슬아 빨리", f"{tokens.NAME} 빨리"),
        ("한결님 친구", f"{tokens.NAME} 친구"),
        ("다온님 환영해요", f"{tokens.NAME} 환영해요"),
        ("도담님이 쏜대요", f"{tokens.NAME}이 쏜대요"),
        ("새봄씨 안녕", f"{tokens.NAME} 안녕"),
        ("윤슬이가 했어", f"{tokens.NAME}가 했어"),
        ("최다온이에요", f"{tokens.NAME}에요"),
        ("도담 is paying", f"{tokens.NAME} is paying"),
        ("Lunch, HANA K?", f"lunch, {tokens.NAME}?"),
        ("hana   k 왔다", f"{tokens.NAME} 왔다"),
        ("hana kim", "hana kim"),
        ("민수야 남궁민수 씨", f"{tokens.NAME} {tokens.NAME} 씨"),
        ("🐰토끼/bunny (방장) 님", f"{tokens.NAME} 님"),
        ("a.b*c+ 그리고 abxc", f"{tokens.NAME} 그리고 abxc"),
    ],
)
def test_names(text, expected):
    assert clean_one(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("번호 010-1234-5678", f"번호 {tokens.PHONE}"),
        ("01012345678로", f"{tokens.PHONE}로"),
        ("010 1234 5678", tokens.PHONE),
        ("010.1234.5678", tokens.PHONE),
        ("집 02-123-4567", f"집 {tokens.PHONE}"),
        ("031-1234-5678", tokens.PHONE),
        ("+82 10-1234-5678", tokens.PHONE),
        ("+821012345678", tokens.PHONE),
        ("날짜 2022-10-29", "날짜 2022-10-29"),
        ("10,000원", "10,000원"),
        ("12010-1234-5678", "12010-1234-5678"),
    ],
)
def test_phone_numbers(text, expected):
    assert clean_one(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("메일 foo.bar@example.com 로", f"메일 {tokens.EMAIL} 로"),
        ("Foo+tag@Mail.co.kr", tokens.EMAIL),
        ("aaaaaaa@naver.com", tokens.EMAIL),
        ("@멘션 아님", "@멘션 아님"),
    ],
)
def test_email_addresses(text, expected):
    assert clean_one(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<|endoftext|>", "<endoftext>"),
        ("<|start|> hi <|pad|>", "<start> hi <pad>"),
        ("<||endoftext||>", "<endoftext>"),
        ("<\u200b|endoftext|\u200b>", "<endoftext>"),
        ("<()|endoftext|()>", "<endoftext>"),
        ("<NAME> 이라고 쳤어", "<name> 이라고 쳤어"),
        ("<PHOTO>", "<photo>"),
        ("\ue000", ""),
        ("a | b", "a | b"),
    ],
)
def test_typed_tokens_are_neutralized(text, expected):
    cleaned = clean_one(text)
    assert cleaned == expected
    for special in tokens.SPECIAL_TOKENS:
        assert special not in cleaned


@pytest.mark.parametrize(
    "text, reason",
    [
        ("삭제된 메시지입니다.", cleaning.DELETED),
        ("삭제된 메시지입니다. ", cleaning.DELETED),
        ("메시지가 삭제되었습니다.", cleaning.DELETED),
        ("This message has been deleted.", cleaning.DELETED),
        ("The message has been deleted.", cleaning.DELETED),
        ("채팅방 관리자가 메시지를 가렸습니다.", cleaning.HIDDEN),
        ("보이스톡 해요", cleaning.CALL),
        ("보이스톡 0:42", cleaning.CALL),
        ("보이스톡 취소", cleaning.CALL),
        ("보이스톡 부재중", cleaning.CALL),
        ("페이스톡 해요", cleaning.CALL),
        ("페이스톡 1:02:03", cleaning.CALL),
        ("Voice Call", cleaning.CALL),
        ("Voice Call 0:42", cleaning.CALL),
        ("Missed call", cleaning.CALL),
        ("Missed Voice Call", cleaning.CALL),
        ("파일: 준비물_체크리스트.pdf", cleaning.FILE),
        ("File: report.xlsx", cleaning.FILE),
        ("샵검색 : #일요일날씨", cleaning.SHARE),
        ("#검색: 날씨", cleaning.SHARE),
        ("톡게시판 '공지': 일요일 등산 일정", cleaning.SHARE),
        ("지도", cleaning.LOCATION),
        ("연락처", cleaning.CONTACT),
        ("음성메시지", cleaning.VOICE_MESSAGE),
        ("Voice Message", cleaning.VOICE_MESSAGE),
        ("   ", cleaning.EMPTY),
        ("\u200b", cleaning.EMPTY),
        ("()", cleaning.EMPTY),
    ],
)
def test_notices_dropped_with_reason(text, reason):
    cleaned, report = clean_texts(pd.Series([text, "남는 메시지"]), MATCHER)
    assert cleaned.tolist() == ["", "남는 메시지"]
    assert report.dropped == {reason: 1}
    assert report.messages_kept == 1


@pytest.mark.parametrize(
    "text",
    ["보이스톡 좋아?", "파일 보내줘", "삭제된 메시지입니다. 라고 떴어", "File: report.xlsx\n확인 부탁해요"],
)
def test_lookalike_messages_kept(text):
    cleaned, report = clean_texts(pd.Series([text]), MATCHER)
    assert cleaned.iloc[0] != ""
    assert report.dropped == {}


def test_given_names_of_three_syllable_names():
    matcher = NameMatcher(["이윤슬", "Hana K", "남궁민수", "김하나둘"])
    assert set(matcher.forms) == {"이윤슬", "윤슬", "hana k", "남궁민수", "민수", "김하나둘"}


def test_one_character_names_are_skipped():
    matcher = NameMatcher(["A", "별", "김도담"])
    assert matcher.skipped == ("A", "별")
    assert clean_one("a 별 김도담", matcher) == f"a 별 {tokens.NAME}"


def test_longest_name_first():
    matcher = NameMatcher(["김도", "김도담"])
    cleaned, report = clean_texts(pd.Series(["김도담 김도"]), matcher)
    assert cleaned.iloc[0] == f"{tokens.NAME} {tokens.NAME}"
    assert report.name_mentions == 2


def test_audit_finds_names():
    found = MATCHER.find(pd.Series(["윤슬 왔다", "hana k and hana kim", "없음"]))
    assert found == {"hana k": 1, "윤슬": 1}


def test_report_counts():
    texts = pd.Series(["사진", "😂 https://a.com", "김도담 010-1234-5678", "삭제된 메시지입니다.", ""])
    cleaned, report = clean_texts(texts, MATCHER)
    assert report.placeholders == {
        tokens.PHOTO: 1, tokens.EMOJI: 1, tokens.URL: 1, tokens.NAME: 1, tokens.PHONE: 1,
    }
    assert report.name_mentions == 1
    assert report.dropped == {cleaning.DELETED: 1, cleaning.EMPTY: 1}
    assert report.messages_kept == 3
    assert cleaned.index.equals(texts.index)


def test_clean_table_drops_system_rows_and_keeps_order():
    table = pd.DataFrame(
        {
            "timestamp": pd.to_datetime(["2022-10-29 21:03", "2022-10-29 21:04", None, "2022-10-29 21:06"]),
            "sender": ["김도담", "", "이윤슬", "박한결"],
            "text": ["안녕 윤슬아", "김도담님이 나갔습니다.", "사진", "보이스톡 해요"],
            "kind": ["message", "system", "message", "message"],
        }
    )
    seen = []
    cleaned, report = clean_table(table, MATCHER, chunk_size=2, progress=seen.append)
    assert cleaned["text"].tolist() == [f"안녕 {tokens.NAME}", tokens.PHOTO]
    assert cleaned.index.tolist() == [0, 2]
    assert report.dropped == {cleaning.SYSTEM: 1, cleaning.CALL: 1}
    assert report.messages_kept == 2
    assert sum(seen) == len(table)


def test_cleaning_many_messages_matches_one_by_one():
    texts = ["김도담 ㅋㅋㅋㅋㅋㅋㅋ 😂", "사진", "", "보이스톡 해요", "https://x.com 와아아아아아아", "<|pad|>"] * 3
    together, _ = clean_texts(pd.Series(texts), MATCHER)
    assert together.tolist() == [clean_one(text) for text in texts]


try:  # sre's parser, internal: used only to check the tables of whole-message forms
    from re import _constants as sre
    from re import _parser
except ImportError:  # Python 3.10
    import sre_constants as sre
    import sre_parse as _parser


def first_characters(items) -> set[str]:
    """Characters a parsed regular expression can start with (enough of sre's node types for the tables)."""
    chars = set()
    for op, av in items:
        if op is sre.LITERAL:
            return chars | {chr(av)}
        if op is sre.IN:
            for kind, value in av:
                if kind is sre.LITERAL:
                    chars.add(chr(value))
                elif kind is sre.RANGE:
                    chars.update(chr(code) for code in range(value[0], value[1] + 1))
                elif kind is sre.CATEGORY and value is sre.CATEGORY_DIGIT:
                    chars.update("0123456789")
                else:
                    raise AssertionError(f"unhandled class item {kind}")
            return chars
        if op is sre.SUBPATTERN:
            return chars | first_characters(list(av[3]))
        if op is sre.BRANCH:
            return chars.union(*(first_characters(list(branch)) for branch in av[1]))
        if op in (sre.MAX_REPEAT, sre.MIN_REPEAT):
            chars |= first_characters(list(av[2]))
            if av[0] > 0:
                return chars
            continue
        raise AssertionError(f"unhandled node {op}")
    return chars


def test_whole_message_forms_start_with_listed_characters():
    forms = [form for table in cleaning.WHOLE_MESSAGE_PLACEHOLDERS.values() for form in table]
    forms += list(cleaning.EMOTICON_NOTICES) + [form for table in cleaning.NOTICES.values() for form in table]
    listed = re.compile(f"[{cleaning.WHOLE_MESSAGE_FIRST_CHARACTERS}]", re.I)
    for form in forms:
        starts = first_characters(list(_parser.parse(form)))
        assert starts, form
        assert all(listed.fullmatch(char) for char in starts), (form, starts)


@pytest.mark.parametrize("count", [1, 7, 40])
def test_url_and_repeat_triggers_cover_every_match(count):
    texts = ["ㅋ" * 7 + " naver.com", "x.kr 와", "보기 HTTPS://A.B/c", "WWW.x.zz", "없음 3.5", "aaaaaa@b.com"] * count
    cleaned, _ = clean_texts(pd.Series(texts), MATCHER)
    assert cleaned.str.contains(tokens.URL, regex=False).sum() == 4 * count
    assert cleaned.str.contains(tokens.EMAIL, regex=False).sum() == count
    assert "ㅋ" * 6 not in "".join(cleaned)


def test_trie_matches_flat_alternation():
    matcher = NameMatcher(["김도", "김도담", "박도담이", "Ann", "Anna Lee", "an b", "🐰토끼", "토끼풀"])
    flat = re.compile("|".join(cleaning._form_pattern(form, with_endings=True) for form in matcher.forms))
    text = "김도담님 김도야 도담이가 ann anna lee annex an  b 토끼풀 토끼야 \ue006토끼 banna"
    assert matcher.pattern.sub("#", text) == flat.sub("#", text)
    assert matcher.pattern.sub("#", text) == "# # #가 # # annex # # # # banna"
