"""Android TXT exports, Korean and English UI, including the 2015 English layout.

    2022년 10월 29일 오후 9:03                                   date line
    2022년 10월 29일 오후 9:03, 김도담 : 다들 주말에 시간 돼?     message
    2022년 10월 29일 오후 9:03, 김도담님이 박한결님을 초대했습니다.  notice (no `` : ``)
    October 29, 2022, 9:03 PM                                   English date line
    October 29, 2022, 9:03 PM, Hana K : Sunday works for me
    8:34pm, July 9, 2015, Hana K : text                         2015

The date line is the next record's timestamp with nothing after it. The exporter appears as ``회원님`` or ``you``.
"""

import re
from datetime import date, datetime
from functools import lru_cache

from cellmind.exports.text_layout import Record, TextLayout, split_sender
from cellmind.exports.timestamps import make_timestamp, month_number

KOREAN_STAMP = r"(\d{4})년 (\d{1,2})월 (\d{1,2})일 (?:(오전|오후) )?(\d{1,2}):(\d{2})"
ENGLISH_STAMP = r"([A-Z][a-z]{2,8})\.? (\d{1,2}), (\d{4}),? (\d{1,2}):(\d{2})(?: ?([AaPp][Mm]))?"
ENGLISH_2015_STAMP = r"(\d{1,2}):(\d{2}) ?([AaPp][Mm]), ([A-Z][a-z]{2,8})\.? (\d{1,2}), (\d{4})"
# A record is a stamp, then ", " and the rest; a date line is the stamp alone.
RECORDS = tuple(re.compile(f"({stamp})(?:, (?P<rest>.*))?") for stamp in (KOREAN_STAMP, ENGLISH_STAMP, ENGLISH_2015_STAMP))
KOREAN, ENGLISH, ENGLISH_2015 = (re.compile(stamp) for stamp in (KOREAN_STAMP, ENGLISH_STAMP, ENGLISH_2015_STAMP))
KOREAN_DAY = re.compile(r"(\d{4})년 (\d{1,2})월 (\d{1,2})일(?: \S+요일)?")
ENGLISH_DAY = re.compile(r"(?:[A-Z][a-z]+, )?([A-Z][a-z]{2,8}) (\d{1,2}), (\d{4})")
SAVED_DATE = re.compile(r"(?:저장한 날짜 : \d{4}년 |Date Saved : [A-Z][a-z]+ \d{1,2}, \d{4}, \d).*")
# A line that starts with a full timestamp and has a `` : `` later, but not the ", " right after the timestamp, is
# a record with a broken separator. A message line that merely starts with a date has no `` : `` and stays text.
NEAR_MISS = re.compile(f"(?:{KOREAN_STAMP}|{ENGLISH_STAMP}|{ENGLISH_2015_STAMP})(?!, ).* : ")


def classify(line: str, day: date | None) -> Record | date | None:
    for record in RECORDS:
        match = record.fullmatch(line)
        if match:
            stamp, rest = match.group(1, "rest")
            timestamp = parse_stamp(stamp)
            return timestamp.date() if rest is None else split_sender(timestamp, rest)
    return _day_line(line)


@lru_cache(maxsize=4096)
def parse_stamp(stamp: str) -> datetime:
    """Parse a record's timestamp; cached because consecutive messages often share the same minute."""
    if match := KOREAN.fullmatch(stamp):
        year, month, day_of_month, meridiem, hour, minute = match.groups()
    elif match := ENGLISH.fullmatch(stamp):
        month, day_of_month, year, hour, minute, meridiem = match.groups()
    else:
        hour, minute, meridiem, month, day_of_month, year = ENGLISH_2015.fullmatch(stamp).groups()
    return make_timestamp(year, month, day_of_month, hour, minute, meridiem)


def _day_line(line: str) -> date | None:
    if match := KOREAN_DAY.fullmatch(line):
        year, month, day_of_month = match.groups()
        return date(int(year), int(month), int(day_of_month))
    if match := ENGLISH_DAY.fullmatch(line):
        month, day_of_month, year = match.groups()
        return date(int(year), month_number(month), int(day_of_month))
    return None


LAYOUT = TextLayout(
    format="android_txt",
    classify=classify,
    record_signatures=RECORDS,
    other_signatures=(SAVED_DATE,),
    near_miss=NEAR_MISS,
)
