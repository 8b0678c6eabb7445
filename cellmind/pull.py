"""Downloading the swarm's current model and optimizer state without training: ``cellmind checkpoint pull``.

The puller joins the DHT in client mode and reads the run manifest to learn the model's shape and tokenizer.
It builds the same model and AdamW optimizer a training peer builds. Then it downloads parameters, optimizer
statistics and the global epoch through Hivemind's state download, the same stream a joining peer uses.
Nothing is trained and nothing is averaged.
"""

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from cellmind.checkpoints import Checkpoint, build_model, checkpoint_from_model, save_checkpoint
from cellmind.config import Config
from cellmind.errors import SwarmError
from cellmind.i18n import _
from cellmind.membership import declare_membership
from cellmind.peer import (
    LOAD_STATE_TIMEOUT,
    SnapshotStateAverager,
    compression_options,
    keep_sigint_handler,
    new_model,
    optimizer_factory,
    parameter_digest,
    parameter_groups,
    scheduler_factory,
)
from cellmind.progress import spinner
from cellmind.swarm import RunManifest, SwarmSettings, shutdown_dht, start_dht, wait_for_manifest
from cellmind.swarm_key import SwarmKey

logger = logging.getLogger(__name__)

RETRY_PERIOD = 2.0
"""Seconds between download attempts while no peer offers its state."""


def config_for_manifest(config: Config, manifest: RunManifest) -> Config:
    """Return ``config`` with the model shape and target batch size the swarm trains."""
    model = replace(
        config.model,
        n_layer=manifest.n_layer,
        n_head=manifest.n_head,
        n_embd=manifest.n_embd,
        block_size=manifest.block_size,
    )
    swarm = replace(config.swarm, target_batch_size=manifest.target_batch_size)
    return replace(config, model=model, swarm=swarm)


def pull_checkpoint(
    config: Config, initial_peers: Sequence[str], timeout: float = LOAD_STATE_TIMEOUT,
    swarm_key: SwarmKey | None = None,
) -> Checkpoint:
    """Download the swarm's model, optimizer state and global epoch; raise SwarmError after ``timeout`` seconds.

    A private swarm needs its ``swarm_key``, and ``config``'s run id namespaced by it
    (:func:`cellmind.swarm_key.with_swarm_key`).
    """
    settings = SwarmSettings(
        run_id=config.swarm.run_id,
        initial_peers=tuple(initial_peers),
        host_maddrs=("/ip4/127.0.0.1/tcp/0",),  # a client-mode node accepts no connections anyway
        client_mode=True,
        swarm_key=swarm_key,
    )
    deadline = time.monotonic() + timeout
    with spinner(_("downloading the swarm's model")):
        dht = start_dht(settings)
        membership = None
        try:
            manifest = wait_for_manifest(dht, config.swarm.run_id, deadline)
            # the peers of a private swarm stream their state only to callers with a membership record
            membership = declare_membership(dht, config.swarm.run_id, swarm_key)
            config = config_for_manifest(config, manifest)
            return _download(dht, config, manifest, deadline)
        finally:
            if membership is not None:
                membership.stop()
            shutdown_dht(dht)


def _download(dht, config: Config, manifest: RunManifest, deadline: float) -> Checkpoint:
    """Build the training peer's model and optimizer, fill them from a peer, and return them as a Checkpoint."""
    model = new_model(config, manifest.vocab_size)
    with keep_sigint_handler():
        averager = _make_averager(dht, config, model)
    try:
        global_epoch = _load_state(averager, deadline)
        optimizer_state = averager.optimizer.state_dict()
    finally:
        averager.shutdown()

    optimizer_state["state"]["local_epoch"] = global_epoch  # the layout of hivemind.Optimizer.state_dict()
    model.tie_weights()
    checkpoint = checkpoint_from_model(
        model, global_epoch=global_epoch, config=config, tokenizer_sha256=manifest.tokenizer_sha256
    )
    checkpoint.optimizer_state = optimizer_state
    logger.info(f"Pulled global epoch {global_epoch}, parameter digest {parameter_digest(checkpoint.model_state)}")
    return checkpoint


def _make_averager(dht, config: Config, model) -> SnapshotStateAverager:
    # Hivemind names its RPC handlers after the averager class, so the puller uses the peers' class.
    return SnapshotStateAverager(
        snapshot_lock=threading.Lock(),
        dht=dht,
        optimizer=optimizer_factory(config),
        params=parameter_groups(model, config.training.weight_decay),
        scheduler=scheduler_factory(config),  # its ``initial_lr`` entries make the state layout match the peers'
        prefix=f"{config.swarm.run_id}_state_averager",
        state_compression=compression_options(config.swarm.compression)["load_state_compression"],
        offload_optimizer=False,
        start=True,
    )


def _load_state(averager: SnapshotStateAverager, deadline: float) -> int:
    """Download state into ``averager`` until one download succeeds; return the global epoch it came from."""
    # A successful download sets local_epoch to the sender's global epoch (0 or more), so -1 marks "not yet".
    averager.local_epoch = -1
    while averager.local_epoch < 0:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise SwarmError(
                _(
                    "could not download the swarm's state within the timeout; the training peers may be busy "
                    "or unreachable from here; try again or raise --timeout"
                )
            )
        try:
            averager.load_state_from_peers(timeout=remaining)
        except TimeoutError:
            continue
        if averager.local_epoch < 0:
            time.sleep(min(RETRY_PERIOD, max(0.0, deadline - time.monotonic())))
    return averager.local_epoch


def pull_and_save(
    config: Config, initial_peers: Sequence[str], output: Path, timeout: float, swarm_key: SwarmKey | None = None
) -> Checkpoint:
    """Pull the swarm's state and save it to ``output`` as a checkpoint (with numbered copies next to it)."""
    checkpoint = pull_checkpoint(config, initial_peers, timeout, swarm_key)
    path = save_checkpoint(
        output,
        model=build_model(checkpoint),
        optimizer_state=checkpoint.optimizer_state,
        global_epoch=checkpoint.global_epoch,
        config=checkpoint.config,
        tokenizer_sha256=checkpoint.tokenizer_sha256,
        keep=config.training.keep_checkpoints,
    )
    checkpoint.path = path
    return checkpoint
