"""Benchmark of ``cellmind.cleaning`` against a per-message Python loop that applies the same rules.

    python bench/prepare.py                      # one million messages, 3 repetitions each
    python bench/prepare.py --messages 100000 --repeats 1

Both implementations clean the same synthetic Korean chat messages (names, URLs, e-mail, emoji, phone numbers,
repeated characters, photo and call notices) in the same run, pinned to one CPU core. Their outputs are
compared message by message. The table shows the median CPU time of the repetitions.

The loop applies each rule to one message at a time with the same compiled patterns. It replaces names with one
pattern per name form, longest first, as the rule is stated. ``cellmind.cleaning`` instead runs each rule once
over all messages joined into one string, and replaces all names with one alternation.
Target: at least 1,000,000 messages per minute, and at least 20 times the loop.
"""

import argparse
import os
import platform
import random
import re
import statistics
import subprocess
import time
import unicodedata

import pandas as pd

from cellmind import cleaning, tokens
from cellmind.cleaning import NameMatcher, clean_table

SURNAMES = "김이박최정강조윤장임한오서신권황안송류홍"
GIVEN_SYLLABLES = "민서지우현준도윤하은수아예린시온결슬담새봄다빈채원태호재유진"
WORDS = (
    "오늘 내일 진짜 너무 좋아 등산 가자 커피 점심 국밥 어때요 다들 주말에 시간 돼 아침 역 앞에서 보자 늦으면 "
    "사기 억울하다 경치 미쳤다 준비물 간식 물 일정 공지 확인 부탁해요 고마워 미안 배고파 집에 가는 중 회의 "
    "끝나고 연락할게 사진 봤어 대박 헐 그래 알겠어 먼저 갈게 조심히 와 기다릴게 여기 저기 괜찮아요 감사합니다"
).split()
ENGLISH = "Sunday works for me How about this trail Lunch at noon good night See You Soon OK".split()
EMOJI = ["😂", "👍", "🙏", "❤️", "🌊", "🌙", "👋", "👨\u200d👩\u200d👧", "🤸\u200d♂️", "👍🏽", "🇰🇷", "✅", "1️⃣"]
WHOLE = ["사진", "사진 3장", "동영상", "이모티콘", "이모티콘 좋아요", "<사진 읽지 않음>", "Photo",
         "삭제된 메시지입니다.", "보이스톡 해요", "보이스톡 0:42", "파일: 자료.pdf", "샵검색 : #날씨"]


def make_names(rng: random.Random, count: int) -> list[str]:
    names = {rng.choice(SURNAMES) + rng.choice(GIVEN_SYLLABLES) + rng.choice(GIVEN_SYLLABLES) for _ in range(count)}
    return sorted(names) + ["Hana K", "Minsu Lee", "🐰토끼/방장"]


def make_message(rng: random.Random, names: list[str]) -> str:
    """Return a few random words plus, each with some probability, each kind of thing that cleaning replaces."""
    if rng.random() < 0.08:
        return rng.choice(WHOLE)
    words = rng.choices(WORDS, k=rng.randint(1, 9))
    if rng.random() < 0.15:
        words += rng.choices(ENGLISH, k=rng.randint(1, 4))
    if rng.random() < 0.3:
        name = rng.choice(names)
        mention = name[1:] + rng.choice(["아", "님", "이", "씨", ""]) if rng.random() < 0.5 else name
        words.insert(rng.randrange(len(words) + 1), mention)
    if rng.random() < 0.05:
        words.append(f"https://example.com/p/{rng.randrange(10**6)}?q=산")
    if rng.random() < 0.03:
        words.append(f"010-{rng.randrange(10**4):04d}-{rng.randrange(10**4):04d}")
    if rng.random() < 0.02:
        words.append(f"user{rng.randrange(1000)}@example.com")
    if rng.random() < 0.2:
        words.append(rng.choice(EMOJI) * rng.randint(1, 3))
    if rng.random() < 0.2:
        words.append(rng.choice("ㅋㅎㅠ!?.") * rng.randint(2, 12))
    if rng.random() < 0.05:
        words.insert(rng.randrange(len(words) + 1), "\n")
    if rng.random() < 0.02:
        words.append("\u200b")
    return " ".join(words)


