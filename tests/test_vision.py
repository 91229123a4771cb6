"""orchestrator.vision: torchvision's files read back exactly, and every bad root reported."""

from __future__ import annotations

import gzip
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from orchestrator.errors import ConfigError
from orchestrator.vision import VISION_DATASETS, VisionArrays, read_vision

from .vision_files import (
    idx_bytes,
    write_cifar10,
    write_cifar100,
    write_emnist,
    write_mnist,
    write_svhn,
)

N_TRAIN, N_TEST = 20, 8


def _images(rng: np.random.Generator, n: int, c: int, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, c, h, w), dtype=np.uint8)


def _labels(rng: np.random.Generator, n: int, low: int, high: int) -> np.ndarray:
    return rng.integers(low, high, size=n).astype(np.int64)


def _split_data(
    c: int, h: int, w: int, low: int = 0, high: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    return (
        _images(rng, N_TRAIN, c, h, w),
        _labels(rng, N_TRAIN, low, high),
        _images(rng, N_TEST, c, h, w),
        _labels(rng, N_TEST, low, high),
    )


def _assert_read(got: VisionArrays, x_tr: Any, y_tr: Any, x_te: Any, y_te: Any) -> None:
    for array, want in ((got.x_train, x_tr), (got.x_test, x_te)):
        assert array.dtype == np.uint8
        assert array.shape == want.shape and array.ndim == 4
        assert array.flags.c_contiguous and array.flags.writeable
        np.testing.assert_array_equal(array, want)
    for array, want in ((got.y_train, y_tr), (got.y_test, y_te)):
        assert array.dtype == np.int64
        assert array.shape == (len(want),)
        np.testing.assert_array_equal(array, want)


def _config_error(key: str, *args: Any, **kwargs: Any) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        read_vision(*args, **kwargs)
    err = caught.value
    assert err.key == key, str(err)
    assert "\n" not in str(err)
    assert str(err).startswith(f"config error: {key}: ")
    return err


# --- reading ------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name", ["MNIST", "FashionMNIST", "KMNIST"])
def test_mnist_family_round_trip(tmp_path: Path, name: str, gz: bool) -> None:
    # 12x9: the reader must take the image size from the header, not assume 28x28
    data = _split_data(1, 12, 9)
    write_mnist(tmp_path, name, *data, gz=gz)
    got = read_vision(name, str(tmp_path))
    _assert_read(got, *data)
    assert got.classes is None


def test_mnist_plain_and_gzipped_files_mix(tmp_path: Path) -> None:
    data = _split_data(1, 28, 28)
    raw = write_mnist(tmp_path, "MNIST", *data, gz=True)
    train_images = raw / "train-images-idx3-ubyte"
    train_images.write_bytes(gzip.decompress((raw / "train-images-idx3-ubyte.gz").read_bytes()))
    (raw / "train-images-idx3-ubyte.gz").unlink()
    _assert_read(read_vision("MNIST", str(tmp_path)), *data)


@pytest.mark.parametrize(
    ("variant", "asked", "low", "high"),
    [
        ("balanced", None, 0, 47),
        ("byclass", "byclass", 0, 62),
        ("digits", "digits", 0, 10),
        ("letters", "letters", 1, 27),
    ],
)
def test_emnist_round_trip(
    tmp_path: Path, variant: str, asked: str | None, low: int, high: int
) -> None:
    data = _split_data(1, 10, 7, low, high)
    raw = write_emnist(tmp_path, variant, *data)
    stored = gzip.decompress((raw / f"emnist-{variant}-train-images-idx3-ubyte.gz").read_bytes())
    assert stored[4:16] == idx_bytes(np.zeros((N_TRAIN, 7, 10), np.uint8))[4:16]  # transposed
    got = read_vision("EMNIST", str(tmp_path), variant=asked)
    _assert_read(got, *data)
    assert got.x_train.shape == (N_TRAIN, 1, 10, 7)
    if variant == "letters":  # kept 1..26, as torchvision keeps them
        assert got.y_train.min() >= 1 and got.y_train.max() <= 26


def test_cifar10_round_trip_with_class_names(tmp_path: Path) -> None:
    data = _split_data(3, 32, 32)
    names = ["airplane", "automobile", "bird", "cat", "deer"] + [f"c{i}" for i in range(5)]
    write_cifar10(tmp_path, *data, classes=names)
    got = read_vision("CIFAR10", str(tmp_path))
    _assert_read(got, *data)
    assert got.classes == names


def test_cifar10_without_meta_has_no_class_names(tmp_path: Path) -> None:
    data = _split_data(3, 32, 32)
    write_cifar10(tmp_path, *data)
    got = read_vision("CIFAR10", str(tmp_path))
    _assert_read(got, *data)
    assert got.classes is None


def test_cifar_rows_are_channel_planes_row_major(tmp_path: Path) -> None:
    # a file's row is R then G then B, each 32x32 row-major: check against a hand-built row
    x_train, y_train, x_test, y_test = _split_data(3, 32, 32)
    write_cifar10(tmp_path, x_train, y_train, x_test, y_test)
    rows = x_test.reshape(N_TEST, -1)
    got = read_vision("CIFAR10", str(tmp_path))
    assert got.x_test[3, 1, 2, 5] == rows[3, 1024 + 2 * 32 + 5]
    assert got.x_test[3, 2, 31, 0] == rows[3, 2048 + 31 * 32]


@pytest.mark.parametrize("variant", [None, "fine", "coarse"])
def test_cifar100_round_trip(tmp_path: Path, variant: str | None) -> None:
    rng = np.random.default_rng(3)
    x_tr, x_te = _images(rng, N_TRAIN, 3, 32, 32), _images(rng, N_TEST, 3, 32, 32)
    fine_tr, fine_te = _labels(rng, N_TRAIN, 0, 100), _labels(rng, N_TEST, 0, 100)
    coarse_tr, coarse_te = _labels(rng, N_TRAIN, 0, 20), _labels(rng, N_TEST, 0, 20)
    fine_names = [f"fine{i}" for i in range(100)]
    coarse_names = [f"coarse{i}" for i in range(20)]
    write_cifar100(
        tmp_path, x_tr, fine_tr, coarse_tr, x_te, fine_te, coarse_te, fine_names, coarse_names
    )
    got = read_vision("CIFAR100", str(tmp_path), variant=variant)
    if variant == "coarse":
        _assert_read(got, x_tr, coarse_tr, x_te, coarse_te)
        assert got.classes == coarse_names
    else:
        _assert_read(got, x_tr, fine_tr, x_te, fine_te)
        assert got.classes == fine_names


def test_svhn_round_trip_maps_ten_to_zero(tmp_path: Path) -> None:
    data = _split_data(3, 32, 32)
    data[1][:3] = 0  # make sure the digit 0 is there
    write_svhn(tmp_path, *data)
    from scipy.io import loadmat

    stored = loadmat(tmp_path / "train_32x32.mat")
    assert stored["X"].shape == (32, 32, 3, N_TRAIN) and stored["y"].shape == (N_TRAIN, 1)
    assert 10 in stored["y"] and 0 not in stored["y"]
    got = read_vision("SVHN", str(tmp_path))
    _assert_read(got, *data)
    assert got.classes is None
    assert set(np.unique(got.y_train)) <= set(range(10))


def test_root_expands_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    data = _split_data(1, 28, 28)
    write_mnist(tmp_path / "data", "KMNIST", *data)
    _assert_read(read_vision("KMNIST", "~/data"), *data)


# --- errors -------------------------------------------------------------------------------


def test_unknown_name_lists_the_known_ones(tmp_path: Path) -> None:
    err = _config_error("data.dataset", "ImageNet", str(tmp_path))
    assert "'ImageNet'" in str(err)
    assert all(name in str(err) for name in VISION_DATASETS)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("MNIST", "MNIST/raw/train-images-idx3-ubyte"),
        ("EMNIST", "EMNIST/raw/emnist-balanced-train-images-idx3-ubyte"),
        ("CIFAR10", "cifar-10-batches-py/data_batch_1"),
        ("CIFAR100", "cifar-100-python/train"),
        ("SVHN", "train_32x32.mat"),
    ],
)
def test_missing_file_names_it_and_the_download(tmp_path: Path, name: str, expected: str) -> None:
    err = _config_error("data.root", name, str(tmp_path))
    assert str(tmp_path / expected) in str(err)
    assert "download=True" in str(err) and "data.download: true" in str(err)


