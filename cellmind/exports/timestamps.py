"""Building timestamps from the pieces the export layouts print.

12-hour clocks: 오전/AM 12:05 is 00:05 and 오후/PM 12:03 is noon. Hour 0 is read the way some clocks print it
(오전 0:05 is 00:05, 오후 0:30 is 12:30). A date or time that does not exist (month 13, 오후 13:00, 25:00)
raises ValueError, which the parsers turn into an error that quotes the line.
"""

from datetime import datetime

MONTHS = {
    name: number
    for number, names in enumerate(
        (
            ("jan", "january"),
            ("feb", "february"),
            ("mar", "march"),
            ("apr", "april"),
            ("may",),
            ("jun", "june"),
            ("jul", "july"),
            ("aug", "august"),
            ("sep", "sept", "september"),
            ("oct", "october"),
            ("nov", "november"),
            ("dec", "december"),
        ),
        start=1,
    )
    for name in names
}
MORNING = frozenset({"오전", "am"})
AFTERNOON = frozenset({"오후", "pm"})


def month_number(name: str) -> int:
    """Return 1-12 for an English month name or its abbreviation, in any case."""
    try:
        return MONTHS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown month name {name!r}") from None


def hour_of_day(hour: int, meridiem: str | None) -> int:
    """Convert a 12-hour clock hour with 오전/오후/AM/PM to 0-23; with no meridiem the hour is already 0-23."""
    if meridiem is None:
        return hour
    meridiem = meridiem.lower()
    if not 0 <= hour <= 12:
        raise ValueError(f"hour {hour} does not exist on a 12-hour clock")
    if meridiem in MORNING:
        return hour % 12
    if meridiem in AFTERNOON:
        return hour % 12 + 12
    raise ValueError(f"unknown meridiem {meridiem!r}")


def make_timestamp(
    year: str, month: str, day: str, hour: str, minute: str, meridiem: str | None = None, second: str = "0"
) -> datetime:
    """Build a timestamp from the digit strings a regex captured; ``month`` may also be an English name."""
    month_value = int(month) if month.isdigit() else month_number(month)
    return datetime(
        int(year), month_value, int(day), hour_of_day(int(hour), meridiem), int(minute), int(second or 0)
    )
