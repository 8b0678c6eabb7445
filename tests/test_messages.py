"""Every known failure ends in one localized line that states what went wrong and what to run next.

Commands run in-process through ``main()``/``peer_main()`` in an empty working directory, so that relative paths in
the messages are the defaults. The port test runs a real ``cellmind-peer`` because the port is taken in this
process, and the private swarm's bootstrap runs as its own process too.
"""

import dataclasses
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cellmind.cli import main, peer_main
from cellmind.errors import MissingFileError
from cellmind.i18n import current_language, set_language

PEER_COMMAND = Path(sys.executable).with_name("cellmind-peer")


@pytest.fixture(autouse=True)
def restore_language():
    before = current_language()
    yield
    set_language(before)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def last_error_line(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


MISSING_TOKENIZER = {
    "en": "error: tokenizer not found: tokenizer/missing.model; run `cellmind tokenizer train` first",
    "ko": "오류: 토크나이저가 없어요: tokenizer/missing.model. 먼저 `cellmind tokenizer train`을 실행하세요",
}


@pytest.mark.parametrize("language", ["en", "ko"])
def test_missing_tokenizer(language, workdir, capsys):
    status = peer_main(["--lang", language, "--bootstrap", "--tokenizer", "tokenizer/missing.model"])
    assert status == 66
    assert last_error_line(capsys) == MISSING_TOKENIZER[language]


def test_traceback_flag_reraises(workdir):
    with pytest.raises(MissingFileError, match="tokenizer not found"):
        peer_main(["--lang", "en", "--bootstrap", "--tokenizer", "tokenizer/missing.model", "--traceback"])


NO_EXPORTS = {
    "en": "error: no inputs given and data/raw is empty or missing; put your KakaoTalk exports there or pass files "
          "or folders",
    "ko": "오류: 입력이 없고 data/raw도 비어 있거나 없어요. 카카오톡 내보내기 파일을 그곳에 넣거나 파일이나 폴더를 "
          "지정하세요",
}


@pytest.mark.parametrize("language", ["en", "ko"])
def test_no_exports_to_prepare(language, workdir, capsys):
    assert main(["--lang", language, "prepare"]) == 66
    assert last_error_line(capsys) == NO_EXPORTS[language]


NO_TRAINING_DATA = {
    "en": "error: training data not found: data/missing.jsonl; run `cellmind prepare` first",
    "ko": "오류: 학습 데이터가 없어요: data/missing.jsonl. 먼저 `cellmind prepare`를 실행하세요",
}


@pytest.mark.parametrize("language", ["en", "ko"])
def test_no_training_data(language, tiny_run, workdir, capsys):
    argv = ["--lang", language, "--bootstrap", "--config", str(tiny_run.config_path), "--data", "data/missing.jsonl"]
    assert peer_main(argv) == 66
    assert last_error_line(capsys) == NO_TRAINING_DATA[language]


MISSING_CHECKPOINT = {
    "en": "error: checkpoint not found: checkpoints/latest.pt; train a model with `cellmind-peer` or download the "
          "swarm's with `cellmind checkpoint pull --initial-peers ADDR`",
    "ko": "오류: 체크포인트가 없어요: checkpoints/latest.pt. `cellmind-peer`로 모델을 학습하거나 "
          "`cellmind checkpoint pull --initial-peers ADDR`로 스웜의 모델을 내려받으세요",
}


@pytest.mark.parametrize("language", ["en", "ko"])
def test_generate_without_checkpoint(language, workdir, capsys):
    assert main(["--lang", language, "generate", "--prompt", "안녕"]) == 66
    assert last_error_line(capsys) == MISSING_CHECKPOINT[language]


BAD_ADDRESS = {
    "en": "error: invalid --initial-peers address /ip4/127.0.0.1/tcp/31337: it needs a transport and a peer id "
          "(/ip4/ADDRESS/tcp/PORT/p2p/PEER_ID); copy the whole join line that the bootstrap peer printed",
    "ko": "오류: 잘못된 --initial-peers 주소 /ip4/127.0.0.1/tcp/31337: 전송 프로토콜과 피어 ID가 있어야 해요"
          "(/ip4/ADDRESS/tcp/PORT/p2p/PEER_ID). 부트스트랩 피어가 출력한 참여 명령을 통째로 복사하세요",
}


@pytest.mark.parametrize("language", ["en", "ko"])
@pytest.mark.parametrize(
    "command",
    [
        ["peer", "--no-train"],
        ["cellmind", "monitor", "--once"],
        ["cellmind", "checkpoint", "pull"],
        ["cellmind", "generate", "--prompt", "안녕"],
    ],
    ids=["peer", "monitor", "pull", "generate"],
)
def test_address_without_peer_id(language, command, workdir, capsys):
    entry, arguments = (peer_main, command[1:]) if command[0] == "peer" else (main, command[1:])
    status = entry(["--lang", language, *arguments, "--initial-peers", "/ip4/127.0.0.1/tcp/31337"])
    assert status == 69
    assert last_error_line(capsys) == BAD_ADDRESS[language]


PORT_IN_USE = {
    "en": "error: cannot listen on /ip4/127.0.0.1/tcp/{port}: the port is in use; stop the other program or choose "
          "another port with --host-maddrs",
    "ko": "오류: /ip4/127.0.0.1/tcp/{port}에서 수신할 수 없어요: 포트가 이미 쓰이고 있어요. 다른 프로그램을 멈추거나 "
          "--host-maddrs로 다른 포트를 고르세요",
}


@pytest.mark.parametrize("language", ["en", "ko"])
def test_port_in_use(language, tmp_path):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        command = [
            str(PEER_COMMAND), "--lang", language, "--bootstrap", "--no-train",
            "--host-maddrs", f"/ip4/127.0.0.1/tcp/{port}", "--identity", str(tmp_path / "identity.key"),
        ]
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=90)
    assert result.returncode == 69
    assert result.stderr.strip().splitlines()[-1] == PORT_IN_USE[language].format(port=port)


