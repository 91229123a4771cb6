"""torchvision's image data sets, read from their files on disk without torchvision.

``read_vision`` reads a root that torchvision downloaded into (or one laid out the same way by
hand) and gives the train and test splits as NumPy arrays: images ``uint8`` of shape
``(N, C, H, W)``, labels ``int64``. torchvision is needed only to fetch missing files
(``download=True``): it cannot be installed beside every torch build, and reading needs none of it.

Layouts under ``root``, as torchvision keeps them:

- MNIST, FashionMNIST, KMNIST: ``<Name>/raw/{train,t10k}-images-idx3-ubyte`` and
  ``...-labels-idx1-ubyte``, each plain or gzipped (``.gz``).
- EMNIST: ``EMNIST/raw/emnist-<variant>-{train,test}-images-idx3-ubyte`` and
  ``...-labels-idx1-ubyte``, plain or gzipped. The files store every image transposed; they are
  swapped back here, so EMNIST comes out in MNIST's orientation (torchvision's ``EMNIST.data``
  keeps them as stored, the transpose of these images). The ``letters`` labels stay 1..26.
- CIFAR10: ``cifar-10-batches-py/data_batch_1`` .. ``data_batch_5``, ``test_batch`` and the
  optional ``batches.meta`` (class names).
- CIFAR100: ``cifar-100-python/train``, ``test`` and the optional ``meta``; variant ``fine``
  (100 classes, the default) or ``coarse`` (20 superclasses).
- SVHN: ``train_32x32.mat`` and ``test_32x32.mat``; the digit 0, stored as label 10, becomes 0.

CIFAR-10 and CIFAR-100 ship as Python pickles, and the files are read as torchvision reads them:
with pickle, so only from a root you trust (unpickling a crafted file can run code). Nothing but
those sets' batch and meta files is ever unpickled.
"""

from __future__ import annotations

import gzip
import math
import pickle
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.errors import ConfigError

__all__ = ["VISION_DATASETS", "read_vision"]

VISION_DATASETS: tuple[str, ...] = (
    "MNIST",
    "FashionMNIST",
    "KMNIST",
    "EMNIST",
    "CIFAR10",
    "CIFAR100",
    "SVHN",
)
_VARIANTS: dict[str, tuple[str, ...]] = {
    "EMNIST": ("byclass", "bymerge", "balanced", "letters", "digits", "mnist"),
    "CIFAR100": ("fine", "coarse"),
}
_DEFAULT_VARIANT = {"EMNIST": "balanced", "CIFAR100": "fine"}
_IDX_UBYTE = 0x08  # the IDX type code of unsigned bytes: the only one these sets use
_CIFAR_SIDE = 32
_SVHN_ZERO = 10  # SVHN's label for the digit 0
_DOWNLOAD_HINT = (
    "torchvision's download=True (data.download: true) fetches it "
    "where the machine can reach the internet"
)

