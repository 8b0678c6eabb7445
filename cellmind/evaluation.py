"""Validation loss of a model on a packed token file, the one number every comparison of runs uses."""

from contextlib import AbstractContextManager, nullcontext

import torch

from cellmind.dataset import TokenFile, iter_eval_batches
from cellmind.model import GPT


@torch.no_grad()
def validation_loss(
    model: GPT,
    token_file: TokenFile,
    *,
    seq_len: int,
    batch_size: int,
    max_batches: int | None = None,
    device: torch.device | str = "cpu",
    autocast: AbstractContextManager | None = None,
) -> float:
    """Return the mean cross-entropy (nats per token) over the first non-overlapping windows of ``token_file``.

    Every call reads the same windows, so losses of different models on one file are comparable. The model is
    left in eval mode.
    """
    model.eval()
    total_loss, total_tokens = 0.0, 0
    with autocast or nullcontext():
        for x, y in iter_eval_batches(token_file, seq_len, batch_size, max_batches):
            _, loss = model(x.to(device), y.to(device))
            total_loss += loss.item() * y.numel()
            total_tokens += y.numel()
    if total_tokens == 0:
        raise ValueError(f"{token_file.path} holds no complete validation window")
    return total_loss / total_tokens
