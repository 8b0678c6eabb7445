"""The training peer: the model, ``hivemind.Optimizer``, the step loop, progress lines, checkpoints and shutdown.

One peer is one process (two optimizers in one process would share one signing key and look like one peer)::

    cellmind-peer --bootstrap                        # first device: starts the swarm, prints the join line
    cellmind-peer --initial-peers /ip4/.../p2p/...   # every other device

Each micro-step runs forward and backward on ``batch_size_per_step`` local samples and hands the gradients to
``hivemind.Optimizer``, which accumulates them until the swarm has ``target_batch_size`` samples, averages them
with the other peers and takes one global step. A peer that joins late downloads the swarm's parameters,
optimizer statistics and global epoch before its first micro-step.
"""

import ctypes
import gc
import hashlib
import importlib
import logging
import math
import os
import signal
import threading
import time
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import hivemind
from hivemind.utils import get_dht_time
import torch
from hivemind.compression import (
    CompressionBase,
    CompressionInfo,
    Float16Compression,
    NoCompression,
    RoleAdaptiveCompression,
    SizeAdaptiveCompression,
    Uniform8BitQuantization,
)
from hivemind.optim.grad_averager import GradientAverager
from hivemind.optim.state_averager import TrainingStateAverager
from hivemind.proto import runtime_pb2

from cellmind.checkpoints import gpt_config_from, latest_path, load_latest_good, save_checkpoint
from cellmind.config import Config
from cellmind.errors import CheckpointError, ConfigError, SwarmError
from cellmind.guard import (
    RateLimitedLog, TrainingGuard, reject_poisoned_state, replace_poisoned_gradients, skip_update,
)
from cellmind.i18n import _
from cellmind.membership import (
    MemberCheck,
    MemberCheckedAverager,
    MemberCheckedGradientAverager,
    declare_membership,
    member_check_for,
)
from cellmind.model import GPT
from cellmind.progress import spinner
from cellmind.run_files import serve_run_files
from cellmind.swarm import (
    RunManifest,
    SwarmSettings,
    announce_join_line,
    check_manifest,
    reconnect_initial_peers,
    shutdown_dht,
    start_dht,
    store_manifest,
)

logger = logging.getLogger(__name__)

LOAD_STATE_TIMEOUT = 120.0
"""Seconds a joining peer waits for the swarm's state before it gives up."""
MANIFEST_REFRESH_PERIOD = 60.0
REJOIN_PERIOD = 20.0
"""Seconds between pings of the initial peers while this peer finds itself alone."""
EVAL_BATCHES = 8
"""Validation batches measured at each checkpoint."""


@dataclass
class PeerOptions:
    """Everything one run of ``cellmind-peer`` needs; the CLI builds it from flags and the config."""

    config: Config
    swarm: SwarmSettings
    bootstrap: bool = False
    train: bool = True
    device: str = "auto"
    precision: str = "auto"
    """``auto`` (bf16 autocast where the device has fast bf16 matmuls, see :func:`choose_precision`), ``fp32`` or
    ``bf16``."""
    threads: int | None = None
    name: str | None = None
    max_steps: int | None = None
    """Global steps this run takes part in before it stops; None means no limit."""
    max_time: float | None = None
    """Seconds of training before the peer stops; None means no limit."""
    seed: int | None = None
    """Seed of this peer's data sampling; None derives one from the peer id, so peers draw different windows."""
    tensorboard_dir: Path | None = None
    load_state_timeout: float = LOAD_STATE_TIMEOUT
    stop_event: threading.Event = field(default_factory=threading.Event)
    """Set it (or send SIGINT/SIGTERM) to make the peer finish its micro-step, save and leave."""


# model and parameters


def parameter_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """Return a short SHA-256 of every tensor in ``state_dict`` as float32, in key order; equal models match."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().to(device="cpu", dtype=torch.float32).contiguous()
        digest.update(name.encode())
        digest.update(tensor.numpy().data)  # the tensor's own bytes, not a copy
    return digest.hexdigest()[:16]


def new_model(config: Config, vocab_size: int) -> GPT:
    """Build the model with the run's seed, so that every peer starts from the same parameters."""
    gpt_config = gpt_config_from(config, vocab_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.training.seed)
        return GPT(gpt_config)


def run_manifest(config: Config, vocab_size: int, tokenizer_sha256: str) -> RunManifest:
    model = config.model
    return RunManifest(
        n_layer=model.n_layer,
        n_head=model.n_head,
        n_embd=model.n_embd,
        block_size=model.block_size,
        vocab_size=vocab_size,
        tokenizer_sha256=tokenizer_sha256,
        target_batch_size=config.swarm.target_batch_size,
    )


def parameter_groups(model: GPT, weight_decay: float) -> list[dict]:
    """AdamW groups in a fixed order: matrices decay, biases and LayerNorm gains do not (as in GPT-2)."""
    decay, no_decay = [], []
    for _name, parameter in model.named_parameters():  # the tied matrix appears once
        (decay if parameter.dim() >= 2 else no_decay).append(parameter)
    return [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]


def optimizer_factory(config: Config):
    lr = config.training.lr
    return lambda groups: torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8)


def scheduler_factory(config: Config):
    """Linear warm-up over ``training.warmup_steps`` global epochs, then a constant rate."""
    warmup = max(1, config.training.warmup_steps)
    return lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: min(1.0, (epoch + 1) / warmup))


# compression


class BFloat16Compression(NoCompression):
    """Send floating tensors of more than one element as bfloat16: half the bytes of fp32, with fp32's range.

    Adam's second moments reach 1e-12 and below, which fp16 flushes to zero (and a zero there makes the next
    update explode), while bfloat16 keeps the exponent. Receivers decode it with Hivemind's own NoCompression.
    """

    def compress(self, tensor: torch.Tensor, info: CompressionInfo, allow_inplace: bool = False) -> runtime_pb2.Tensor:
        if not tensor.is_floating_point() or tensor.numel() <= 1:
            return super().compress(tensor, info, allow_inplace)  # Adam's step counters stay exact
        data = tensor.detach().cpu().to(torch.bfloat16).view(torch.int16)
        return runtime_pb2.Tensor(
            compression=self.compression_type,
            buffer=data.numpy().tobytes(),
            size=tensor.shape,
            dtype="bfloat16",
            requires_grad=tensor.requires_grad,
        )

    def estimate_compression_ratio(self, info: CompressionInfo) -> float:
        return 0.5


