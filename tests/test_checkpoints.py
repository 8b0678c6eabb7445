"""Checkpoint files: atomic save, retention, digest check, fallback to the last good file, model building."""

import hashlib
import io
import json
import logging
import os

import pytest
import torch

from cellmind import __version__
from cellmind.checkpoints import (
    HEADER_LINE_BYTES,
    MAGIC,
    build_model,
    gpt_config_from,
    load_checkpoint,
    load_latest_good,
    numbered_checkpoints,
    save_checkpoint,
)
from cellmind.config import Config
from cellmind.errors import CheckpointError, ConfigError, MissingFileError
from cellmind.model import GPT

TOKENIZER_SHA256 = hashlib.sha256(b"tokenizer").hexdigest()
CONFIG = Config.from_dict({"model": {"n_embd": 16, "n_head": 2, "n_layer": 2, "block_size": 16, "dropout": 0.0}})


def tiny_model(seed: int = 0, vocab_size: int = 37) -> GPT:
    torch.manual_seed(seed)
    return GPT(gpt_config_from(CONFIG, vocab_size)).eval()


def save(directory, model, global_epoch, keep=3, optimizer_state=None):
    return save_checkpoint(
        directory,
        model=model,
        optimizer_state=optimizer_state,
        global_epoch=global_epoch,
        config=CONFIG,
        tokenizer_sha256=TOKENIZER_SHA256,
        keep=keep,
    )


def corrupt_in_place(path, offset_from_end=100):
    """Flip one byte inside the payload, writing through the existing inode as a failing disk would."""
    with open(path, "r+b") as file:
        file.seek(-offset_from_end, os.SEEK_END)
        byte = file.read(1)
        file.seek(-offset_from_end, os.SEEK_END)
        file.write(bytes([byte[0] ^ 0xFF]))


def test_save_writes_latest_and_numbered_copy(tmp_path):
    path = save(tmp_path, tiny_model(), global_epoch=7)
    assert path == tmp_path / "latest.pt"
    numbered = tmp_path / "step-00000007.pt"
    assert numbered.is_file()
    assert numbered.read_bytes() == path.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt", "step-00000007.pt"]  # no temporary files


def test_save_accepts_latest_file_path(tmp_path):
    path = save(tmp_path / "run" / "latest.pt", tiny_model(), global_epoch=1)
    assert path == tmp_path / "run" / "latest.pt"
    assert (tmp_path / "run" / "step-00000001.pt").is_file()


def test_round_trip_keeps_every_field(tmp_path):
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    _logits, loss = model(torch.tensor([[1, 2, 3]]), targets=torch.tensor([[2, 3, 4]]))
    loss.backward()
    optimizer.step()
    path = save(tmp_path, model, global_epoch=12, optimizer_state=optimizer.state_dict())

    checkpoint = load_checkpoint(path)
    assert checkpoint.global_epoch == 12
    assert checkpoint.config == CONFIG.to_dict()
    assert checkpoint.tokenizer_sha256 == TOKENIZER_SHA256
    assert checkpoint.version == __version__
    assert checkpoint.path == path
    for name, tensor in model.state_dict().items():
        assert torch.equal(checkpoint.model_state[name], tensor), name

    restored = torch.optim.AdamW(tiny_model(seed=1).parameters(), lr=1e-3)
    restored.load_state_dict(checkpoint.optimizer_state)
    first = next(iter(optimizer.state.values()))
    restored_first = next(iter(restored.state.values()))
    assert torch.equal(restored_first["exp_avg"], first["exp_avg"])


def test_saving_loaded_state_dict_round_trips(tmp_path):
    model = tiny_model()
    first = load_checkpoint(save(tmp_path / "a", model, global_epoch=3))
    second = load_checkpoint(save(tmp_path / "b", first.model_state, global_epoch=first.global_epoch))
    assert second.global_epoch == 3
    assert build_model(second).is_tied()
    for name, tensor in model.state_dict().items():
        assert torch.equal(second.model_state[name], tensor), name


def test_retention_keeps_newest_numbered_copies(tmp_path):
    for epoch in range(1, 6):
        save(tmp_path, tiny_model(), global_epoch=epoch, keep=3)
    assert [epoch for epoch, _path in numbered_checkpoints(tmp_path)] == [3, 4, 5]
    assert load_checkpoint(tmp_path / "latest.pt").global_epoch == 5