Split = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class VisionArrays:
    """A vision data set's train and test splits.

    Attributes:
        x_train: The training images, ``uint8`` of shape ``(N, C, H, W)``.
        y_train: The training labels, ``int64`` of shape ``(N,)``.
        x_test: The test images, as ``x_train``.
        y_test: The test labels, as ``y_train``.
        classes: The class names where the files hold them (CIFAR-10's ``label_names``,
            CIFAR-100's ``fine_label_names`` or ``coarse_label_names``), else None.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str] | None


def read_vision(
    name: str, root: str, variant: str | None = None, download: bool = False
) -> VisionArrays:
    """Read a torchvision data set from its files under ``root``.

    Args:
        name: One of ``VISION_DATASETS``, spelled as torchvision's class.
        root: The directory torchvision was given as its ``root`` (``~`` is expanded, as
            torchvision does).
        variant: EMNIST's split (default ``balanced``) or CIFAR-100's label set (``fine``, the
            default, or ``coarse``); None for the other sets.
        download: Let torchvision fetch whatever is missing first (it must be importable).

    Returns:
        The train and test arrays, and the class names where the files hold them.

    Raises:
        ConfigError: An unknown name or variant, a missing or damaged file, or a download that
            cannot be made.
    """
    if name not in VISION_DATASETS:
        known = ", ".join(VISION_DATASETS)
        raise ConfigError("data.dataset", f"unknown vision data set {name!r}; known: {known}")
    chosen = _check_variant(name, variant)
    path = Path(root).expanduser()
    if download:
        _fetch(name, path, chosen)
    return _read(name, path, chosen)


def _check_variant(name: str, variant: str | None) -> str | None:
    """The variant to read: the given one if ``name`` allows it, its default if none given."""
    allowed = _VARIANTS.get(name)
    if allowed is None:
        if variant is not None:
            raise ConfigError(
                "data.variant", f"{name} has no variants (got {variant!r}); leave it unset"
            )
        return None
    chosen = _DEFAULT_VARIANT[name] if variant is None else variant
    if chosen not in allowed:
        raise ConfigError(
            "data.variant",
            f"unknown {name} variant {variant!r}; allowed: {', '.join(allowed)}",
        )
    return chosen


def _read(name: str, root: Path, variant: str | None) -> VisionArrays:
    """Dispatch to the reader of ``name``'s format."""
    if name == "EMNIST":
        return _read_emnist(root, str(variant))
    if name == "CIFAR10":
        return _read_cifar10(root)
    if name == "CIFAR100":
        return _read_cifar100(root, str(variant))
    if name == "SVHN":
        return _read_svhn(root)
    return _read_mnist(root, name)


# --- MNIST and its relatives: IDX files ---------------------------------------------------


def _read_mnist(root: Path, name: str) -> VisionArrays:
    """MNIST, FashionMNIST or KMNIST: the same four file names under ``<name>/raw``."""
    raw = root / name / "raw"
    train = _idx_split(raw / "train-images-idx3-ubyte", raw / "train-labels-idx1-ubyte")
    test = _idx_split(raw / "t10k-images-idx3-ubyte", raw / "t10k-labels-idx1-ubyte")
    return VisionArrays(*train, *test, classes=None)


def _read_emnist(root: Path, variant: str) -> VisionArrays:
    """EMNIST's ``variant``: IDX files like MNIST's, with every image stored transposed."""
    raw = root / "EMNIST" / "raw"
    splits = []
    for split in ("train", "test"):
        prefix = f"emnist-{variant}-{split}"
        images, labels = raw / f"{prefix}-images-idx3-ubyte", raw / f"{prefix}-labels-idx1-ubyte"
        splits.append(_idx_split(images, labels, transpose=True))
    return VisionArrays(*splits[0], *splits[1], classes=None)


def _idx_split(images: Path, labels: Path, transpose: bool = False) -> Split:
    """One split's images ``(N, 1, H, W)`` and labels from an IDX images and labels file."""
    x = _read_idx(images, ndim=3)
    y = _read_idx(labels, ndim=1)
    if len(y) != len(x):
        raise _corrupt(labels, f"holds {len(y)} labels for the {len(x)} images of {images.name}")
    if transpose:
        # EMNIST's files hold each image transposed; swapping back gives MNIST's orientation
        x = x.transpose(0, 2, 1)
    # a copy: the parsed array is a read-only view of the file's bytes
    return x[:, None].copy(), y.astype(np.int64)


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes (plain or ``.gz``), shaped by the dims in its header."""
    found = _existing(path, gz=True)
    data = _read_bytes(found)
    magic = bytes((0, 0, _IDX_UBYTE, ndim))
    if data[:4] != magic:
        raise _corrupt(
            found,
            f"magic 0x{data[:4].hex()} is not 0x{magic.hex()} (IDX, unsigned bytes, {ndim}-d)",
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise _corrupt(found, f"{len(data)} bytes, shorter than its header")
    dims = struct.unpack_from(f">{ndim}I", data, 4)
    size = math.prod(dims)
    if len(data) - header != size:
        raise _corrupt(
            found, f"{len(data) - header} data bytes where its header's dims {dims} need {size}"
        )
    return np.frombuffer(data, np.uint8, count=size, offset=header).reshape(dims)


def _read_bytes(path: Path) -> bytes:
    """A file's bytes, decompressed when its name ends in ``.gz``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:  # EOFError: a truncated gzip stream
        raise _corrupt(path, f"cannot be read ({_line(exc)})") from exc


