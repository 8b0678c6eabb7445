"""Keeping broken numbers out of the model: bad micro-steps, poisoned averages, and rollback to the last good state.

Four checks, each cheap next to a micro-step:

- **A micro-step** whose loss is not finite is not backpropagated and its samples are not reported to the swarm.
  Gradients accumulate in the parameters' ``.grad`` across a global step, so a micro-step whose gradients are not
  finite spoils the whole sum: the peer then drops what it accumulated since the last global step
  (:meth:`TrainingGuard.loss_ok`, :meth:`TrainingGuard.gradients_ok`).
- **Averaged gradients** that are not finite, or whose norm exceeds :attr:`HealthLimits.gradient_trust_ratio`
  times the norm an honest average can have, are not applied: that global step leaves the parameters and
  Adam's moments as they are, as after a failed round. Each peer's contribution is clipped to ``training.grad_clip``, so
  an honest average is no longer than that. One peer sending NaN or values 1e30 times too large cannot steer the
  update (:func:`averaged_gradients_problem`).
- **Averaged parameters**: the result of a parameter averaging round that is not finite, holds a value above
  :attr:`HealthLimits.max_abs_parameter` or a norm :attr:`HealthLimits.max_norm_growth` times this peer's is
  not applied (:func:`reject_poisoned_state`).
- **The training state** (parameters and Adam's statistics) is checked after every global step: not finite, any
  ``|parameter|`` above :attr:`HealthLimits.max_abs_parameter`, or a parameter norm more than
  :attr:`HealthLimits.max_norm_growth` times the last good one (a poisoned parameter-averaging round) restores
  the last good state in place (:meth:`TrainingGuard.after_global_step`).

The last good state lives in the state averager's averaging buffers, which Hivemind keeps anyway: a CPU copy of
the parameters and both Adam moments (12 bytes per parameter, about 280 MB for the 23M-parameter model) that it
refreshes from the optimizer before each parameter averaging round. After every healthy global step the guard
refreshes it too, one memory copy, unless a background round is using it. A second copy of the same size would
not fit a phone next to the first. The copy is restored in place, because Hivemind's averagers share these very
tensors with their background processes; replacing them would cut the averagers off. Where the copy itself is
broken (a step that broke the state was copied into it as a round began), the peer downloads the swarm's state
instead, and stops with an error if no peer has one, never saving the broken state.
"""

import logging
import math
import time
from dataclasses import dataclass

import torch

from cellmind.errors import SwarmError
from cellmind.i18n import _

logger = logging.getLogger(__name__)

LOG_PERIOD = 60.0
"""Seconds between two log lines about the same kind of problem; the lines in between are counted."""


@dataclass(frozen=True)
class HealthLimits:
    """Bounds beyond which numbers count as broken. Generous: a healthy run never comes near them."""

    max_abs_parameter: float = 1e4
    """No weight of a trained GPT-2-sized model comes near this; a value 1e30 times too large exceeds it."""
    max_norm_growth: float = 10.0
    """One global step moves the parameter norm by a few percent at most; a tenfold jump is a poisoned average."""
    gradient_trust_ratio: float = 100.0
    """Averaged gradients may be at most this many times longer (in norm) than :attr:`gradient_norm_floor`."""
    gradient_norm_floor: float = 1.0
    """The maximum norm of an honest average, because each peer clips its mean gradient to ``training.grad_clip`` (1.0 by default)."""


class RateLimitedLog:
    """Log a warning per kind of event at most once per ``period`` seconds, with the number left out since."""

    def __init__(self, period: float = LOG_PERIOD):
        self.period = period
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def warning(self, kind: str, message: str) -> None:
        now = time.monotonic()
        if now - self._last.get(kind, -math.inf) < self.period:
            self._skipped[kind] = self._skipped.get(kind, 0) + 1
            return
        skipped = self._skipped.pop(kind, 0)
        suffix = f" ({skipped} more since the last such message)" if skipped else ""
        logger.warning(message + suffix)
        self._last[kind] = now


