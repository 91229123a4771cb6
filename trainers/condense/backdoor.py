"""Backdoors planted through dataset distillation (Liu et al., NDSS 2023; ALGORITHMS.md 7).

Both attacks poison the *real* images the distillation reads: a ``portion`` of them get a
square trigger of ``size`` pixels stamped in the bottom-right corner and the label ``target``.

- NaiveAttack keeps that trigger fixed (a square of the data's brightest value) and distils
  as usual.
- DoorPing re-optimises the trigger after every network update of the distillation:
  1. it ranks the neurons of one hidden representation by their total absolute outgoing
     weight and keeps the top k;
  2. Adam moves the trigger's pixels (inside its mask only) until those neurons' activations
     reach alpha times their value before the update (MSE, stopped below ``trigger_loss``);
  3. the poisoned images are stamped again with the new trigger.

The trigger starts white: each of its pixels at that pixel's brightest value in the training
data (the code's 255 before normalisation). As in the authors' code, the network sees the
trigger alone on a black image while the trigger is optimised, and an activation that starts
at zero asks for nothing (the update stops at once), and the trigger's pixels are not held to
the data's range (the code does not clip them; ``trainer.backdoor.clip`` does).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from trainers.base import derive_seed
from trainers.config import BackdoorConfig, BackdoorName
from trainers.models import forward_layers

__all__ = ["Poisoned", "Trigger", "attack_success_rate", "poison", "update_trigger"]

_POISON_STREAM = 61


@dataclass
class Trigger:
    """A square patch in the bottom-right corner of square single-channel images.

    Args:
        index: the flat feature positions the patch covers.
        pattern: the patch's values at those positions (what DoorPing optimises).
        target: the label of triggered images.
        blank: every pixel at its lowest value in the data (a black image, which the trigger
            is drawn on to be optimised and shown).
    """

    index: torch.Tensor
    pattern: torch.Tensor
    target: int
    blank: torch.Tensor
    white: torch.Tensor | None = None
    """Each trigger pixel's brightest value in the data (what ``clip`` holds it under)."""

    @classmethod
    def corner(cls, x: torch.Tensor, cfg: BackdoorConfig) -> Trigger:
        """The starting trigger on images like ``x``: a ``size`` x ``size`` white square,
        each pixel at its brightest value in the data (on standardized pixels, white is a
        different number at each pixel)."""
        side = int(round(x.shape[1] ** 0.5))
        rows = torch.arange(side - cfg.size, side)
        index = (rows[:, None] * side + rows[None, :]).flatten()
        white = x[:, index].max(0).values
        return cls(index, white.clone(), cfg.target, x.min(0).values, white)

    def stamp(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with the trigger pasted in (a copy)."""
        out = x.clone()
        out[:, self.index] = self.pattern
        return out

    def image(self, n_features: int) -> np.ndarray:
        """The trigger alone on a blank image, as a flat array."""
        return self.stamp(self.blank.unsqueeze(0))[0].numpy()


@dataclass
class Poisoned:
    """Real training data with a poisoned subset: ``rows`` are stamped and relabelled."""

    x: torch.Tensor
    y: torch.Tensor
    rows: torch.Tensor
    clean: torch.Tensor
    """The poisoned rows' images before stamping (what a new trigger is stamped on)."""
    trigger: Trigger

    def restamp(self) -> None:
        """Stamps the poisoned rows again with the current trigger."""
        self.x[self.rows] = self.trigger.stamp(self.clean)


def poison(x: torch.Tensor, y: torch.Tensor, cfg: BackdoorConfig, seed: int) -> Poisoned:
    """Stamps ``round(portion * n)`` (at least one) randomly chosen real images and relabels
    them to the target; ``x`` and ``y`` are copied."""
    n = len(y)
    k = max(1, round(cfg.portion * n))
    rng = np.random.default_rng(derive_seed(seed, _POISON_STREAM))
    rows = torch.from_numpy(np.sort(rng.choice(n, size=k, replace=False)))
    trigger = Trigger.corner(x, cfg)
    out = Poisoned(x.clone(), y.clone(), rows, x[rows].clone(), trigger)
    out.restamp()
    out.y[rows] = cfg.target
    return out


def _outgoing(model: nn.Module, layer: int, width: int) -> torch.Tensor:
    """Each unit's total absolute outgoing weight, for the hidden representation ``layer``
    (of ``width`` units, as forward_layers lists them): the weights of the module that reads
    it next."""
    readers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    n_hidden = len(readers) - 1  # every weight layer but the first reads a representation
    reader = readers[1:][layer if layer >= 0 else n_hidden + layer]
    w = reader.weight.detach().abs()
    if isinstance(reader, nn.Conv2d):  # units are channels x positions: a channel's weight
        per_channel = w.sum(dim=(0, 2, 3))
        return per_channel.repeat_interleave(width // len(per_channel))
    return w.sum(dim=0)


def update_trigger(model: nn.Module, poisoned: Poisoned, cfg: BackdoorConfig) -> tuple[float, int]:
    """DoorPing's trigger update on ``model`` (its weights stay as they are): returns the last
    MSE and the Adam steps taken; the poisoned images are stamped again."""
    trigger = poisoned.trigger
    was_training = model.training
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    pattern = trigger.pattern.clone().requires_grad_(True)
    opt = torch.optim.Adam([pattern], lr=cfg.trigger_lr, betas=(0.9, 0.99))
    blank = trigger.blank.unsqueeze(0)

    def activations() -> torch.Tensor:
        x = blank.clone()
        x[:, trigger.index] = pattern
        _, feats, _ = forward_layers(model, x)
        return feats[cfg.layer][0]

    with torch.no_grad():
        first = activations()
        units = torch.topk(_outgoing(model, cfg.layer, len(first)), cfg.topk).indices
        aim = cfg.alpha * first[units]
    loss_value, steps = float("nan"), 0
    for steps in range(1, cfg.trigger_steps + 1):  # noqa: B007 - steps is reported
        loss = torch.mean((activations()[units] - aim) ** 2)
        loss_value = float(loss.detach())
        if loss_value < cfg.trigger_loss:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
        if cfg.clip and trigger.white is not None:
            with torch.no_grad():  # within each pixel's range in the data
                black = trigger.blank[trigger.index]
                pattern.copy_(torch.maximum(torch.minimum(pattern, trigger.white), black))
    for p in model.parameters():
        p.requires_grad_(True)
    model.train(was_training)
    trigger.pattern = pattern.detach()
    poisoned.restamp()
    return loss_value, steps


def attack_success_rate(
    model: nn.Module, x_test: torch.Tensor, y_test: torch.Tensor, trigger: Trigger
) -> float:
    """Share of the triggered test images not of the target class that the model classifies
    as the target."""
    keep = y_test != trigger.target
    if not bool(keep.any()):
        return float("nan")
    with torch.no_grad():
        pred = model(trigger.stamp(x_test[keep])).argmax(1)
    return float((pred == trigger.target).float().mean())


def attacking(cfg: BackdoorConfig) -> bool:
    """Whether ``cfg`` plants a backdoor."""
    return cfg.name != BackdoorName.none