def compression_options(name: str) -> dict[str, CompressionBase]:
    """Hivemind compression settings for the config's ``swarm.compression`` (``none``, ``fp16``, ``uint8``).

    - Gradients: fp16, or 8-bit for large tensors with ``uint8`` (small ones such as biases stay fp16 because
      their quantization error is relatively large).
    - Parameter averaging: fp16 at most; 8-bit parameters would add noise to every peer's weights.
    - State download of a joining peer: parameters travel exactly, so that it holds the same parameters as the
      peer it downloaded from, and optimizer statistics as bfloat16. This sends 2.0x the parameter bytes
      instead of Hivemind's default 4x (parameters, both Adam moments and gradient buffers, all fp32);
      gradient buffers are not shared at all (see :func:`make_optimizer`).
    """
    if name == "none":
        return dict(
            grad_compression=NoCompression(),
            state_averaging_compression=NoCompression(),
            load_state_compression=NoCompression(),
        )
    if name not in ("fp16", "uint8"):
        raise ConfigError(
            _("swarm.compression must be none, fp16 or uint8, got {value!r}").format(value=name)
        )
    gradients = Float16Compression()
    if name == "uint8":
        gradients = SizeAdaptiveCompression(
            threshold=2**16 + 1, less=Float16Compression(), greater_equal=Uniform8BitQuantization()
        )
    return dict(
        grad_compression=gradients,
        state_averaging_compression=Float16Compression(),
        load_state_compression=RoleAdaptiveCompression(
            parameter=NoCompression(), optimizer=BFloat16Compression(), default=NoCompression()
        ),
    )


# the optimizer


class SnapshotStateAverager(MemberCheckedAverager, TrainingStateAverager):
    """A state averager that sends joining peers a consistent copy of its state, and only to swarm members.

    hivemind 1.1.12 hands out the live CPU tensors and reads the epoch separately, so a peer that downloads
    while a global step runs can receive the new parameters labelled with the old epoch. Here the state is
    cloned under ``snapshot_lock``, which :class:`CellMindOptimizer` holds for the whole global step.
    NOTE: a background parameter averaging round still changes the tensors outside this lock; it moves every
    peer to the same average, so a download during it is at worst that far from the peer's logged state.
    """

    # Each class collects its own handlers and stub, so that the names it registers and calls agree.
    _rpc_handlers = None
    _stub_type = None

    def __init__(self, *, snapshot_lock: threading.Lock, **kwargs):
        self.snapshot_lock = snapshot_lock
        self.poison_log = RateLimitedLog()
        super().__init__(**kwargs)

    def _apply_averaging_results_(self):
        if not reject_poisoned_state(self, self.poison_log):  # a peer sent NaN or absurdly large parameters
            super()._apply_averaging_results_()
        else:  # the buffers are also TrainingGuard's last good state: put this peer's own state back into them
            self._load_local_tensors_into_averager_()

    def get_current_state(self):
        with self.snapshot_lock:
            metadata, tensors, infos = super().get_current_state()
            return metadata, [shared_copy(tensor) for tensor in tensors], infos

    def load_state_from_peers(self, **kwargs):
        # hivemind 1.1.12 catches a download with too few optimizer statistics only as StopIteration; a stream
        # cut short can also end in IndexError inside load_optimizer_state. Nothing has been copied at that point
        # and local_epoch is unchanged, so the caller's loop downloads again as after any failed attempt.
        try:
            return super().load_state_from_peers(**kwargs)
        except IndexError as error:
            logger.warning(f"Discarded an incomplete state download ({error!r}); trying again")
            return None


@torch.no_grad()
def shared_copy(tensor: torch.Tensor) -> torch.Tensor:
    """Copy a tensor for the averager process: CPU tensors straight into shared memory, others as a clone.

    Hivemind hands the copy to its averager process, which moves a private CPU tensor into shared memory first.
    Copying into shared memory at once saves that second copy (276 MB for the 23M model's state).
    """
    if tensor.device.type != "cpu":
        return tensor.detach().clone()
    return torch.empty_like(tensor).share_memory_().copy_(tensor.detach())


class CellMindOptimizer(hivemind.Optimizer):
    """``hivemind.Optimizer`` that shares consistent state and remembers the size of its last averaging round.

    NOTE: this overrides private methods of hivemind 1.1.12's Optimizer (``_make_state_averager``,
    ``_maybe_schedule_gradient_averaging``, ``_update_global_epoch``, ``_average_gradients_and_load_into_optimizer``);
    recheck them when upgrading.
    """

    last_round_size: int = 1

    def __init__(self, *, member_check: MemberCheck | None = None, max_grad_norm: float = 0.0, **kwargs):
        self._snapshot_lock = threading.Lock()
        self.gradients_log = RateLimitedLog()
        self.member_check = member_check
        grad_averager_factory = partial(ClippedGradientAverager, member_check=member_check, max_norm=max_grad_norm)
        super().__init__(grad_averager_factory=partial(start_gradient_averager, grad_averager_factory), **kwargs)

    def _make_state_averager(self, **kwargs) -> TrainingStateAverager:
        # the arguments hivemind.Optimizer._make_state_averager passes in hivemind 1.1.12
        averager = SnapshotStateAverager(
            snapshot_lock=self._snapshot_lock,
            member_check=self.member_check,
            dht=self.dht,
            prefix=f"{self.run_id}_state_averager",
            min_matchmaking_time=self.matchmaking_time,
            allreduce_timeout=self.allreduce_timeout,
            shutdown_timeout=self.shutdown_timeout,
            offload_optimizer=self.offload_optimizer,
            custom_gradients=self.offload_optimizer,
            status_loglevel=self.status_loglevel,
            next_chunk_timeout=self.next_chunk_timeout,
            client_mode=self.client_mode,
            auxiliary=self.auxiliary,
            start=False,
            **kwargs,
        )
        release_free_heap_memory()  # before the fork, see release_free_heap_memory
        averager.run_in_background(await_ready=True)
        return averager

    def _maybe_schedule_gradient_averaging(self) -> None:
        # Alone, a pre-scheduled round only polls the DHT for a group it cannot find, which kept the DHT and
        # gradient averager processes about half a core busy (bench/peer_overhead.py). The step still averages
        # without a pre-scheduled round once the tracker sees another peer.
        if self.tracker.global_progress.num_peers <= 1:
            return
        super()._maybe_schedule_gradient_averaging()

    def _begin_averaging_gradients(self, grad_scaler) -> bool:
        began = super()._begin_averaging_gradients(grad_scaler)
        if not began and not self.offload_optimizer:
            # In a step without a round, hivemind 1.1.12 loads the accumulated mean only into the averager's
            # buffer, which an offloaded optimizer reads. Without offloading, AdamW reads .grad, which contains
            # the unclipped sum of the micro-steps. Such a step gave Adam's second moment the scale of a sum,
            # which then damped the averaged steps (clipped means) for many steps.
            self.grad_averager.load_accumulators_into_averager_()
            self._load_averaged_gradients_into_optimizer_()
        return began

    def _load_local_gradients_into_optimizer(self) -> None:
        # Hivemind's fallback after a failed round. It reset the accumulators as the round began, so this peer's
        # own gradients are gone and the fallback would load zeros. The step is skipped instead.
        super()._load_local_gradients_into_optimizer()
        if self.grad_averager.local_times_accumulated == 0:
            skip_update(self)

    def _update_global_epoch(self, grad_scaler) -> None:
        self.last_round_size = 1
        with self._snapshot_lock:
            super()._update_global_epoch(grad_scaler)

    def _average_gradients_and_load_into_optimizer(self, maybe_step_control) -> None:
        super()._average_gradients_and_load_into_optimizer(maybe_step_control)
        control = maybe_step_control
        if control is not None and control.done() and not control.cancelled() and control.exception() is None:
            self.last_round_size = len(control.result())
        if replace_poisoned_gradients(self, self.gradients_log):  # a peer sent NaN or absurdly large values
            self.last_round_size = 1


