"""Dataset distillation: a few synthetic images per class that train a network nearly as well
as the real data.

Gradient matching (dataset condensation, Zhao et al. 2021), each iteration:

1. a network is drawn afresh;
2. ``outer_loop`` times: for every class c, the distance between the gradients of the loss
   on a real batch of c and on the synthetic images of c (layer by layer, 1 - cosine per
   output unit, biases left out: the paper's distance) is summed; the synthetic images take
   an SGD step (momentum 0.5) down that sum; then the network trains ``inner_loop`` steps on
   the synthetic set.

Distribution matching (Zhao and Bilen 2023), each iteration: a network is drawn afresh and
frozen; the squared distance between the mean embeddings (the representation the classifier
reads) of a real batch of c and of the synthetic images of c, summed over the classes, takes
an SGD step.

A distilled set is judged the usual way: fresh networks trained only on it, tested on the
real test split, against the same networks trained on all the real data and on a random
real subset of the same size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainers.base import BYTES_PER_VALUE, derive_seed
from trainers.condense.backdoor import Poisoned, attack_success_rate, poison, update_trigger
from trainers.config import BackdoorConfig, BackdoorName, CondenseConfig, CondenseInit
from trainers.config import CondenseMethod as Method
from trainers.models import ModelSpec, build_model, forward_layers

__all__ = [
    "Distiller",
    "SyntheticSet",
    "match_distance",
    "score",
    "synthetic_bytes",
    "train_fresh",
]

_INIT_STREAM = 51
_NET_STREAM = 52
_BATCH_STREAM = 53
_INNER_STREAM = 54
_IMG_MOMENTUM = 0.5


@dataclass
class SyntheticSet:
    """A distillation in progress: plain tensors, so it checkpoints and crosses processes."""

    x: torch.Tensor
    """The synthetic images, ``ipc`` per class in class order, flat."""
    y: torch.Tensor
    momentum: torch.Tensor
    """The images' SGD momentum buffer."""
    iteration: int = 0
    """Iterations done."""
    pattern: torch.Tensor | None = None
    """The trigger's pixels as last optimised (DoorPing), None without a backdoor."""
    losses: list[float] = field(default_factory=list)
    """The matching loss of each iteration since the last report."""
    trigger_losses: list[float] = field(default_factory=list)
    """DoorPing: each trigger update's final MSE since the last report."""


def match_distance(g_syn: Sequence[torch.Tensor], g_real: Sequence[torch.Tensor]) -> torch.Tensor:
    """Dataset condensation's gradient distance: per layer, the gradient as rows of output
    units, sum over rows of 1 - cosine; biases (1-d) count nothing."""
    total = g_syn[0].new_zeros(())
    for gs, gr in zip(g_syn, g_real):
        if gs.dim() == 1:
            continue
        a, b = gs.flatten(1), gr.flatten(1)
        cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-6)
        total = total + (1 - cos).sum()
    return total


def synthetic_bytes(n_images: int, n_features: int) -> int:
    """What a synthetic set takes on the wire: float32 pixels and one int32 label each."""
    return n_images * (n_features * BYTES_PER_VALUE + BYTES_PER_VALUE)


