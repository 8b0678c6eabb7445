"""System notices (invite, join, leave, kick, hidden by the admin, the open-chat policy line) and the names in them.

Layouts that give every notice a timestamp (Android, iOS) mark system records by their shape. These patterns
are for the layouts that do not: Windows TXT writes notices as bare lines, and CSV files put them in the Message
column. A pattern matches a whole line, so a message that only mentions leaving does not count.

The exporter's own label (``회원님`` on Korean Android, ``you`` on English Android) stands for a person whose real
name appears only in system lines, such as the invite that added them.
"""

import re
from dataclasses import dataclass

SELF_LABELS = frozenset({"회원님", "you", "You"})

# The policy line KakaoTalk prints under a join notice in open chats; newer versions put a warning about
# impersonation in front of it.
OPEN_CHAT_POLICY = (
    r"(?:타인, ?기관 등의 사칭에 유의해 ?주세요\..*?)?"
    r"운영정책을 위반한 메시지로 신고 접수 시 카카오톡 이용에 제한이 있을 수 있습니다\.?"
)


@dataclass(frozen=True)
class NoticePattern:
    kind: str
    regex: re.Pattern
    names_group: str | None  # group holding the names, None when the notice names no person
    actor_group: str | None = None  # group holding the person who acted (the inviter)
    list_separator: re.Pattern | None = None  # how the names group lists several people


# Korean lists read "A님, B님과 C" (PC TXT: "A님, B님, C"); English ones "A, B and C", "A and B", or "A and"
# with nothing after the "and" (a CSV quirk).
KOREAN_LIST_SEPARATOR = re.compile(r"님, |님과 ")
ENGLISH_LIST_SEPARATOR = re.compile(r",\s*(?:and\s+)?|\s+and\s+|\s+and$")

NOTICES = (
    NoticePattern(
        "invite",
        re.compile(r"(?P<actor>.+?)님이 (?P<names>.+)님을 초대(?:했|하였)습니다\."),
        "names",
        "actor",
        KOREAN_LIST_SEPARATOR,
    ),
    NoticePattern("join", re.compile(r"(?P<names>.+?)님이 들어왔습니다\.(?:\s*" + OPEN_CHAT_POLICY + ")?"), "names"),
    NoticePattern("leave", re.compile(r"(?P<names>.+)님이 나갔습니다\."), "names"),
    NoticePattern("kick", re.compile(r"(?P<names>.+)님을 내보냈습니다\."), "names"),
    NoticePattern("hidden", re.compile(r"채팅방 관리자가 메시지를 가렸습니다\."), None),
    NoticePattern("policy", re.compile(OPEN_CHAT_POLICY), None),
    NoticePattern("invite", re.compile(r"(?P<actor>.+?) invited (?P<names>.+?)\."), "names", "actor", ENGLISH_LIST_SEPARATOR),
    NoticePattern("join", re.compile(r"(?P<names>.+) joined this chatroom\."), "names"),
    NoticePattern("leave", re.compile(r"(?P<names>.+) left this chatroom\."), "names"),
    NoticePattern("kick", re.compile(r"(?P<names>.+) has been removed from this chatroom\."), "names"),
)


# Every notice above ends with one of these, except the English invite, which contains " invited ".
NOTICE_ENDINGS = ("습니다.", "습니다", " this chatroom.")


@dataclass(frozen=True)
class Notice:
    kind: str
    names: tuple[str, ...]
    actor: str | None


def match_notice(line: str) -> Notice | None:
    """Return the notice a whole line states, with every person it names, or None if it is not one."""
    if not (line.endswith(NOTICE_ENDINGS) or " invited " in line):
        return None  # a quick test that skips the patterns for almost every message
    for pattern in NOTICES:
        match = pattern.regex.fullmatch(line)
        if match is None:
            continue
        names: list[str] = []
        actor = match.group(pattern.actor_group) if pattern.actor_group else None
        if actor:
            names.append(actor)
        if pattern.names_group:
            names.extend(_split_names(match.group(pattern.names_group), pattern.list_separator))
        return Notice(pattern.kind, tuple(names), actor)
    return None


def is_notice(line: str) -> bool:
    return match_notice(line) is not None


def names_in_system_text(text: str) -> list[str]:
    """Return the names in each line of a system row's text that states a known notice."""
    names: list[str] = []
    for line in text.split("\n"):
        notice = match_notice(line.strip())
        if notice is not None:
            names.extend(notice.names)
    return names


def _split_names(listed: str, separator: re.Pattern | None) -> list[str]:
    parts = separator.split(listed) if separator else [listed]
    return [name.strip() for name in parts if name.strip()]