CONFIG_MISMATCH = {
    "en": "error: this peer's model does not match the swarm's run 'tiny' (n_layer: 1 != 3); use the same config "
          "and tokenizer file as the other peers, or start a new run with another --run-id",
    "ko": "오류: 이 피어의 모델이 스웜의 런 'tiny'과(와) 맞지 않아요(n_layer: 1 != 3). 다른 피어와 같은 설정과 "
          "토크나이저 파일을 쓰거나, 다른 --run-id로 새 런을 시작하세요",
}


@pytest.fixture(scope="module")
def swarm_of_another_model(tiny_run):
    """A DHT node on 127.0.0.1 whose run 'tiny' trains a three-layer model; yields its address."""
    import hivemind

    from cellmind.config import load_config
    from cellmind.metrics import dht_validators
    from cellmind.peer import run_manifest
    from cellmind.swarm import store_manifest
    from cellmind.tokenizer import load_tokenizer

    config = load_config(tiny_run.config_path)
    tokenizer = load_tokenizer(config.tokenizer.model_path)
    manifest = dataclasses.replace(run_manifest(config, tokenizer.vocab_size, tokenizer.sha256), n_layer=3)
    dht = hivemind.DHT(
        start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"], record_validators=dht_validators("tiny")
    )
    try:
        store_manifest(dht, "tiny", manifest)
        yield str(dht.get_visible_maddrs()[0])
    finally:
        dht.shutdown()


@pytest.mark.parametrize("language", ["en", "ko"])
def test_config_mismatch(language, tiny_run, swarm_of_another_model, workdir, capsys):
    argv = [
        "--lang", language, "--config", str(tiny_run.config_path), "--threads", "1",
        "--initial-peers", swarm_of_another_model,
    ]
    assert peer_main(argv) == 69
    assert last_error_line(capsys) == CONFIG_MISMATCH[language]


WRONG_SWARM_KEY = {
    "en": "error: the swarm rejected this peer: it needs the same --swarm-key file as the other peers (this peer "
          "has none); copy peers/swarm.key from the device that created it",
    "ko": "오류: 스웜이 이 피어를 거부했어요: 다른 피어와 같은 --swarm-key 파일이 필요해요(이 피어의 키가 달라요). "
          "키를 만든 기기에서 peers/swarm.key를 복사하세요",
}


