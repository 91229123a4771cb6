"""Writers of small fake torchvision data sets, each in its exact on-disk format.

Each writer takes images ``uint8 (N, C, H, W)`` and labels as ``orchestrator.vision`` gives them
back, and stores them as the real files store them (EMNIST transposed, SVHN's 0 as 10, CIFAR as
Python 2 style pickles with bytes keys), so reading the root back must give the inputs again.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "idx_bytes",
    "write_cifar10",
    "write_cifar100",
    "write_emnist",
    "write_mnist",
    "write_svhn",
]

_IDX_UBYTE = 0x08


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte array as an IDX file: magic, big-endian dims, then the data."""
    magic = bytes((0, 0, _IDX_UBYTE, array.ndim))
    dims = struct.pack(f">{array.ndim}I", *array.shape)
    return magic + dims + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def _write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = idx_bytes(array)
    if gz:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def write_mnist(
    root: Path,
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    gz: bool = True,
) -> Path:
    """MNIST, FashionMNIST or KMNIST (``name``) under ``root/<name>/raw``; returns that dir."""
    raw = root / name / "raw"
    for prefix, x, y in (("train", x_train, y_train), ("t10k", x_test, y_test)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", x[:, 0], gz)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", y, gz)
    return raw


def write_emnist(
    root: Path,
    variant: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    gz: bool = True,
) -> Path:
    """EMNIST's ``variant`` under ``root/EMNIST/raw``, images transposed as the real files hold
    them; returns that dir."""
    raw = root / "EMNIST" / "raw"
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        prefix = f"emnist-{variant}-{split}"
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", x[:, 0].transpose(0, 2, 1), gz)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", y, gz)
    return raw


def _pickle(path: Path, content: dict[bytes, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # protocol 2 and bytes keys, as the real (Python 2) files are
    path.write_bytes(pickle.dumps(content, protocol=2))


def _batch(x: np.ndarray, labels: dict[bytes, np.ndarray]) -> dict[bytes, object]:
    rows = np.ascontiguousarray(x, dtype=np.uint8).reshape(len(x), -1)
    content: dict[bytes, object] = {b"batch_label": b"fake batch", b"data": rows}
    content.update({key: [int(v) for v in y] for key, y in labels.items()})
    return content


def write_cifar10(
    root: Path,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    classes: Sequence[str] | None = None,
) -> Path:
    """CIFAR-10 under ``root/cifar-10-batches-py``: the training set cut into five batches,
    ``batches.meta`` only when ``classes`` are given; returns that dir."""
    base = root / "cifar-10-batches-py"
    parts = zip(np.array_split(x_train, 5), np.array_split(y_train, 5), strict=True)
    for i, (x, y) in enumerate(parts, start=1):
        _pickle(base / f"data_batch_{i}", _batch(x, {b"labels": y}))
    _pickle(base / "test_batch", _batch(x_test, {b"labels": y_test}))
    if classes is not None:
        names = [c.encode() for c in classes]
        _pickle(base / "batches.meta", {b"label_names": names, b"num_vis": 3072})
    return base


def write_cifar100(
    root: Path,
    x_train: np.ndarray,
    fine_train: np.ndarray,
    coarse_train: np.ndarray,
    x_test: np.ndarray,
    fine_test: np.ndarray,
    coarse_test: np.ndarray,
    fine_names: Sequence[str] | None = None,
    coarse_names: Sequence[str] | None = None,
) -> Path:
    """CIFAR-100 under ``root/cifar-100-python`` with both label sets; ``meta`` only when both
    name lists are given; returns that dir."""
    base = root / "cifar-100-python"
    for split, x, fine, coarse in (
        ("train", x_train, fine_train, coarse_train),
        ("test", x_test, fine_test, coarse_test),
    ):
        _pickle(base / split, _batch(x, {b"fine_labels": fine, b"coarse_labels": coarse}))
    if fine_names is not None and coarse_names is not None:
        meta: dict[bytes, object] = {
            b"fine_label_names": [n.encode() for n in fine_names],
            b"coarse_label_names": [n.encode() for n in coarse_names],
        }
        _pickle(base / "meta", meta)
    return base


def write_svhn(
    root: Path,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
) -> Path:
    """SVHN's ``train_32x32.mat`` and ``test_32x32.mat`` in ``root``: X stored ``(H, W, C, N)``,
    y ``(N, 1)`` with the digit 0 as 10; returns ``root``."""
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        stored = np.where(y == 0, 10, y).astype(np.uint8).reshape(-1, 1)
        images = np.ascontiguousarray(x.transpose(2, 3, 1, 0), dtype=np.uint8)
        savemat(root / f"{split}_32x32.mat", {"X": images, "y": stored})
    return root
