"""What a party computes in a round of horizontal FL: local minibatch training.

``LocalTraining`` is the picklable party function the executor runs. A party starts from the
global model, runs ``epochs`` passes of minibatch SGD (or Adam) over its own samples, and
uploads its weights. With ``prox_mu > 0`` the local objective gains FedProx's proximal term
(mu/2)||w - w_global||^2. Results are weighted by the party's sample count and summed in
float64, so combining them is exact enough that the grouping of parties over workers does not
change the aggregate.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from clusters import PartyContext
from trainers.base import PartyData, derive_seed
from trainers.models import ModelSpec, build_model, set_flat

__all__ = ["ControlVariate", "LocalTraining", "PartyUpdate", "RoundPayload", "warm_up"]

_LOCAL_STREAM = 1
_EPOCHS_STREAM = 16


@dataclass(frozen=True)
class RoundPayload:
    """What the server sends every sampled party in a round."""

    round: int
    weights: np.ndarray
    control: np.ndarray | None = None
    """SCAFFOLD's server control variate c (None: plain local training)."""


@dataclass
class ControlVariate:
    """SCAFFOLD's party control variate c_i: party state, kept where the party is hosted."""

    c: np.ndarray


@dataclass
class PartyUpdate:
    """Sample-weighted sum of uploaded weights and of training losses, over one or more parties."""

    weighted_sum: np.ndarray
    """Sum over parties of n_k * w_k, float64."""
    n_samples: int
    """Sum of n_k."""
    loss_sum: float
    """Sum over parties of n_k * (party's mean training loss in its last local epoch)."""
    n_parties: int
    discarded: tuple[int, ...] = ()
    """Parties whose upload was NaN or infinite: left out of the sums, and counted."""
    steps: int = 0
    """Local optimizer steps taken (summed over parties; FedNova reads one party's)."""
    control: np.ndarray | None = None
    """SCAFFOLD: the change c_i+ - c_i of the party's control variate (summed over parties)."""

    @staticmethod
    def merge(a: PartyUpdate, b: PartyUpdate) -> PartyUpdate:
        # Not in place: arrays that arrive from another process may be read-only views.
        return PartyUpdate(
            a.weighted_sum + b.weighted_sum,
            a.n_samples + b.n_samples,
            a.loss_sum + b.loss_sum,
            a.n_parties + b.n_parties,
            a.discarded + b.discarded,
            a.steps + b.steps,
            None if a.control is None or b.control is None else a.control + b.control,
        )

    @staticmethod
    def garbage(party: int, size: int) -> PartyUpdate:
        """What a party whose upload is not finite contributes: nothing, and its id."""
        return PartyUpdate(np.zeros(size), 0, 0.0, 0, (party,))

    def average(self) -> np.ndarray:
        return (self.weighted_sum / self.n_samples).astype(np.float32)