# --- CIFAR: pickled batches ---------------------------------------------------------------


def _read_cifar10(root: Path) -> VisionArrays:
    """CIFAR-10: five training batches, one test batch, class names in ``batches.meta``."""
    base = root / "cifar-10-batches-py"
    train = [_cifar_batch(base / f"data_batch_{i}", "labels") for i in range(1, 6)]
    return VisionArrays(
        np.concatenate([x for x, _ in train]),
        np.concatenate([y for _, y in train]),
        *_cifar_batch(base / "test_batch", "labels"),
        classes=_cifar_names(base / "batches.meta", "label_names"),
    )


def _read_cifar100(root: Path, variant: str) -> VisionArrays:
    """CIFAR-100 with its ``fine`` or ``coarse`` labels and their names."""
    base = root / "cifar-100-python"
    labels = f"{variant}_labels"
    return VisionArrays(
        *_cifar_batch(base / "train", labels),
        *_cifar_batch(base / "test", labels),
        classes=_cifar_names(base / "meta", f"{variant}_label_names"),
    )


def _cifar_batch(path: Path, label_key: str) -> Split:
    """A pickled batch's images ``(N, 3, 32, 32)`` and its labels under ``label_key``."""
    batch = _unpickle(path)
    data = np.asarray(_entry(batch, "data", path))
    labels = np.asarray(_entry(batch, label_key, path))
    row = 3 * _CIFAR_SIDE * _CIFAR_SIDE
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != row:
        raise _corrupt(path, f"data is {data.dtype} {data.shape}, not uint8 (N, {row})")
    if labels.shape != (len(data),) or labels.dtype.kind not in "iu":
        raise _corrupt(
            path, f"{label_key} is {labels.dtype} {labels.shape}, not {len(data)} integers"
        )
    # each row is the red, green and blue planes one after another, row-major
    return data.reshape(-1, 3, _CIFAR_SIDE, _CIFAR_SIDE), labels.astype(np.int64)


def _cifar_names(path: Path, key: str) -> list[str] | None:
    """The class names under ``key`` in a meta file; None where the file is absent."""
    if not path.is_file():
        return None  # the names only label the classes: the arrays are whole without them
    names = _entry(_unpickle(path), key, path)
    if not isinstance(names, list | tuple):
        raise _corrupt(path, f"{key} is a {type(names).__name__}, not a list")
    # latin-1 as torchvision decodes them; the names are ASCII either way
    return [n.decode("latin-1") if isinstance(n, bytes) else str(n) for n in names]


def _unpickle(path: Path) -> Mapping[Any, Any]:
    """A CIFAR file's dict, unpickled as torchvision does (so only from a trusted root)."""
    found = _existing(path)
    try:
        with found.open("rb") as f:
            # the files are Python 2 pickles: "bytes" keeps their str keys and data as bytes
            loaded = pickle.load(f, encoding="bytes")
    except Exception as exc:  # a damaged pickle fails in many ways: EOF, bad opcode, bad global
        raise _corrupt(found, f"does not unpickle ({_line(exc)})") from exc
    if not isinstance(loaded, dict):
        raise _corrupt(found, f"holds a {type(loaded).__name__}, not a dict")
    return loaded


# --- SVHN: MATLAB files -------------------------------------------------------------------


def _read_svhn(root: Path) -> VisionArrays:
    """SVHN's cropped digits: ``train_32x32.mat`` and ``test_32x32.mat`` directly in root."""
    train = _svhn_split(root / "train_32x32.mat")
    test = _svhn_split(root / "test_32x32.mat")
    return VisionArrays(*train, *test, classes=None)


