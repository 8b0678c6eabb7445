"""iOS TXT exports: Korean UI on a 12- or 24-hour clock, and English UI.

    Talk_2022.10.31 09:14-1.txt                                 title: the export's file name
    저장한 날짜 : 2022. 10. 31. 오전 9:14
    2022년 10월 29일 토요일                                       date line
    2022. 10. 29. 오후 9:03: 김도담님이 박한결님을 초대했습니다.    notice: ``:`` right after the time
    2022. 10. 29. 오후 9:03, 김도담 : 다들 주말에 시간 돼?          message
    2023. 3. 1. 21:31, 김도담 : text                             24-hour clock
    Saturday, October 29, 2022                                  English date line
    Oct 29, 2022 at 21:03, Hana K : text                        English message
    Oct 29, 2022 at 21:03: Hana K joined this chatroom.         English notice

Long chats come split into ``-1.txt``, ``-2.txt`` ... files, which the reader joins before parsing.
"""

import re
from datetime import date, datetime
from functools import lru_cache

from cellmind.exports.table import SYSTEM
from cellmind.exports.text_layout import Record, TextLayout, split_sender
from cellmind.exports.timestamps import make_timestamp, month_number

KOREAN_STAMP = r"(\d{4})\. (\d{1,2})\. (\d{1,2})\. (?:(오전|오후) )?(\d{1,2}):(\d{2})"
ENGLISH_STAMP = r"([A-Z][a-z]{2,8})\.? (\d{1,2}), (\d{4}) at (\d{1,2}):(\d{2})(?: ?([AaPp][Mm]))?"
# A record is a stamp, then ", NAME : text" for a message or ": text" for a notice.
RECORDS = tuple(re.compile(f"({stamp})(?P<separator>[,:]) ?(?P<rest>.*)") for stamp in (KOREAN_STAMP, ENGLISH_STAMP))
KOREAN, ENGLISH = re.compile(KOREAN_STAMP), re.compile(ENGLISH_STAMP)
KOREAN_DAY = re.compile(r"(\d{4})년 (\d{1,2})월 (\d{1,2})일 \S+요일")
ENGLISH_DAY = re.compile(r"[A-Z][a-z]+, ([A-Z][a-z]{2,8}) (\d{1,2}), (\d{4})")
SAVED_DATE = re.compile(
    r"(?:저장한 날짜 : \d{4}\. \d{1,2}\. \d{1,2}\. |Date Saved : [A-Z][a-z]{2,8} \d{1,2}, \d{4} at ).*"
)
# A full timestamp followed later by `` : `` but not by ", " or ": " is a record with a broken separator.
NEAR_MISS = re.compile(f"(?:{KOREAN_STAMP}|{ENGLISH_STAMP})(?![,:] ).* : ")


def classify(line: str, day: date | None) -> Record | date | None:
    for record in RECORDS:
        match = record.fullmatch(line)
        if match:
            stamp, separator, rest = match.group(1, "separator", "rest")
            timestamp = parse_stamp(stamp)
            return (timestamp, "", rest, SYSTEM) if separator == ":" else split_sender(timestamp, rest)
    return _day_line(line)


@lru_cache(maxsize=4096)
def parse_stamp(stamp: str) -> datetime:
    """Parse a record's timestamp; cached because consecutive messages often share the same minute."""
    if match := KOREAN.fullmatch(stamp):
        year, month, day_of_month, meridiem, hour, minute = match.groups()
    else:
        month, day_of_month, year, hour, minute, meridiem = ENGLISH.fullmatch(stamp).groups()
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
    format="ios_txt",
    classify=classify,
    record_signatures=RECORDS,
    other_signatures=(KOREAN_DAY, ENGLISH_DAY, SAVED_DATE),
    near_miss=NEAR_MISS,
)
