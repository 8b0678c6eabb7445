"""Cleaning and anonymizing chat messages: ``clean_table(table, NameMatcher(names)) -> (table, CleaningReport)``.

The rules run over many messages at once. The message texts are joined into one string with NUL (``SEP``)
between them, each rule is one regular-expression pass over that string, and the string is split again at the
end. This saves the Python call per message and rule that a loop pays. Rules whose pattern cannot skip ahead
quickly (URLs, e-mail, repeats) run only on the messages where a cheap search finds a candidate.

Order of the rules, applied to the ``text`` of every ``kind == "message"`` row:

1. Remove invisible characters: zero-width and BOM characters (U+200B, U+200C, U+2060, U+FEFF ...), bidi
   marks, the soft hyphen, control characters other than tab and line breaks, and private-use characters. The
   last are removed because cleaning uses private-use characters as sentinels for placeholders (see below).
   ZWJ (U+200D) stays until the emoji rule, which needs it to see a ZWJ sequence as one emoji.
2. Normalize to NFC, so that names written in decomposed Hangul (macOS) still match.
3. Turn every line break (CR, U+2028, U+2029, NEL, VT, FF) into ``\\n`` and every other space character (tab,
   NBSP, ideographic space ...) into a plain space.
4. Collapse runs of newlines, with any spaces around them, into one ``\\n``; strip each message.
5. Whole messages: a photo, video or emoticon notice becomes ``<PHOTO>``, ``<MOVIE>`` or ``<EMOJI>`` (an
   emoticon keeps its caption). Deleted, hidden, call, file, share, location, contact and voice-message notices
   become empty and are dropped with their reason (tables ``WHOLE_MESSAGE_PLACEHOLDERS`` and ``NOTICES``).
6. E-mail addresses -> ``<EMAIL>``, then URLs -> ``<URL>``, then phone numbers -> ``<PHONE>``.
7. Emoji -> ``<EMOJI>``: a ZWJ sequence, a flag, a keycap or an emoji with skin-tone and variation selectors
   counts as one. ZWJ and variation selectors left over after this are removed.
8. Any non-space character repeated 5 or more times is cut to 5 (placeholders included: six emoji in a row
   become five ``<EMOJI>``).
9. Empty ``()`` pairs are removed.
10. Lowercase.
11. ``<|`` becomes ``<`` and ``|>`` becomes ``>``, so no text can spell a special token such as
    ``<|endoftext|>``. This runs after every step that removes characters (1, 7, 9), which could otherwise
    join ``<`` and ``|``, and before names, so that a name is never formed by it after the name step.
12. Names -> ``<NAME>`` (see ``NameMatcher``).
13. Whitespace is tidied again as in step 4, because steps 5-9 can leave blanks behind. Then the sentinels
    become the placeholders of ``cellmind.tokens``, and messages left empty are dropped.

The order users know is URLs, emoji, repeats, ``()``, lowercase, names, phones, e-mail. It differs here in
two places. E-mail comes before URLs, because a bare domain such as ``naver.com`` is also the end of an
address. E-mail and phone numbers come before the repeat cut, because ``010-0000-0000`` or ``aaaaaa@x.com``
would no longer match after it. Placeholders are private-use sentinel characters until step 13, so
lowercasing never touches them and a ``<NAME>`` typed by a user ends up as the plain text ``<name>``.
"""

import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cellmind import tokens

SEP = "\x00"
"""Separator of the joined messages while the rules run. ``_join`` removes NUL from the texts first."""

SENTINELS = {
    tokens.NAME: "\ue000",
    tokens.URL: "\ue001",
    tokens.EMAIL: "\ue002",
    tokens.PHONE: "\ue003",
    tokens.PHOTO: "\ue004",
    tokens.MOVIE: "\ue005",
    tokens.EMOJI: "\ue006",
}
"""Private-use character standing for each placeholder until the last step."""