@pytest.fixture(scope="module")
def private_swarm(tmp_path_factory):
    """A relay bootstrap of a private swarm, in its own process (a keyed DHT in this process would answer itself)."""
    root = tmp_path_factory.mktemp("private-swarm")
    assert main(["--lang", "en", "swarm-key", "new", "--output", str(root / "swarm.key")]) == 0
    command = [
        str(PEER_COMMAND), "--bootstrap", "--no-train", "--swarm-key", str(root / "swarm.key"),
        "--host-maddrs", "/ip4/127.0.0.1/tcp/0", "--identity", str(root / "peers" / "identity.key"),
    ]
    bootstrap = subprocess.Popen(command, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        join_file = root / "peers" / "join.txt"
        deadline = time.monotonic() + 90
        while not join_file.exists() and time.monotonic() < deadline and bootstrap.poll() is None:
            time.sleep(0.2)
        assert join_file.exists(), "the keyed bootstrap wrote no join line"
        yield join_file.read_text(encoding="utf-8").split()[-1]
    finally:
        bootstrap.terminate()
        bootstrap.wait(timeout=60)


@pytest.mark.parametrize("language, key", [("en", None), ("ko", "another.key")])
def test_wrong_swarm_key(language, key, private_swarm, workdir, capsys):
    key_arguments = []
    if key is not None:
        assert main(["--lang", "en", "swarm-key", "new", "--output", key]) == 0
        key_arguments = ["--swarm-key", key]
    argv = ["--lang", language, "--no-train", "--initial-peers", private_swarm, *key_arguments]
    assert peer_main(argv) == 69
    assert last_error_line(capsys) == WRONG_SWARM_KEY[language]


PYTORCH_OUT_OF_MEMORY = (
    "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 7.79 GiB of which 1.06 GiB is "
    "free. Including non-PyTorch memory, this process has 6.72 GiB memory in use."
)
PEER_OUT_OF_MEMORY = {
    "en": "error: the device ran out of memory (CUDA out of memory. Tried to allocate 2.00 GiB); lower "
          "--batch-size-per-step (now 8) or train on the CPU with --device cpu",
    "ko": "오류: 장치의 메모리가 부족해요(CUDA out of memory. Tried to allocate 2.00 GiB). "
          "--batch-size-per-step(지금 8)을 낮추거나 --device cpu로 CPU에서 학습하세요",
}
GENERATE_OUT_OF_MEMORY = {
    "en": "error: the device ran out of memory (CUDA out of memory. Tried to allocate 2.00 GiB); generate on the "
          "CPU with --device cpu",
    "ko": "오류: 장치의 메모리가 부족해요(CUDA out of memory. Tried to allocate 2.00 GiB). "
          "--device cpu로 CPU에서 생성하세요",
}


def raise_out_of_memory(*args, **kwargs):
    raise torch.OutOfMemoryError(PYTORCH_OUT_OF_MEMORY)


@pytest.mark.parametrize("language", ["en", "ko"])
def test_peer_out_of_memory(language, tiny_run, workdir, monkeypatch, capsys):
    monkeypatch.setattr("cellmind.peer.run_peer", raise_out_of_memory)
    status = peer_main(["--lang", language, "--bootstrap", "--config", str(tiny_run.config_path)])
    assert status == 75
    assert last_error_line(capsys) == PEER_OUT_OF_MEMORY[language]


@pytest.mark.parametrize("language", ["en", "ko"])
def test_generate_out_of_memory(language, workdir, monkeypatch, capsys):
    monkeypatch.setattr("cellmind.cli.generate._generate", raise_out_of_memory)
    assert main(["--lang", language, "generate", "--prompt", "안녕"]) == 75
    assert last_error_line(capsys) == GENERATE_OUT_OF_MEMORY[language]


def test_messages_fit_one_line(workdir, capsys):
    """Known errors are one line on stderr: no traceback, no wrapped continuation."""
    main(["--lang", "ko", "prepare"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("오류: ")
