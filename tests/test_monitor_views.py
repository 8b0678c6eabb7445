"""The monitor's outputs without a swarm: history file, series, terminal view, web server, TensorBoard, CLI flags."""

import argparse
import json
import urllib.error
import urllib.request

import pytest
from rich.console import Console

from cellmind.cli import build_parser
from cellmind.cli.monitor import build_options, parse_duration
from cellmind.errors import CellMindError, ConfigError
from cellmind.monitor.aggregate import PeerRow, Rejected, Snapshot
from cellmind.monitor.history import History, default_history_path
from cellmind.monitor.terminal import format_duration, render
from cellmind.monitor.web import MonitorState, WebServer, parse_address


def make_snapshot(time: float, global_epoch: int, loss: float | None = 3.0, **changes) -> Snapshot:
    peer = PeerRow(
        peer_id="12D3KooWExamplePeerIdAbCdEf", short_id="AbCdEf12", name="laptop", device="cpu", version="0.1.0",
        local_epoch=global_epoch, samples_per_second=4.0, loss=loss, tokens_processed=100, client_mode=False, age=1.5,
    )
    values = dict(
        run_id="views", time=time, global_epoch=global_epoch, samples_accumulated=12, target_batch_size=32,
        eta_seconds=5.0, samples_per_second=4.0, num_peers=1, num_clients=0, training_loss=loss,
        validation_loss=None, validation_epoch=None, peers=[peer], rejected=Rejected(),
    )
    values.update(changes)
    return Snapshot(**values)