def test_keep_zero_writes_no_numbered_copy(tmp_path):
    save(tmp_path, tiny_model(), global_epoch=1, keep=0)
    assert numbered_checkpoints(tmp_path) == []
    assert (tmp_path / "latest.pt").is_file()


def test_saving_same_epoch_twice_replaces_copy(tmp_path):
    save(tmp_path, tiny_model(seed=0), global_epoch=4)
    save(tmp_path, tiny_model(seed=1), global_epoch=4)
    state = load_checkpoint(tmp_path / "step-00000004.pt").model_state
    assert torch.equal(state["lm_head.weight"], tiny_model(seed=1).lm_head.weight)


def test_rewriting_latest_leaves_numbered_copy_intact(tmp_path):
    save(tmp_path, tiny_model(seed=0), global_epoch=1)
    save(tmp_path, tiny_model(seed=1), global_epoch=2)
    older = load_checkpoint(tmp_path / "step-00000001.pt")
    assert older.global_epoch == 1
    assert torch.equal(older.model_state["lm_head.weight"], tiny_model(seed=0).lm_head.weight)


def test_missing_file_raises_missing_file_error(tmp_path):
    with pytest.raises(MissingFileError, match="cellmind checkpoint pull"):
        load_checkpoint(tmp_path / "latest.pt")


def test_truncated_file_is_rejected(tmp_path):
    path = save(tmp_path, tiny_model(), global_epoch=1, keep=0)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated") as error:
        load_checkpoint(path)
    assert str(path) in str(error.value)


def test_flipped_byte_is_rejected_by_digest(tmp_path):
    path = save(tmp_path, tiny_model(), global_epoch=1, keep=0)
    corrupt_in_place(path)
    with pytest.raises(CheckpointError, match="corrupted") as error:
        load_checkpoint(path)
    assert str(path) in str(error.value)


def test_plain_torch_file_is_rejected(tmp_path):
    path = tmp_path / "latest.pt"
    torch.save(tiny_model().state_dict(), path)
    with pytest.raises(CheckpointError, match="not a CellMind checkpoint"):
        load_checkpoint(path)


def test_damaged_header_is_rejected(tmp_path):
    path = save(tmp_path, tiny_model(), global_epoch=1, keep=0)
    data = path.read_bytes()
    path.write_bytes(MAGIC + b"{not json" + data[data.index(b"\n", len(MAGIC)) :])
    with pytest.raises(CheckpointError, match="damaged header"):
        load_checkpoint(path)


class NotAWeight:
    """A class ``torch.load(weights_only=True)`` must refuse to rebuild."""


def write_raw_checkpoint(path, payload) -> None:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    body = buffer.getvalue()
    header = {"format": 1, "payload_sha256": hashlib.sha256(body).hexdigest(), "payload_size": len(body)}
    path.write_bytes(MAGIC + json.dumps(header).encode() + b"\n" + body)


def test_payload_with_arbitrary_objects_is_rejected(tmp_path):
    path = tmp_path / "latest.pt"
    write_raw_checkpoint(path, {"model": {}, "surprise": NotAWeight()})
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(path)


def test_payload_without_required_entries_is_rejected(tmp_path):
    path = tmp_path / "latest.pt"
    write_raw_checkpoint(path, {"model": {}, "global_epoch": 3})
    with pytest.raises(CheckpointError, match="optimizer, config, tokenizer_sha256, version"):
        load_checkpoint(path)


def test_header_padded_and_matches_payload(tmp_path):
    path = save(tmp_path, tiny_model(), global_epoch=4, keep=0)
    data = path.read_bytes()
    header_end = data.index(b"\n", len(MAGIC)) + 1
    assert header_end - len(MAGIC) == HEADER_LINE_BYTES
    header, body = json.loads(data[len(MAGIC):header_end]), data[header_end:]
    assert header["payload_size"] == len(body)
    assert header["payload_sha256"] == hashlib.sha256(body).hexdigest()
    assert header["global_epoch"] == 4


def test_unpadded_header_of_earlier_versions_loads(tmp_path):
    model = tiny_model(seed=3)
    path = tmp_path / "latest.pt"
    write_raw_checkpoint(path, {
        "model": model.state_dict(), "optimizer": None, "global_epoch": 7, "config": CONFIG.to_dict(),
        "tokenizer_sha256": TOKENIZER_SHA256, "version": __version__,
    })
    loaded = load_checkpoint(path)
    assert loaded.global_epoch == 7
    assert torch.equal(loaded.model_state["lm_head.weight"], model.state_dict()["lm_head.weight"])