class ClippedGradientAverager(MemberCheckedGradientAverager):
    """A gradient averager that clips this peer's mean gradient to ``max_norm`` before it is averaged.

    With ``reuse_grad_buffers`` the micro-steps' gradients add up in ``.grad``, so they cannot be clipped one by
    one. Their mean over the global step is clipped instead, as single-process training with gradient
    accumulation does. The clip applies to what a peer sends into a round and to its own gradients when it steps
    alone, so an honest average is never longer than ``max_norm`` (which the guard relies on).
    """

    # Each class collects its own handlers and stub, so that the names it registers and calls agree.
    _rpc_handlers = None
    _stub_type = None

    _mean_loaded = False
    """Whether the averager's buffer contains this global step's clipped mean; cleared with the accumulators."""

    def __init__(self, *args, max_norm: float, **kwargs):
        self.max_norm = max_norm
        super().__init__(*args, **kwargs)

    @torch.no_grad()
    def load_accumulators_into_averager_(self):
        # Idempotent until the accumulators are reset: Hivemind may call this twice for one global step, and the
        # accumulators can by then hold the mean already (see CellMindOptimizer._begin_averaging_gradients).
        if self._mean_loaded:
            return
        super().load_accumulators_into_averager_()
        self._mean_loaded = True
        if self.max_norm <= 0:
            return
        with self.get_tensors() as averaged:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in averaged]))
            if bool(torch.isfinite(norm)) and float(norm) > self.max_norm:
                for gradient in averaged:
                    gradient.mul_(self.max_norm / float(norm))

    @torch.no_grad()
    def reset_accumulated_grads_(self):
        super().reset_accumulated_grads_()
        self._mean_loaded = False


def start_gradient_averager(factory, *, start: bool, **kwargs) -> GradientAverager:
    """Create a gradient averager with ``factory`` and start its process once the parameters' gradients are gone.

    hivemind 1.1.12 allocates ``.grad`` for every parameter without one, and its averaged gradients from them,
    right before it forks the averager process. The fork gets copy-on-write views of those pages, and every later
    write or free in the training process leaves the fork with a private copy it never reads (92 MB for the 23M
    model). Dropped here, the gradients are allocated again by the first backward pass, after the fork.
    """
    averager = factory(start=False, **kwargs)
    with torch.no_grad():
        if not averager.reuse_grad_buffers:
            for accumulator in averager._grad_accumulators():  # NOTE: private in hivemind 1.1.12
                if accumulator.device.type == "cpu":
                    accumulator.share_memory_()
    for parameter in averager.parameters:
        parameter.grad = None
    if start:
        release_free_heap_memory()
        averager.run_in_background(await_ready=True)
    return averager


def release_free_heap_memory() -> None:
    """Return the heap's free pages to the system (glibc's ``malloc_trim``); does nothing without glibc.

    Call it right before Hivemind forks a process. Memory that torch freed (copies made while the optimizer is
    built, the first micro-steps' activations) stays resident in glibc's heap, and the fork inherits it
    copy-on-write. Once this process reuses those pages, the fork keeps a private copy of each. ``gc.freeze()``
    keeps the garbage collector from writing to the objects that exist now, which would copy their pages too.
    """
    gc.collect()
    gc.freeze()
    if _libc is not None:
        _libc.malloc_trim(0)


def import_optimizer_modules() -> None:
    """Import what creating the first torch optimizer would: ``torch._dynamo``, about 1.5 s of a joiner's start.

    :meth:`TrainingPeer.start` runs this while the DHT's process starts, which leaves this process waiting anyway.
    It must not run in a thread of its own: Hivemind forks processes, and a fork while another thread holds an
    import lock can leave the child blocked on that lock.
    """
    importlib.import_module("torch._dynamo")


MALLOC_ARENAS = 2
"""glibc's limit on heap arenas (``M_ARENA_MAX``) in a training peer; its default is eight per core."""


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> None:
    """Make glibc's malloc share a few heaps between threads; does nothing without glibc.

    Hivemind's threads in the training process (its event loops, the averagers' step threads) each get a heap
    arena of their own by default, and each arena keeps the tensors it freed for reuse by that thread only. Two
    arenas cost a lone 23M-model peer about 55 MiB less at its peak (``bench/memory.py``), with no change in speed
    that ``bench/peer_overhead.py`` could see. ``MALLOC_ARENA_MAX`` in the environment still takes precedence.
    """
    if _libc is not None and "MALLOC_ARENA_MAX" not in os.environ:
        _libc.mallopt(M_ARENA_MAX, arenas)


M_ARENA_MAX = -8  # from glibc's malloc.h


def _load_libc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        return libc
    except (OSError, AttributeError):  # not glibc: macOS, musl
        return None


_libc = _load_libc()