def test_missing_later_file_is_named(tmp_path: Path) -> None:
    write_cifar10(tmp_path, *_split_data(3, 32, 32))
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    err = _config_error("data.root", "CIFAR10", str(tmp_path))
    assert str(tmp_path / "cifar-10-batches-py" / "test_batch") in str(err)


@pytest.mark.parametrize("gz", [True, False])
def test_bad_magic_names_the_file(tmp_path: Path, gz: bool) -> None:
    raw = write_mnist(tmp_path, "MNIST", *_split_data(1, 28, 28), gz=False)
    labels = raw / "t10k-labels-idx1-ubyte"
    # the label file given an image file's magic
    bad = idx_bytes(np.zeros((N_TEST, 2, 2), np.uint8))
    if gz:
        labels.unlink()
        labels = labels.with_name(labels.name + ".gz")
        bad = gzip.compress(bad)
    labels.write_bytes(bad)
    err = _config_error("data.root", "MNIST", str(tmp_path))
    assert str(labels) in str(err) and "magic" in str(err)


def test_truncated_idx_names_the_file(tmp_path: Path) -> None:
    raw = write_mnist(tmp_path, "FashionMNIST", *_split_data(1, 28, 28), gz=False)
    images = raw / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-5])
    err = _config_error("data.root", "FashionMNIST", str(tmp_path))
    assert str(images) in str(err)


