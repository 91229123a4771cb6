"""Models the trainers train, built from a small typed config, and flat-vector helpers.

Models hold parameters only (no buffers such as batch-norm statistics), so a model's whole
state is one flat float32 vector: that vector is what parties download and upload.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from trainers.registry import Registry

__all__ = [
    "MODELS",
    "ModelConfig",
    "ModelSpec",
    "build_model",
    "get_flat",
    "layer_slices",
    "load_checkpoint",
    "num_parameters",
    "save_checkpoint",
    "set_flat",
]


@dataclass
class ModelConfig:
    """Which model to train."""

    name: str = "mlp"
    """One of the registered models: logreg, mlp, cnn."""
    hidden: list[int] = field(default_factory=lambda: [128])
    """Hidden layer widths of the MLP."""
    channels: list[int] = field(default_factory=lambda: [16, 32])
    """Convolution channels of the CNN (two 3x3 conv + 2x2 max-pool stages)."""


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the same architecture anywhere (it crosses processes)."""

    name: str
    n_features: int
    n_classes: int
    hidden: tuple[int, ...] = (128,)
    channels: tuple[int, ...] = (16, 32)

    @classmethod
    def from_config(cls, cfg: ModelConfig, n_features: int, n_classes: int) -> ModelSpec:
        return cls(cfg.name, n_features, n_classes, tuple(cfg.hidden), tuple(cfg.channels))


MODELS: Registry[Callable[[ModelSpec], nn.Module]] = Registry("model")


@MODELS.register("logreg")
def _logreg(spec: ModelSpec) -> nn.Module:
    return nn.Linear(spec.n_features, spec.n_classes)


@MODELS.register("mlp")
def _mlp(spec: ModelSpec) -> nn.Module:
    layers: list[nn.Module] = []
    width = spec.n_features
    for h in spec.hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, spec.n_classes))
    return nn.Sequential(*layers)


class _SmallCNN(nn.Module):
    """Two conv stages for 8x8 single-channel images (scikit-learn's digits)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        side = int(round(spec.n_features**0.5))
        if side * side != spec.n_features or side % 4:
            raise ValueError(
                f"cnn needs square images with a side divisible by 4 (8x8 digits: 64 features); "
                f"got {spec.n_features} features"
            )
        c1, c2 = spec.channels
        self.side = side
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(c2 * (side // 4) ** 2, spec.n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(-1, 1, self.side, self.side)
        return self.head(self.features(x).flatten(1))


MODELS.register("cnn")(_SmallCNN)


def build_model(spec: ModelSpec, seed: int) -> nn.Module:
    """Builds the model with weights drawn from ``seed`` (the global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MODELS.get(spec.name)(spec)


def save_checkpoint(model: nn.Module, spec: ModelSpec) -> bytes:
    """The model's architecture and weights as bytes (a light checkpoint: no code is pickled)."""
    import dataclasses
    import io

    buffer = io.BytesIO()
    torch.save({"spec": dataclasses.asdict(spec), "state_dict": model.state_dict()}, buffer)
    return buffer.getvalue()


def load_checkpoint(data: bytes) -> tuple[nn.Module, ModelSpec]:
    """Rebuilds a model saved by :func:`save_checkpoint`."""
    import io

    blob = torch.load(io.BytesIO(data), weights_only=True)
    raw = blob["spec"]
    spec = ModelSpec(
        raw["name"],
        raw["n_features"],
        raw["n_classes"],
        tuple(raw["hidden"]),
        tuple(raw["channels"]),
    )
    model = build_model(spec, seed=0)
    model.load_state_dict(blob["state_dict"])
    return model, spec


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def layer_slices(model: nn.Module) -> tuple[tuple[int, int], ...]:
    """(start, stop) of every parameter tensor (a "layer") in the model's flat vector."""
    out, start = [], 0
    for p in model.parameters():
        out.append((start, start + p.numel()))
        start += p.numel()
    return tuple(out)


def get_flat(model: nn.Module) -> np.ndarray:
    """The model's parameters as one float32 vector (a copy)."""
    return torch.nn.utils.parameters_to_vector(model.parameters()).detach().numpy().copy()


def set_flat(model: nn.Module, flat: np.ndarray) -> None:
    """Copies a flat vector into the model's parameters.

    A copy, unlike ``torch.nn.utils.vector_to_parameters``, which makes the parameters views
    of the vector: training would then write into the caller's array.
    """
    vec = torch.as_tensor(np.asarray(flat, dtype=np.float32))
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    if vec.numel() != total:
        raise ValueError(f"vector has {vec.numel()} values, the model {total} parameters")
    offset = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            p.copy_(vec[offset : offset + n].view_as(p))
            offset += n