def make_optimizer(
    dht: hivemind.DHT, model: GPT, config: Config, member_check: MemberCheck | None = None
) -> CellMindOptimizer:
    """Create the collaborative optimizer over ``model``; client mode comes from the DHT.

    ``member_check`` (a private swarm) makes both averagers serve only callers that hold the swarm key.

    Chosen settings:

    - ``use_local_updates=False``: peers accumulate gradients to ``target_batch_size`` and apply one averaged
      update, which equals large-batch training and leaves every peer of a round with the same parameters.
    - ``delay_optimizer_step``/``delay_grad_averaging`` off: the step runs before ``step()`` returns, so a
      checkpoint or progress line written right after a global step shows that step. On a CPU peer the update
      itself is short next to accumulating a target batch, so overlapping it would gain little.
    - ``offload_optimizer`` on GPU peers only: there, AdamW works on a host copy of the parameters, next to the
      buffers that Hivemind averages into, which spares GPU memory. On a CPU peer that copy and its gradients
      would only duplicate the model's parameters and gradients in the same memory (2 x 92.6 MB for the 23M
      model, more in the forked averager processes), so AdamW updates the model's parameters directly.
    - ``reuse_grad_buffers=True``: micro-steps accumulate their gradients in ``.grad``, where separate
      accumulators would take another 92.6 MB for the 23M model. Their mean is clipped to ``training.grad_clip``
      at the global step (:class:`ClippedGradientAverager`), not each micro-step's gradients.
    - ``average_state_every`` from the config (default 10): gradient averaging already gives every peer of a
      round the same update, so parameter averaging only pulls back peers that missed a round (a timeout, a
      peer that just joined). Hivemind's default, every global step, would double the traffic for that case.
    - ``average_opt_statistics``: Adam's moments are averaged with the parameters. A peer that missed a round
      has other moments too, and with parameters alone it would keep taking different updates from the same
      averaged gradients. This triples the bytes of those rare rounds.
    """
    swarm = config.swarm
    with keep_sigint_handler():
        optimizer = _create_optimizer(dht, model, config, member_check)
    if optimizer.grad_averager.allow_state_sharing:
        # Joining peers reset their gradient accumulators anyway, so sending them ours is wasted traffic.
        optimizer.grad_averager.allow_state_sharing = False
    copy_model_into_optimizer(optimizer)
    return optimizer


def _create_optimizer(
    dht: hivemind.DHT, model: GPT, config: Config, member_check: MemberCheck | None
) -> CellMindOptimizer:
    swarm = config.swarm
    return CellMindOptimizer(
        member_check=member_check,
        dht=dht,
        run_id=swarm.run_id,
        # hivemind 1.1.12 takes the DHT's mode whenever this is not None, but leaves None in place, and later
        # code reads None as "not a client"; passing the DHT's mode keeps both views the same.
        client_mode=dht.client_mode,
        target_batch_size=swarm.target_batch_size,
        batch_size_per_step=config.training.batch_size,
        params=parameter_groups(model, config.training.weight_decay),
        optimizer=initialized_optimizer_factory(config),
        scheduler=scheduler_factory(config),
        matchmaking_time=swarm.matchmaking_time,
        averaging_timeout=swarm.averaging_timeout,
        load_state_timeout=LOAD_STATE_TIMEOUT,
        offload_optimizer=next(model.parameters()).device.type != "cpu",
        delay_optimizer_step=False,
        delay_grad_averaging=False,
        delay_state_averaging=True,
        average_state_every=max(1, swarm.average_state_every),
        average_opt_statistics=("exp_avg", "exp_avg_sq"),
        use_local_updates=False,
        reuse_grad_buffers=True,
        max_grad_norm=config.training.grad_clip,
        averager_opts=dict(
            # Hivemind advises a request timeout below the matchmaking time, or matchmaking may deadlock.
            request_timeout=min(3.0, swarm.matchmaking_time / 2),
            # Averaging works on copies that are refreshed from the optimizer before each round. Reusing the
            # optimizer's tensors in place (Hivemind's default with offloading) stops averaging Adam's moments
            # after a state download or a resume, because loading an optimizer state replaces those tensors.
            reuse_tensors=False,
        ),
        verbose=False,
        **compression_options(swarm.compression),
    )


def initialized_optimizer_factory(config: Config):
    """Wrap :func:`optimizer_factory` so that Adam's state exists before Hivemind would create it.

    Hivemind 1.1.12 creates missing optimizer state with one AdamW step on zero gradients, whose weight decay
    scales every parameter by ``1 - lr * weight_decay``. Without an offloaded copy that step would change the
    model itself, so a resumed model would no longer equal its checkpoint, and Adam's first real update would be
    bias-corrected as its second. :func:`initialize_optimizer_state` creates the state without a step.
    """
    create = optimizer_factory(config)

    def create_initialized(groups) -> torch.optim.Optimizer:
        optimizer = create(groups)
        initialize_optimizer_state(optimizer)
        return optimizer

    return create_initialized


@torch.no_grad()
def initialize_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Create AdamW's per-parameter state as its first step would, with Adam's moments in shared memory.

    Hivemind forks its averager processes after this. Moments in shared memory are updated in place for every
    process, where private pages would leave each fork a stale copy once AdamW writes them. Creating the state
    here, rather than by a step on zero gradients, spares a joining peer about a second of its start. The entries
    are those torch's AdamW creates on its first step; a test checks that the first update from them equals a
    fresh AdamW's.
    """
    for group in optimizer.param_groups:
        if group.get("amsgrad"):
            raise ValueError("initialize_optimizer_state does not create AMSGrad's extra state")
        for parameter in group["params"]:
            if optimizer.state[parameter]:
                continue
            optimizer.state[parameter] = {
                "step": torch.tensor(0.0),
                "exp_avg": _shared_zeros_like(parameter),
                "exp_avg_sq": _shared_zeros_like(parameter),
            }


def _shared_zeros_like(tensor: torch.Tensor) -> torch.Tensor:
    zeros = torch.zeros_like(tensor, memory_format=torch.preserve_format)
    return zeros.share_memory_() if zeros.device.type == "cpu" else zeros


@contextmanager
def keep_sigint_handler():
    """Restore this process's SIGINT handler after the block.

    hivemind 1.1.12 sets SIGINT to "ignore" in the calling process whenever it starts an averager, which would
    make Ctrl-C do nothing for the rest of the run.
    """
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if in_main_thread else None
    try:
        yield
    finally:
        if in_main_thread and previous is not None:
            signal.signal(signal.SIGINT, previous)


@torch.no_grad()
def copy_model_into_optimizer(optimizer: hivemind.Optimizer) -> None:
    """Make the offloaded parameters equal the model's (the optimizer's main parameters) again.

    Does nothing without an offloaded copy, where the optimizer's parameters are the model's.
    """
    offloaded = [p for group in optimizer.opt.param_groups for p in group["params"]]
    main = [p for group in optimizer.param_groups for p in group["params"]]
    for target, source in zip(offloaded, main, strict=True):
        if target is not source:
            target.copy_(source.detach().to(target.device, target.dtype))


def state_sharers(optimizer: hivemind.Optimizer) -> int:
    """Count the other peers that currently offer their training state for download."""
    averager = optimizer.state_averager
    key = f"{optimizer.run_id}_state_averager.all_averagers"
    found = averager.dht.get(key, latest=True)
    if found is None or not isinstance(found.value, dict):
        return 0
    own = averager.peer_id.to_bytes()
    return sum(1 for peer, entry in found.value.items() if peer != own and entry.value is not None)


def announce_resumed_epoch(optimizer: hivemind.Optimizer) -> None:
    """Store the epoch of the checkpoint this peer resumed, for peers restarting at the same time.

    Hivemind's progress records cannot carry it: a ProgressTracker (hivemind 1.1.12) stores its record only
    after the peer has accumulated samples.
    """
    optimizer.dht.store(
        f"{optimizer.run_id}_{RESUMED_FIELD}", optimizer.local_epoch, get_dht_time() + 3 * RESUME_WAIT,
        subkey=optimizer.dht.peer_id.to_bytes(), return_future=True,
    )


def newest_reported_epoch(optimizer: hivemind.Optimizer) -> int | None:
    """Return the highest epoch another peer reports, in Hivemind's progress records or as its resumed checkpoint."""
    dht, own = optimizer.dht, optimizer.dht.peer_id.to_bytes()
    epochs = []
    progress = dht.get(f"{optimizer.run_id}_progress", latest=True)
    if progress is not None and isinstance(progress.value, dict):
        for entry in progress.value.values():
            record = entry.value
            if isinstance(record, dict) and isinstance(record.get("epoch"), int) and record.get("peer_id") != own:
                epochs.append(record["epoch"])
    resumed = dht.get(f"{optimizer.run_id}_{RESUMED_FIELD}", latest=True)
    if resumed is not None and isinstance(resumed.value, dict):
        epochs += [entry.value for peer, entry in resumed.value.items()
                   if peer != own and isinstance(entry.value, int)]
    return max(epochs, default=None)


