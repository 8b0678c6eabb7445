"""Private swarms: the key file, the HMAC authorizer, and a real keyed swarm that turns strangers away.

The swarm test starts a keyed bootstrap and a keyed joiner on 127.0.0.1 and checks that they train together,
that peers without the key or with another key end with the rejection message, that the swarm logs each
rejected node once, and that a DHT node without the key reads none of the run's records.
"""

import asyncio
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hivemind.proto import dht_pb2

from cellmind.checkpoints import load_checkpoint
from cellmind.cli import main
from cellmind.errors import ConfigError, MissingFileError
from cellmind.swarm_key import (
    REJECTION_MARKER,
    SwarmKeyRejected,
    load_swarm_key,
    new_key_file,
    with_swarm_key,
)
from conftest import free_port

STEP_LINE = r"global epoch (\d+) \| loss ([\d.]+) \| \d+ samples/s \| (\d+) peers in last round \| lr "
TOGETHER_LINE = r"global epoch (\d+) \| loss [\d.]+ \| \d+ samples/s \| 2 peers in last round \| lr "
JOIN_LINE = r"^\s+cellmind-peer --initial-peers (\S+)$"
REJECTED = r"the swarm rejected this peer: it needs the same --swarm-key file"
START_TIMEOUT = 90
STEP_TIMEOUT = 60
REJECT_TIMEOUT = 60


# the key file


def test_new_key_file_is_private_and_never_overwritten(tmp_path):
    path = tmp_path / "peers" / "swarm.key"
    assert main(["swarm-key", "new", "--output", str(path)]) == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = load_swarm_key(path)
    assert len(first.secret) == 32

    assert main(["swarm-key", "new", "--output", str(path)]) == ConfigError.exit_status
    assert load_swarm_key(path).secret == first.secret
    assert main(["swarm-key", "new", "--output", str(path), "--force"]) == 0
    assert load_swarm_key(path).secret != first.secret
    assert [entry.name for entry in path.parent.iterdir()] == ["swarm.key"]  # no temporary file left


def test_bad_key_files_are_named_in_the_error(tmp_path, capsys):
    with pytest.raises(MissingFileError, match="missing.key does not exist; create one with 'cellmind swarm-key new'"):
        load_swarm_key(tmp_path / "missing.key")
    bad = tmp_path / "bad.key"
    for text in ("", "cellmind-swarm-key-v1 abc\n", "cellmind-swarm-key-v1 " + "zz" * 32 + "\n", "a\nb\n"):
        bad.write_text(text)
        with pytest.raises(ConfigError, match="bad.key is not a CellMind swarm key file"):
            load_swarm_key(bad)
    assert main(["swarm-key", "show", "--key", str(bad)]) == ConfigError.exit_status
    assert "bad.key is not a CellMind swarm key file" in capsys.readouterr().err


def test_namespace_depends_on_key_and_run(tmp_path, tiny_run):
    from cellmind.config import load_config

    one, two = new_key_file(tmp_path / "one.key"), new_key_file(tmp_path / "two.key")
    assert one.run_namespace("tiny") != two.run_namespace("tiny")
    assert one.run_namespace("tiny") != one.run_namespace("other")
    assert one.run_namespace("tiny") == load_swarm_key(tmp_path / "one.key").run_namespace("tiny")
    assert one.run_namespace("tiny").startswith("tiny-")
    config = load_config(tiny_run.config_path)
    assert with_swarm_key(config, None).swarm.run_id == "tiny"
    assert with_swarm_key(config, one).swarm.run_id == one.run_namespace("tiny")
    assert one.fingerprint != two.fingerprint


def test_authorizer_accepts_its_key_once_and_rejects_others(tmp_path):
    ours, theirs = new_key_file(tmp_path / "ours.key"), new_key_file(tmp_path / "theirs.key")

    async def exchange():
        sender, receiver, stranger = ours.authorizer(), ours.authorizer(), theirs.authorizer()
        request = dht_pb2.PingRequest(peer=dht_pb2.NodeInfo(node_id=b"\x01" * 20))
        await sender.sign_request(request, None)
        replay = dht_pb2.PingRequest.FromString(request.SerializeToString())
        assert await receiver.validate_request(request)
        with pytest.raises(SwarmKeyRejected, match="replayed"):
            await receiver.validate_request(replay)

        response = dht_pb2.PingResponse(dht_time=1.0)
        await receiver.sign_response(response, request)
        assert await sender.validate_response(dht_pb2.PingResponse.FromString(response.SerializeToString()), request)
        assert not await stranger.validate_response(response, request)
        assert not await sender.validate_response(dht_pb2.PingResponse(dht_time=1.0), request)

        foreign = dht_pb2.PingRequest()
        await stranger.sign_request(foreign, None)
        with pytest.raises(SwarmKeyRejected, match=f"{REJECTION_MARKER}.*another swarm key"):
            await receiver.validate_request(foreign)
        with pytest.raises(SwarmKeyRejected, match="no swarm key"):
            await receiver.validate_request(dht_pb2.PingRequest())

    asyncio.run(exchange())