def test_history_survives_restart(tmp_path):
    path = tmp_path / "runs" / "monitor-views.jsonl"
    history = History("views", path)
    for index in range(4):
        history.append(make_snapshot(100.0 + index, global_epoch=index // 2, loss=4.0 - index))
    restarted = History("views", path)
    assert len(restarted.entries) == 4
    assert restarted.series()["training_loss"] == [[0, 3.5], [1, 1.5]]
    assert restarted.series()["num_peers"] == [[100.0 + index, 1] for index in range(4)]


def test_history_skips_broken_lines_and_other_runs(tmp_path):
    path = tmp_path / "history.jsonl"
    History("views", path).append(make_snapshot(1.0, global_epoch=0))
    History("other", path).append(make_snapshot(2.0, global_epoch=0, run_id="other"))
    with path.open("a") as file:
        file.write('{"run_id": "views", "time": 3.0, "global_ep')  # cut short by a crash
    assert [entry["time"] for entry in History("views", path).entries] == [1.0]


def test_history_series_thinned_and_validation_by_epoch():
    history = History("views", None)
    for index in range(50):
        history.append(make_snapshot(float(index), global_epoch=index, validation_loss=2.0, validation_epoch=index // 10))
    series = history.series(max_points=10)
    assert len(series["samples_per_second"]) == 10
    assert series["samples_per_second"][-1] == [49.0, 4.0]
    assert series["validation_loss"] == [[epoch, 2.0] for epoch in range(5)]


def test_default_history_path_names_run():
    assert default_history_path("abc").name == "monitor-abc.jsonl"


def test_terminal_view_shows_numbers_and_peers():
    console = Console(record=True, width=120, color_system=None)
    console.print(render(make_snapshot(10.0, global_epoch=7, rejected=Rejected(malformed=2, forged=1))))
    text = console.export_text()
    assert "laptop" in text
    assert "12 / 32" in text
    assert "AbCdEf12" in text
    assert "2 malformed, 1 with an invalid signature" in text


def test_terminal_view_prints_peer_name_verbatim():
    snapshot = make_snapshot(10.0, global_epoch=1)
    snapshot.peers[0].name = "[red]evil[/red]"
    console = Console(record=True, width=120, color_system=None)
    console.print(render(snapshot))
    assert "[red]evil[/red]" in console.export_text()


@pytest.mark.parametrize("seconds, text", [(None, "-"), (4.4, "4s"), (185, "3m05s"), (7620, "2h07m")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_web_server_serves_page_and_state():
    state = MonitorState()
    server = WebServer(state, "127.0.0.1", 0).start()
    try:
        page = urllib.request.urlopen(server.url, timeout=5).read().decode()
        assert "<canvas" in page
        assert "navigator.language" in page
        assert "http://" not in page.replace("http://[", "")  # self-contained: no external resource
        assert json.loads(urllib.request.urlopen(server.url + "api/state", timeout=5).read()) == {
            "snapshot": None, "series": None,
        }
        state.update(make_snapshot(1.0, 2).to_dict(), History("views", None).series())
        body = json.loads(urllib.request.urlopen(server.url + "api/state", timeout=5).read())
        assert body["snapshot"]["global_epoch"] == 2
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(server.url + "secret", timeout=5)
        assert error.value.code == 404
    finally:
        server.shutdown()


def test_web_server_port_in_use_is_an_error():
    first = WebServer(MonitorState(), "127.0.0.1", 0)
    try:
        with pytest.raises(CellMindError, match="--web"):
            WebServer(MonitorState(), "127.0.0.1", first.server.server_address[1])
    finally:
        first.server.server_close()


@pytest.mark.parametrize("text, expected", [("127.0.0.1:8080", ("127.0.0.1", 8080)), (":9000", ("127.0.0.1", 9000)),
                                            ("[::1]:80", ("::1", 80))])
def test_parse_address(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["8080", "host:", "host:99999", "host:http"])
def test_parse_address_rejects(text):
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_address(text)


@pytest.mark.parametrize("text, seconds", [("2", 2.0), ("2s", 2.0), ("500ms", 0.5), ("1m", 60.0), ("1.5h", 5400.0)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["0", "-1s", "fast", "2 days"])
def test_parse_duration_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)


def monitor_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["monitor", *argv])


def test_options_from_flags_and_config(tmp_path):
    config = tmp_path / "config.json"
    config.write_text('{"swarm": {"run_id": "from-config", "initial_peers": ["/ip4/127.0.0.1/tcp/1/p2p/Qm"]}}')
    options = build_options(monitor_args("--config", str(config), "--refresh", "500ms", "--web", "127.0.0.1:0"))
    assert options.run_id == "from-config"
    assert options.initial_peers == ["/ip4/127.0.0.1/tcp/1/p2p/Qm"]
    assert options.refresh == 0.5
    assert options.web == ("127.0.0.1", 0)
    assert options.history_path == default_history_path("from-config")
    assert build_options(monitor_args("--config", str(config), "--once", "--json")).history_path is None


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--json"], "--once"),
        (["--once", "--web", "127.0.0.1:8080"], "--web"),
        ([], "--initial-peers"),
    ],
)
def test_options_conflicts_are_errors(tmp_path, argv, message):
    config = tmp_path / "empty.json"
    config.write_text("{}")
    with pytest.raises(ConfigError, match=message):
        build_options(monitor_args("--config", str(config), *(argv or ["--once"])))


def test_tensorboard_gets_same_series(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from cellmind.monitor.tensorboard import TensorBoardSeries

    writer = TensorBoardSeries(tmp_path)
    for index, epoch in enumerate([0, 0, 1, 2]):
        writer.write(make_snapshot(100.0 + index, epoch, loss=5.0 - epoch, validation_loss=6.0, validation_epoch=0))
    writer.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert [(event.step, event.value) for event in events.Scalars("loss/training")] == [(0, 5.0), (1, 4.0), (2, 3.0)]
    assert [event.step for event in events.Scalars("loss/validation")] == [0]
    assert [event.value for event in events.Scalars("swarm/peers")] == [1, 1, 1, 1]


def test_malformed_initial_peer_is_one_line_error(capsys, tmp_path):
    from cellmind.cli import main

    config = tmp_path / "empty.json"
    config.write_text("{}")
    status = main(["monitor", "--config", str(config), "--initial-peers", "not-a-multiaddr", "--once", "--json"])
    assert status == 69  # SwarmError: EX_UNAVAILABLE
    error = capsys.readouterr().err
    assert "not-a-multiaddr" in error
    assert "Traceback" not in error
