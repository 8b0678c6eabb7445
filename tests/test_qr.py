"""The join line's QR code: the printed half blocks are exactly segno's modules, and --qr prints them."""

import subprocess
import sys
from pathlib import Path

import segno

from cellmind.qr import QUIET_ZONE, render_qr

PEER_COMMAND = Path(sys.executable).with_name("cellmind-peer")
# Light modules are drawn: (top, bottom) of each character cell.
HALF_BLOCKS = {"█": (True, True), "▀": (True, False), "▄": (False, True), " ": (False, False)}
JOIN_LINE = (
    "cellmind-peer --initial-peers /ip4/192.168.0.10/tcp/31337/p2p/12D3KooWLzBaMpN9zX9fQ1h8Y2nR3H6oVwqK5uTtGzXyPq7sJbCd"
)


def dark_modules(block: str) -> list[list[bool]]:
    """Read half-block lines back into rows of modules (True = dark), quiet zone removed."""
    rows: list[list[bool]] = []
    for line in block.splitlines():
        cells = [HALF_BLOCKS[char] for char in line]
        rows.append([not top for top, _bottom in cells])
        rows.append([not bottom for _top, bottom in cells])
    size = len(rows[0]) - 2 * QUIET_ZONE
    return [row[QUIET_ZONE : QUIET_ZONE + size] for row in rows[QUIET_ZONE : QUIET_ZONE + size]]


def segno_modules(text: str) -> list[list[bool]]:
    return [[bool(module) for module in row] for row in segno.make(text).matrix]


def test_printed_block_is_segno_matrix():
    block = render_qr(JOIN_LINE)
    assert set(block) <= set(HALF_BLOCKS) | {"\n"}
    assert dark_modules(block) == segno_modules(JOIN_LINE)


def test_quiet_zone_is_light():
    lines = render_qr(JOIN_LINE).splitlines()
    assert lines[0] == "█" * len(lines[0])
    assert all(line.startswith("██") and line.endswith("██") for line in lines[1:-1])


def test_short_line_is_regular_qr():
    assert not segno.make("cellmind-peer --initial-peers /ip4/1.2.3.4/tcp/1/p2p/Qm", micro=False).is_micro
    assert dark_modules(render_qr("x")) == [[bool(m) for m in row] for row in segno.make("x", micro=False).matrix]


def test_bootstrap_prints_join_line_as_qr(tmp_path):
    command = [
        str(PEER_COMMAND), "--lang", "en", "--bootstrap", "--no-train", "--qr", "--max-time", "1",
        "--host-maddrs", "/ip4/127.0.0.1/tcp/0", "--identity", str(tmp_path / "peers" / "identity.key"),
    ]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr

    line = (tmp_path / "peers" / "join.txt").read_text(encoding="utf-8").strip()
    assert line.startswith("cellmind-peer --initial-peers /ip4/127.0.0.1/tcp/")
    assert f"  {line}" in result.stdout.splitlines()
    qr_lines = [text for text in result.stdout.splitlines() if text and set(text) <= set(HALF_BLOCKS)]
    assert dark_modules("\n".join(qr_lines)) == segno_modules(line)
