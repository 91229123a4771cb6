"""Attacks on a vertical federation by semi-honest parties (Kang et al.'s set).

Label inference during training, by a passive party, from the gradient message
d loss / d (its embedding) it receives for each batch (binary tasks; rows are samples):

- ``ns`` norm scoring: score_i = ||g_i||; the positive class, rarer, has larger gradients.
- ``ds`` direction scoring: score_i = cos(g_i, g_p) for one known positive sample p of the
  batch (a random one, as in the code).
- ``dli`` direct label inference, when the passive output is the logit itself (vlr, vsnn):
  y_i = argmin_c g_ic (binary: the class-1 component is negative); scored by -g_i1 (AUC), or
  by the accuracy of the argmin on multi-class tasks.
- ``rr`` residue reconstruction (vlr): the passive party knows its own features X and its
  weight gradient X^T G; it fits per-sample residues D with X^T D = X^T G by least squares
  (the minimum-norm solution, the limit of the code's Adam fit from zero) and reads the
  labels off the residues' class-1 component.

Leakage per run: the AUC of each batch, averaged per epoch; the run's leakage is the 95th
percentile of the epoch means. Defense score: 0.5 - |AUC - 0.5|, averaged over the attacks.

After training:

- ``mc`` model completion, by a passive party: a head on its trained bottom model, the two
  fine-tuned with a few labelled samples; success is its test accuracy.
- ``mi`` feature reconstruction (model inversion), by the active party against a passive
  party's features. The attacker knows the bottom model's architecture (white box, not its
  weights) and a few auxiliary samples' features; it trains a shadow bottom model on them to
  mimic the embeddings it received, then inverts each test embedding by gradient descent on
  the input. Success: mean squared error on the (standardised) features; 1 is as good as
  guessing the mean.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainers.base import derive_seed
from trainers.config import VFLAttackConfig
from trainers.models import seeded
from trainers.registry import Registry
from trainers.vertical.data import VerticalData
from trainers.vertical.messages import Exchange

__all__ = [
    "ATTACKS",
    "LABEL_ATTACKS",
    "VFL_ATTACKS",
    "LabelInference",
    "auc",
    "complete",
    "defense_score",
    "f_beta",
    "label_scores",
    "model_completion",
    "model_inversion",
]

LABEL_ATTACKS = ("ns", "ds", "dli", "rr")
ATTACKS = (*LABEL_ATTACKS, "mc", "mi")


@dataclass(frozen=True)
class AttackKind:
    """When an attack acts: during training, on the messages (a label attack), or after."""

    label: LabelAttack | None = None
    """The label attack, observing every batch's exchange; None: it acts after training."""

    @property
    def during_training(self) -> bool:
        return self.label is not None


VFL_ATTACKS: Registry[AttackKind] = Registry("vfl_attack")
"""Every attack a vertical run can name in ``trainer.vfl.attack.names``."""