def sync_with_swarm(optimizer: hivemind.Optimizer, timeout: float, stop_event: threading.Event) -> bool:
    """Download the swarm's parameters, optimizer statistics and global epoch if any peer offers them.

    Returns False when no other peer shares state (this is the first trainer). The download runs in a daemon
    thread, so that a SwarmError ends the wait after ``timeout`` seconds and a stop request ends it at once.
    """
    if state_sharers(optimizer) == 0:
        return False
    errors: list[BaseException] = []

    def download() -> None:
        try:
            _download_current_state(optimizer, deadline=time.monotonic() + timeout)
        except BaseException as error:  # reported to the waiting thread below
            errors.append(error)

    worker = threading.Thread(target=download, name="load_state_from_peers", daemon=True)
    worker.start()
    deadline = time.monotonic() + timeout
    with spinner(_("downloading the swarm's model")):
        while worker.is_alive() and time.monotonic() < deadline and not stop_event.is_set():
            worker.join(0.5)
    if stop_event.is_set():
        raise KeyboardInterrupt
    if worker.is_alive():
        raise SwarmError(
            _(
                "could not download the swarm's model within {seconds:.0f} s; the peers may be overloaded or "
                "unreachable from this device (try --client-mode)"
            ).format(seconds=timeout)
        )
    if errors:
        raise errors[0]
    return True


RESUMED_FIELD = "resumed"
RESUME_WAIT = 10.0
"""Seconds a peer that resumed its checkpoint waits for peers with newer ones before it trains on its own."""
RESUME_POLL_PERIOD = 1.0
MAX_STALE_DOWNLOADS = 3
"""Downloads in a row that bring no newer global epoch before a joining peer starts from what it has."""
STALE_DOWNLOAD_DELAY = 0.5
"""Seconds between downloads while the state received lags the swarm's global epoch."""


def _download_current_state(optimizer: hivemind.Optimizer, deadline: float) -> None:
    """Load state from peers until it is from the swarm's current global epoch, then rejoin the progress count.

    ``hivemind.Optimizer.load_state_from_peers`` retries without end, and when the state it receives is one
    global epoch behind it only relabels the epoch, keeping the older parameters. This loop downloads again
    instead, so that the peer starts with the parameters of the epoch it reports.
    """
    averager, tracker = optimizer.state_averager, optimizer.tracker
    tracker.fetched_global_progress_this_epoch.wait(max(0.0, deadline - time.monotonic()))
    stale_downloads, best_epoch = 0, -1
    while True:
        averager.load_state_from_peers(timeout=max(1.0, deadline - time.monotonic()))
        if averager.local_epoch >= tracker.global_epoch or time.monotonic() >= deadline:
            break
        # The progress record of a peer that has left, or of a peer that shares no state, can keep the swarm's
        # epoch ahead of every state on offer. So after a few downloads that bring nothing newer, the peer starts
        # from the newest state received, as hivemind does when a download lags the swarm.
        stale_downloads = stale_downloads + 1 if averager.local_epoch <= best_epoch else 0
        best_epoch = max(best_epoch, averager.local_epoch)
        if stale_downloads >= MAX_STALE_DOWNLOADS:
            logger.warning(f"No peer offers a state newer than global epoch {averager.local_epoch} "
                           f"(the swarm reports {tracker.global_epoch}); starting from it")
            break
        logger.info(f"Downloaded global epoch {averager.local_epoch}, swarm is at {tracker.global_epoch}; again")
        time.sleep(min(STALE_DOWNLOAD_DELAY, max(0.0, deadline - time.monotonic())))

    # the bookkeeping hivemind.Optimizer.load_state_from_peers does after a download
    tracker.report_local_progress(local_epoch=averager.local_epoch, samples_accumulated=0)
    if not optimizer.dht.client_mode:
        averager.state_sharing_priority = averager.local_epoch
    optimizer.grad_averager.reset_accumulated_grads_()


# devices


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(_("--device cuda was requested, but PyTorch sees no CUDA device; use --device cpu"))
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(_("--device mps was requested, but this PyTorch has no MPS support; use --device cpu"))
    return torch.device(name)


CPU_BF16_MATMUL_FEATURES = ("avx512_bf16", "amx_bf16")
"""x86 features with native bf16 matrix multiplies; without them oneDNN emulates bf16 and is slower than fp32."""


