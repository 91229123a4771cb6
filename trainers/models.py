"""Models the trainers train, built from a small typed config, and flat-vector helpers.

Models hold parameters only (no buffers such as batch-norm statistics), so a model's whole
state is one flat float32 vector: that vector is what parties download and upload.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import KW_ONLY, dataclass, field

import numpy as np
import torch
from torch import nn

from trainers.registry import Registry
from trainers.rules import at_least, between, each, one_of

__all__ = [
    "MODELS",
    "ModelConfig",
    "ModelSpec",
    "build_model",
    "check_input",
    "forward_layers",
    "get_flat",
    "layer_slices",
    "load_checkpoint",
    "num_parameters",
    "save_checkpoint",
    "seeded",
    "set_flat",
]


@dataclass
class ModelConfig:
    """Which model to train."""

    name: str = field(default="mlp", metadata=one_of("model"))
    """One of the registered models: logreg, mlp, cnn, convnet, vit (8x8-style square
    single-channel images), image_cnn, resnet (images of any shape and channels)."""
    hidden: list[int] = field(default_factory=lambda: [128], metadata=each(at_least(1)))
    """Hidden layer widths of the MLP."""
    channels: list[int] = field(default_factory=lambda: [16, 32])
    """Convolution channels of the CNN (two 3x3 conv + 2x2 max-pool stages) and of the
    ConvNet (two 3x3 conv + instance norm + 2x2 average-pool stages); image_cnn and resnet:
    one stage per entry, any number of them."""
    dim: int = field(default=32, metadata=at_least(1))
    """ViT: token width."""
    depth: int = field(default=4, metadata=at_least(1))
    """ViT: transformer blocks."""
    heads: int = field(default=4, metadata=at_least(1))
    """ViT: attention heads per block."""
    patch: int = field(default=2, metadata=at_least(1))
    """ViT: side of the square patches the (square) image is cut into."""
    dropout: float = field(default=0.0, metadata=between(0, 1, high_open=True))
    """Regularisation: dropout after every hidden layer (mlp, cnn) or the largest drop-path
    rate (vit, rising linearly over the blocks)."""

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.name in _ANY_IMAGE:
            if not self.channels or min(self.channels) < 1:
                yield "channels", "must be positive channel counts, one per stage"
        elif len(self.channels) != 2 or min(self.channels) < 1:
            yield "channels", "must be two positive channel counts"
        if self.name == "vit" and self.heads >= 1 and self.dim % self.heads:
            yield "dim", f"must be divisible by heads ({self.heads})"


_ANY_IMAGE = ("image_cnn", "resnet")


def check_input(
    cfg: ModelConfig, n_features: int, image: tuple[int, int, int] | None = None
) -> str | None:
    """Why the model cannot read ``n_features`` inputs (None: it can): the image models need
    images, given by the data's ``image`` shape or (one channel) square feature counts."""
    side = int(round(n_features**0.5))
    square = side * side == n_features
    if cfg.name in ("cnn", "convnet", "vit") and image is not None and image[0] != 1:
        return (
            f"{cfg.name} reads one-channel square images; the data's are {image[0]}x"
            f"{image[1]}x{image[2]}: use image_cnn or resnet"
        )
    if cfg.name in _ANY_IMAGE and image is None and not square:
        return (
            f"{cfg.name} reads images: an image data set (torchvision, hf with an image "
            f"column, digits, synthetic_images) or square single-channel features; the data "
            f"has {n_features} features"
        )
    if cfg.name in ("cnn", "convnet") and (not square or side % 4):
        return (
            f"{cfg.name} needs square images with a side divisible by 4 (digits: 8x8); "
            f"the data has {n_features} features"
        )
    if cfg.name == "vit" and (not square or side % cfg.patch):
        return (
            f"vit needs square images whose side is divisible by patch ({cfg.patch}); "
            f"the data has {n_features} features"
        )
    return None


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the same architecture anywhere (it crosses processes)."""

    name: str
    n_features: int
    n_classes: int
    hidden: tuple[int, ...] = (128,)
    _: KW_ONLY
    channels: tuple[int, ...] = (16, 32)
    dim: int = 32
    depth: int = 4
    heads: int = 4
    patch: int = 2
    dropout: float = 0.0
    image: tuple[int, int, int] | None = None
    """(channels, height, width) of the input images (None: square, one channel)."""

    @classmethod
    def from_config(
        cls,
        cfg: ModelConfig,
        n_features: int,
        n_classes: int,
        image: tuple[int, int, int] | None = None,
    ) -> ModelSpec:
        return cls(
            cfg.name,
            n_features,
            n_classes,
            tuple(cfg.hidden),
            channels=tuple(cfg.channels),
            dim=cfg.dim,
            depth=cfg.depth,
            heads=cfg.heads,
            patch=cfg.patch,
            dropout=cfg.dropout,
            image=None if image is None else tuple(image),  # type: ignore[arg-type]
        )

    def image_shape(self) -> tuple[int, int, int]:
        """The images' (channels, height, width): given, or square single-channel."""
        if self.image is not None:
            return self.image
        side = int(round(self.n_features**0.5))
        if side * side != self.n_features:
            raise ValueError(f"{self.name} reads images; got {self.n_features} features")
        return (1, side, side)


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
        if spec.dropout:
            layers.append(nn.Dropout(spec.dropout))
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
        self.drop = nn.Dropout(spec.dropout)
        self.head = nn.Linear(c2 * (side // 4) ** 2, spec.n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(-1, 1, self.side, self.side)
        return self.head(self.drop(self.features(x).flatten(1)))


MODELS.register("cnn")(_SmallCNN)


class _ConvNet(_SmallCNN):
    """Dataset condensation's ConvNet at two stages: 3x3 convolutions of ``channels`` with
    instance normalisation (a GroupNorm of one channel per group), ReLU and 2x2 average
    pooling; for square single-channel images of any side divisible by 4."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        c1, c2 = spec.channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1),
            nn.GroupNorm(c1, c1),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.GroupNorm(c2, c2),
            nn.ReLU(),
            nn.AvgPool2d(2),
        )


MODELS.register("convnet")(_ConvNet)


class _ImageCNN(nn.Module):
    """A CNN for images of any shape and channel count: per entry of ``channels``, a 3x3
    convolution, group norm (no batch statistics: a model is its parameters), ReLU and, while
    the image is larger than 4x4, a 2x2 max-pool; then global average pooling and a linear
    head."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.shape = spec.image_shape()
        c, h, w = self.shape
        stages: list[nn.Module] = []
        for width in spec.channels:
            layers: list[nn.Module] = [
                nn.Conv2d(c, width, 3, padding=1),
                nn.GroupNorm(_groups(width), width),
                nn.ReLU(),
            ]
            if min(h, w) > 4:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            stages.append(nn.Sequential(*layers))
            c = width
        self.stages = nn.ModuleList(stages)
        self.drop = nn.Dropout(spec.dropout)
        self.head = nn.Linear(c, spec.n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return forward_layers(self, x)[0]


def _groups(width: int) -> int:
    """Group norm's groups: 8 channels each where they divide, else one per channel."""
    return width // 8 if width % 8 == 0 else width


MODELS.register("image_cnn")(_ImageCNN)


class _BasicBlock(nn.Module):
    """ResNet's basic block: two 3x3 convolutions with group norm and a shortcut (a strided
    1x1 convolution where the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.norm1 = nn.GroupNorm(_groups(c_out), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.GroupNorm(_groups(c_out), c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(self.norm2(self.conv2(y)) + self.shortcut(x))


class _ResNet(_ImageCNN):
    """A small ResNet for images of any shape and channel count: a 3x3 stem of
    ``channels[0]``, one basic block per entry of ``channels`` (stride 2 from the second on,
    while the image is larger than 4x4), global average pooling and a linear head. Group
    norm stands in for batch norm, as in federated ResNets (Hsieh et al., 2020)."""

    def __init__(self, spec: ModelSpec) -> None:
        nn.Module.__init__(self)
        self.shape = spec.image_shape()
        c, h, w = self.shape
        first = spec.channels[0]
        stages: list[nn.Module] = [
            nn.Sequential(
                nn.Conv2d(c, first, 3, padding=1, bias=False),
                nn.GroupNorm(_groups(first), first),
                nn.ReLU(),
            )
        ]
        c = first
        for i, width in enumerate(spec.channels):
            stride = 2 if i and min(h, w) > 4 else 1
            if stride > 1:
                h, w = (h + 1) // 2, (w + 1) // 2
            stages.append(_BasicBlock(c, width, stride))
            c = width
        self.stages = nn.ModuleList(stages)
        self.drop = nn.Dropout(spec.dropout)
        self.head = nn.Linear(c, spec.n_classes)


MODELS.register("resnet")(_ResNet)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"vit: dim ({dim}) must be divisible by heads ({heads})")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5
        out = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d)
        return self.proj(out), (q, k, v)


class _Block(nn.Module):
    """A pre-norm transformer block with stochastic depth (drop-path)."""

    def __init__(self, dim: int, heads: int, drop_path: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = _Attention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.drop_path = drop_path

    def _drop(self, y: torch.Tensor) -> torch.Tensor:
        if not self.training or not self.drop_path:
            return y
        keep = 1.0 - self.drop_path
        mask = torch.rand(y.shape[0], 1, 1, dtype=y.dtype).lt(keep).to(y.dtype)
        return y * mask / keep

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        y, qkv = self.attn(self.norm1(x))
        x = x + self._drop(y)
        return x + self._drop(self.mlp(self.norm2(x))), qkv


class _ViT(nn.Module):
    """A small vision transformer for square single-channel images: patch embedding, a CLS
    token, learned positions, ``depth`` pre-norm blocks, the CLS token classified."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        side = int(round(spec.n_features**0.5))
        if side * side != spec.n_features or side % spec.patch:
            raise ValueError(
                f"vit needs square images whose side is divisible by patch ({spec.patch}); "
                f"got {spec.n_features} features"
            )
        self.side, self.patch = side, spec.patch
        tokens = (side // spec.patch) ** 2
        self.embed = nn.Linear(spec.patch * spec.patch, spec.dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, spec.dim))
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, spec.dim) * 0.02)
        rates = [spec.dropout * i / max(1, spec.depth - 1) for i in range(spec.depth)]
        self.blocks = nn.ModuleList(_Block(spec.dim, spec.heads, r) for r in rates)
        self.norm = nn.LayerNorm(spec.dim)
        self.head = nn.Linear(spec.dim, spec.n_classes)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        p, n = self.patch, self.side // self.patch
        patches = x.view(-1, n, p, n, p).permute(0, 1, 3, 2, 4).reshape(-1, n * n, p * p)
        z = self.embed(patches)
        return torch.cat([self.cls.expand(len(z), -1, -1), z], dim=1) + self.pos

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, list, list]:
        """Logits, every block's output tokens, and every block's (q, k, v)."""
        z = self.tokens(x)
        outs, qkvs = [], []
        for block in self.blocks:
            z, qkv = block(z)
            outs.append(z)
            qkvs.append(qkv)
        return self.head(self.norm(z)[:, 0]), outs, qkvs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_all(x)[0]


