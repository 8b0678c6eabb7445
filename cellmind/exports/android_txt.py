"""Android TXT exports, Korean and English UI, including the 2015 English layout.

    2022년 10월 29일 오후 9:03                                   date line
    2022년 10월 29일 오후 9:03, 김도담 : 다들 주말에 시간 돼?     message
    2022년 10월 29일 오후 9:03, 김도담님이 박한결님을 초대했습니다.  notice (no `` : ``)
    October 29, 2022, 9:03 PM, Hana K : Sunday works for me
    8:34pm, July 9, 2015, Hana K : text                         (2015)

The date line is the next record's timestamp with nothing after it. The exporter appears as ``회원님`` or ``you``.
"""

import re
from datetime import date

from cellmind.exports.text_layout import DayLine, Record, TextLayout, split_sender
from cellmind.exports.timestamps import make_timestamp, month_number

KOREAN = re.compile(r"(\d{4})년 (\d{1,2})월 (\d{1,2})일 (?:(오전|오후) )?(\d{1,2}):(\d{2})(?:, (.*))?")
ENGLISH = re.compile(r"([A-Z][a-z]{2,8})\.? (\d{1,2}), (\d{4}),? (\d{1,2}):(\d{2})(?: ?([AaPp][Mm]))?(?:, (.*))?")
ENGLISH_2015 = re.compile(r"(\d{1,2}):(\d{2}) ?([AaPp][Mm]), ([A-Z][a-z]{2,8})\.? (\d{1,2}), (\d{4})(?:, (.*))?")
KOREAN_DAY = re.compile(r"(\d{4})년 (\d{1,2})월 (\d{1,2})일(?: \S+요일)?")
ENGLISH_DAY = re.compile(r"(?:[A-Z][a-z]+, )?([A-Z][a-z]{2,8}) (\d{1,2}), (\d{4})")
SAVED_DATE = re.compile(r"(?:저장한 날짜 : \d{4}년 |Date Saved : [A-Z][a-z]+ \d{1,2}, \d{4}, \d).*")
NEAR_MISS = re.compile(
    r"\d{4}년 \d{1,2}월 \d{1,2}일 (?:(?:오전|오후) )?\d{1,2}:\d{2}"
    r"|[A-Z][a-z]{2,8}\.? \d{1,2}, \d{4},? \d{1,2}:\d{2}"
    r"|\d{1,2}:\d{2} ?[AaPp][Mm], [A-Z][a-z]{2,8}\.? \d{1,2}, \d{4}"
)


def classify(line: str, day: date | None) -> Record | DayLine | None:
    match = KOREAN.fullmatch(line)
    if match:
        year, month, day_of_month, meridiem, hour, minute, rest = match.groups()
    elif match := ENGLISH.fullmatch(line):
        month, day_of_month, year, hour, minute, meridiem, rest = match.groups()
    elif match := ENGLISH_2015.fullmatch(line):
        hour, minute, meridiem, month, day_of_month, year, rest = match.groups()
    else:
        return _day_line(line)
    timestamp = make_timestamp(year, month, day_of_month, hour, minute, meridiem)
    if rest is None:
        return DayLine(timestamp.date())
    return split_sender(timestamp, rest)


def _day_line(line: str) -> DayLine | None:
    if match := KOREAN_DAY.fullmatch(line):
        year, month, day_of_month = match.groups()
    elif match := ENGLISH_DAY.fullmatch(line):
        month, day_of_month, year = match.groups()
    else:
        return None
    return DayLine(date(int(year), month_number(month) if not month.isdigit() else int(month), int(day_of_month)))


LAYOUT = TextLayout(
    format="android_txt",
    label="an Android TXT export",
    classify=classify,
    record_signatures=(KOREAN, ENGLISH, ENGLISH_2015),
    other_signatures=(SAVED_DATE,),
    near_miss=NEAR_MISS,
)