def choose_precision(
    requested: str, device_type: str, cuda_bf16: bool, cpu_capabilities: dict[str, bool]
) -> tuple[str, str]:
    """Return the training precision (``bf16`` or ``fp32``) and the reason, from the device's capabilities.

    ``auto`` picks bf16 autocast on CUDA devices that support bf16 and on CPUs with native bf16 matrix
    multiplies (``avx512_bf16`` or ``amx_bf16`` in ``torch.cpu.get_capabilities()``), and fp32 elsewhere:
    on MPS, and on CPUs where bf16 is emulated. ``fp32`` and ``bf16`` are taken as requested.
    """
    if requested in ("fp32", "bf16"):
        return requested, "requested with --precision"
    if requested != "auto":
        raise ConfigError(_("--precision must be auto, fp32 or bf16, got {value!r}").format(value=requested))
    if device_type == "cuda":
        if cuda_bf16:
            return "bf16", "the CUDA device supports bf16"
        return "fp32", "the CUDA device does not support bf16"
    if device_type == "cpu":
        features = [name for name in CPU_BF16_MATMUL_FEATURES if cpu_capabilities.get(name)]
        if features:
            return "bf16", f"the CPU has native bf16 matrix multiplies ({', '.join(features)})"
        # NOTE: ARM CPUs with bf16 instructions (phones) are not detected yet and train in fp32.
        return "fp32", "the CPU has no native bf16 matrix multiplies (no avx512_bf16 or amx_bf16)"
    return "fp32", f"bf16 autocast is not used on {device_type} devices"


def cpu_capabilities() -> dict[str, bool]:
    """Return the CPU features PyTorch detected (``torch.cpu.get_capabilities``), or none where it is missing."""
    get_capabilities = getattr(torch.cpu, "get_capabilities", None)
    if get_capabilities is None:
        return {}
    return {name: bool(value) for name, value in get_capabilities().items()}


def precision_for(device: torch.device, requested: str) -> tuple[str, str]:
    """Return :func:`choose_precision`'s choice for ``device`` on this machine."""
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    capabilities = cpu_capabilities() if device.type == "cpu" and requested == "auto" else {}
    return choose_precision(requested, device.type, cuda_bf16, capabilities)


def autocast_for(device: torch.device, precision: str) -> AbstractContextManager:
    """Return bf16 autocast where :func:`precision_for` chooses bf16 for ``precision``, else a no-op context."""
    if precision_for(device, precision)[0] != "bf16":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


# signals


class StopSignals:
    """Turn the first SIGINT/SIGTERM into ``stop_event``; a second one interrupts at once.

    Hivemind forks its DHT and averager processes from this one, and they inherit these handlers, so a
    handler running in another process restores the default action and re-sends the signal to itself.
    """

    def __init__(self, stop_event: threading.Event):
        self.stop_event = stop_event
        self.pid = os.getpid()
        self.previous = {}

    def __enter__(self) -> "StopSignals":
        for signum in (signal.SIGINT, signal.SIGTERM):
            self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self.pid:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if self.stop_event.is_set():
            raise KeyboardInterrupt
        logger.warning(
            f"Received {signal.Signals(signum).name}: finishing the current micro-step, saving a checkpoint "
            "and leaving the swarm (send it again to stop at once)"
        )
        self.stop_event.set()


# the run


def run_peer(options: PeerOptions) -> int:
    """Join or start the swarm and train until a limit, a signal or ``options.stop_event``; return global steps."""
    if options.threads:
        torch.set_num_threads(options.threads)
    raise_open_file_limit()
    limit_malloc_arenas()
    with StopSignals(options.stop_event):
        if not options.train:
            relay_only(options)
            return 0
        peer = TrainingPeer(options)
        try:
            peer.start()
            return peer.train()
        finally:
            peer.close()


OPEN_FILES_WANTED = 4096
"""Open files a peer requests: each tensor it shares with its averager processes keeps a file descriptor open (about
400 for the 23M model), and macOS starts programs with a soft limit of 256."""


def raise_open_file_limit(wanted: int = OPEN_FILES_WANTED) -> None:
    """Raise this process's soft limit on open files to ``wanted``, or to the hard limit if that is lower."""
    try:
        import resource
    except ImportError:  # not a Unix system
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def relay_only(options: PeerOptions) -> None:
    """Run a DHT node that helps peers find each other and trains nothing, until stopped."""
    dht = start_dht(options.swarm)
    try:
        announce_join_line(dht, options.swarm)
        logger.warning("This peer only relays (--no-train): it keeps no model and shares no training state")
        options.stop_event.wait(options.max_time)
    finally:
        shutdown_dht(dht)