# Drop reasons, as counted in CleaningReport.dropped.
SYSTEM = "system notice"
DELETED = "deleted message"
HIDDEN = "hidden by admin"
CALL = "call notice"
FILE = "file notice"
SHARE = "shared item"
LOCATION = "location"
CONTACT = "contact"
VOICE_MESSAGE = "voice message"
EMPTY = "empty after cleaning"
DROP_REASONS = (SYSTEM, DELETED, HIDDEN, CALL, FILE, SHARE, LOCATION, CONTACT, VOICE_MESSAGE, EMPTY)

_CALL_LENGTH = r"\d{1,2}:\d{2}(?::\d{2})?"

WHOLE_MESSAGE_PLACEHOLDERS = {
    tokens.PHOTO: (
        r"사진", r"사진 ?\d+ ?장", r"\(사진\)", r"<사진>", r"<사진 읽지 않음>", r"사진 읽지 않음",
        r"photos?", r"\d+ photos", r"\(photo\)",
    ),
    tokens.MOVIE: (
        r"동영상", r"동영상 ?\d+ ?개", r"\(동영상\)", r"<동영상>", r"<동영상 읽지 않음>", r"동영상 읽지 않음",
        r"videos?", r"\d+ videos", r"\(video\)",
    ),
}
"""Whole messages that stand for an attachment, as each export layout writes them (case-insensitive)."""

EMOTICON_NOTICES = (r"이모티콘", r"\(이모티콘\)", r"<이모티콘>", r"emoticons?", r"\(emoticon\)", r"스티커", r"stickers?")
"""An emoticon message, alone or followed by a caption (``이모티콘 저도 갈래요``); the notice becomes ``<EMOJI>``."""

NOTICES = {
    DELETED: (
        r"삭제된 메시지입니다\.?", r"메시지가 삭제되었습니다\.?", r"this message has been deleted\.?",
        r"the message has been deleted\.?", r"this message was deleted\.?", r"message deleted\.?",
    ),
    HIDDEN: (
        r"채팅방 관리자가 메시지를 가렸습니다\.?", r"관리자가 메시지를 가렸습니다\.?",
        r"(?:this )?message (?:has been )?hidden by (?:the )?(?:chatroom )?(?:manager|admin|host)\.?",
    ),
    CALL: (
        rf"(?:보이스톡|페이스톡|그룹콜|그룹 콜|라이브톡|음성통화|영상통화)(?: (?:해요|취소|부재중|종료|시작|{_CALL_LENGTH}))?",
        rf"(?:(?:missed|canceled|cancelled) )?(?:voice|face|video|group) ?(?:call|talk)(?: (?:ended|{_CALL_LENGTH}))?",
        r"(?:missed|canceled|cancelled) call", r"call ended",
    ),
    FILE: (
        r"(?:파일|file) ?: ?[^\n\x00]+", r"<파일(?: 읽지 않음)?>", r"\(파일\)", r"파일 읽지 않음",
    ),
    SHARE: (
        r"샵검색(?: ?:[^\x00]*)?", r"#검색(?: ?:[^\x00]*)?", r"톡게시판 '[^'\n\x00]*' ?:[^\x00]*",
        r"투표 ?:[^\x00]*", r"\(음악\)", r"음악 ?: ?[^\n\x00]+", r"선물하기[^\x00]*",
    ),
    LOCATION: (r"지도", r"\(지도\)", r"지도 ?: ?[^\n\x00]+", r"location", r"location ?: ?[^\n\x00]+", r"위치 공유"),
    CONTACT: (r"연락처", r"\(연락처\)", r"연락처 ?: ?[^\n\x00]+", r"contacts?", r"contact ?: ?[^\n\x00]+"),
    VOICE_MESSAGE: (
        r"음성 ?메시지", r"\(음성 ?메시지\)", r"<음성 ?메시지(?: 읽지 않음)?>", r"voice (?:message|note)",
    ),
}
"""Whole messages that are notices of something not trainable, per drop reason (case-insensitive)."""

WHOLE_MESSAGE_FIRST_CHARACTERS = "사동이스삭메채관보페그라음영파샵톡투선지위연(<#0-9a-z"
"""Characters that every form in the three tables above can start with (case-insensitive).

Messages that start with any other character skip the whole-message pattern at once, which saves most of the
cost of that step. A test parses the tables and checks this list."""