def test_truncated_header_names_the_file(tmp_path: Path) -> None:
    raw = write_mnist(tmp_path, "MNIST", *_split_data(1, 28, 28), gz=False)
    images = raw / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:9])
    err = _config_error("data.root", "MNIST", str(tmp_path))
    assert str(images) in str(err)


def test_truncated_gzip_names_the_file(tmp_path: Path) -> None:
    raw = write_mnist(tmp_path, "KMNIST", *_split_data(1, 28, 28), gz=True)
    images = raw / "t10k-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:40])
    err = _config_error("data.root", "KMNIST", str(tmp_path))
    assert str(images) in str(err)


def test_label_count_mismatch_names_the_labels(tmp_path: Path) -> None:
    raw = write_mnist(tmp_path, "MNIST", *_split_data(1, 28, 28), gz=False)
    labels = raw / "train-labels-idx1-ubyte"
    labels.write_bytes(idx_bytes(np.zeros(N_TRAIN - 1, np.uint8)))
    err = _config_error("data.root", "MNIST", str(tmp_path))
    assert str(labels) in str(err)


def test_damaged_pickle_names_the_file(tmp_path: Path) -> None:
    base = write_cifar10(tmp_path, *_split_data(3, 32, 32))
    batch = base / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:100])
    err = _config_error("data.root", "CIFAR10", str(tmp_path))
    assert str(batch) in str(err)


def test_cifar_batch_of_wrong_shape_names_the_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x_small = _images(rng, N_TRAIN, 3, 16, 16)  # 768 values a row, not 3072
    x_test = _images(rng, N_TEST, 3, 32, 32)
    write_cifar100(
        tmp_path,
        x_small,
        _labels(rng, N_TRAIN, 0, 100),
        _labels(rng, N_TRAIN, 0, 20),
        x_test,
        _labels(rng, N_TEST, 0, 100),
        _labels(rng, N_TEST, 0, 20),
    )
    err = _config_error("data.root", "CIFAR100", str(tmp_path))
    assert str(tmp_path / "cifar-100-python" / "train") in str(err)