def test_latest_good_returns_none_without_files(tmp_path):
    assert load_latest_good(tmp_path) is None
    assert load_latest_good(tmp_path / "missing") is None


def test_latest_good_prefers_latest(tmp_path):
    save(tmp_path, tiny_model(), global_epoch=1)
    save(tmp_path, tiny_model(), global_epoch=2)
    checkpoint = load_latest_good(tmp_path)
    assert checkpoint.path == tmp_path / "latest.pt"
    assert checkpoint.global_epoch == 2


def test_latest_good_falls_back_past_corrupted_files(tmp_path, caplog):
    for epoch in (1, 2, 3):
        save(tmp_path, tiny_model(seed=epoch), global_epoch=epoch)
    corrupt_in_place(tmp_path / "latest.pt")  # step-00000003.pt is the same file, so it is damaged too

    with caplog.at_level(logging.WARNING, logger="cellmind.checkpoints"):
        checkpoint = load_latest_good(tmp_path)
    assert checkpoint.path == tmp_path / "step-00000002.pt"
    assert checkpoint.global_epoch == 2
    rejected = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(rejected) == 2
    assert "latest.pt" in rejected[0]
    assert "step-00000003.pt" in rejected[1]


def test_latest_good_uses_copy_when_latest_missing(tmp_path):
    save(tmp_path, tiny_model(), global_epoch=5)
    (tmp_path / "latest.pt").unlink()
    assert load_latest_good(tmp_path / "latest.pt").global_epoch == 5


def test_latest_good_from_numbered_path_tries_only_older(tmp_path):
    for epoch in (1, 2, 3):
        save(tmp_path, tiny_model(), global_epoch=epoch)
    corrupt_in_place(tmp_path / "step-00000002.pt")
    (tmp_path / "latest.pt").unlink()  # so that corrupting epoch 2 leaves epoch 3 intact on its own inode
    checkpoint = load_latest_good(tmp_path / "step-00000002.pt")
    assert checkpoint.global_epoch == 1


def test_latest_good_raises_when_every_file_is_bad(tmp_path):
    save(tmp_path, tiny_model(), global_epoch=1)
    corrupt_in_place(tmp_path / "latest.pt")
    with pytest.raises(CheckpointError, match="every file was rejected") as error:
        load_latest_good(tmp_path)
    assert "latest.pt" in str(error.value)
    assert "step-00000001.pt" in str(error.value)


def test_build_model_gives_identical_logits_and_tie(tmp_path):
    model = tiny_model()
    path = save(tmp_path, model, global_epoch=1)
    loaded = build_model(load_checkpoint(path)).eval()
    assert loaded.is_tied()
    assert loaded.config == model.config
    idx = torch.tensor([[1, 5, 9, 2, 36]])
    with torch.no_grad():
        assert torch.equal(loaded(idx)[0], model(idx)[0])


def test_build_model_rejects_untied_matrices(tmp_path):
    model = tiny_model()
    path = save(tmp_path, model, global_epoch=1)
    checkpoint = load_checkpoint(path)
    checkpoint.model_state["lm_head.weight"] = checkpoint.model_state["lm_head.weight"] + 1
    with pytest.raises(CheckpointError, match="must be tied"):
        build_model(checkpoint)


def test_build_model_rejects_state_of_another_shape(tmp_path):
    path = save(tmp_path, tiny_model(), global_epoch=1)
    checkpoint = load_checkpoint(path)
    checkpoint.config["model"]["n_layer"] = 3
    with pytest.raises(CheckpointError, match="does not match its own model config"):
        build_model(checkpoint)


def test_gpt_config_from_config_and_dict():
    from_config = gpt_config_from(CONFIG, vocab_size=99)
    from_dict = gpt_config_from(CONFIG.to_dict(), vocab_size=99)
    assert from_config == from_dict
    assert (from_config.n_embd, from_config.n_head, from_config.n_layer) == (16, 2, 2)
    assert (from_config.block_size, from_config.vocab_size, from_config.dropout) == (16, 99, 0.0)


def test_gpt_config_from_incomplete_dict():
    with pytest.raises(ConfigError, match="n_head"):
        gpt_config_from({"model": {"n_embd": 16, "n_layer": 2, "block_size": 16, "dropout": 0.0}}, vocab_size=9)


def test_negative_keep_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="keep"):
        save(tmp_path, tiny_model(), global_epoch=1, keep=-1)