def _svhn_split(path: Path) -> Split:
    """One ``.mat`` file's images, stored ``(H, W, C, N)``, as ``(N, C, H, W)``, and labels."""
    found = _existing(path)
    mat = _loadmat(found)
    x = np.asarray(_entry(mat, "X", found))
    y = np.asarray(_entry(mat, "y", found))
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[2] != 3:
        raise _corrupt(found, f"X is {x.dtype} {x.shape}, not uint8 (H, W, 3, N)")
    if y.size != x.shape[3] or y.dtype.kind not in "iuf":
        raise _corrupt(found, f"y is {y.dtype} {y.shape}, not {x.shape[3]} labels")
    labels = y.reshape(-1).astype(np.int64)
    labels[labels == _SVHN_ZERO] = 0  # as torchvision does, so labels are the digits 0..9
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), labels


def _loadmat(path: Path) -> Mapping[str, Any]:
    """A MATLAB file's variables."""
    from scipy.io import loadmat  # only SVHN needs SciPy (scikit-learn brings it)

    try:
        return loadmat(path)
    except Exception as exc:  # scipy reports a damaged file as ValueError, MatReadError, ...
        raise _corrupt(path, f"is not a readable .mat file ({_line(exc)})") from exc


# --- shared -------------------------------------------------------------------------------


def _existing(path: Path, gz: bool = False) -> Path:
    """``path``, or with ``gz`` its gzipped twin, whichever exists."""
    twin = path.with_name(path.name + ".gz")
    for candidate in (path, twin) if gz else (path,):
        if candidate.is_file():
            return candidate
    either = f" (or {twin.name})" if gz else ""
    raise ConfigError("data.root", f"missing {path}{either}; {_DOWNLOAD_HINT}")


def _entry(mapping: Mapping[Any, Any], key: str, path: Path) -> Any:
    """``mapping[key]``, the key as bytes or str, or a corrupt-file error naming ``path``."""
    # torchvision's downloads are Python 2 pickles (bytes keys); files written by Python 3
    # and .mat variables have str keys
    for candidate in (key.encode(), key):
        if candidate in mapping:
            return mapping[candidate]
    raise _corrupt(path, f"has no {key!r} entry")


def _corrupt(path: Path, problem: str) -> ConfigError:
    """The error for a file that is there but cannot be what its name says."""
    return ConfigError("data.root", f"corrupt or truncated file {path}: {problem}")


def _line(exc: BaseException) -> str:
    """An exception as one line: its type and its message's first line."""
    lines = str(exc).splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


# --- download -----------------------------------------------------------------------------


def _fetch(name: str, root: Path, variant: str | None) -> None:
    """Let torchvision download ``name``'s train and test files into ``root``.

    The data sets torchvision builds are dropped: the files are read by this module's readers,
    the same way whether torchvision fetched them now or earlier.
    """
    try:
        import torchvision
    except Exception as exc:  # one built for another torch fails with RuntimeError, not ImportError
        raise ConfigError(
            "data.download",
            "needs torchvision (pip install torchvision); importing it failed "
            f"({_line(exc)}); or put the files under data.root yourself",
        ) from exc
    dataset = getattr(torchvision.datasets, name)
    for kwargs in _download_kwargs(name, variant):
        try:
            dataset(str(root), download=True, **kwargs)
        except Exception as exc:  # no network, a mirror down, a checksum mismatch, ...
            raise ConfigError(
                "data.download", f"torchvision could not fetch {name} into {root} ({_line(exc)})"
            ) from exc


def _download_kwargs(name: str, variant: str | None) -> list[dict[str, Any]]:
    """torchvision's arguments for ``name``'s train and test sets."""
    if name == "SVHN":
        return [{"split": "train"}, {"split": "test"}]
    # EMNIST's split picks the variant; CIFAR-100's coarse labels are in the same files
    extra = {"split": variant} if name == "EMNIST" else {}
    return [{"train": True, **extra}, {"train": False, **extra}]
