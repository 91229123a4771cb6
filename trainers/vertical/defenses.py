"""Defenses of the active party's labels in vertical split learning (Kang et al.'s set).

Every defense is one :class:`Defense`, a small object the active party holds. A defense acts
at one of three places in the active party's step, each a hook with a do-nothing default:

- :meth:`Defense.targets`: what the active party trains on instead of the one-hot labels
  (the confusional autoencoder);
- :meth:`Defense.penalty`: a term added to its loss (the negative-loss regulariser, whose
  own heads the active party trains too: :meth:`Defense.modules`);
- :meth:`Defense.gradient`: what it does to the gradient d loss / d embedding before sending
  it to a passive party (noise, sparsification, discretisation, Marvell).

Gradients are (batch x dim) matrices, one row per sample. Every random draw takes the
generator it is handed (derived from the run's seed, the epoch and the batch).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from trainers.models import seeded
from trainers.registry import Registry

__all__ = ["DEFENSES", "Defense", "build_defense", "iso_noise"]


class Defense:
    """The contract: three hooks on the active party's step, each identity by default.

    Args:
        strength: the mechanism's own knob (see each subclass; None: its default).
        n_classes: classes of the main task.
        seed: seeds whatever the defense trains before use (the label autoencoder).
    """

    default_strength: float = 0.0
    """The strength when none is given (0 for the mechanisms that have none)."""
    binary_only = False

    def __init__(self, strength: float | None, n_classes: int, seed: int) -> None:
        self.strength: float = self.default_strength if strength is None else strength
        self.n_classes = n_classes
        self.seed = seed

    def targets(self, y: torch.Tensor) -> torch.Tensor:
        """Training targets, as class probabilities (batch x classes)."""
        return F.one_hot(y, self.n_classes).float()

    def decode(self, probs: torch.Tensor) -> torch.Tensor:
        """Maps the model's predicted probabilities back to class probabilities."""
        return probs

    def modules(self, passive: Sequence[int], width: int | None) -> list[nn.Parameter]:
        """Builds what the defense trains beside the active party's models and returns its
        parameters (none by default).

        Args:
            passive: the passive parties' ids.
            width: the width of one embedding when the active party has a top model (the
                passive outputs are then embeddings, not logits); None when it sums logits.
        """
        return []

    def penalty(
        self, embeddings: Mapping[int, torch.Tensor], y: torch.Tensor
    ) -> torch.Tensor | float:
        """A term added to the active party's loss, given each passive party's embedding."""
        return 0.0

    def gradient(self, g: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The gradient as sent to a passive party."""
        return g


DEFENSES: Registry[type[Defense]] = Registry("defense")
DEFENSES.register("none")(Defense)


def iso_noise(x: torch.Tensor, ratio: float, gen: torch.Generator) -> torch.Tensor:
    """x + N(0, s^2) per element, s = ratio * max_i ||x_i|| / sqrt(d) (isotropic noise)."""
    if ratio <= 0:
        return x
    scale = ratio * x.norm(dim=1).max() / math.sqrt(x.shape[1])
    return x + scale * torch.randn(x.shape, generator=gen, dtype=x.dtype)


@DEFENSES.register("laplace")
class Laplace(Defense):
    """Adds i.i.d. Laplace(0, b) noise to every element; strength = b."""

    default_strength = 1e-2

    def gradient(self, g, y, gen):
        u = torch.rand(g.shape, generator=gen, dtype=g.dtype) - 0.5
        return g - self.strength * torch.sign(u) * torch.log1p(-2 * u.abs())


@DEFENSES.register("gaussian")
class Isotropic(Defense):
    """Isotropic Gaussian noise, std = strength * max_i ||g_i|| / sqrt(d) (ISO)."""

    default_strength = 1.0

    def gradient(self, g, y, gen):
        return iso_noise(g, self.strength, gen)


@DEFENSES.register("sparsify")
class Sparsify(Defense):
    """Gradient sparsification: zeroes the smallest ``strength`` share of the entries by
    magnitude (the code's keep fraction is 1 - strength)."""

    default_strength = 0.75

    def gradient(self, g, y, gen):
        drop = int(self.strength * g.numel())
        if drop <= 0:
            return g
        threshold = g.abs().flatten().kthvalue(drop).values
        return torch.where(g.abs() > threshold, g, torch.zeros_like(g))


@DEFENSES.register("discrete")
class Discrete(Defense):
    """Discretised SGD: clips to [-bound, bound] and rounds to the nearest of ``strength``
    bins' edges (multiples of 2 * bound / bins)."""

    default_strength = 12.0

    def __init__(self, strength, n_classes, seed, bound: float = 1e-3) -> None:
        super().__init__(strength, n_classes, seed)
        self.bound = bound

    def gradient(self, g, y, gen):
        step = 2 * self.bound / max(1.0, self.strength)
        return torch.round(g.clamp(-self.bound, self.bound) / step) * step


@DEFENSES.register("max_norm")
class MaxNorm(Defense):
    """Per-sample scalar noise so every row's expected norm is the batch's largest:
    g_i * (1 + N(0, max_j ||g_j||^2 / ||g_i||^2 - 1)). No strength."""

    def gradient(self, g, y, gen):
        norms = g.norm(dim=1, keepdim=True).clamp_min(1e-12)
        sigma = (norms.max() ** 2 / norms**2 - 1).clamp_min(0).sqrt()
        return g * (1 + sigma * torch.randn(norms.shape, generator=gen, dtype=g.dtype))


@DEFENSES.register("marvell")
class Marvell(Defense):
    """Optimised Gaussian noise along the class-mean difference (after Li et al.'s Marvell).

    Reconstructed: with D = mean(g | y=1) - mean(g | y=0), unit direction u, in-direction
    class variances s0^2, s1^2 and positive share p, the noise variances a0, a1 along u
    minimise the symmetrised KL between the two classes' noised projections,

        (v0 / v1 + v1 / v0 - 2) + ||D||^2 (1 / v0 + 1 / v1),  v_c = s_c^2 + a_c,

    under the power budget p a1 + (1 - p) a0 = strength * ||D||^2 (a grid of 101 splits).
    Sample i then gets sqrt(a_{y_i}) z_i u, z_i ~ N(0, 1). Binary tasks only.
    """

    default_strength = 1.0
    binary_only = True

    def gradient(self, g, y, gen):
        pos, neg = g[y == 1], g[y == 0]
        if len(pos) == 0 or len(neg) == 0:
            return g
        diff = pos.mean(0) - neg.mean(0)
        dist2 = float(diff.pow(2).sum())
        if dist2 <= 0:
            return g
        u = diff / math.sqrt(dist2)
        s1, s0 = float((pos @ u).var(unbiased=False)), float((neg @ u).var(unbiased=False))
        p = len(pos) / len(g)
        power = self.strength * dist2
        best, a0, a1 = math.inf, 0.0, 0.0
        for t in torch.linspace(0, 1, 101).tolist():
            c1, c0 = t * power / p, (1 - t) * power / (1 - p)
            v0, v1 = s0 + c0 + 1e-30, s1 + c1 + 1e-30
            kl = (v0 / v1 + v1 / v0 - 2) + dist2 * (1 / v0 + 1 / v1)
            if kl < best:
                best, a0, a1 = kl, c0, c1
        std = torch.where(y == 1, math.sqrt(a1), math.sqrt(a0)).to(g.dtype)
        z = torch.randn(len(g), generator=gen, dtype=g.dtype)
        return g + (std * z)[:, None] * u[None, :]


@DEFENSES.register("cae")
class ConfusionalAutoencoder(Defense):
    """The confusional label autoencoder (CAE/CoAE): the active party trains on soft labels
    enc(y) and decodes its predictions with dec.

    The autoencoder trains once, before the run, on the one-hot labels with the loss
    10 CE(dec(enc(y)), y) - strength * CE(enc(y), y); the confusion term is clamped at
    -log(1e-4) per sample, since unclamped it grows without bound.
    """

    default_strength = 1.0

    def __init__(self, strength, n_classes, seed) -> None:
        super().__init__(strength, n_classes, seed)
        self._coders: tuple[nn.Module, nn.Module] | None = None

    def _trained(self) -> tuple[nn.Module, nn.Module]:
        """The encoder and decoder, trained on first use (on the party that holds them)."""
        if self._coders is None:
            self._coders = self._train()
        return self._coders

    def _train(self) -> tuple[nn.Module, nn.Module]:
        n_classes = self.n_classes
        gen = torch.Generator().manual_seed(self.seed)
        width = 6 * n_classes
        with seeded(self.seed):
            encoder = nn.Sequential(
                nn.Linear(n_classes, width), nn.ReLU(), nn.Linear(width, n_classes)
            )
            decoder = nn.Sequential(
                nn.Linear(n_classes, width), nn.ReLU(), nn.Linear(width, n_classes)
            )
        params = [*encoder.parameters(), *decoder.parameters()]
        opt = torch.optim.Adam(params, lr=0.01)
        y = torch.arange(n_classes).repeat(32)
        onehot = F.one_hot(y, n_classes).float()
        for _ in range(500):
            noise = 0.01 * torch.randn(onehot.shape, generator=gen)
            soft = F.softmax(encoder(onehot + noise), dim=1)
            recon = F.cross_entropy(decoder(soft), y)
            confusion = -torch.log(soft.gather(1, y[:, None]).clamp_min(1e-4)).mean()
            opt.zero_grad()
            (10 * recon - self.strength * confusion).backward()
            opt.step()
        for p in params:
            p.requires_grad_(False)
        return encoder, decoder

    def targets(self, y):
        encoder, _ = self._trained()
        return F.softmax(encoder(F.one_hot(y, self.n_classes).float()), dim=1)

    def decode(self, probs):
        _, decoder = self._trained()
        return F.softmax(decoder(probs), dim=1)


@DEFENSES.register("negative_loss")
class NegativeLoss(Defense):
    """The negative-loss regulariser: adds strength / CE(passive-side logits, y) to the active
    party's loss, pushing each passive party's output away from predicting the labels.

    When the passive outputs are embeddings (an active top model), the passive-side logits
    come from a linear head per passive party, trained on the detached embeddings beside the
    active party's models; the penalty reaches the embeddings through the heads' detached
    weights.
    """

    default_strength = 20.0

    def __init__(self, strength, n_classes, seed) -> None:
        super().__init__(strength, n_classes, seed)
        self.heads: dict[int, nn.Linear] = {}

    def modules(self, passive, width):
        if width is None:
            return []
        with seeded(self.seed):
            self.heads = {p: nn.Linear(width, self.n_classes) for p in passive}
        return [q for h in self.heads.values() for q in h.parameters()]

    def penalty(self, embeddings, y):
        if not self.heads:
            return self._push([embeddings[p] for p in sorted(embeddings)], y)
        heads = self.heads
        fitted = sum(F.cross_entropy(heads[p](embeddings[p].detach()), y) for p in heads)
        guesses = [
            F.linear(embeddings[p], heads[p].weight.detach(), heads[p].bias.detach()) for p in heads
        ]
        return fitted + self._push(guesses, y)

    def _push(self, logits: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor | float:
        total: torch.Tensor | float = 0.0
        for z in logits:
            total = total + self.strength / F.cross_entropy(z, y).clamp_min(1e-3)
        return total


def build_defense(
    name: str, strength: float | None, n_classes: int, seed: int, bound: float = 1e-3
) -> Defense:
    """The named defense (raises UnknownNameError listing the known names)."""
    cls: Callable[..., Defense] = DEFENSES.get(name)
    if cls is Discrete:
        return Discrete(strength, n_classes, seed, bound)
    return cls(strength, n_classes, seed)