@dataclass(frozen=True)
class LocalTraining:
    """One party's local training, as run on the worker that hosts it."""

    model: ModelSpec
    seed: int
    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0
    prox_mu: float = 0.0
    epochs_range: tuple[int, int] | None = None
    """Each party's epochs in each round drawn uniformly from [low, high] (FedNova's
    heterogeneous local work); None: ``epochs``."""

    def party_epochs(self, round_: int, party: int) -> int:
        """The epochs ``party`` runs in ``round_``: the same wherever it runs."""
        if self.epochs_range is None:
            return self.epochs
        low, high = self.epochs_range
        rng = np.random.default_rng(derive_seed(self.seed, _EPOCHS_STREAM, round_, party))
        return int(rng.integers(low, high + 1))

    def __call__(self, ctx: PartyContext, payload: RoundPayload) -> PartyUpdate:
        x, y = _tensors(ctx)
        device = ctx.device
        model = ctx.cache.get((self.model, device))
        if model is None:  # one model object per worker and architecture, reused by its parties
            model = ctx.cache[(self.model, device)] = build_model(self.model, seed=0).to(device)
        set_flat(model, payload.weights)
        params = list(model.parameters())
        anchor = [p.detach().clone() for p in params] if self.prox_mu > 0 else None
        step = _AdamStep(params, self) if self.optimizer == "adam" else _SGDStep(params, self)
        own, correction = None, None
        if payload.control is not None:  # SCAFFOLD: every step corrected by c - c_i
            record = ctx.get(ControlVariate)
            own = record.c if record is not None else np.zeros(payload.control.size)
            correction = _unflat(payload.control - own, params)
        gen = torch.Generator().manual_seed(
            derive_seed(self.seed, _LOCAL_STREAM, payload.round, ctx.party_id)
        )
        n, bs = len(y), self.batch_size
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        steps = 0
        for _ in range(self.party_epochs(payload.round, ctx.party_id)):
            loss_sum.zero_()
            order = torch.randperm(n, generator=gen).to(device)
            xs, ys = x[order], y[order]  # one gather per epoch; batches are then slices
            for start in range(0, n, bs):
                xb, yb = xs[start : start + bs], ys[start : start + bs]
                loss = F.cross_entropy(model(xb), yb)
                grads = list(torch.autograd.grad(loss, params))
                if anchor is not None:  # FedProx: gradient of (mu/2)||w - w_global||^2
                    with torch.no_grad():
                        drift = torch._foreach_sub(params, anchor)
                        torch._foreach_add_(grads, drift, alpha=self.prox_mu)
                if correction is not None:
                    torch._foreach_add_(grads, correction)
                step(grads)
                steps += 1
                loss_sum += loss.detach() * len(yb)
        flat = torch.nn.utils.parameters_to_vector(params).detach().cpu().numpy().astype(np.float64)
        if not (np.isfinite(flat).all() and np.isfinite(float(loss_sum))):
            return PartyUpdate.garbage(ctx.party_id, flat.size)  # diverged: never averaged in
        delta_c = None
        if own is not None and payload.control is not None:
            # option II: c_i+ = c_i - c + (x - y_i) / (K lr)
            x0 = payload.weights.astype(np.float64)
            renewed = own - payload.control + (x0 - flat) / (max(steps, 1) * self.lr)
            delta_c = renewed - own
            ctx.put(ControlVariate(renewed))
        return PartyUpdate(flat * n, n, float(loss_sum), 1, steps=steps, control=delta_c)


def _unflat(vector: np.ndarray, like: list[torch.Tensor]) -> list[torch.Tensor]:
    """``vector`` cut into tensors shaped (and typed, and placed) like ``like``."""
    out, start = [], 0
    for p in like:
        part = vector[start : start + p.numel()]
        out.append(torch.as_tensor(part, dtype=p.dtype, device=p.device).view_as(p))
        start += p.numel()
    return out


class _SGDStep:
    """Minibatch SGD with optional momentum and weight decay (torch.optim.SGD's rule, with
    dampening 0), applied with fused multi-tensor ops: the Python overhead of an optimizer
    object is a large share of a step at these model sizes."""

    def __init__(self, params: list[torch.Tensor], cfg: LocalTraining) -> None:
        self.params, self.lr = params, cfg.lr
        self.momentum, self.weight_decay = cfg.momentum, cfg.weight_decay
        self.buffers: list[torch.Tensor] | None = None

    @torch.no_grad()
    def __call__(self, grads: list[torch.Tensor]) -> None:
        if self.weight_decay:
            torch._foreach_add_(grads, self.params, alpha=self.weight_decay)
        if self.momentum:
            if self.buffers is None:
                self.buffers = [g.clone() for g in grads]
            else:
                torch._foreach_mul_(self.buffers, self.momentum)
                torch._foreach_add_(self.buffers, grads)
            grads = self.buffers
        torch._foreach_add_(self.params, grads, alpha=-self.lr)


class _AdamStep:
    """torch.optim.Adam, fed with the gradients computed by the loop."""

    def __init__(self, params: list[torch.Tensor], cfg: LocalTraining) -> None:
        self.params = params
        self.opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def __call__(self, grads: list[torch.Tensor]) -> None:
        for p, g in zip(self.params, grads):
            p.grad = g
        self.opt.step()


def _tensors(ctx: PartyContext) -> tuple[torch.Tensor, torch.Tensor]:
    """The party's data as tensors, made once and kept in its scratch."""
    cached = ctx.scratch.get("tensors")
    if cached is None:
        data: PartyData = ctx.data
        with warnings.catch_warnings():
            # Arrays shipped through Ray's object store are read-only views; the tensors
            # are only ever read, so sharing the memory is safe and saves a copy per party.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            cached = ctx.scratch["tensors"] = (
                torch.from_numpy(np.ascontiguousarray(data.x, dtype=np.float32)).to(ctx.device),
                torch.from_numpy(np.ascontiguousarray(data.y, dtype=np.int64)).to(ctx.device),
            )
    return cached


def warm_up() -> None:
    """Runs once in each worker: one thread for torch, and a first backward pass paid early."""
    torch.set_num_threads(1)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(torch.zeros(4, 8)), torch.zeros(4, dtype=torch.long)).backward()
        opt.step()
