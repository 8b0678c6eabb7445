"""The whole CellMind job on real Korean dialogue, on one machine: ``make demo``.

The Korean conversations of the ``chatterbot-corpus`` package are rendered into a KakaoTalk Android export, so
the real parser reads them. Then: ``cellmind prepare`` -> ``cellmind tokenizer train`` -> a bootstrap peer and
a second peer on 127.0.0.1 training one model together -> ``cellmind generate`` from the checkpoint they share.
It prints the validation loss of the shared initialization and of the trained model.

Everything is written under ``runs/demo/`` so that the user's own ``data/``, ``tokenizer/`` and
``checkpoints/`` stay untouched. Run it with ``python -m cellmind.demo [--train-time 240]``.
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import torch
import yaml

from cellmind.checkpoints import build_model, gpt_config_from, load_checkpoint
from cellmind.config import Config
from cellmind.dataset import ensure_token_file
from cellmind.evaluation import validation_loss
from cellmind.i18n import _, set_language
from cellmind.model import GPT
from cellmind.tokenizer import load_tokenizer

DEMO_DIR = Path("runs/demo")
SPEAKERS = ("박서진", "최도윤")  # invented names; prepare replaces them with <NAME>
CONVERSATION_GAP = timedelta(hours=2)  # longer than the 30-minute session gap, so each conversation is a session
JOIN_TIMEOUT = 120.0
VAL_BATCHES = 8


def demo_config() -> Config:
    """Return a config whose model learns visibly in a few minutes on two CPU cores, with the full model's layout."""
    config = Config()
    config.model.n_embd, config.model.n_head, config.model.n_layer, config.model.block_size = 256, 4, 4, 128
    config.tokenizer.model_path = str(DEMO_DIR / "tokenizer" / "tokenizer.model")
    config.training.batch_size = 8
    config.training.seq_len = 128
    config.training.lr = 1e-3
    config.training.warmup_steps = 5
    config.training.checkpoint_every = 5
    config.training.dataset_path = str(DEMO_DIR / "data" / "for-model-training" / "train.jsonl")
    config.training.val_path = str(DEMO_DIR / "data" / "for-model-training" / "val.jsonl")
    config.swarm.run_id = "cellmind-demo"
    config.swarm.target_batch_size = 64
    config.swarm.matchmaking_time = 2.0
    config.swarm.averaging_timeout = 30.0
    return config


def korean_conversations() -> list[list[str]]:
    """Return the Korean conversations shipped by ``chatterbot-corpus``, each a list of turns, in a fixed shuffle.

    The package groups conversations by topic file. ``prepare`` keeps the latest sessions for validation, so in
    file order the validation set would be the last topics only; a seeded shuffle spreads every topic over time.
    """
    import chatterbot_corpus

    folder = Path(chatterbot_corpus.__file__).parent / "data" / "korean"
    conversations = []
    for path in sorted(folder.glob("*.yml")):
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for turns in document.get("conversations") or []:
            turns = [str(turn).strip() for turn in turns if str(turn).strip()]
            if len(turns) >= 2:
                conversations.append(turns)
    random.Random(0).shuffle(conversations)
    return conversations


def render_android_export(conversations: list[list[str]], path: Path) -> None:
    """Write ``conversations`` as a KakaoTalk Android (Korean UI) export: BOM, CRLF records, 12-hour times."""
    lines = ["\ufeffCellMind 데모 님과 카카오톡 대화", f"저장한 날짜 : {korean_time(datetime(2023, 1, 31, 9, 0))}", ""]
    moment = datetime(2023, 1, 1, 9, 0)
    for conversation in conversations:
        lines.append(korean_time(moment))
        for turn_index, turn in enumerate(conversation):
            speaker = SPEAKERS[turn_index % 2]
            lines.append(f"{korean_time(moment)}, {speaker} : {turn}")
            moment += timedelta(minutes=1)
        moment += CONVERSATION_GAP
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes("\r\n".join(lines).encode("utf-8") + b"\r\n")


def korean_time(moment: datetime) -> str:
    """Format ``moment`` as KakaoTalk's Korean UI does: ``2023년 1월 1일 오후 9:03``."""
    half = "오전" if moment.hour < 12 else "오후"
    hour = moment.hour % 12 or 12
    return f"{moment.year}년 {moment.month}월 {moment.day}일 {half} {hour}:{moment.minute:02d}"


def run_step(title: str, command: list[str]) -> None:
    print(f"\n== {title}\n$ {' '.join(command)}", flush=True)
    subprocess.run(command, check=True)


def cellmind_command(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "cellmind", *arguments]


