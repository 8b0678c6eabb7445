"""``cellmind-peer`` arguments, address checks and the one-line errors for a bad ``--initial-peers``."""

import argparse
import subprocess

import pytest

from cellmind.cli.peer import build_parser, parse_duration, resolve_config, swarm_settings
from cellmind.errors import ConfigError, SwarmError
from cellmind.peer import choose_precision
from cellmind.swarm import DEFAULT_BOOTSTRAP_PORT, bootstrap_host_maddrs, join_line, validate_initial_peers
from conftest import PEER_COMMAND, free_port

# A syntactically valid peer id that no process on this machine has.
ABSENT_PEER_ID = "QmZueJdWhyNwdKHGTBjKQuDjhcHi8qem8xQwrp9jQPZoqR"
ERROR_TIMEOUT = 60


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90.0), ("90s", 90.0), ("10m", 600.0), ("1.5h", 5400.0), ("2d", 172800.0)]
)
def test_parse_duration_units(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten", "10x", "-5m", "1h30m"])
def test_parse_duration_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)


def test_validate_initial_peers_accepts_full_address():
    address = f"/ip4/127.0.0.1/tcp/4000/p2p/{ABSENT_PEER_ID}"
    assert validate_initial_peers([address]) == [address]


@pytest.mark.parametrize("address", ["garbage", "/ip4/127.0.0.1/tcp/4000", f"/ip4/127.0.0.1/p2p/{ABSENT_PEER_ID}"])
def test_validate_initial_peers_rejects(address):
    with pytest.raises(SwarmError, match="invalid --initial-peers address"):
        validate_initial_peers([address])


def test_bootstrap_gets_fixed_port():
    assert bootstrap_host_maddrs(["/ip4/0.0.0.0/tcp/0"]) == [f"/ip4/0.0.0.0/tcp/{DEFAULT_BOOTSTRAP_PORT}"]
    assert bootstrap_host_maddrs(["/ip4/0.0.0.0/tcp/4000"]) == ["/ip4/0.0.0.0/tcp/4000"]


def test_join_line_lists_addresses():
    line = join_line(["/ip4/192.168.0.2/tcp/1/p2p/X", "/ip4/10.0.0.2/tcp/1/p2p/X"])
    assert line == "cellmind-peer --initial-peers /ip4/192.168.0.2/tcp/1/p2p/X /ip4/10.0.0.2/tcp/1/p2p/X"


def test_flags_override_config(tiny_run):
    args = build_parser().parse_args(
        ["--config", str(tiny_run.config_path), "--run-id", "other", "--target-batch-size", "64",
         "--batch-size-per-step", "4", "--compression", "uint8", "--checkpoint-dir", "ck"]
    )
    config = resolve_config(args)
    assert config.swarm.run_id == "other"
    assert config.swarm.target_batch_size == 64
    assert config.training.batch_size == 4
    assert config.swarm.compression == "uint8"
    assert config.model.checkpoint == "ck/latest.pt"
    assert config.model.n_embd == 32  # from the file


def test_bootstrap_settings_use_identity_and_fixed_port(tiny_run):
    args = build_parser().parse_args(["--config", str(tiny_run.config_path), "--bootstrap"])
    settings = swarm_settings(args, resolve_config(args))
    assert str(settings.identity_path) == "peers/identity.key"
    assert settings.host_maddrs == (f"/ip4/0.0.0.0/tcp/{DEFAULT_BOOTSTRAP_PORT}",)
    assert settings.initial_peers == ()


def test_joiner_settings_have_fresh_identity(tiny_run):
    address = f"/ip4/127.0.0.1/tcp/4000/p2p/{ABSENT_PEER_ID}"
    args = build_parser().parse_args(["--config", str(tiny_run.config_path), "--initial-peers", address])
    settings = swarm_settings(args, resolve_config(args))
    assert settings.identity_path is None
    assert settings.initial_peers == (address,)


def test_peer_without_swarm_flags_is_usage_error(tiny_run):
    from cellmind.cli.peer import run

    args = build_parser().parse_args(["--config", str(tiny_run.config_path)])
    with pytest.raises(ConfigError, match="--initial-peers"):
        run(args)


def run_peer_command(tiny_run, *args: str) -> subprocess.CompletedProcess:
    command = [str(PEER_COMMAND), "--config", str(tiny_run.config_path), "--threads", "1", *args]
    return subprocess.run(
        command, cwd=tiny_run.root, capture_output=True, text=True, timeout=ERROR_TIMEOUT, check=False
    )


@pytest.mark.swarm
@pytest.mark.parametrize(
    "address",
    [
        "/ip4/127.0.0.1/tcp/4000",  # no peer id
        "/ip4/999.0.0.1/tcp/4000/p2p/" + ABSENT_PEER_ID,  # not an IPv4 address
        None,  # well-formed, but nothing listens there (a bootstrap that died)
    ],
)
def test_bad_initial_peers_end_with_one_line(tiny_run, address):
    address = address or f"/ip4/127.0.0.1/tcp/{free_port()}/p2p/{ABSENT_PEER_ID}"
    result = run_peer_command(tiny_run, "--initial-peers", address, "--host-maddrs", "/ip4/127.0.0.1/tcp/0")
    assert result.returncode == SwarmError.exit_status
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1
    assert address in error_lines[0]


ZEN4 = {"avx512_f": True, "avx512_bf16": True, "amx_bf16": False}
SAPPHIRE_RAPIDS = {"avx512_f": True, "avx512_bf16": True, "amx_bf16": True}
AVX2_ONLY = {"avx2": True, "avx512_bf16": False, "amx_bf16": False}


@pytest.mark.parametrize(
    ("device_type", "cuda_bf16", "capabilities", "expected"),
    [
        ("cpu", False, ZEN4, "bf16"),
        ("cpu", False, SAPPHIRE_RAPIDS, "bf16"),
        ("cpu", False, {"amx_bf16": True}, "bf16"),
        ("cpu", False, AVX2_ONLY, "fp32"),
        ("cpu", False, {}, "fp32"),
        ("cuda", True, {}, "bf16"),
        ("cuda", False, ZEN4, "fp32"),
        ("mps", False, ZEN4, "fp32"),
    ],
)
def test_auto_precision_follows_capabilities(device_type, cuda_bf16, capabilities, expected):
    precision, reason = choose_precision("auto", device_type, cuda_bf16, capabilities)
    assert precision == expected
    assert reason


@pytest.mark.parametrize("requested", ["fp32", "bf16"])
@pytest.mark.parametrize("capabilities", [ZEN4, AVX2_ONLY])
def test_explicit_precision_overrides_auto(requested, capabilities):
    assert choose_precision(requested, "cpu", False, capabilities)[0] == requested


def test_auto_precision_names_cpu_feature():
    assert "avx512_bf16" in choose_precision("auto", "cpu", False, ZEN4)[1]


def test_unknown_precision_rejected():
    with pytest.raises(ConfigError, match="fp16"):
        choose_precision("fp16", "cpu", False, ZEN4)
