"""Numerical guards of the training loops (train_icd, train_deeplab), shared so that both stop
and clip the same way.

- ``check_finite_losses``: called every iteration with the loss terms, before backward. A NaN
  or infinite term stops training at once with ``NonFiniteLossError`` naming the stage, epoch,
  iteration, term(s) and learning rate. A diverged run would otherwise train on for the
  remaining epochs and write a model of NaN weights that only a later stage notices. Under
  several processes the check is all-reduced, so every rank raises at the same iteration
  (none waits forever in DDP's gradient all-reduce).
- ``backward_step``: backward, optional gradient-norm clipping (``grad_clip``; unscaled first
  under CUDA AMP) and the optimizer step. GradScaler's skipped steps (inf/NaN *gradients*, which
  it handles itself by lowering its scale) are not errors; only a non-finite *loss* is.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping

import torch

from . import distributed as D


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; the message says where and what to change."""


def check_finite_losses(terms: Mapping[str, torch.Tensor | float], *, stage: str, epoch: int, epochs: int,
                        iteration: int, iterations: int, lr: str, hint: str = "", note: str = "") -> None:
    """Raise NonFiniteLossError when any of ``terms`` (scalar tensors or floats) is NaN or
    infinite in this process or, under torch.distributed, in any process (one all-reduce, so
    every process raises at the same iteration).

    ``epoch`` and ``iteration`` are 1-based (iteration within the epoch); ``lr`` is the learning
    rate as the stage describes it; ``hint`` the stage's advice (which config keys to change);
    ``note`` what the stage keeps (its checkpoint).
    """
    names = list(terms)
    if not names:
        return
    values = [terms[k] for k in names]
    device = next((v.device for v in values if torch.is_tensor(v)), torch.device("cpu"))
    local = torch.stack([v.detach().reshape(()).to(device, torch.float64) if torch.is_tensor(v)
                         else torch.tensor(float(v), dtype=torch.float64, device=device) for v in values])
    bad = D.all_reduce_sum((~torch.isfinite(local)).to(torch.float64))  # how many processes, per term
    both = torch.cat([local, bad]).tolist()  # one device sync
    local_vals, bad_counts = both[:len(names)], both[len(names):]
    if not any(bad_counts):
        return
    shown = []
    for name, value, count in zip(names, local_vals, bad_counts):
        if count:
            shown.append(f"{name} = {value}" if not math.isfinite(value) else f"{name} (in another process)")
    message = (f"{stage}: non-finite loss at epoch {epoch}/{epochs}, iteration {iteration}/{iterations}: "
               f"{', '.join(shown)}; learning rate {lr}. Training stopped (the weights would be NaN from here "
               f"on). To fix: {hint or 'lower the learning rate or clip gradients'}, and check the inputs for "
               f"NaN or infinite values.{' ' + note if note else ''}")
    raise NonFiniteLossError(message)


def divergence_advice(key: str, section: dict, checkpoint, finished_epochs: int) -> dict:
    """``hint`` and ``note`` for check_finite_losses in config section ``key`` (icd, deeplab)
    whose checkpoint file ``checkpoint`` holds ``finished_epochs`` epochs (0: none written)."""
    clip = (f"set {key}.grad_clip (a maximum gradient norm)" if section.get("grad_clip") is None
            else f"lower {key}.grad_clip (now {section['grad_clip']:g})")
    note = (f"{checkpoint} (after epoch {finished_epochs}) is kept: a rerun with the same config resumes from "
            "it, one with a changed config starts afresh." if finished_epochs > 0 else "")
    return {"hint": f"lower {key}.lr (now {section['lr']:g}) or {clip}", "note": note}


def backward_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
                  parameters: Iterable[torch.nn.Parameter], grad_clip: float | None) -> float | None:
    """Zero the gradients, ``loss.backward()`` (scaled when ``scaler`` is an enabled
    GradScaler), clip the total gradient norm of ``parameters`` to ``grad_clip`` when it is
    set, then step.

    Returns the total gradient norm before clipping (unscaled), or None without clipping. The
    norm is inf/NaN when AMP's gradients overflowed: GradScaler then skips this step itself.
    """
    amp = scaler is not None and scaler.is_enabled()
    optimizer.zero_grad(set_to_none=True)
    (scaler.scale(loss) if amp else loss).backward()
    norm = None
    if grad_clip is not None:
        if amp:
            scaler.unscale_(optimizer)  # clip the true gradients, not the loss-scaled ones
        norm = float(torch.nn.utils.clip_grad_norm_([p for p in parameters if p.grad is not None], grad_clip))
    if amp:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return norm


class ClipLog:
    """One epoch's record of ``backward_step``'s norms: the steps clipped (a finite norm above
    ``grad_clip``; a non-finite AMP norm is a step GradScaler skips, not a clip) and the mean
    gradient norm before clipping (to choose ``grad_clip``). Without clipping it stays empty."""

    def __init__(self, grad_clip: float | None):
        self.grad_clip = grad_clip
        self.steps = self.clipped = self._finite = 0
        self._norm_sum = 0.0

    def add(self, norm: float | None) -> None:
        self.steps += 1
        if norm is None or not math.isfinite(norm):
            return
        self._finite += 1
        self._norm_sum += norm
        self.clipped += int(self.grad_clip is not None and norm > self.grad_clip)

    def metrics(self) -> dict:
        """metrics.csv columns: clipped_steps, grad_norm (blank without clipping)."""
        return {"clipped_steps": self.clipped,
                "grad_norm": self._norm_sum / self._finite if self._finite else ""}

    def describe(self) -> str:
        """Suffix of the epoch's log line ('' without clipping)."""
        if self.grad_clip is None:
            return ""
        mean = f"{self._norm_sum / self._finite:.3g}" if self._finite else "n/a"
        return f", gradient norm mean {mean}, clipped to {self.grad_clip:g} in {self.clipped}/{self.steps} steps"


__all__ = ["NonFiniteLossError", "check_finite_losses", "divergence_advice", "backward_step", "ClipLog"]
