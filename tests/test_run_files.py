"""The run's tokenizer and config, downloaded from the swarm by a device that has neither."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cellmind.config import Config, load_config
from cellmind.run_files import LOCAL_FIELDS, RunFiles, check_run_files, portable_config
from cellmind.swarm import RunManifest
from conftest import PEER_COMMAND, PeerProcess, free_port

STEP_LINE = r"global epoch (\d+) \| loss [\d.]+ \| \d+ samples/s \| (\d+) peers in last round \| lr "
TOGETHER_LINE = STEP_LINE.replace(r"(\d+) peers", r"(2) peers")
JOIN_LINE = r"^\s+cellmind-peer --initial-peers (\S+)$"
START_TIMEOUT = 90


def _manifest(config: Config, tokenizer: bytes) -> RunManifest:
    return RunManifest(
        n_layer=config.model.n_layer, n_head=config.model.n_head, n_embd=config.model.n_embd,
        block_size=config.model.block_size, vocab_size=100, tokenizer_sha256=hashlib.sha256(tokenizer).hexdigest(),
        target_batch_size=config.swarm.target_batch_size,
    )


def test_portable_config_drops_local_fields(tiny_run):
    config = load_config(tiny_run.config_path)
    data = portable_config(config)
    for section, names in LOCAL_FIELDS.items():
        for name in names:
            assert name not in data[section], f"{section}.{name} was sent"
    assert data["model"]["n_embd"] == 32
    assert data["training"]["lr"] == 0.003
    assert data["swarm"]["target_batch_size"] == 32
    assert Config.from_dict(data).model == Config.from_dict(config.to_dict()).model


@pytest.mark.parametrize("change, problem", [
    (lambda files: setattr(files, "tokenizer", b"another tokenizer"), "tokenizer SHA-256"),
    (lambda files: files.config["model"].update(n_layer=7), "model.n_layer"),
    (lambda files: files.config["swarm"].update(target_batch_size=1), "target_batch_size"),
    (lambda files: files.config["model"].update(flash=True), "unknown key 'model.flash'"),
])
def test_mismatched_run_files_are_named(tiny_run, change, problem):
    config = load_config(tiny_run.config_path)
    tokenizer = b"the tokenizer's bytes"
    files = RunFiles(tokenizer=tokenizer, config=portable_config(config), sender="peer")
    manifest = _manifest(config, tokenizer)
    assert check_run_files(files, manifest) is None
    change(files)
    assert problem in check_run_files(files, manifest)


@pytest.mark.swarm
def test_large_tokenizer_round_trip(tmp_path):
    """A file larger than a pipe's buffer, as a tokenizer of 8000 pieces is (about 140 KB), crosses intact."""
    large = tmp_path / "large.model"
    large.write_bytes(os.urandom(300_000))
    script = Path(__file__).with_name("run_files_roundtrip.py")
    result = subprocess.run([sys.executable, str(script), str(large)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.swarm
def test_new_device_downloads_tokenizer_and_config(tiny_run, tmp_path):
    port = free_port()
    bootstrap = tiny_run.peer(
        "--bootstrap", "--host-maddrs", f"/ip4/127.0.0.1/tcp/{port}", "--identity", str(tmp_path / "boot.key"),
        "--checkpoint-dir", str(tmp_path / "boot-checkpoints"), log_name="files-bootstrap",
    )
    address = bootstrap.wait_for(JOIN_LINE, START_TIMEOUT).group(1)

    device = tmp_path / "new-device"  # only its own data: no tokenizer/, no config.json
    (device / "data").mkdir(parents=True)
    shutil.copy(tiny_run.root / "data" / "train.jsonl", device / "data" / "train.jsonl")
    command = [str(PEER_COMMAND), "--initial-peers", address, "--run-id", "tiny", "--data", "data/train.jsonl",
               "--host-maddrs", "/ip4/127.0.0.1/tcp/0", "--checkpoint-dir", "checkpoints", "--threads", "1", "-v"]
    joiner = PeerProcess(command, cwd=device, log_path=tmp_path / "files-joiner.log")

    joiner.wait_for(r"Downloaded tokenizer/tokenizer.model, config.json from the swarm", START_TIMEOUT)
    joiner.wait_for(TOGETHER_LINE, START_TIMEOUT)
    tokenizer_path = Path(load_config(tiny_run.config_path).tokenizer.model_path)
    assert (device / "tokenizer" / "tokenizer.model").read_bytes() == tokenizer_path.read_bytes()
    downloaded = json.loads((device / "config.json").read_text(encoding="utf-8"))
    assert downloaded["model"]["n_embd"] == 32
    assert "dataset_path" not in downloaded["training"]
    assert "run_id" not in downloaded["swarm"]
    for peer in (bootstrap, joiner):
        peer.kill_group()