class LoopCleaner:
    """The reference: every rule applied to one message after another with the same tables and patterns."""

    def __init__(self, names: list[str]):
        matcher = NameMatcher(names)
        self.name_patterns = [re.compile(cleaning._form_pattern(form, with_endings=True)) for form in matcher.forms]
        self.placeholders = [
            (re.compile("|".join(forms), re.I), cleaning.SENTINELS[placeholder])
            for placeholder, forms in cleaning.WHOLE_MESSAGE_PLACEHOLDERS.items()
        ]
        self.emoticon = re.compile(f"(?:{'|'.join(cleaning.EMOTICON_NOTICES)})(?=[ \n]|$)", re.I)
        self.notices = [re.compile("|".join(forms), re.I) for forms in cleaning.NOTICES.values()]

    def clean(self, text: str) -> str:
        text = text.replace("\x00", "")
        text = cleaning._INVISIBLE.sub("", text)
        text = unicodedata.normalize("NFC", text)
        text = cleaning._LINE_BREAK.sub("\n", text)
        text = cleaning._SPACE.sub(" ", text)
        text = re.sub(" *\n[ \n]*", "\n", text).strip(" \n")
        text = self.replace_whole_message(text)
        text = cleaning._EMAIL.sub(cleaning.SENTINELS[tokens.EMAIL], text)
        text = cleaning._URL.sub(cleaning.SENTINELS[tokens.URL], text)
        text = cleaning._PHONE.sub(cleaning.SENTINELS[tokens.PHONE], text)
        text = cleaning._KEYCAP.sub(cleaning.SENTINELS[tokens.EMOJI], text)
        text = cleaning._EMOJI.sub(cleaning.SENTINELS[tokens.EMOJI], text)
        text = cleaning._EMOJI_LEFTOVERS.sub("", text)
        text = cleaning._REPEAT.sub(r"\1\1\1\1\1", text)
        text = cleaning._EMPTY_PARENS.sub("", text)
        text = text.lower()
        text = re.sub(r"<\|+|\|+>", lambda match: match.group(0).strip("|"), text)
        for pattern in self.name_patterns:
            text = pattern.sub(cleaning.SENTINELS[tokens.NAME], text)
        text = re.sub(" *\n[ \n]*", "\n", text).strip(" \n")
        for placeholder, sentinel in cleaning.SENTINELS.items():
            text = text.replace(sentinel, placeholder)
        return text

    def replace_whole_message(self, text: str) -> str:
        for pattern, sentinel in self.placeholders:
            if pattern.fullmatch(text):
                return sentinel
        match = self.emoticon.match(text)
        if match:
            return cleaning.SENTINELS[tokens.EMOJI] + text[match.end() :]
        for pattern in self.notices:
            if pattern.fullmatch(text):
                return ""
        return text


def pin_to_one_core() -> int:
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    return core


def cpu_model() -> str:
    try:
        output = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in output.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def timed(function, repeats: int):
    """Median CPU time of this process over ``repeats`` calls, and the last result.

    CPU time rather than wall time, because the run is pinned to one core and other processes may share it.
    """
    times, result = [], None
    for _ in range(repeats):
        start = time.process_time()
        result = function()
        times.append(time.process_time() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000, help="synthetic messages to clean (default: 1e6)")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions of each implementation (default: 3)")
    parser.add_argument("--names", type=int, default=40, help="Korean names known to the cleaner (default: 40)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    core = pin_to_one_core()
    rng = random.Random(args.seed)
    names = make_names(rng, args.names)
    texts = pd.Series([make_message(rng, names) for _ in range(args.messages)], dtype=object)
    print(f"cpu: {cpu_model()} (pinned to core {core}); python {platform.python_version()}, pandas {pd.__version__}")
    print(f"messages: {len(texts):,} ({texts.nunique() / len(texts):.0%} distinct), names known: {len(names)}")

    table = pd.DataFrame({"text": texts, "kind": "message"})
    matcher = NameMatcher(names)
    vectorized_time, (vectorized, _) = timed(lambda: clean_table(table, matcher), args.repeats)
    loop = LoopCleaner(names)
    loop_time, looped = timed(lambda: [loop.clean(text) for text in texts], args.repeats)

    # clean_table drops the messages that become empty, so compare what each implementation keeps.
    kept = dict(zip(vectorized.index, vectorized["text"]))
    expected = {index: text for index, text in enumerate(looped) if text}
    differences = sum(kept.get(index) != expected.get(index) for index in kept.keys() | expected.keys())
    print(f"outputs equal: {differences == 0} ({differences} of {len(texts):,} messages differ)")
    print()
    print(f"| implementation | median CPU s ({args.repeats} runs) | messages/s | messages/min | speed-up |")
    print("|---|---:|---:|---:|---:|")
    for label, seconds in (("cellmind.cleaning (vectorized)", vectorized_time), ("per-message loop", loop_time)):
        rate = len(texts) / seconds
        print(f"| {label} | {seconds:.2f} | {rate:,.0f} | {rate * 60:,.0f} | {loop_time / seconds:.1f}x |")


if __name__ == "__main__":
    main()