def auc(y: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC of ``scores`` for ``y == 1``; None when the batch holds one class only."""
    if y.min() == y.max() or not np.isfinite(scores).all():
        return None
    # scikit-learn is imported here, by the vertical runs that score attacks, and not by
    # every worker that imports the trainers.
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, scores))


class LabelInference:
    """The label attacks of a passive party, as an observer of every batch's exchange: each
    batch's success, its mean per epoch, and the run's leakage over the epochs.

    Args:
        names: the label attacks that apply (ns, ds, dli, rr).
        attacker: the passive party whose received gradients are attacked.
        y_aligned: the aligned samples' labels (to score the attacks only).
        x_attacker: the attacker's features of the aligned samples (rr).
        seed: the run's seed and the stream the attacks' draws come from.
    """

    def __init__(
        self,
        names: list[str],
        attacker: int,
        y_aligned: np.ndarray,
        x_attacker: np.ndarray,
        seed: tuple[int, int],
    ) -> None:
        self.names, self.attacker = names, attacker
        self.y, self.x, self.seed = y_aligned, x_attacker, seed
        self.series: dict[str, list[float]] = {a: [] for a in names}
        """Each attack's per-epoch mean batch success."""
        self._batches: dict[str, list[float]] = {}
        self._rng = np.random.default_rng(0)

    def start_epoch(self, epoch: int) -> None:
        self._batches = {a: [] for a in self.names}
        self._rng = np.random.default_rng(derive_seed(*self.seed, epoch))

    def observe(self, exchange: Exchange) -> None:
        received = exchange.gradients[self.attacker].values
        rows = exchange.rows
        grad = np.asarray(received, dtype=np.float64)
        for name in self.names:
            label = VFL_ATTACKS.get(name).label
            assert label is not None
            value = label.score(grad, self.y[rows], self._rng, self.x[rows])
            if value is not None:
                self._batches[name].append(value)

    def end_epoch(self, binary: bool) -> dict[str, float]:
        """The epoch's metric per attack: ``<name>_auc`` (``dli_accuracy`` on many classes)."""
        out = {}
        for name, values in self._batches.items():
            mean = float(np.mean(values)) if values else float("nan")
            self.series[name].append(mean)
            label = VFL_ATTACKS.get(name).label
            assert label is not None
            out[label.metric(binary)] = mean
        return out


class LabelAttack(abc.ABC):
    """A label-inference attack by a passive party on the gradients it receives: one
    batch's success, and when it applies."""

    name: str
    binary_only = True
    """Whether it scores binary labels only (an AUC)."""

    @abc.abstractmethod
    def score(
        self, grad: np.ndarray, y: np.ndarray, rng: np.random.Generator, x: np.ndarray | None
    ) -> float | None:
        """One batch's success (None: the batch cannot be scored).

        Args:
            grad: the gradient message the attacker received (batch x dim), float64.
            y: the batch's true labels (for scoring only).
            rng: the attack's draws.
            x: the attacker's own features of the batch.
        """

    def why_not(self, binary: bool, sum_logits: bool, passive_model: str) -> str:
        """Why it does not apply to a federation ("" when it does)."""
        return "binary labels only" if self.binary_only and not binary else ""

    def metric(self, binary: bool) -> str:
        """The name of its per-epoch metric."""
        return f"{self.name}_auc"


class NormScoring(LabelAttack):
    """ns: positives receive larger gradients (Li et al.)."""

    name = "ns"

    def score(
        self, grad: np.ndarray, y: np.ndarray, rng: np.random.Generator, x: np.ndarray | None
    ) -> float | None:
        return auc(y, np.linalg.norm(grad, axis=1))


class DirectionScoring(LabelAttack):
    """ds: cosine similarity to the gradient of one known positive sample."""

    name = "ds"

    def score(
        self, grad: np.ndarray, y: np.ndarray, rng: np.random.Generator, x: np.ndarray | None
    ) -> float | None:
        positives = np.flatnonzero(y == 1)
        if len(positives) == 0:
            return None
        known = grad[rng.choice(positives)]
        norms = np.linalg.norm(grad, axis=1) * np.linalg.norm(known)
        return auc(y, grad @ known / np.maximum(norms, 1e-30))


class DirectLabelInference(LabelAttack):
    """dli: the gradient of the logits is negative at the true class only."""

    name = "dli"
    binary_only = False

    def score(
        self, grad: np.ndarray, y: np.ndarray, rng: np.random.Generator, x: np.ndarray | None
    ) -> float | None:
        if grad.shape[1] > 2:
            return float((grad.argmin(axis=1) == y).mean())
        return auc(y, -grad[:, -1])

    def why_not(self, binary: bool, sum_logits: bool, passive_model: str) -> str:
        return "" if sum_logits else "the passive output is not the logit"

    def metric(self, binary: bool) -> str:
        return "dli_auc" if binary else "dli_accuracy"


class ResidueReconstruction(LabelAttack):
    """rr: the passive party of a VLR recovers the residues from its weight gradient."""

    name = "rr"

    def score(
        self, grad: np.ndarray, y: np.ndarray, rng: np.random.Generator, x: np.ndarray | None
    ) -> float | None:
        assert x is not None
        x = np.asarray(x, dtype=np.float64)
        weight_grad = x.T @ grad  # what the passive party computes itself
        residues = np.linalg.pinv(x.T) @ weight_grad
        return auc(y, -residues[:, -1])

    def why_not(self, binary: bool, sum_logits: bool, passive_model: str) -> str:
        return super().why_not(binary, sum_logits, passive_model) or (
            "" if passive_model == "logreg" else "vlr only"
        )


def label_scores(
    name: str, grad: np.ndarray, y: np.ndarray, rng: np.random.Generator, x: np.ndarray | None
) -> float | None:
    """One batch's success of label attack ``name`` (ns, ds, dli or rr): an AUC on binary
    labels, dli's accuracy on many classes."""
    attack = VFL_ATTACKS.get(name).label
    if attack is None:
        raise ValueError(f"{name!r} is not a label attack")
    return attack.score(np.asarray(grad, dtype=np.float64), y, rng, x)


def defense_score(aucs: list[float]) -> float:
    """0.5 - |AUC - 0.5|, averaged over attacks (0.5: the attacks guess at random)."""
    return float(np.mean([0.5 - abs(a - 0.5) for a in aucs])) if aucs else float("nan")


def f_beta(a: float, b: float, beta: float = 2.0) -> float:
    """(1 + beta^2) a b / (beta^2 a + b): with beta = 2, ``b`` (the main task) counts twice."""
    den = beta**2 * a + b
    return float((1 + beta**2) * a * b / den) if den > 0 else 0.0


def complete(
    bottom: nn.Module, out_dim: int, data: VerticalData, party: int, cfg: VFLAttackConfig, seed: int
) -> float:
    """:func:`model_completion` by passive party ``party`` with the budgets of ``cfg``, its
    labelled samples drawn from the aligned training split, scored on the test split."""
    return model_completion(
        bottom,
        out_dim,
        data.n_classes,
        data.features(party, data.aligned),
        data.y_train[data.aligned],
        data.features(party, test=True),
        data.y_test,
        samples=cfg.mc_samples,
        epochs=cfg.mc_epochs,
        lr=cfg.mc_lr,
        batch_size=cfg.mc_batch_size,
        weight_decay=cfg.mc_weight_decay,
        seed=seed,
    )


def model_completion(
    bottom: nn.Module,
    out_dim: int,
    n_classes: int,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    samples: int,
    epochs: int,
    lr: float,
    batch_size: int,
    weight_decay: float,
    seed: int,
) -> float:
    """Test accuracy of the attacker's completed model (its bottom plus a fine-tuned head),
    fine-tuned on ``samples`` labelled samples drawn with at least one of every class."""
    rng = np.random.default_rng(seed)
    picks = [rng.choice(np.flatnonzero(y_train == c)) for c in np.unique(y_train)]
    rest = np.setdiff1d(np.arange(len(y_train)), picks)
    more = rng.choice(rest, size=max(0, min(samples, len(y_train)) - len(picks)), replace=False)
    idx = np.concatenate([picks, more]).astype(np.int64)
    gen = torch.Generator().manual_seed(seed)
    with seeded(seed):
        model = nn.Sequential(bottom, nn.Linear(out_dim, n_classes))
    x = torch.as_tensor(x_train[idx], dtype=torch.float32)
    y = torch.as_tensor(y_train[idx], dtype=torch.int64)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y), batch_size):
            b = order[start : start + batch_size]
            opt.zero_grad()
            F.cross_entropy(model(x[b]), y[b]).backward()
            opt.step()
    with torch.no_grad():
        pred = model(torch.as_tensor(x_test, dtype=torch.float32)).argmax(1).numpy()
    return float((pred == y_test).mean())