def gradient_norm(parameters) -> torch.Tensor:
    """Return the global L2 norm of the parameters' gradients (inf or nan if any gradient is not finite)."""
    grads = [p.grad.detach().float() for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def tensors_problem(tensors, max_abs: float) -> str | None:
    """Why ``tensors`` are broken (not finite, or an element above ``max_abs``), or None if they are not.

    Each tensor takes one vectorized ``aminmax`` pass with no temporary copy, where ``isfinite`` and ``abs`` each
    take ten times longer on a CPU. The extremes are NaN or infinite exactly when some element is.
    """
    for tensor in tensors:
        if not tensor.is_floating_point() or tensor.numel() == 0:
            continue
        low, high = torch.aminmax(tensor.detach())
        largest = max(-float(low), float(high))
        if math.isnan(float(low)) or math.isnan(float(high)) or not math.isfinite(largest):
            return "a value is not finite"
        if largest > max_abs:
            return f"a value exceeds {max_abs:g} in magnitude"
    return None


def averaged_gradients_problem(optimizer, limits: HealthLimits = HealthLimits()) -> str | None:
    """Why the averaged gradients now in ``optimizer`` (a ``hivemind.Optimizer``) cannot be used, or None.

    They are the ``.grad`` of the parameters AdamW updates (the offloaded copies with ``offload_optimizer=True``).
    This peer's own contribution is gone by then: Hivemind resets its accumulators as the round starts.
    """
    opt_params = [p for group in optimizer.opt.param_groups for p in group["params"]]
    averaged = gradient_norm(opt_params)
    if not bool(torch.isfinite(averaged)):
        return "the averaged gradients are not finite"
    bound = limits.gradient_trust_ratio * limits.gradient_norm_floor
    if float(averaged) > bound:
        return f"the averaged gradient norm {float(averaged):.3g} is above {bound:g}"
    return None


def replace_poisoned_gradients(optimizer, log: RateLimitedLog) -> bool:
    """Drop unusable averaged gradients, so that this global step changes nothing; return whether it did.

    Every honest peer of the round does the same, so they stay equal. Hivemind's own fallback, loading this
    peer's accumulators, cannot serve here: with ``reuse_grad_buffers`` the accumulators are the very ``.grad``
    tensors that now hold the averaged values, and it scales them by zero, which leaves NaN as NaN.
    """
    problem = averaged_gradients_problem(optimizer)
    if problem is None:
        return False
    log.warning("averaged gradients", f"Rejected the averaged gradients of this global step ({problem}); "
                                      "this step leaves the parameters as they are")
    skip_update(optimizer)
    return True


def skip_update(optimizer) -> None:
    """Make this global step change nothing: AdamW leaves a parameter without a gradient as it is.

    Zero gradients would still move every parameter by Adam's momentum, and a run of failed or rejected rounds
    then keeps pushing in the last direction seen, which raised the loss in the bad-peer test.
    """
    for group in optimizer.opt.param_groups:
        for parameter in group["params"]:
            parameter.grad = None


def averaged_state_problem(averager, limits: HealthLimits = HealthLimits()) -> str | None:
    """Why the result of a parameter averaging round in ``averager`` (a ``TrainingStateAverager``) is unusable.

    Its averaged tensors are the offloaded parameters first, then the averaged optimizer statistics.
    """
    local = [p for group in averager.optimizer.param_groups for p in group["params"]]
    with averager.get_tensors() as averaged:
        parameters, statistics = averaged[: len(local)], averaged[len(local):]
        problem = tensors_problem(parameters, limits.max_abs_parameter) or tensors_problem(statistics, math.inf)
        if problem is not None:
            return problem
        new, old = _norm(parameters), _norm(local)
    if new > limits.max_norm_growth * old:
        return f"the averaged parameter norm {new:.4g} is more than {limits.max_norm_growth:g} times this peer's {old:.4g}"
    return None


def reject_poisoned_state(averager, log: RateLimitedLog) -> bool:
    """Return True, and log why, when a parameter averaging result is broken and must not be applied."""
    problem = averaged_state_problem(averager)
    if problem is None:
        return False
    log.warning("averaged state", f"Rejected the result of a parameter averaging round ({problem}); "
                                  "keeping this peer's own parameters")
    return True


def _norm(tensors) -> float:
    norms = [torch.linalg.vector_norm(t.detach().float()) for t in tensors]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


class TrainingStateLost(SwarmError):
    """The training state broke and neither the last good copy nor a peer's state could replace it."""


class TrainingGuard:
    """Checks one peer's micro-steps and global steps, and rolls back to the last good training state.

    ``optimizer`` is the peer's ``hivemind.Optimizer``: its ``opt`` holds the parameters AdamW updates (a host
    copy with ``offload_optimizer=True``) and Adam's statistics, ``param_groups`` hold the model's own parameters,
    and its ``state_averager`` (made with ``reuse_tensors=False``) holds the averaging buffers that serve as the
    last good copy.
    """

    def __init__(self, optimizer, limits: HealthLimits = HealthLimits()):
        self.optimizer = optimizer
        self.averager = optimizer.state_averager
        if getattr(self.averager, "reuse_tensors", False):
            raise ValueError("the guard needs a state averager with reuse_tensors=False: its buffers are the copy")
        self.limits = limits
        self.log = RateLimitedLog()
        self.rollbacks = 0
        self.skipped_micro_steps = 0
        self._good_norm = math.nan
        self.snapshot()

    # the tensors that make up the training state

    def _model_parameters(self) -> list[torch.Tensor]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def _opt_parameters(self) -> list[torch.Tensor]:
        return [p for group in self.optimizer.opt.param_groups for p in group["params"]]

    def _state_tensors(self) -> list[torch.Tensor]:
        """The parameters AdamW updates, then every tensor of Adam's per-parameter state, in a fixed order."""
        opt, params = self.optimizer.opt, self._opt_parameters()
        stats = [value for p in params for _name, value in sorted(opt.state[p].items()) if torch.is_tensor(value)]
        return params + stats

    @torch.no_grad()
    def snapshot(self) -> bool:
        """Copy the current training state into the averaging buffers as the last good one; False if they are busy.

        While a background parameter averaging round works on the buffers, or its result waits to be applied,
        they are left alone: that result is checked before it is applied (:func:`reject_poisoned_state`), and the
        next global step takes the snapshot.
        """
        averager = self.averager
        if not averager.lock_averaging.acquire(blocking=False):
            return False
        try:
            if averager.finished_averaging_round.is_set():
                return False
            # The averager's process holds this lock while a scheduled round waits for its trigger, which the
            # step thread gives only after taking lock_averaging: waiting here would stall that round.
            if not averager.lock_averaged_tensors.acquire(block=False):
                return False
            try:  # NOTE: private in hivemind 1.1.12 (what _load_local_tensors_into_averager_ does under the lock)
                for local, kept in zip(averager._local_tensors(), averager._averaged_tensors, strict=True):
                    kept.copy_(local)
            finally:
                averager.lock_averaged_tensors.release()
            self._good_norm = self._parameter_norm()
            return True
        finally:
            averager.lock_averaging.release()

    @torch.no_grad()
    def rollback(self, reason: str) -> None:
        """Copy the last good state back into the optimizer and the model, in place.

        Waits for a background averaging round to end first. Where the copy is broken too, downloads the swarm's
        state; raises :class:`TrainingStateLost` if that fails as well.
        """
        averager = self.averager
        with averager.lock_averaging:
            with averager.get_tensors() as kept:
                problem = self._copy_problem(kept)
                if problem is None:
                    for tensor, good in zip(averager._local_tensors(), kept, strict=True):
                        tensor.copy_(good)
        if problem is not None:
            logger.warning(f"The last good training state is unusable too ({problem}); downloading the swarm's")
            self.optimizer.load_state_from_peers()
            if self.state_problem() is not None:
                raise TrainingStateLost(_(
                    "the training state broke ({reason}) and no peer's state could replace it; restart "
                    "cellmind-peer to resume from its last checkpoint"
                ).format(reason=reason))
        self._copy_into_model()
        self.rollbacks += 1
        logger.warning(f"Rolled back to the last good training state: {reason} (rollback {self.rollbacks})")

    def _copy_problem(self, kept) -> str | None:
        count = len(self._opt_parameters())
        parameters, statistics = kept[:count], kept[count:]
        problem = tensors_problem(parameters, self.limits.max_abs_parameter) or tensors_problem(statistics, math.inf)
        if problem is None and _norm(parameters) > self.limits.max_norm_growth * self._good_norm:
            problem = "its parameter norm jumped"
        return problem

    def _copy_into_model(self) -> None:
        for main, source in zip(self._model_parameters(), self._opt_parameters(), strict=True):
            if main is not source:
                main.copy_(source.to(main.device, main.dtype))

    def _parameter_norm(self) -> float:
        return _norm(self._model_parameters())

    def state_problem(self) -> str | None:
        """Why the current parameters or optimizer statistics are broken, or None if they look healthy."""
        problem = tensors_problem(self._model_parameters(), self.limits.max_abs_parameter)
        if problem is not None:
            return f"parameters: {problem}"
        checked = {id(parameter) for parameter in self._model_parameters()}  # AdamW's own, on a CPU peer
        problem = tensors_problem([t for t in self._state_tensors() if id(t) not in checked], math.inf)
        if problem is not None:
            return f"optimizer state: {problem}"
        norm = self._parameter_norm()
        if norm > self.limits.max_norm_growth * self._good_norm:
            return f"the parameter norm jumped from {self._good_norm:.4g} to {norm:.4g}"
        return None

    # the checks the training loop calls

    def loss_ok(self, loss: torch.Tensor) -> bool:
        """Return whether a micro-step's loss is finite, so that it may be backpropagated; check the state if not.

        A non-finite loss can also mean that this peer's parameters broke (a poisoned average applied in the
        background), in which case they are rolled back at once rather than at the next global step, which a
        peer that skips every micro-step would never reach.
        """
        if bool(torch.isfinite(loss.detach())):
            return True
        self._skipped("loss", "Skipped a micro-step: its loss is not finite; its samples are not reported")
        return False

    def gradients_ok(self) -> bool:
        """Return whether the gradients accumulated in ``.grad`` are finite; drop the whole accumulation if not.

        The last micro-step is the one that broke them, since every earlier one was checked, but its gradients
        cannot be taken out of the sum.
        """
        if bool(torch.isfinite(gradient_norm(self._model_parameters()))):
            return True
        optimizer = self.optimizer
        optimizer.grad_averager.reset_accumulated_grads_()
        optimizer.tracker.report_local_progress(optimizer.local_epoch, 0)
        self._skipped("gradients", "A micro-step's gradients are not finite; dropped the gradients accumulated "
                                   "since the last global step")
        return False

    def _skipped(self, kind: str, message: str) -> None:
        self.skipped_micro_steps += 1
        self.log.warning(kind, message)
        problem = self.state_problem()
        if problem is not None:
            self.rollback(problem)

    def after_global_step(self) -> bool:
        """Keep the new state as the last good one, or roll back to it; return whether the state was healthy."""
        problem = self.state_problem()
        if problem is None:
            self.snapshot()
            return True
        self.rollback(f"after global epoch {self.optimizer.local_epoch}, {problem}")
        return False