class TrainingPeer:
    """One training peer's resources and loop; :func:`run_peer` drives it."""

    def __init__(self, options: PeerOptions):
        from cellmind.dataset import TokenWindows, ensure_token_file
        from cellmind.tokenizer import load_tokenizer

        self.options = options
        self.config = config = options.config
        self.device = pick_device(options.device)
        precision, reason = precision_for(self.device, options.precision)
        logger.info(f"Training in {'bf16 autocast' if precision == 'bf16' else 'fp32'} on {self.device}: {reason}")
        self.autocast = autocast_for(self.device, options.precision)
        self.tokenizer = load_tokenizer(config.tokenizer.model_path)
        self.token_file = ensure_token_file(config.training.dataset_path, self.tokenizer)
        self.checkpoint_path = latest_path(config.model.checkpoint)
        self.manifest = run_manifest(config, self.tokenizer.vocab_size, self.tokenizer.sha256)
        self.model, resumed = self._build_model()
        self.dht = self.optimizer = self.metrics = self.writer = self.membership = self.guard = None
        self._resumed_optimizer_state = resumed.optimizer_state if resumed is not None else None
        self._make_windows = lambda seed: TokenWindows(self.token_file, config.training.seq_len, seed)
        self._val_path = Path(config.training.val_path)
        self.global_steps = 0
        self.training_started = False

    def _build_model(self):
        """Resume from this peer's latest checkpoint if there is one, else build the seeded initial model."""
        checkpoint = load_latest_good(self.checkpoint_path)
        model = new_model(self.config, self.tokenizer.vocab_size)
        if checkpoint is not None:
            self._check_resumable(checkpoint)
            model.load_state_dict(checkpoint.model_state)
            model.tie_weights()
            logger.warning(
                f"Resuming from {checkpoint.path} at global epoch {checkpoint.global_epoch}; "
                "the swarm's state replaces it if the swarm is ahead"
            )
        model = model.to(self.device)
        if self.device.type == "cpu":
            # The DHT and averager processes are forked from this one later. Private parameter pages would be
            # copied for every fork as soon as a global step writes them; shared ones are updated in place.
            model.share_memory()
        return model, checkpoint

    def _check_resumable(self, checkpoint) -> None:
        if checkpoint.tokenizer_sha256 != self.tokenizer.sha256:
            raise CheckpointError(
                _(
                    "checkpoint {path} was trained with another tokenizer (SHA-256 {theirs:.12}, this one is "
                    "{ours:.12}); move the checkpoint away or use the tokenizer it was trained with"
                ).format(path=checkpoint.path, theirs=checkpoint.tokenizer_sha256, ours=self.tokenizer.sha256)
            )
        expected = gpt_config_from(self.config, self.tokenizer.vocab_size)
        found = gpt_config_from(checkpoint.config, self.tokenizer.vocab_size)
        shape = ("n_layer", "n_head", "n_embd", "block_size")
        if any(getattr(expected, name) != getattr(found, name) for name in shape):
            raise CheckpointError(
                _("checkpoint {path} holds a model of another shape than the config; move it away or "
                  "use the config it was trained with").format(path=checkpoint.path)
            )

    def start(self) -> None:
        """Join the swarm, check that it trains this model, and take over its state."""
        from cellmind.metrics import MetricsPublisher

        options, swarm = self.options, self.options.swarm
        release_free_heap_memory()  # the DHT runs in a forked process
        with spinner(_("joining the swarm"), enabled=not options.bootstrap):
            self.dht = start_dht(swarm, while_starting=import_optimizer_modules)
        if options.bootstrap:
            announce_join_line(self.dht, swarm)
        check_manifest(self.dht, swarm.run_id, self.manifest, timeout=swarm.join_timeout)
        store_manifest(self.dht, swarm.run_id, self.manifest)
        self._manifest_stored_at = time.monotonic()
        self._rejoined_at = time.monotonic()
        self.membership = declare_membership(self.dht, swarm.run_id, swarm.swarm_key)
        member_check = member_check_for(swarm.run_id, swarm.swarm_key)
        serve_run_files(self.dht, swarm.run_id, self.config, Path(self.config.tokenizer.model_path), member_check)

        # hivemind 1.1.12's averagers set SIGINT to SIG_IGN in this process when they start (run_in_background),
        # so Ctrl-C would have no effect. This puts back the handler that StopSignals installed.
        sigint_handler = signal.getsignal(signal.SIGINT)
        self.optimizer = make_optimizer(self.dht, self.model, self.config, member_check)
        signal.signal(signal.SIGINT, sigint_handler)
        resumed = self._resumed_optimizer_state is not None
        if resumed:
            self._load_resumed_optimizer_state()
        if self._take_swarm_state(resumed):
            print(
                _("Joined the swarm at global epoch {epoch} (parameter digest {digest})").format(
                    epoch=self.optimizer.local_epoch, digest=parameter_digest(self.model.state_dict())
                ),
                flush=True,
            )
        else:
            logger.info(f"Starting at global epoch {self.optimizer.local_epoch} without the swarm's state")
        logger.info(
            f"parameters at global epoch {self.optimizer.local_epoch} before training: "
            f"digest {parameter_digest(self.model.state_dict())}"
        )
        self.guard = TrainingGuard(self.optimizer)

        seed = options.seed if options.seed is not None else derived_seed(self.dht.peer_id.to_bytes())
        self.windows = self._make_windows(seed)
        name = options.name or f"peer-{self.dht.peer_id.to_base58()[-6:]}"
        self.metrics = MetricsPublisher(
            self.dht, swarm.run_id, name=name, device=self.device.type, client_mode=self.dht.client_mode,
            target_batch_size=self.config.swarm.target_batch_size,
        )
        if options.tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(options.tensorboard_dir))

    def _take_swarm_state(self, resumed: bool) -> bool:
        """Download the swarm's state unless this peer resumed a checkpoint at least as new; True if downloaded.

        When every peer restarts at once, the first one back would otherwise train alone from its own, perhaps
        older, checkpoint, and the others would then download its state. So a resumed peer reports its epoch,
        offers its state at that priority, and waits up to :data:`RESUME_WAIT` seconds for a peer that reports a
        newer epoch. It downloads only from a swarm ahead of its checkpoint.
        """
        options, optimizer = self.options, self.optimizer
        if not resumed:
            return sync_with_swarm(optimizer, options.load_state_timeout, options.stop_event)
        optimizer.state_averager.state_sharing_priority = optimizer.local_epoch
        announce_resumed_epoch(optimizer)
        deadline = time.monotonic() + RESUME_WAIT
        logger.info(f"Resumed at global epoch {optimizer.local_epoch}; waiting up to {RESUME_WAIT:.0f} s for peers "
                    "with newer checkpoints")
        while True:
            newest = newest_reported_epoch(optimizer)
            if newest is not None and newest > optimizer.local_epoch and state_sharers(optimizer) > 0:
                logger.info(f"A peer reports global epoch {newest}, newer than this checkpoint; downloading")
                return sync_with_swarm(optimizer, options.load_state_timeout, options.stop_event)
            if time.monotonic() >= deadline or options.stop_event.wait(RESUME_POLL_PERIOD):
                logger.info(f"No peer reports a checkpoint newer than global epoch {optimizer.local_epoch}")
                return False

    def _load_resumed_optimizer_state(self) -> None:
        try:
            self.optimizer.load_state_dict(self._resumed_optimizer_state)
        except (ValueError, KeyError, RuntimeError) as error:
            logger.warning(f"Could not restore the optimizer state from {self.checkpoint_path}: {error}")
        self._resumed_optimizer_state = None

    def train(self) -> int:
        """Run micro-steps until a limit is reached or a stop is requested; return the global steps taken."""
        options, training = self.options, self.config.training
        deadline = time.monotonic() + options.max_time if options.max_time else math.inf
        max_samples = training.epochs * self.windows.epoch_size if training.epochs else math.inf
        samples_seen, tokens_seen = 0, 0
        progress = EpochProgress(self.optimizer.local_epoch)
        alone_warned = False
        self.training_started = True

        while not options.stop_event.is_set() and time.monotonic() < deadline and samples_seen < max_samples:
            loss = self.micro_step()
            if loss is None:  # not finite: skipped, nothing reported
                continue
            samples_seen += training.batch_size
            tokens_seen += training.batch_size * training.seq_len
            progress.add(loss, training.batch_size)
            self.metrics.report(
                local_epoch=self.optimizer.local_epoch, samples_per_second=progress.samples_per_second(),
                loss=loss, tokens_processed=tokens_seen,
            )

            if self.optimizer.local_epoch != progress.epoch:
                alone_warned = self.on_global_step(progress, alone_warned)
                progress = EpochProgress(self.optimizer.local_epoch)
                if options.max_steps is not None and self.global_steps >= options.max_steps:
                    break
        self._log_stop_reason(deadline, samples_seen, max_samples)
        return self.global_steps

    def micro_step(self) -> float | None:
        """Forward and backward on one local batch, then hand the gradients to Hivemind; return the loss.

        Gradients add up in the parameters' ``.grad`` until the global step (``reuse_grad_buffers``), where
        Hivemind clips their mean (see :class:`ClippedGradientAverager`) and resets them. Returns None, handing
        nothing to Hivemind, when the loss or the gradients are not finite.
        """
        x, y = self.windows.get_batch(self.config.training.batch_size)
        x, y = x.to(self.device), y.to(self.device)

        self.model.train()
        with self.autocast:
            _logits, loss = self.model(x, y)
        if not self.guard.loss_ok(loss):
            return None
        loss.backward()
        if not self.guard.gradients_ok():
            return None
        self.optimizer.step()
        return loss.item()

    def on_global_step(self, progress: "EpochProgress", alone_warned: bool) -> bool:
        """Log, publish and checkpoint after the swarm moved to a new global epoch; return the alone-warning flag."""
        self.global_steps += 1
        self.guard.after_global_step()
        epoch, optimizer = self.optimizer.local_epoch, self.optimizer
        peers = optimizer.last_round_size
        lr = optimizer.opt.param_groups[0]["lr"]
        print(
            _("global epoch {epoch} | loss {loss:.3f} | {speed:.0f} samples/s | {peers} peers in last round | "
              "lr {lr:.1e}").format(
                epoch=epoch, loss=progress.mean_loss(), speed=progress.samples_per_second(), peers=peers, lr=lr
            ),
            flush=True,
        )
        if logger.isEnabledFor(logging.INFO):  # hashing 92 MB each global step is not free
            logger.info(f"parameters at global epoch {epoch}: digest {parameter_digest(self.model.state_dict())}")
        self._write_scalars(epoch, progress, peers, lr)

        alone = optimizer.tracker.global_progress.num_peers <= 1 and peers <= 1
        if alone and time.monotonic() - self._rejoined_at > REJOIN_PERIOD:
            reconnect_initial_peers(self.dht, self.options.swarm.initial_peers)
            self._rejoined_at = time.monotonic()
        if alone and not alone_warned:
            logger.warning(
                "No other peer to average with: training alone on local gradients. The parameters still "
                "change and peers that join later download them."
            )
        if time.monotonic() - self._manifest_stored_at > MANIFEST_REFRESH_PERIOD:
            store_manifest(self.dht, self.options.swarm.run_id, self.manifest)
            self._manifest_stored_at = time.monotonic()
        if epoch % max(1, self.config.training.checkpoint_every) == 0:
            self.save()
            self.validate(epoch)
        return alone

    def _write_scalars(self, epoch: int, progress: "EpochProgress", peers: int, lr: float) -> None:
        if self.writer is None:
            return
        self.writer.add_scalar("train/loss", progress.mean_loss(), epoch)
        self.writer.add_scalar("train/samples_per_second", progress.samples_per_second(), epoch)
        self.writer.add_scalar("swarm/peers_in_last_round", peers, epoch)
        self.writer.add_scalar("train/lr", lr, epoch)
        self.writer.flush()

    def validate(self, epoch: int) -> float | None:
        """Measure the loss on the first validation windows and publish it; None without a validation file."""
        from cellmind.dataset import TokenWindows, ensure_token_file

        if not self._val_path.is_file():
            return None
        windows = TokenWindows(ensure_token_file(self._val_path, self.tokenizer, show_progress=False),
                               self.config.training.seq_len, seed=0)
        losses = []
        self.model.eval()
        with torch.no_grad(), self.autocast:
            for x, y in windows.iter_eval_batches(self.config.training.batch_size, EVAL_BATCHES):
                losses.append(self.model(x.to(self.device), y.to(self.device))[1].item())
        loss = sum(losses) / len(losses)
        logger.info(f"validation loss {loss:.4f} at global epoch {epoch}")
        self.metrics.report_validation(global_epoch=epoch, loss=loss)
        if self.writer is not None:
            self.writer.add_scalar("validation/loss", loss, epoch)
        return loss

    def save(self) -> Path:
        """Write ``latest.pt`` and a numbered copy with the model, optimizer state and global epoch."""
        self.optimizer.state_averager.step(wait_for_delayed_updates=True)
        return save_checkpoint(
            self.checkpoint_path,
            model=self.model,
            optimizer_state=self.optimizer.state_dict(),
            global_epoch=self.optimizer.local_epoch,
            config=self.config,
            tokenizer_sha256=self.tokenizer.sha256,
            keep=self.config.training.keep_checkpoints,
        )

    def _log_stop_reason(self, deadline: float, samples_seen: int, max_samples: float) -> None:
        if self.options.stop_event.is_set():
            logger.warning("Stopping on request")
        elif time.monotonic() >= deadline:
            logger.warning(f"Stopping: --max-time of {self.options.max_time:.0f} s reached")
        elif samples_seen >= max_samples:
            logger.warning(f"Stopping: {self.config.training.epochs} passes over the local data done")
        else:
            logger.warning(f"Stopping: --max-steps of {self.options.max_steps} global steps reached")

    def close(self) -> None:
        """Save a final checkpoint and leave the swarm; safe to call after a failed start."""
        if self.metrics is not None:
            self.metrics.shutdown()
        if self.writer is not None:
            self.writer.close()
        if self.optimizer is not None:
            try:
                if self.training_started and (self.guard is None or self.guard.state_problem() is None):
                    print(_("Saved checkpoint {path}").format(path=self.save()), flush=True)
            finally:
                self.optimizer.shutdown()
        if self.membership is not None:
            self.membership.stop()
        if self.dht is not None:
            shutdown_dht(self.dht)


def derived_seed(peer_id: bytes) -> int:
    """Return a data-sampling seed that differs between peers and stays the same for one identity."""
    return int.from_bytes(hashlib.sha256(peer_id).digest()[:4], "big")


class EpochProgress:
    """Loss and throughput of this peer's micro-steps within one global epoch."""

    def __init__(self, epoch: int):
        self.epoch = epoch
        self.started = time.perf_counter()
        self.loss_sum, self.micro_steps, self.samples = 0.0, 0, 0

    def add(self, loss: float, samples: int) -> None:
        self.loss_sum += loss
        self.micro_steps += 1
        self.samples += samples

    def mean_loss(self) -> float:
        return self.loss_sum / max(1, self.micro_steps)

    def samples_per_second(self) -> float:
        return self.samples / max(1e-9, time.perf_counter() - self.started)