def model_inversion(
    shadow: nn.Module,
    x_aux: np.ndarray,
    e_aux: np.ndarray,
    e_target: np.ndarray,
    x_target: np.ndarray,
    *,
    steps: int,
) -> float:
    """Mean squared error of the features reconstructed from ``e_target``.

    Args:
        shadow: a freshly initialised model of the victim bottom's architecture.
        x_aux, e_aux: auxiliary samples' features and the embeddings the attacker saw.
        e_target: embeddings of the samples to reconstruct.
        x_target: their true features (for scoring only).
    """
    xa = torch.tensor(np.asarray(x_aux), dtype=torch.float32)  # copies: may be read-only
    ea = torch.tensor(np.asarray(e_aux), dtype=torch.float32)
    opt = torch.optim.Adam(shadow.parameters(), lr=0.01)
    for _ in range(steps):
        opt.zero_grad()
        F.mse_loss(shadow(xa), ea).backward()
        opt.step()
    for p in shadow.parameters():
        p.requires_grad_(False)
    target = torch.tensor(np.asarray(e_target), dtype=torch.float32)
    guess = torch.zeros(len(target), xa.shape[1], requires_grad=True)
    opt = torch.optim.Adam([guess], lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        loss = F.mse_loss(shadow(guess), target) + 1e-3 * guess.pow(2).mean()
        loss.backward()
        opt.step()
    return float(((guess.detach().numpy() - x_target) ** 2).mean())


for _attack in (NormScoring(), DirectionScoring(), DirectLabelInference(), ResidueReconstruction()):
    VFL_ATTACKS.register(_attack.name)(AttackKind(_attack))
for _name in ("mc", "mi"):
    VFL_ATTACKS.register(_name)(AttackKind())