def test_damaged_mat_names_the_file(tmp_path: Path) -> None:
    write_svhn(tmp_path, *_split_data(3, 32, 32))
    (tmp_path / "test_32x32.mat").write_bytes(b"not a MATLAB file at all" * 10)
    err = _config_error("data.root", "SVHN", str(tmp_path))
    assert str(tmp_path / "test_32x32.mat") in str(err)


@pytest.mark.parametrize(
    ("name", "variant", "allowed"),
    [
        ("EMNIST", "bogus", ["byclass", "bymerge", "balanced", "letters", "digits", "mnist"]),
        ("CIFAR100", "medium", ["fine", "coarse"]),
    ],
)
def test_unknown_variant_lists_the_allowed(
    tmp_path: Path, name: str, variant: str, allowed: list[str]
) -> None:
    err = _config_error("data.variant", name, str(tmp_path), variant=variant)
    assert repr(variant) in str(err) and all(a in str(err) for a in allowed)


def test_variant_for_a_set_without_variants(tmp_path: Path) -> None:
    err = _config_error("data.variant", "CIFAR10", str(tmp_path), variant="fine")
    assert "no variants" in str(err)


# --- download -----------------------------------------------------------------------------


def test_download_without_torchvision(tmp_path: Path) -> None:
    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is importable here")
    err = _config_error("data.download", "MNIST", str(tmp_path), download=True)
    assert "pip install torchvision" in str(err)


def test_download_with_torchvision_blocked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes ``import torchvision`` fail, whether or not it is installed
    monkeypatch.setitem(sys.modules, "torchvision", None)
    err = _config_error("data.download", "CIFAR10", str(tmp_path), download=True)
    assert "pip install torchvision" in str(err)


class _FakeDatasets:
    """Stands in for ``torchvision.datasets``: records each construction's arguments."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.fail = fail

    def __getattr__(self, name: str) -> Any:
        def construct(root: str, **kwargs: Any) -> None:
            self.calls.append((name, root, kwargs))
            if self.fail:
                raise RuntimeError("Error downloading train-images-idx3-ubyte.gz\nmore")

        return construct


def _fake_torchvision(monkeypatch: pytest.MonkeyPatch, fail: bool = False) -> _FakeDatasets:
    datasets = _FakeDatasets(fail)
    module = types.ModuleType("torchvision")
    module.datasets = datasets  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torchvision", module)
    return datasets


@pytest.mark.parametrize(
    ("name", "variant", "train", "test"),
    [
        ("MNIST", None, {"train": True}, {"train": False}),
        (
            "EMNIST",
            "letters",
            {"train": True, "split": "letters"},
            {"train": False, "split": "letters"},
        ),
        (
            "EMNIST",
            None,
            {"train": True, "split": "balanced"},
            {"train": False, "split": "balanced"},
        ),
        ("CIFAR100", "coarse", {"train": True}, {"train": False}),
        ("SVHN", None, {"split": "train"}, {"split": "test"}),
    ],
)
def test_download_asks_torchvision_then_reads_the_files(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    variant: str | None,
    train: dict[str, Any],
    test: dict[str, Any],
) -> None:
    datasets = _fake_torchvision(monkeypatch)
    # the fake fetches nothing, so the read that follows finds the root empty
    err = _config_error("data.root", name, str(tmp_path), variant=variant, download=True)
    assert "missing" in str(err)
    wanted = [{**kwargs, "download": True} for kwargs in (train, test)]
    assert datasets.calls == [(name, str(tmp_path), kwargs) for kwargs in wanted]


def test_download_reads_what_torchvision_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_torchvision(monkeypatch)
    data = _split_data(3, 32, 32)
    write_cifar10(tmp_path, *data)
    _assert_read(read_vision("CIFAR10", str(tmp_path), download=True), *data)


def test_failed_download_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_torchvision(monkeypatch, fail=True)
    err = _config_error("data.download", "FashionMNIST", str(tmp_path), download=True)
    assert "FashionMNIST" in str(err) and "Error downloading" in str(err)