def peer_command(*arguments: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from cellmind.cli import peer_main; sys.exit(peer_main())", *arguments]


def measure_validation_loss(model: GPT, config: Config) -> float:
    tokenizer = load_tokenizer(config.tokenizer.model_path)
    token_file = ensure_token_file(config.training.val_path, tokenizer, show_progress=False)
    return validation_loss(
        model, token_file, seq_len=config.training.seq_len, batch_size=8, max_batches=VAL_BATCHES
    )


def initial_model(config: Config) -> GPT:
    """Build the model every peer starts from; the config's seed makes the initialization identical on all of them."""
    vocab_size = load_tokenizer(config.tokenizer.model_path).vocab_size
    torch.manual_seed(config.training.seed)
    return GPT(gpt_config_from(config, vocab_size))


def wait_for_join_line(join_file: Path, bootstrap: subprocess.Popen) -> str:
    """Return the bootstrap's join address once it wrote ``join.txt``, the line a second device would run."""
    deadline = time.monotonic() + JOIN_TIMEOUT
    while time.monotonic() < deadline:
        if bootstrap.poll() is not None:
            raise RuntimeError(f"the bootstrap peer exited with status {bootstrap.returncode} before it was ready")
        if join_file.is_file():
            words = join_file.read_text(encoding="utf-8").split()
            addresses = [word for word in words if word.startswith("/ip4/") or word.startswith("/ip6/")]
            if addresses:
                return addresses[0]
        time.sleep(0.5)
    raise TimeoutError(f"the bootstrap peer wrote no {join_file} within {JOIN_TIMEOUT:.0f} s")


def train_two_peers(config_path: Path, train_time: float) -> None:
    """Run a bootstrap peer and a joining peer side by side until both reach ``--max-time``."""
    common = ["--config", str(config_path), "--threads", "1", "--max-time", f"{train_time:.0f}s"]
    join_file = DEMO_DIR / "peers" / "join.txt"
    join_file.unlink(missing_ok=True)
    bootstrap_command = peer_command(
        "--bootstrap", "--name", "demo-1", "--host-maddrs", "/ip4/127.0.0.1/tcp/0",
        "--identity", str(DEMO_DIR / "peers" / "identity.key"),
        "--checkpoint-dir", str(DEMO_DIR / "checkpoints" / "peer-1"), *common,
    )
    title = _("two peers train together")  # outside the f-string, where message extraction finds it
    print(f"\n== {title}\n$ {' '.join(bootstrap_command)}", flush=True)
    bootstrap = subprocess.Popen(bootstrap_command)
    try:
        address = wait_for_join_line(join_file, bootstrap)
        joiner_command = peer_command(
            "--initial-peers", address, "--name", "demo-2", "--host-maddrs", "/ip4/127.0.0.1/tcp/0",
            "--checkpoint-dir", str(DEMO_DIR / "checkpoints" / "peer-2"), *common,
        )
        print(f"$ {' '.join(joiner_command)}", flush=True)
        joiner = subprocess.run(joiner_command)
        if bootstrap.wait(timeout=train_time + 120) != 0 or joiner.returncode != 0:
            raise RuntimeError(f"a peer failed (bootstrap {bootstrap.returncode}, joiner {joiner.returncode})")
    finally:
        if bootstrap.poll() is None:
            bootstrap.terminate()
            bootstrap.wait(timeout=60)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cellmind.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--train-time", type=float, default=240.0, help="seconds the two peers train (default 240)")
    parser.add_argument("--lang", choices=["ko", "en"], help="language of messages (default: from the locale)")
    args = parser.parse_args(argv)
    set_language(args.lang)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    language = ["--lang", args.lang] if args.lang else []

    # A second run starts over: peers would otherwise resume from the first run's checkpoints, and the loss
    # "before training" (of the seeded initialization) would no longer be where training started.
    shutil.rmtree(DEMO_DIR / "checkpoints", ignore_errors=True)
    config = demo_config()
    config_path = DEMO_DIR / "config.json"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(json.dumps(config.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    export_path = DEMO_DIR / "raw" / "KakaoTalkChats.txt"
    render_android_export(korean_conversations(), export_path)

    run_step(_("clean and anonymize the chat export"),
             cellmind_command(*language, "prepare", str(export_path.parent), "--output-dir", str(DEMO_DIR / "data")))
    run_step(_("train the tokenizer"), cellmind_command(
        *language, "tokenizer", "train", "--config", str(config_path), "--vocab-size", "auto",
        "--input", str(DEMO_DIR / "data" / "for-tokenizer-training" / "textonly.txt"),
        "--output-dir", str(DEMO_DIR / "tokenizer"),
    ))
    loss_before = measure_validation_loss(initial_model(config), config)
    train_two_peers(config_path, args.train_time)

    checkpoint = load_checkpoint(DEMO_DIR / "checkpoints" / "peer-1" / "latest.pt")
    loss_after = measure_validation_loss(build_model(checkpoint), config)
    print("\n" + _("validation loss: {before:.3f} before training, {after:.3f} after {epochs} global steps").format(
        before=loss_before, after=loss_after, epochs=checkpoint.global_epoch), flush=True)
    run_step(_("generate text from the shared checkpoint"), cellmind_command(
        *language, "generate", "--config", str(config_path), "--checkpoint", str(checkpoint.path),
        "--prompt", "안녕하세요", "--max-new-tokens", "60", "--temperature", "0.8", "--seed", "0",
    ))
    return 0 if loss_after < loss_before else 1


if __name__ == "__main__":
    sys.exit(main())
