"""The benchmarks' corpus: real Korean dialogue rendered into a KakaoTalk export and run through the product.

    python bench/corpus.py            # writes bench/work/{raw,data,tokenizer}/ once; --force redoes it

The 11,823 question/answer pairs of the Korean chatbot data set ``ChatbotData.csv`` (hand-written informal
Korean, MIT licensed, from the songys/Chatbot_data repository; ``SOURCE_CSV`` is where this checkout finds it)
become a KakaoTalk PC CSV export (``Date,User,Message``) between two invented speakers. Each pair is two
consecutive messages one minute apart, and after every ``PAIRS_PER_SESSION`` pairs a three-hour silence ends a
conversation session. The pairs are shuffled with a fixed seed first, so that the validation split (the latest
sessions) is drawn from all topics. Then ``cellmind prepare`` and ``cellmind tokenizer train --vocab-size
8000`` (``auto`` if the text cannot support 8000 pieces) run as a user would run them.
Other benchmarks call :func:`ensure_corpus` and :func:`write_config`.
"""

import argparse
import csv
import json
import random
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import torch
from common import REPO_DIR, WORK_DIR, cellmind_command

from cellmind.config import Config

SOURCE_CSV = REPO_DIR.parent / "shared" / "data" / "chatbot_data" / "ChatbotData.csv"
SPEAKERS = ("한지우", "서민재")  # invented; prepare replaces them with <NAME>
PAIRS_PER_SESSION = 8
MESSAGE_GAP = timedelta(minutes=1)
SESSION_GAP = timedelta(hours=3)  # longer than prepare's 30-minute default, so each group is one session
SHUFFLE_SEED = 0


@dataclass(frozen=True)
class CorpusPaths:
    export: Path
    train: Path
    val: Path
    tokenizer: Path


def corpus_paths(work_dir: Path = WORK_DIR) -> CorpusPaths:
    return CorpusPaths(
        export=work_dir / "raw" / "KakaoTalk_Chatbot.csv",
        train=work_dir / "data" / "for-model-training" / "train.jsonl",
        val=work_dir / "data" / "for-model-training" / "val.jsonl",
        tokenizer=work_dir / "tokenizer" / "tokenizer.model",
    )


def read_pairs(path: Path = SOURCE_CSV) -> list[tuple[str, str]]:
    with open(path, encoding="utf-8", newline="") as file:
        return [(row["Q"].strip(), row["A"].strip()) for row in csv.DictReader(file) if row["Q"].strip()]


def render_csv_export(pairs: list[tuple[str, str]], path: Path) -> int:
    """Write ``pairs`` as a KakaoTalk CSV export; return the number of messages written."""
    pairs = list(pairs)
    random.Random(SHUFFLE_SEED).shuffle(pairs)
    moment = datetime(2023, 1, 1, 9, 0, 0)
    rows = []
    for index, (question, answer) in enumerate(pairs):
        if index and index % PAIRS_PER_SESSION == 0:
            moment += SESSION_GAP
        for speaker, text in zip(SPEAKERS, (question, answer)):
            rows.append((moment.strftime("%Y-%m-%d %H:%M:%S"), speaker, text))
            moment += MESSAGE_GAP
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["Date", "User", "Message"])
        writer.writerows(rows)
    return len(rows)


def ensure_corpus(force: bool = False, work_dir: Path = WORK_DIR) -> CorpusPaths:
    """Render, prepare and train the tokenizer unless their outputs already exist; return the paths."""
    paths = corpus_paths(work_dir)
    if not force and paths.train.is_file() and paths.val.is_file() and paths.tokenizer.is_file():
        return paths
    if not SOURCE_CSV.is_file():
        raise SystemExit(f"{SOURCE_CSV} not found: the benchmarks need the Korean chatbot data set there")
    messages = render_csv_export(read_pairs(), paths.export)
    print(f"rendered {messages} messages into {paths.export}", flush=True)
    _run(cellmind_command("prepare", str(paths.export), "--output-dir", str(work_dir / "data")))
    textonly = work_dir / "data" / "for-tokenizer-training" / "textonly.txt"
    tokenizer_command = cellmind_command(
        "tokenizer", "train", "--input", str(textonly), "--output-dir", str(paths.tokenizer.parent),
        "--vocab-size", "8000",
    )
    if subprocess.run(tokenizer_command, cwd=REPO_DIR).returncode != 0:
        print("8000 pieces did not fit this text; training with --vocab-size auto", flush=True)
        _run([*tokenizer_command[:-1], "auto"])
    return paths


def _run(command: list[str]) -> None:
    print("$ " + " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=REPO_DIR)


def write_config(path: Path, paths: CorpusPaths, *, small: bool = False, **sections) -> Path:
    """Write a config.json for the corpus: the 23M model, or with ``small`` a 4-layer 256-wide one.

    ``sections`` maps a section name to a dict of overrides, e.g. ``swarm={"target_batch_size": 64}``.
    """
    config = Config()
    config.tokenizer.model_path = str(paths.tokenizer)
    config.training.dataset_path = str(paths.train)
    config.training.val_path = str(paths.val)
    if small:
        config.model.n_embd, config.model.n_head, config.model.n_layer, config.model.block_size = 256, 4, 4, 128
        config.training.seq_len = 128
    data = config.to_dict()
    for section, values in sections.items():
        data[section].update(values)
    Config.from_dict(data)  # raises on a misspelt key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="render and prepare again even if the outputs exist")
    args = parser.parse_args()
    paths = ensure_corpus(force=args.force)
    for name in ("export", "train", "val", "tokenizer"):
        print(f"{name}: {getattr(paths, name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


def write_initial_checkpoint(directory: Path, config_path: Path, paths: CorpusPaths) -> Path:
    """Save the config's seeded, untrained model as a checkpoint, for benchmarks that only need its shape."""
    from cellmind.checkpoints import gpt_config_from, save_checkpoint
    from cellmind.config import load_config
    from cellmind.model import GPT
    from cellmind.tokenizer import load_tokenizer

    config = load_config(config_path)
    tokenizer = load_tokenizer(paths.tokenizer)
    torch.manual_seed(config.training.seed)
    model = GPT(gpt_config_from(config, tokenizer.vocab_size))
    return save_checkpoint(directory, model=model, optimizer_state=None, global_epoch=0, config=config,
                           tokenizer_sha256=tokenizer.sha256, keep=0)
