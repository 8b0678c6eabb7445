"""The Korean catalog covers every message, and the language follows --lang, then the locale."""

import gettext
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cellmind import i18n_catalog
from cellmind.cli import main, peer_main
from cellmind.i18n import DOMAIN, LOCALE_DIR, _, current_language, detect_language, ngettext, set_language

CELLMIND_COMMAND = Path(sys.executable).with_name("cellmind")
LOCALE_VARIABLES = ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG")


@pytest.fixture(autouse=True)
def restore_language():
    before = current_language()
    yield
    set_language(before)


@pytest.fixture
def locale_env(monkeypatch):
    """Clear the locale variables, then let the test set the one it needs."""
    for variable in LOCALE_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    return monkeypatch


def run_help(entry, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        entry(argv)
    assert exit_info.value.code == 0
    return capsys.readouterr().out


# the catalog


def test_catalog_translates_every_message():
    template = i18n_catalog.extract_template()
    catalog = i18n_catalog.read_catalog(i18n_catalog.po_path("ko"), "ko")
    problems = i18n_catalog.problems(catalog, template)
    assert problems == [], "run `make catalog` and translate:\n" + "\n".join(problems)


def test_extraction_finds_cellmind_and_argparse_messages():
    ids = {message.id for message in i18n_catalog.extract_template()}
    assert "error: {message}" in ids
    assert "show this help message and exit" in ids
    assert "%(prog)s: error: %(message)s\n" in ids
    assert ("expected %s argument", "expected %s arguments") in ids


def test_compiled_catalog_matches_po():
    catalog = i18n_catalog.read_catalog(i18n_catalog.po_path("ko"), "ko")
    compiled = gettext.translation(DOMAIN, LOCALE_DIR, languages=["ko"])
    stale = []
    for message in catalog:
        if not message.id or isinstance(message.id, tuple):
            continue
        if compiled.gettext(message.id) != message.string:
            stale.append(message.id)
    assert stale == [], "cellmind.mo is older than cellmind.po: run `make catalog`"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("plain", {}),
        ("{path} and {path}", {"{path}": 2}),
        ("{seconds:.0f} s, {value!r}", {"{seconds:.0f}": 1, "{value!r}": 1}),
        ("%(prog)s: %s %r 100%%", {"%(prog)s": 1, "%s": 1, "%r": 1}),
        ("{unclosed", {"<unbalanced braces>": 1}),
    ],
)
def test_placeholders_are_counted(text, expected):
    assert dict(i18n_catalog.placeholders(text)) == expected


def test_problems_flag_changed_placeholder():
    from babel.messages.catalog import Catalog

    template, catalog = Catalog(), Catalog(locale="ko")
    template.add("wrote {path}")
    template.add("not translated")
    catalog.add("wrote {path}", "저장: {파일}")
    problems = i18n_catalog.problems(catalog, template)
    assert problems[0].startswith("placeholders differ: 'wrote {path}'")
    assert problems[1].startswith("missing: 'not translated'")
    assert len(problems) == 2


# choosing the language


@pytest.mark.parametrize(
    "environ, expected",
    [
        ({"LANG": "ko_KR.UTF-8"}, "ko"),
        ({"LANG": "C"}, "en"),
        ({"LANG": "en_US.UTF-8", "LC_ALL": "ko_KR.UTF-8"}, "ko"),
        ({"LANG": "ko_KR.UTF-8", "LANGUAGE": "en_US:ko"}, "en"),
        ({"LANGUAGE": "ko:en"}, "ko"),
        ({}, "en"),
    ],
)
def test_detect_language(environ, expected):
    assert detect_language(environ) == expected


def test_set_language_switches_translation():
    set_language("ko")
    assert _("interrupted") == "중단됐어요"
    assert ngettext("expected %s argument", "expected %s arguments", 3) == "값이 %s개 필요해요"
    set_language("en")
    assert _("interrupted") == "interrupted"
    assert ngettext("expected %s argument", "expected %s arguments", 3) == "expected %s arguments"