HONORIFIC_ENDINGS = ("님", "씨")
"""Endings replaced together with any Korean name: ``한결님`` -> ``<NAME>``."""
ENDINGS_AFTER_CONSONANT = ("아", "이")
"""Vocative and familiar endings of a name whose last syllable has a final consonant: ``윤슬아``, ``윤슬이``."""
ENDINGS_AFTER_VOWEL = ("야",)
"""Vocative ending of a name whose last syllable ends in a vowel: ``지우야``."""
COMPOUND_SURNAMES = ("남궁", "황보", "제갈", "선우", "독고", "사공", "서문", "동방")
"""Two-syllable surnames, so that the given name of ``남궁민수`` is ``민수``."""

_EMOJI_BASE = (
    "\U0001F000-\U0001FAFF\u2600-\u27BF\u2300-\u23FF\u2B00-\u2BFF\u2194-\u2199\u21A9\u21AA\u2934\u2935"
    "\u3030\u303D\u3297\u3299\u203C\u2049\u2139\u24C2\u25AA\u25AB\u25B6\u25C0\u25FB-\u25FE"
)
_EMOJI_MODIFIER = "\uFE0E\uFE0F\u20E3\U0001F3FB-\U0001F3FF\U000E0020-\U000E007F"
_REGIONAL_INDICATOR = "\U0001F1E6-\U0001F1FF"
_EMOJI = re.compile(
    # One leading character class lets re skip non-emoji text quickly; a second regional indicator right after
    # a first one makes a flag.
    f"[{_EMOJI_BASE}](?:(?<=[{_REGIONAL_INDICATOR}])[{_REGIONAL_INDICATOR}])?[{_EMOJI_MODIFIER}]*"
    f"(?:\u200D[{_EMOJI_BASE}][{_EMOJI_MODIFIER}]*)*"
)
_KEYCAP = re.compile("[0-9#*]\uFE0F?\u20E3")
_EMOJI_LEFTOVERS = re.compile("[\u200D\uFE0E\uFE0F\u20E3]")

