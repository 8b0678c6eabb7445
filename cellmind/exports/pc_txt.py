"""Windows PC TXT exports, Korean and English UI.

    등산 모임 님과 카카오톡 대화                                  title (English: "NAME with KakaoTalk Chats")
    저장한 날짜 : 2022-10-31 09:14:05
    --------------- 2022년 10월 29일 토요일 ---------------      date line
    김도담님이 박한결님, 이윤슬님을 초대하였습니다.                   notice: a bare line, no timestamp
    [김도담] [오후 9:03] 다들 주말에 시간 돼?                      message (English: [9:03 PM])

Records carry only a time; the date comes from the date line above them. A record before any date line gets
no timestamp. Notices have no time at all, so their rows have none either.
"""

import re
from datetime import date, datetime, time
from functools import lru_cache

from cellmind.exports.table import MESSAGE
from cellmind.exports.text_layout import Record, TextLayout
from cellmind.exports.timestamps import hour_of_day, month_number

RECORD = re.compile(r"\[(.+?)\] \[(?:(오전|오후) )?(\d{1,2}):(\d{2})(?: ?([AaPp][Mm]))?\] ?(.*)")
DAY = re.compile(r"-{15} (.*\d{4}.*) -{15}")  # a line of dashes without a year is message text
KOREAN_DATE = re.compile(r"(\d{4})년 (\d{1,2})월 (\d{1,2})일(?: \S+요일)?")
ENGLISH_DATE = re.compile(r"(?:[A-Z][a-z]+, )?([A-Z][a-z]{2,8}) (\d{1,2}), (\d{4})")
SAVED_DATE = re.compile(r"(?:저장한 날짜|Date Saved) : \d{4}-\d{1,2}-\d{1,2} \d{1,2}:\d{2}.*")
DAY_SIGNATURE = re.compile(r"-{15} (?:\d{4}년 \d{1,2}월 \d{1,2}일|(?:[A-Z][a-z]+, )?[A-Z][a-z]{2,8} \d{1,2}, \d{4}).* -{15}")
NEAR_MISS = re.compile(r"\[[^\]]*\] \[(?:(?:오전|오후) )?\d{1,2}:\d{2}")


def classify(line: str, day: date | None) -> Record | date | None:
    match = RECORD.fullmatch(line)
    if match:
        sender, korean_meridiem, hour, minute, english_meridiem, text = match.groups()
        return (_timestamp(day, hour, minute, korean_meridiem or english_meridiem), sender, text, MESSAGE)
    match = DAY.fullmatch(line)
    if match:
        return _parse_date(match.group(1))
    return None


@lru_cache(maxsize=4096)
def _timestamp(day: date | None, hour: str, minute: str, meridiem: str | None) -> datetime | None:
    """Combine the date line's day with a record's time; cached because messages often share a minute."""
    clock = time(hour_of_day(int(hour), meridiem), int(minute))
    return datetime.combine(day, clock) if day else None


def _parse_date(text: str) -> date:
    if match := KOREAN_DATE.fullmatch(text):
        year, month, day_of_month = match.groups()
        return date(int(year), int(month), int(day_of_month))
    if match := ENGLISH_DATE.fullmatch(text):
        month, day_of_month, year = match.groups()
        return date(int(year), month_number(month), int(day_of_month))
    raise ValueError(f"unknown date line {text!r}")


LAYOUT = TextLayout(
    format="pc_txt",
    classify=classify,
    record_signatures=(RECORD,),
    other_signatures=(DAY_SIGNATURE, SAVED_DATE),
    near_miss=NEAR_MISS,
    bare_notices=True,
)