def test_set_language_rejects_unknown():
    with pytest.raises(ValueError, match="unsupported language 'fr'"):
        set_language("fr")


def test_help_in_korean_with_lang_flag(capsys):
    out = run_help(main, ["--lang", "ko", "--help"], capsys)
    assert out.startswith("사용법: cellmind ")
    assert "이미 가진 기기들로 함께 미니 GPT를 학습해요." in out
    assert "  -h, --help      이 도움말을 보여 주고 종료" in out
    assert "  --version       프로그램 버전을 보여 주고 종료" in out
    assert "    prepare       대화 내보내기 파일을 정리·익명화해서 학습 말뭉치로 만들기" in out


def test_help_in_korean_from_locale(locale_env, capsys):
    locale_env.setenv("LANG", "ko_KR.UTF-8")
    out = run_help(peer_main, ["--help"], capsys)
    assert out.startswith("사용법: cellmind-peer ")
    assert "스웜:" in out
    assert "--bootstrap과 함께: 참여 명령을 휴대폰으로 스캔할 QR 코드로도 출력" in " ".join(out.split())


def test_lang_flag_overrides_korean_locale(locale_env, capsys):
    locale_env.setenv("LANG", "ko_KR.UTF-8")
    out = run_help(main, ["--lang", "en", "--help"], capsys)
    assert out.startswith("usage: cellmind ")
    assert "show this help message and exit" in out


def test_c_locale_is_english(locale_env, capsys):
    locale_env.setenv("LANG", "C")
    out = run_help(main, ["generate", "--help"], capsys)
    assert out.startswith("usage: cellmind generate ")
    assert "sampling:" in out


def test_usage_error_in_korean(capsys):
    with pytest.raises(SystemExit) as exit_info:
        peer_main(["--lang", "ko", "--max-steps", "x"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("사용법: cellmind-peer ")
    assert err[-1] == "cellmind-peer: 오류: 인자 --max-steps: 양의 정수여야 하는데 'x'이(가) 들어왔어요"


@pytest.mark.parametrize(
    "language, expected",
    [
        ("ko", "cellmind: 오류: 다음 인자가 필요해요: COMMAND"),
        ("en", "cellmind: error: the following arguments are required: COMMAND"),
    ],
)
def test_missing_command_error(language, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--lang", language])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == expected


@pytest.mark.parametrize(
    "language, expected",
    [
        ("ko", "cellmind generate: 오류: 인자 --device: 잘못된 선택: 'tpu'(auto, cpu, cuda, mps 중에서 고르세요)"),
        ("en", "cellmind generate: error: argument --device: invalid choice: 'tpu' (choose from 'auto', 'cpu', "
               "'cuda', 'mps')"),
    ],
)
def test_invalid_choice_error(language, expected, capsys):
    with pytest.raises(SystemExit):
        main(["--lang", language, "generate", "--prompt", "x", "--device", "tpu"])
    err = capsys.readouterr().err.splitlines()[-1]
    # argparse quotes the choices with repr() on Python 3.12+ and plainly before.
    assert err.replace("'auto', 'cpu', 'cuda', 'mps'", "auto, cpu, cuda, mps") == expected.replace(
        "'auto', 'cpu', 'cuda', 'mps'", "auto, cpu, cuda, mps"
    )


def test_installed_command_speaks_korean_under_korean_locale(tmp_path):
    """The console script, run as a user would, finds the compiled catalog of the installed package."""
    environ = {key: value for key, value in os.environ.items() if key not in LOCALE_VARIABLES}
    result = subprocess.run(
        [str(CELLMIND_COMMAND), "prepare", "missing-folder"],
        cwd=tmp_path, env={**environ, "LANG": "ko_KR.UTF-8"}, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 66
    assert result.stderr.splitlines()[-1] == (
        "오류: 입력이 없어요: missing-folder. 경로를 확인하거나 있는 파일이나 폴더를 지정하세요"
    )