def train_fresh(
    spec: ModelSpec,
    x: torch.Tensor,
    y: torch.Tensor,
    seed: int,
    epochs: int,
    lr: float,
    batch_size: int = 256,
) -> nn.Module:
    """A network drawn from ``seed`` trained on (x, y): SGD with momentum 0.9 and weight decay
    5e-4, minibatches of ``batch_size``, the learning rate divided by 10 halfway (dataset
    condensation's evaluation)."""
    net = build_model(spec, seed)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(seed)
    n = len(y)
    for epoch in range(epochs):
        if epoch == epochs // 2 and epochs > 1:
            for group in opt.param_groups:
                group["lr"] = lr / 10
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            rows = order[start : start + batch_size]
            loss = F.cross_entropy(net(x[rows]), y[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def score(
    net: nn.Module, x_test: torch.Tensor, y_test: torch.Tensor, poisoned: Poisoned | None
) -> tuple[float, float]:
    """Clean test accuracy and attack success rate (nan without a backdoor)."""
    with torch.no_grad():
        acc = float((net(x_test).argmax(1) == y_test).float().mean())
    asr = (
        float("nan")
        if poisoned is None
        else attack_success_rate(net, x_test, y_test, poisoned.trigger)
    )
    return acc, asr


class Distiller:
    """Distils (x, y) into ``ipc`` images per class, optionally through a backdoor.

    Args:
        cfg: the method and its schedule.
        spec: the network matched (and the networks that judge the result).
        x, y: the real training data (float32 features, integer labels).
        n_classes: the classes (a class absent from ``x`` keeps its initial images).
        seed: every random choice derives from it.
        backdoor: NaiveAttack or DoorPing on the real data, or None.
    """

    def __init__(
        self,
        cfg: CondenseConfig,
        spec: ModelSpec,
        x: torch.Tensor,
        y: torch.Tensor,
        n_classes: int,
        seed: int,
        backdoor: BackdoorConfig | None = None,
    ) -> None:
        self.cfg, self.spec, self.seed, self.n_classes = cfg, spec, seed, n_classes
        self.backdoor = backdoor if backdoor and backdoor.name != BackdoorName.none else None
        self.poisoned = poison(x, y, self.backdoor, seed) if self.backdoor else None
        self.x = self.poisoned.x if self.poisoned else x
        self.y = self.poisoned.y if self.poisoned else y
        labels = self.y.numpy()
        self.by_class = [np.flatnonzero(labels == c) for c in range(n_classes)]

    def start(self) -> SyntheticSet:
        """The synthetic set before the first iteration: real images of each class, drawn at
        random (with repeats where a class has fewer than ipc), or N(0, 1) noise."""
        ipc, d = self.cfg.ipc, self.x.shape[1]
        rng = np.random.default_rng(derive_seed(self.seed, _INIT_STREAM))
        y = torch.arange(self.n_classes).repeat_interleave(ipc)
        if self.cfg.init == CondenseInit.noise:
            x = torch.from_numpy(rng.standard_normal((len(y), d)).astype(np.float32))
        else:
            x = torch.zeros(len(y), d)
            for c, rows in enumerate(self.by_class):
                if len(rows):
                    pick = rng.choice(rows, size=ipc, replace=len(rows) < ipc)
                    x[c * ipc : (c + 1) * ipc] = self.x[torch.from_numpy(pick)]
        pattern = self.poisoned.trigger.pattern.clone() if self.poisoned else None
        return SyntheticSet(x, y, torch.zeros_like(x), pattern=pattern)

    def restore(self, syn: SyntheticSet) -> None:
        """Puts a checkpointed trigger back on the poisoned real images."""
        if self.poisoned is not None and syn.pattern is not None:
            self.poisoned.trigger.pattern = syn.pattern.clone()
            self.poisoned.restamp()

    def run(self, syn: SyntheticSet, iterations: int) -> None:
        """Runs the next ``iterations`` iterations on ``syn`` (in place)."""
        step = self._gm_iteration if self.cfg.method == Method.gm else self._dm_iteration
        for _ in range(iterations):
            step(syn)
            syn.iteration += 1

    def _real_batch(self, c: int, rng: np.random.Generator) -> torch.Tensor:
        rows = self.by_class[c]
        take = rng.permutation(rows)[: self.cfg.batch_real]
        return self.x[torch.from_numpy(take)]

    def _classes(self) -> list[int]:
        return [c for c in range(self.n_classes) if len(self.by_class[c])]

    def _image_step(self, syn: SyntheticSet, grad: torch.Tensor) -> None:
        syn.momentum.mul_(_IMG_MOMENTUM).add_(grad)
        syn.x.sub_(self.cfg.image_lr() * syn.momentum)

    def _net(self, syn: SyntheticSet) -> nn.Module:
        return build_model(self.spec, derive_seed(self.seed, _NET_STREAM, syn.iteration))

    def _gm_iteration(self, syn: SyntheticSet) -> None:
        cfg, ipc = self.cfg, self.cfg.ipc
        outer_loop, inner_loop = cfg.loops()
        net = self._net(syn)
        net.train()
        params = list(net.parameters())
        opt = torch.optim.SGD(params, lr=cfg.lr_net)
        gen = torch.Generator().manual_seed(derive_seed(self.seed, _INNER_STREAM, syn.iteration))
        total = 0.0
        for ol in range(outer_loop):
            rng = np.random.default_rng(derive_seed(self.seed, _BATCH_STREAM, syn.iteration, ol))
            images = syn.x.clone().requires_grad_(True)
            loss = images.new_zeros(())
            for c in self._classes():
                real = self._real_batch(c, rng)
                target = torch.full((len(real),), c, dtype=torch.long)
                g_real = [
                    g.detach()
                    for g in torch.autograd.grad(F.cross_entropy(net(real), target), params)
                ]
                mine = images[c * ipc : (c + 1) * ipc]
                g_syn = torch.autograd.grad(
                    F.cross_entropy(net(mine), syn.y[c * ipc : (c + 1) * ipc]),
                    params,
                    create_graph=True,
                )
                loss = loss + match_distance(g_syn, g_real)
            (grad,) = torch.autograd.grad(loss, images)
            self._image_step(syn, grad)
            total += float(loss.detach())
            if ol < outer_loop - 1:
                x_syn, y_syn = syn.x.detach(), syn.y
                for _ in range(inner_loop):
                    rows = torch.randperm(len(y_syn), generator=gen)[:256]
                    step = F.cross_entropy(net(x_syn[rows]), y_syn[rows])
                    opt.zero_grad()
                    step.backward()
                    opt.step()
            self._doorping(net, syn)  # after the network's update (the last step: none)
        syn.losses.append(total / outer_loop)

    def _dm_iteration(self, syn: SyntheticSet) -> None:
        ipc = self.cfg.ipc
        net = self._net(syn)
        net.train()
        for p in net.parameters():
            p.requires_grad_(False)
        rng = np.random.default_rng(derive_seed(self.seed, _BATCH_STREAM, syn.iteration))
        images = syn.x.clone().requires_grad_(True)
        loss = images.new_zeros(())
        for c in self._classes():
            real = self._real_batch(c, rng)
            with torch.no_grad():
                e_real = forward_layers(net, real)[1][-1].mean(0)
            e_syn = forward_layers(net, images[c * ipc : (c + 1) * ipc])[1][-1].mean(0)
            loss = loss + ((e_real - e_syn) ** 2).sum()
        (grad,) = torch.autograd.grad(loss, images)
        self._image_step(syn, grad)
        syn.losses.append(float(loss.detach()))
        for p in net.parameters():
            p.requires_grad_(True)
        self._doorping(net, syn)

    def _doorping(self, net: nn.Module, syn: SyntheticSet) -> None:
        """DoorPing's trigger update after a network update (nothing for NaiveAttack)."""
        if self.backdoor is None or self.backdoor.name != BackdoorName.doorping:
            return
        assert self.poisoned is not None
        loss, _ = update_trigger(net, self.poisoned, self.backdoor)
        syn.pattern = self.poisoned.trigger.pattern.clone()
        syn.trigger_losses.append(loss)

    def evaluate(
        self,
        syn: SyntheticSet,
        x_test: torch.Tensor,
        y_test: torch.Tensor,
        seeds: Sequence[int],
    ) -> tuple[list[float], list[float]]:
        """Clean accuracy and ASR of fresh networks (one per seed) trained on ``syn``."""
        out = [
            score(
                train_fresh(self.spec, syn.x, syn.y, s, self.cfg.eval_epochs, self.cfg.eval_lr),
                x_test,
                y_test,
                self.poisoned,
            )
            for s in seeds
        ]
        return [a for a, _ in out], [r for _, r in out]


def spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard deviation (0 for one value; nan for none)."""
    if not values:
        return math.nan, math.nan
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