_INVISIBLE = re.compile(
    "[\x01-\x08\x0e-\x1f\x7f-\x84\x86-\x9f\u00ad\u180e\u200b\u200c\u200e\u200f\u202a-\u202e\u2060-\u2064"
    "\u2066-\u206f\ufeff\ufff9-\ufffb\ue000-\uf8ff\U000F0000-\U0010FFFF]"
)
_LINE_BREAK = re.compile("[\r\u2028\u2029\x85\x0b\x0c]")
_SPACE = re.compile("[\t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_BLANK_AFTER_NEWLINE = re.compile("\n[ \n]+")
_BLANK_AFTER_SEP = re.compile("\x00[ \n]+")
_SPACES_AFTER_NEWLINE = re.compile("\n +")


def _run_start(chars: str) -> str:
    """Match one character of ``chars`` that does not follow another; cheaper than a leading lookbehind."""
    return f"[{chars}](?<![{chars}][{chars}])"


_EMAIL = re.compile(_run_start("a-z0-9._%+-") + r"[a-z0-9._%+-]*@[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}", re.I)
_TOP_LEVEL_DOMAINS = "com|net|org|kr|io|me|co|ly|be|gl|gg|app|dev|tv|info|biz|xyz|site|link|page|ai|jp|us|uk|edu|gov"
_URL = re.compile(
    r"(?:(?:https?|ftp)://|www\.)[^\s\x00<>\"]*[^\s\x00<>\".,!?;:)\]'’]"
    + "|"
    + _run_start("a-z0-9")
    + rf"[a-z0-9-]*(?:\.[a-z0-9-]+)*\.(?:{_TOP_LEVEL_DOMAINS})(?![a-z0-9-])(?:/[^\s\x00<>\"]*[^\s\x00<>\".,!?;:)\]'’])?",
    re.I,
)
_PHONE = re.compile(
    r"(?:\+(?<![\w+]\+)82[-. ]?(?:\(0\))?|0(?<!\d0))"  # +82 or a leading 0 that is not inside a longer number
    r"(?:1[016789]|2|[3-6][1-5]|70|50[2-8]?)\)?[-. ]?\d{3,4}[-. ]?\d{4}(?!\d)"
)
_REPEAT = re.compile(r"([^\s\x00])\1{5,}")
# Every URL contains "://", "www." or "." before a top-level domain. The URL pattern runs only on the messages
# where this cheaper pattern matches, because the URL pattern cannot skip ahead on a leading literal.
_AT_SIGN = re.compile("@")
_URL_TRIGGER = re.compile(rf"[:.](?://|(?<=[wW][wW][wW]\.)|(?i:{_TOP_LEVEL_DOMAINS})(?![a-z0-9-]))")
_EMPTY_PARENS = re.compile(r"\( *\)|（ *）")
_SPECIAL_TOKEN_BRACKETS = re.compile(r"<\|+|\|+>")


@dataclass
class CleaningReport:
    """What cleaning did, for the user: counts of names, replacements and dropped records."""

    names_known: int = 0
    name_mentions: int = 0
    placeholders: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    messages_kept: int = 0
    names_skipped: list[str] = field(default_factory=list)
    """Names too short to replace safely (one character after cleaning); they are not anonymized."""
    surviving_names: dict[str, int] = field(default_factory=dict)
    """Known names the audit found in the output, with their counts; empty when anonymization is complete."""

    def merge(self, other: "CleaningReport") -> None:
        """Add the counts of ``other`` (another chunk of the same corpus) to this report."""
        self.name_mentions += other.name_mentions
        self.messages_kept += other.messages_kept
        self.placeholders = dict(Counter(self.placeholders) + Counter(other.placeholders))
        self.dropped = dict(Counter(self.dropped) + Counter(other.dropped))


class NameMatcher:
    """Finds known names in cleaned (lowercased, sentinel-bearing) text, longest first.

    Each name is cleaned like message text first, so a nickname with emoji, capitals or repeated characters
    matches its cleaned mentions; a nickname with emoji also matches without them. A Korean name of three Hangul syllables (four with a compound surname) also
    yields its given name: ``이윤슬`` -> ``윤슬``. Korean names match anywhere, because Korean has no word
    boundaries, together with an attached honorific (님, 씨) or vocative/familiar ending (아, 이 after a final
    consonant, 야 after a vowel); particles after that ending stay (``윤슬이가`` -> ``<NAME>가``). Names that
    begin or end with a Latin letter or digit match only as whole words there, so ``Ann`` leaves ``announce``
    alone. Names of one character are not replaced, because they would hit ordinary words, and are listed in
    ``skipped``; the audit still looks for them, so ``--strict`` fails when one of them occurs in the output.

    NOTE: a given name that is also a common word (``하늘``, ``사랑``) or part of one (``지만`` in ``하지만``)
    is replaced there too. Telling a name from a word needs a dictionary and context, and a missed name leaks
    a person while a replaced word only costs a little text, so privacy wins.
    """

    def __init__(self, names: Iterable[str]):
        names = sorted({name.strip() for name in names if name and name.strip()})
        cleaned = _normalize_names(names)
        forms, skipped, skipped_forms = set(), [], set()
        for name, form in zip(names, cleaned):
            if len(form.replace(" ", "")) < 2:
                skipped.append(name)
                skipped_forms.add(form)
                continue
            forms.add(form)
            forms.update(_given_names(form))
            without_emoji = " ".join(form.replace(SENTINELS[tokens.EMOJI], " ").split())
            if without_emoji != form and len(without_emoji.replace(" ", "")) >= 2:
                forms.add(without_emoji)  # "🐰토끼" is often written "토끼"
        self.names = tuple(names)
        self.skipped = tuple(skipped)
        self.forms = tuple(sorted(forms, key=lambda form: (-len(form), form)))
        self.pattern = _compile_trie(self.forms, with_endings=True)
        self.audit_pattern = _compile_trie(sorted(form for form in forms | skipped_forms if form), with_endings=False)

    def replace(self, text: str) -> tuple[str, int]:
        """Return ``text`` with every name replaced by the name sentinel, and the number of replacements."""
        if self.pattern is None:
            return text, 0
        return self.pattern.subn(SENTINELS[tokens.NAME], text)

    def find(self, texts: pd.Series) -> dict[str, int]:
        """Count each known name form found in ``texts`` (cleaned output), for the audit."""
        if self.audit_pattern is None or texts.empty:
            return {}
        found = texts.str.findall(self.audit_pattern).explode().dropna()
        return {str(name): int(count) for name, count in found.value_counts().sort_index().items()}


def _is_hangul_syllable(char: str) -> bool:
    return "\uac00" <= char <= "\ud7a3"


def _has_final_consonant(syllable: str) -> bool:
    return (ord(syllable) - 0xAC00) % 28 != 0


def _given_names(form: str) -> list[str]:
    """Return the given name of a Korean full name (three syllables, or four with a compound surname)."""
    if not all(_is_hangul_syllable(char) for char in form):
        return []
    if len(form) == 3:
        return [form[1:]]
    if len(form) == 4 and form[:2] in COMPOUND_SURNAMES:
        return [form[2:]]
    return []


def _form_tokens(form: str) -> list[str]:
    """Regular expressions for the characters of a name form, one per character; a run of spaces is one."""
    tokens_ = []
    for index, piece in enumerate(piece for piece in form.split(" ") if piece):
        if index:
            tokens_.append(" +")
        tokens_.extend(re.escape(char) for char in piece)
    first = form[0]
    if first.isascii() and first.isalnum():
        tokens_[0] = f"{re.escape(first)}(?<![a-z0-9]{re.escape(first)})"  # not inside a Latin word
    return tokens_


def _form_tail(form: str, with_endings: bool) -> str:
    """Regular expression after a name form: the end of a Latin word, or the optional Korean endings."""
    last = form[-1]
    if last.isascii() and last.isalnum():
        return "(?![a-z0-9])"
    if with_endings and _is_hangul_syllable(last):
        endings = HONORIFIC_ENDINGS + (ENDINGS_AFTER_CONSONANT if _has_final_consonant(last) else ENDINGS_AFTER_VOWEL)
        return f"(?:{'|'.join(endings)})?"
    return ""


def _form_pattern(form: str, with_endings: bool) -> str:
    """Regular expression for one cleaned name form, with its boundary rules and optional endings."""
    return "(?:" + "".join(_form_tokens(form)) + _form_tail(form, with_endings) + ")"


def _compile_trie(forms: Iterable[str], with_endings: bool) -> re.Pattern | None:
    """Compile name forms into one pattern shaped as a trie, which matches the longest form at each position.

    A flat alternation of hundreds of names (an open chat) tries each of them wherever one could start. The
    trie tries one branch per character. Longer forms are tried before a shorter form that ends at the same
    node, which is the same longest-first order as a flat alternation sorted by length.
    """
    root: dict = {}
    for form in forms:
        node = root
        for token in _form_tokens(form):
            node = node.setdefault(token, {})
        node[None] = _form_tail(form, with_endings)
    if not root:
        return None
    return re.compile(_render_trie(root))


def _render_trie(node: dict) -> str:
    alternatives = [token + _render_trie(child) for token, child in sorted(
        (token, child) for token, child in node.items() if token is not None
    )]
    if None in node:
        alternatives.append(node[None])
    if len(alternatives) == 1:
        return alternatives[0]
    return "(?:" + "|".join(alternatives) + ")"


def _normalize_names(names: list[str]) -> list[str]:
    """Clean names with the same steps as message text up to lowercasing, so that they match cleaned text."""
    if not names:
        return []
    block = _join(pd.Series(names, dtype=object))
    block = _apply_text_rules(block, Counter())
    block = block.lower()
    return [piece.strip() for piece in _split(block)]


def _join(texts: pd.Series) -> str:
    """Join texts into one block, ``SEP`` before, between and after; NUL inside a text is removed first."""
    values = texts.tolist()
    block = SEP + SEP.join(values) + SEP
    if block.count(SEP) != len(values) + 1:
        block = SEP + SEP.join(value.replace(SEP, "") for value in values) + SEP
    return block


def _split(block: str) -> list[str]:
    return block[1:-1].split(SEP)


def _tidy_whitespace(block: str) -> str:
    """Collapse blank runs around newlines into one newline and strip every message.

    Blanks before a newline or ``SEP`` are removed on the reversed block, where they come after it: a
    pattern that starts with a literal lets ``re`` skip ahead, one that starts with a space does not.
    """
    block = _BLANK_AFTER_NEWLINE.sub("\n", block)
    block = _BLANK_AFTER_SEP.sub(SEP, block)
    reversed_block = block[::-1]
    reversed_block = _SPACES_AFTER_NEWLINE.sub("\n", reversed_block)
    reversed_block = _BLANK_AFTER_SEP.sub(SEP, reversed_block)
    return reversed_block[::-1]


def _sub_in_messages(block: str, positions: Iterable[int], pattern: re.Pattern, replacement) -> str:
    """Apply ``pattern.sub`` only to the messages of ``block`` that contain one of ``positions`` (ascending)."""
    pieces, done = [], 0
    for position in positions:
        if position < done:
            continue
        start = block.rfind(SEP, 0, position) + 1
        stop = block.find(SEP, position)
        pieces.append(block[done:start])
        pieces.append(pattern.sub(replacement, block[start:stop]))
        done = stop
    pieces.append(block[done:])
    return "".join(pieces)


def _trigger_positions(block: str, trigger: re.Pattern) -> Iterable[int]:
    return (match.start() for match in trigger.finditer(block))


def _repeat_positions(block: str) -> Iterable[int]:
    """Positions where a character other than ``SEP`` starts a run of 6 or more, found with numpy."""
    codes = np.frombuffer(block.encode("utf-32-le"), dtype=np.uint32)
    if len(codes) < 6:
        return []
    same = codes[1:] == codes[:-1]
    runs = same[:-4] & same[1:-3] & same[2:-2] & same[3:-1] & same[4:] & (codes[:-5] != 0)
    return np.flatnonzero(runs).tolist()


def _whole_message_pattern() -> tuple[re.Pattern, dict[str, tuple[str, str]]]:
    """Build one pattern for every whole-message rule, and the map group name -> (drop reason or "", replacement)."""
    alternatives, groups = [], {}
    for index, (placeholder, forms) in enumerate(WHOLE_MESSAGE_PLACEHOLDERS.items()):
        alternatives.append(f"(?P<placeholder{index}>(?:{'|'.join(forms)})(?=\x00))")
        groups[f"placeholder{index}"] = ("", SENTINELS[placeholder])
    alternatives.append(f"(?P<emoticon>(?:{'|'.join(EMOTICON_NOTICES)})(?=[ \n\x00]))")
    groups["emoticon"] = ("", SENTINELS[tokens.EMOJI])
    for index, (reason, forms) in enumerate(NOTICES.items()):
        alternatives.append(f"(?P<notice{index}>(?:{'|'.join(forms)})(?=\x00))")
        groups[f"notice{index}"] = (reason, "")
    first = f"(?=[{WHOLE_MESSAGE_FIRST_CHARACTERS}])"
    return re.compile(f"\x00{first}(?:" + "|".join(alternatives) + ")", re.I), groups


_WHOLE_MESSAGE, _WHOLE_MESSAGE_GROUPS = _whole_message_pattern()


def _replace_whole_messages(block: str, dropped: Counter) -> str:
    def replace(match: re.Match) -> str:
        reason, replacement = _WHOLE_MESSAGE_GROUPS[match.lastgroup]
        if reason:
            dropped[reason] += 1
        return SEP + replacement

    return _WHOLE_MESSAGE.sub(replace, block)


def _five_times(match: re.Match) -> str:
    return match.group(1) * 5


def _apply_text_rules(block: str, dropped: Counter) -> str:
    """Apply steps 1-9 of the module docstring to a joined block, counting the notices of step 5 in ``dropped``."""
    block = _INVISIBLE.sub("", block)
    block = unicodedata.normalize("NFC", block)
    block = block.replace("\r\n", "\n")
    block = _LINE_BREAK.sub("\n", block)
    block = _SPACE.sub(" ", block)
    block = _tidy_whitespace(block)

    block = _replace_whole_messages(block, dropped)

    block = _sub_in_messages(block, _trigger_positions(block, _AT_SIGN), _EMAIL, SENTINELS[tokens.EMAIL])
    block = _sub_in_messages(block, _trigger_positions(block, _URL_TRIGGER), _URL, SENTINELS[tokens.URL])
    block = _PHONE.sub(SENTINELS[tokens.PHONE], block)

    if "\u20e3" in block:
        block = _KEYCAP.sub(SENTINELS[tokens.EMOJI], block)
    block = _EMOJI.sub(SENTINELS[tokens.EMOJI], block)
    block = _EMOJI_LEFTOVERS.sub("", block)

    block = _sub_in_messages(block, _repeat_positions(block), _REPEAT, _five_times)
    return _EMPTY_PARENS.sub("", block)


def _drop_bars(match: re.Match) -> str:
    return match.group(0).strip("|")


def clean_texts(texts: pd.Series, matcher: NameMatcher) -> tuple[pd.Series, CleaningReport]:
    """Clean message texts; the result has the same index, with "" for every message to drop.

    The report counts replacements and the notices dropped by reason. Messages that became empty otherwise
    count as ``EMPTY``, and ``messages_kept`` is the number of non-empty results.
    """
    report = CleaningReport(names_known=len(matcher.names), names_skipped=list(matcher.skipped))
    dropped: Counter = Counter()
    block = _apply_text_rules(_join(texts.fillna("").astype(str)), dropped)
    block = block.lower()
    if "<|" in block or "|>" in block:
        block = _SPECIAL_TOKEN_BRACKETS.sub(_drop_bars, block)
    block, report.name_mentions = matcher.replace(block)
    block = _tidy_whitespace(block)

    for placeholder, sentinel in SENTINELS.items():
        count = block.count(sentinel)
        if count:
            report.placeholders[placeholder] = count
            block = block.replace(sentinel, placeholder)

    cleaned = pd.Series(_split(block), index=texts.index, dtype=object)
    empty = int((cleaned == "").sum())
    dropped[EMPTY] = empty - sum(dropped.values())
    report.dropped = {reason: count for reason, count in dropped.items() if count}
    report.messages_kept = len(cleaned) - empty
    return cleaned, report


def clean_table(
    table: pd.DataFrame,
    matcher: NameMatcher,
    chunk_size: int = 50_000,
    progress: Callable[[int], None] | None = None,
) -> tuple[pd.DataFrame, CleaningReport]:
    """Clean a parsed chat table: drop system rows and notices, clean the text of every message kept.

    Returns the kept rows (all columns of ``table``, ``text`` cleaned, original order and index) and the report.
    Messages are cleaned ``chunk_size`` at a time, which bounds memory. It is also faster than one block,
    because each joined block stays in the CPU caches: the million messages of ``bench/prepare.py`` took about
    3.2 s instead of 4.4 s of CPU time. ``progress(n)`` is called after each chunk with the rows it covered.
    """
    report = CleaningReport(names_known=len(matcher.names), names_skipped=list(matcher.skipped))
    is_message = table["kind"] == "message"
    report.dropped = {SYSTEM: int((~is_message).sum())} if (~is_message).any() else {}
    if progress is not None and (~is_message).any():
        progress(int((~is_message).sum()))
    messages = table[is_message]

    kept = []
    for start in range(0, len(messages), chunk_size):
        chunk = messages.iloc[start : start + chunk_size]
        texts, chunk_report = clean_texts(chunk["text"], matcher)
        report.merge(chunk_report)
        kept.append(chunk.assign(text=texts)[texts != ""])
        if progress is not None:
            progress(len(chunk))

    result = pd.concat(kept) if kept else table.iloc[:0].copy()
    return result, report