MODELS.register("vit")(_ViT)


def forward_layers(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list, list | None]:
    """Logits, the representation after every hidden layer (mlp: each ReLU; cnn: each conv
    stage, flattened; vit: each block's tokens) and, for a vit, every block's (q, k, v)."""
    if isinstance(model, _ViT):
        return model.forward_all(x)
    feats: list[torch.Tensor] = []
    if isinstance(model, _ImageCNN):
        z = x.view(-1, *model.shape)
        for stage in model.stages:
            z = stage(z)
            feats.append(z.flatten(1))
        return model.head(model.drop(z.mean(dim=(2, 3)))), feats, None
    if isinstance(model, _SmallCNN):
        z = x.view(-1, 1, model.side, model.side)
        for layer in model.features:
            z = layer(z)
            if isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d)):
                feats.append(z.flatten(1))
        return model.head(model.drop(z.flatten(1))), feats, None
    z = x
    for layer in model if isinstance(model, nn.Sequential) else [model]:
        z = layer(z)
        if isinstance(layer, nn.ReLU):
            feats.append(z)
    return z, feats, None


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Runs the block with torch's global generator seeded with ``seed`` and restores it after:
    modules built inside (whose initialisers draw from it) come out the same anywhere."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def build_model(spec: ModelSpec, seed: int) -> nn.Module:
    """Builds the model with weights drawn from ``seed`` (the global RNG is left untouched)."""
    with seeded(seed):
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
    raw = dict(blob["spec"])
    raw["hidden"], raw["channels"] = tuple(raw["hidden"]), tuple(raw["channels"])
    if raw.get("image") is not None:
        raw["image"] = tuple(raw["image"])
    spec = ModelSpec(**raw)  # fields added since default as before
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