def test_unreachable_peer_is_not_called_a_key_problem(tmp_path):
    from cellmind.swarm_key import diagnose_join_failure

    address = f"/ip4/127.0.0.1/tcp/{free_port()}/p2p/QmbkfC9f4AsupJz4DT3vD2CC2gaHxh8UgtBrSMhFBjYCB6"
    assert diagnose_join_failure([address], None) is None
    assert diagnose_join_failure([address], new_key_file(tmp_path / "swarm.key")) is None


# a real keyed swarm


@pytest.mark.swarm
def test_keyed_swarm_trains_together_and_turns_strangers_away(tiny_run, tmp_path):
    key_path, other_path = tmp_path / "swarm.key", tmp_path / "other.key"
    key, _other = new_key_file(key_path), new_key_file(other_path)
    port = free_port()
    common = ["--target-batch-size", "256", "--swarm-key", str(key_path)]
    bootstrap = tiny_run.peer(
        "--bootstrap", "--host-maddrs", f"/ip4/127.0.0.1/tcp/{port}",
        "--identity", str(tmp_path / "boot" / "identity.key"),
        "--checkpoint-dir", str(tmp_path / "boot-checkpoints"), *common, log_name="keyed-bootstrap",
    )
    address = bootstrap.wait_for(JOIN_LINE, START_TIMEOUT).group(1)
    assert not bootstrap.matches(r"This swarm is open")
    joiner_args = ["--initial-peers", address, "--host-maddrs", "/ip4/127.0.0.1/tcp/0"]
    joiner = tiny_run.peer(*joiner_args, "--checkpoint-dir", str(tmp_path / "joiner-checkpoints"), *common,
                           log_name="keyed-joiner")

    # strangers try while the keyed peers train
    no_key = tiny_run.peer(*joiner_args, "--checkpoint-dir", str(tmp_path / "no-key"),
                           "--target-batch-size", "256", log_name="no-key")
    wrong_key = tiny_run.peer(*joiner_args, "--checkpoint-dir", str(tmp_path / "wrong-key"),
                              "--target-batch-size", "256", "--swarm-key", str(other_path), log_name="wrong-key")
    pulled = tmp_path / "pulled" / "latest.pt"
    puller = tiny_run.cellmind("checkpoint", "pull", "--config", str(tiny_run.config_path), "--initial-peers", address,
                               "--swarm-key", str(key_path), "--output", str(pulled), log_name="keyed-pull")
    for stranger, state in ((no_key, "this peer has none"), (wrong_key, "this peer's key is another one")):
        assert stranger.wait(REJECT_TIMEOUT) != 0
        assert stranger.matches(REJECTED) and stranger.matches(state)
        assert not stranger.matches(r"Traceback")

    joiner.wait_for(TOGETHER_LINE, START_TIMEOUT)
    assert puller.wait(START_TIMEOUT) == 0
    assert puller.matches(r"Saved the swarm's model at global epoch \d+")
    assert load_checkpoint(pulled).config["model"]["n_embd"] == 32
    rejections = bootstrap.matches(r"Rejected a DHT request from node (\w+): (.*)")
    by_node = [match.group(1) for match in rejections if match.group(1) != "unknown"]
    assert len(by_node) == len(set(by_node)) >= 2  # once per rejected node, however often it retried
    assert {"no swarm key" in m.group(2) or "another swarm key" in m.group(2) for m in rejections} == {True}

    _assert_records_need_the_key(address, key_path)
    bootstrap.wait_for(r"Rejected a rpc_join_group request from peer \w+", 30)
    downloads = bootstrap.matches(r"Rejected a rpc_download_state request from peer (\w+)")
    assert len(downloads) == 1  # the outsider asked twice; logged once
    assert bootstrap.matches(r"Rejected a CellMindRunFiles.rpc_get request from peer \w+")
    for peer in (bootstrap, joiner):
        peer.kill_group()


def _assert_records_need_the_key(address: str, key_path) -> None:
    """A peer without the key reads nothing of the run and downloads no state; one with the key does both."""
    script = Path(__file__).with_name("swarm_key_outsider.py")
    result = subprocess.run([sys.executable, str(script), address, str(key_path), "tiny"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
