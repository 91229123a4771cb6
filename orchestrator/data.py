"""Datasets as Arrow tables, the train/test split, and partitioners into parties.

Data flows one way: a dataset loads as a ``pyarrow.Table`` (scikit-learn's bundled sets, a
seeded generator, or the user's Parquet file), becomes a feature matrix and integer labels, is
split into train and test, and the training split is cut into parties. Every random choice
derives from the run's seed, so the same config gives the same parties.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from orchestrator.errors import ConfigError
from trainers.base import FederatedData, PartyData, PartyRows, derive_seed
from trainers.cache import CACHE
from trainers.graph.data import GraphData
from trainers.registry import Registry
from trainers.vertical.data import VerticalData

if TYPE_CHECKING:
    from orchestrator.config import DataConfig, ExperimentConfig, PartitionConfig

__all__ = [
    "DATASETS",
    "GraphSource",
    "PARTITIONERS",
    "PARQUET",
    "USER_DATA",
    "check_data",
    "pick_columns",
    "training_rows",
    "VERTICAL",
    "Prepared",
    "TableSource",
    "load_table",
    "partition_stats",
    "prepare",
    "write_partitions",
]

_SPLIT_STREAM = 10
_PARTITION_STREAM = 11
_VERTICAL_STREAM = 12
VERTICAL = "vertical"
"""partition.name of a split across features instead of samples."""
PARQUET = "parquet"
"""The data set that is a user's own file: read and checked before anything starts."""


@dataclass(frozen=True)
class TableSource:
    """A loaded dataset: the table and which of its columns are label and features.

    A feature column holds a number per row, or a fixed-length list of numbers (an image,
    flattened channel by channel, row by row), which becomes one feature per value.
    """

    table: pa.Table
    label: str
    features: list[str]
    test: pa.Table | None = None
    """The data set's own test split (same columns), which then replaces the random one."""
    image: tuple[int, int, int] | None = None
    """(channels, height, width) of the image the features are, for the image models."""
    read: Callable[[str], pa.ChunkedArray] | None = None
    """Reads a column ``table`` does not hold, when it is needed: a Parquet file's table
    holds its label only, and each feature is read when it is copied, so that a large file
    is never in memory whole beside its matrix."""
    schema: pa.Schema | None = None
    """Every column's type, ``table``'s or, with ``read``, the file's."""

    def column(self, name: str) -> pa.ChunkedArray:
        if self.read is None or self.table.schema.get_field_index(name) >= 0:
            return self.table.column(name)
        return self.read(name)

    def names(self) -> list[str]:
        return list((self.schema or self.table.schema).names)


@dataclass(frozen=True)
class GraphSource:
    """A loaded graph (see :mod:`orchestrator.graphs`): labelled nodes by row, and every
    undirected edge in both directions as row indices."""

    ids: np.ndarray
    """Each row's id in the nodes table."""
    x: np.ndarray
    """Node features, float32."""
    y: np.ndarray
    """Node labels as class indices."""
    src: np.ndarray
    dst: np.ndarray
    features: list[str]
    classes: list


DATASETS: Registry[Callable[[DataConfig, int], TableSource | GraphSource]] = Registry("dataset")


def _from_arrays(
    x: np.ndarray, y: np.ndarray, names: list[str], image: tuple[int, int, int] | None = None
) -> TableSource:
    cols = {n: pa.array(x[:, i].astype(np.float32)) for i, n in enumerate(names)}
    cols["label"] = pa.array(y.astype(np.int64))
    return TableSource(pa.table(cols), "label", names, image=image)


def _sklearn(loader_name: str) -> Callable[[DataConfig, int], TableSource]:
    def load(cfg: DataConfig, seed: int) -> TableSource:
        return _bundled(loader_name)

    return load


def _bundled(loader_name: str) -> TableSource:
    """A scikit-learn data set, parsed once per process (digits' CSV takes tens of ms, and a
    sweep's worker loads it for every trial); Arrow tables are immutable, so sharing is safe."""

    def parse() -> TableSource:
        if loader_name == "load_digits":
            digits = _digits_without_sklearn()
            if digits is not None:
                return digits
        import sklearn.datasets

        bunch = getattr(sklearn.datasets, loader_name)()
        names = [str(n).replace(" ", "_") for n in bunch.feature_names]
        image = (1, 8, 8) if loader_name == "load_digits" else None
        return _from_arrays(bunch.data, bunch.target, names, image)

    return CACHE.get("data.bundled", loader_name, parse)


def _digits_without_sklearn() -> TableSource | None:
    """Digits read straight from the CSV scikit-learn ships, as ``load_digits`` reads it
    (the same arrays), without importing scikit-learn (about a second); None where the file
    is not where it has always been."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # finds the package without running it
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        return None
    raw = np.loadtxt(path, delimiter=",")
    names = [f"pixel_{r}_{c}" for r in range(8) for c in range(8)]
    return _from_arrays(raw[:, :-1], raw[:, -1].astype(int), names, (1, 8, 8))


_BUNDLED_ROWS = {"digits": 1797, "breast_cancer": 569, "wine": 178}


def training_rows(cfg: ExperimentConfig) -> int | None:
    """About how many training rows a config's data set has, without loading it (bundled
    sizes, a generator's ``n_samples``, a Parquet file's footer; a graph's nodes); None when
    unknown."""
    d = cfg.data
    file = {PARQUET: d.path, "graph": d.nodes}.get(d.name)  # a graph's: its nodes table
    if d.name in _BUNDLED_ROWS:
        rows: int | None = _BUNDLED_ROWS[d.name]
    elif d.name in ("synthetic", "synthetic_images", "sbm"):
        rows = d.n_samples
    elif file:
        try:
            rows = pq.ParquetFile(file).metadata.num_rows
        except (OSError, pa.ArrowException):
            rows = None
    else:
        rows = None
    return None if rows is None else int(rows * (1.0 - d.test_fraction))


DATASETS.register("digits")(_sklearn("load_digits"))
DATASETS.register("breast_cancer")(_sklearn("load_breast_cancer"))
DATASETS.register("wine")(_sklearn("load_wine"))


@DATASETS.register("synthetic")
def _synthetic(cfg: DataConfig, seed: int) -> TableSource:
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=cfg.n_samples,
        n_features=cfg.n_features,
        n_informative=cfg.n_informative,
        n_redundant=cfg.n_redundant,
        n_classes=cfg.n_classes,
        random_state=cfg.random_state if cfg.random_state is not None else seed,
    )
    return _from_arrays(x, y, [f"x{i}" for i in range(cfg.n_features)])


@DATASETS.register("synthetic_images")
def _synthetic_images(cfg: DataConfig, seed: int) -> TableSource:
    """Seeded square single-channel images (``n_samples`` of ``n_classes``): each class is a
    smooth random prototype; a sample is its prototype shifted by up to one pixel each way,
    scaled by U(0.7, 1.3), plus N(0, image_noise^2) pixel noise."""
    rng = np.random.default_rng(cfg.random_state if cfg.random_state is not None else seed)
    side, n = cfg.image_side, cfg.n_samples
    raw = rng.normal(size=(cfg.n_classes, side + 2, side + 2))
    shifted = [np.roll(raw, (i, j), axis=(1, 2)) for i in (-1, 0, 1) for j in (-1, 0, 1)]
    smooth = functools.reduce(np.add, shifted) / 3
    y = rng.integers(0, cfg.n_classes, n)
    rows, cols = rng.integers(0, 3, (2, n))
    images = np.stack([smooth[c, r : r + side, k : k + side] for c, r, k in zip(y, rows, cols)])
    images = images * rng.uniform(0.7, 1.3, (n, 1, 1)) + rng.normal(
        0, cfg.image_noise, images.shape
    )
    names = [f"px{i}" for i in range(side * side)]
    return _from_arrays(images.reshape(n, -1), y, names, (1, side, side))


@DATASETS.register(PARQUET)
def _parquet(cfg: DataConfig, seed: int) -> TableSource:
    """The file's label column now, every other column when it is used (one at a time)."""
    path = cfg.path

    def fail(exc: Exception) -> ConfigError:
        return ConfigError("data.path", f"cannot read Parquet file {path}: {exc}")

    try:
        file = pq.ParquetFile(path)
        schema = file.schema_arrow
        rows = file.metadata.num_rows
    except (OSError, pa.ArrowException) as exc:
        raise fail(exc) from None
    label, features = pick_columns(schema, cfg.label, cfg.features)
    if rows < 10:
        raise ConfigError("data.path", f"{rows} rows; at least 10 are needed")

    def read(name: str) -> pa.ChunkedArray:
        try:  # one open file: a wide file's footer is parsed once, not per column
            return file.read(columns=[name]).column(0)
        except (OSError, pa.ArrowException) as exc:
            raise fail(exc) from None

    return TableSource(pa.table({label: read(label)}), label, features, read=read, schema=schema)


def _is_number(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)


def _is_feature_type(kind: pa.DataType) -> bool:
    """A number, or a list of numbers (an image's or an embedding's values; one level)."""
    if pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return _is_number(kind.value_type)
    return _is_number(kind)


def pick_columns(
    schema: pa.Schema, label: str, features: Sequence[str] | None
) -> tuple[str, list[str]]:
    """The label column and the feature columns of a table (default: every numeric or
    numeric-list column but the label).

    Raises:
        ConfigError: a missing column, a feature that is not numeric, or no features.
    """
    columns = schema.names
    if label not in columns:
        raise ConfigError("data.label", f"no column {label!r}; columns: {', '.join(columns)}")
    if features:
        missing = [c for c in features if c not in columns]
        if missing:
            raise ConfigError("data.features", f"no such columns: {', '.join(missing)}")
        picked = list(features)
    else:
        picked = [
            f.name
            for f in schema
            if f.name != label and _is_feature_type(f.type) and not pa.types.is_boolean(f.type)
        ]
    for name in picked:
        kind = schema.field(name).type
        if not _is_feature_type(kind):
            raise ConfigError(
                "data.features",
                f"column {name!r} is {kind}, not numeric (a feature is a number or a flat "
                "list of numbers)",
            )
    if not picked:
        raise ConfigError("data.features", "the data has no numeric feature columns")
    return label, picked


@DATASETS.register("hf")
def _hf(cfg: DataConfig, seed: int) -> TableSource:
    from orchestrator.hf import load_hf

    return load_hf(cfg)


@DATASETS.register("torchvision")
def _torchvision(cfg: DataConfig, seed: int) -> TableSource:
    """A torchvision data set's training and test sets, each image one ``uint8`` list."""
    from orchestrator.vision import read_vision

    assert cfg.root is not None
    got = read_vision(cfg.dataset, cfg.root, cfg.variant, cfg.download)
    _, c, h, w = got.x_train.shape

    def table(x: np.ndarray, y: np.ndarray) -> pa.Table:
        pixels = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), c * h * w)
        return pa.table({"image": pixels, "label": pa.array(y, pa.int64())})

    return TableSource(
        table(got.x_train, got.y_train),
        "label",
        ["image"],
        table(got.x_test, got.y_test),
        (int(c), int(h), int(w)),
    )


USER_DATA = (PARQUET, "hf", "torchvision")
"""The data sets that are a user's own files: read and checked before anything starts."""


def check_data(cfg: ExperimentConfig) -> None:
    """Reads a user's data (parquet, hf, torchvision) and checks every value a run would use,
    so that a sweep or a job is refused before it starts anything rather than failing in
    every trial; generated and bundled data sets need no check.

    Raises:
        ConfigError: naming the setting and the column.
    """
    if cfg.data.name in USER_DATA:
        prepare(cfg)


def load_table(cfg: DataConfig, seed: int) -> TableSource | GraphSource:
    """Loads the configured dataset as an Arrow table (a graph: as its arrays)."""
    return DATASETS.get(cfg.name)(cfg, seed)


def _label_values(col: pa.ChunkedArray, name: str) -> np.ndarray:
    """The label column's values, refused when they cannot name classes."""
    if col.null_count:
        raise ConfigError("data.label", f"column {name!r}: {col.null_count} rows have no label")
    kind = col.type
    if not (
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_boolean(kind)
    ):
        raise ConfigError(
            "data.label", f"column {name!r} is {kind}: labels must be numbers or strings"
        )
    raw = col.to_numpy()
    if pa.types.is_floating(kind):
        if not np.isfinite(raw).all():
            raise ConfigError("data.label", f"column {name!r} holds NaN or infinite labels")
        fractional = raw[raw != np.round(raw)]
        if fractional.size:  # a regression target, not classes
            raise ConfigError(
                "data.label",
                f"column {name!r} holds non-integer labels ({fractional[0]:g}): "
                "a label names a class",
            )
    return raw


def _width(col: pa.ChunkedArray, name: str) -> int:
    """Values per row of a feature column (1, or a list's length, the same in every row)."""
    kind = col.type
    if pa.types.is_fixed_size_list(kind):
        return int(kind.list_size)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        lengths = pc.list_value_length(col)
        low, high = pc.min_max(lengths).values()
        if low.as_py() != high.as_py():
            raise ConfigError(
                "data.features",
                f"column {name!r} holds lists of {low} to {high} values; every row needs the same",
            )
        return int(low.as_py() or 0)
    return 1


def _checked(col: pa.ChunkedArray, name: str, width: int) -> np.ndarray:
    """A feature column as an (n, width) array of its own type, refused when a value is
    missing or infinite."""
    flat = col if _is_number(col.type) else pc.list_flatten(col)
    if col.null_count or flat.null_count:
        raise ConfigError("data.features", f"column {name!r} has missing values")
    values = flat.to_numpy().reshape(len(col), width)
    if values.dtype.kind == "f":
        if np.isnan(values).any():
            raise ConfigError("data.features", f"column {name!r} has missing values")
        if not np.isfinite(values).all():
            raise ConfigError("data.features", f"column {name!r} holds infinite values")
    return values


def _features(
    columns: Sequence[tuple[str, Callable[[], pa.ChunkedArray], int]],
    rows: Sequence[np.ndarray],
) -> tuple[list[np.ndarray], list[str]]:
    """A float32 feature matrix for each array of rows (those rows, in that order), and a
    name per feature, from the columns (name, a function giving it, values per row), each
    checked as it is read.

    The matrices are allocated once and filled column by column, each column read only then
    and dropped once copied: a large file costs about one copy of its data, not two.
    """
    width = sum(w for _, _, w in columns)
    out = [np.empty((len(r), width), dtype=np.float32) for r in rows]
    names: list[str] = []
    at = 0
    for name, get, w in columns:
        values = _checked(get(), name, w)
        for x, r in zip(out, rows):
            block = x[:, at : at + w]
            if values.dtype == np.float32:
                np.take(values, r, axis=0, out=block)
            else:
                with np.errstate(over="ignore"):  # refused just below, by the column
                    block[...] = values[r]
                if values.dtype.kind == "f" and not np.isfinite(block).all():
                    raise ConfigError(
                        "data.features",
                        f"column {name!r} holds values beyond float32's range (3.4e38)",
                    )
        del values
        names += [name] if w == 1 else [f"{name}_{i}" for i in range(w)]
        at += w
    pa.default_memory_pool().release_unused()
    return out, names


def _type_width(kind: pa.DataType) -> int | None:
    """Values per row a column of this type holds (None: a list whose length varies)."""
    if pa.types.is_fixed_size_list(kind):
        return int(kind.list_size)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return None
    return 1


# ---------------------------------------------------------------- partitioners

Partitioner = Callable[
    [np.ndarray, "PartitionConfig", int, np.random.Generator], Sequence[np.ndarray]
]
PARTITIONERS: Registry[Partitioner] = Registry("partitioner")


@PARTITIONERS.register("iid")
def _iid(y: np.ndarray, cfg: PartitionConfig, n_classes: int, rng: np.random.Generator):
    """Shuffle and cut into equal parts."""
    perm = rng.permutation(len(y))
    n, k = len(y), cfg.num_parties
    sizes = np.full(k, n // k, dtype=np.int64)  # np.array_split's cut
    sizes[: n % k] += 1
    return _cut(perm, sizes)


class Cut(Sequence[np.ndarray]):
    """Parts given as consecutive runs of one array of rows: ``sizes[i]`` rows for part
    ``i``. What a partitioner of a million parties returns, so nothing makes a million
    arrays; it reads as the usual list of index arrays."""

    def __init__(self, rows: np.ndarray, sizes: np.ndarray) -> None:
        self.rows, self.sizes = rows, sizes
        self._starts = np.concatenate([[0], np.cumsum(sizes)])

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i):  # ints only
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        return self.rows[self._starts[i] : self._starts[i + 1]]


@PARTITIONERS.register("dirichlet")
def _dirichlet(y: np.ndarray, cfg: PartitionConfig, n_classes: int, rng: np.random.Generator):
    """Label skew: each class is spread over parties in Dirichlet(alpha) proportions.

    Redraws (up to 100 times) until every party holds at least ``min_samples`` samples.
    """
    n = cfg.num_parties
    by_class = [rng.permutation(np.flatnonzero(y == c)) for c in range(n_classes)]
    for _ in range(100):
        parts: list[list[np.ndarray]] = [[] for _ in range(n)]
        for idx in by_class:
            share = rng.dirichlet(np.full(n, cfg.alpha))
            cuts = (np.cumsum(share)[:-1] * len(idx)).astype(int)
            for party, chunk in enumerate(np.split(idx, cuts)):
                parts[party].append(chunk)
        out = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in out) >= cfg.min_samples:
            return out
    raise ConfigError(
        "partition.alpha",
        f"alpha={cfg.alpha} left some of {n} parties with fewer than "
        f"{cfg.min_samples} samples in 100 draws; raise alpha or lower partition.min_samples",
    )


@PARTITIONERS.register(VERTICAL)
def _vertical(y: np.ndarray, cfg: PartitionConfig, n_classes: int, rng: np.random.Generator):
    """A split across features, not samples: :func:`prepare` deals the columns instead."""
    raise AssertionError("a vertical partition is prepared by feature_split")


@PARTITIONERS.register("shards")
def _shards(y: np.ndarray, cfg: PartitionConfig, n_classes: int, rng: np.random.Generator):
    """Pathological non-IID (McMahan et al.): each party holds exactly ``labels_per_party``
    distinct labels.

    Parties pick, one after another, the labels fewest parties hold so far (random among
    ties), so every label is held by about ``num_parties * k / n_classes`` parties; each
    label's samples are then shuffled and cut into equal shards among its holders.
    """
    k = cfg.labels_per_party
    if k > n_classes:
        raise ConfigError(
            "partition.labels_per_party", f"{k} labels per party but the data has {n_classes}"
        )
    holders: list[list[int]] = [[] for _ in range(n_classes)]
    usage = np.zeros(n_classes)
    for party in range(cfg.num_parties):
        chosen = np.argsort(usage + 0.5 * rng.random(n_classes), kind="stable")[:k]
        usage[chosen] += 1
        for c in chosen:
            holders[c].append(party)
    parts: list[list[np.ndarray]] = [[] for _ in range(cfg.num_parties)]
    for c, owners in enumerate(holders):
        if owners:
            idx = rng.permutation(np.flatnonzero(y == c))
            for party, shard in zip(owners, np.array_split(idx, len(owners))):
                parts[party].append(shard)
    return [np.sort(np.concatenate(p)) if p else np.empty(0, dtype=np.int64) for p in parts]


@PARTITIONERS.register("pathological")
def _pathological(y: np.ndarray, cfg: PartitionConfig, n_classes: int, rng: np.random.Generator):
    """Flower Datasets' PathologicalPartitioner: each party holds ``labels_per_party``
    labels, chosen by ``class_assignment``; each label's samples are cut into equal runs
    among the parties holding it (in party order). A label no party holds is left out."""
    k, m = cfg.labels_per_party, cfg.num_parties
    present = np.flatnonzero(np.bincount(y, minlength=n_classes))
    if k > len(present):
        raise ConfigError(
            "partition.labels_per_party", f"{k} labels per party but the data has {len(present)}"
        )
    held: list[list[int]] = []
    for party in range(m):
        if cfg.class_assignment == "deterministic":
            labels = [int(present[(party + i) % len(present)]) for i in range(k)]
        elif cfg.class_assignment == "first_deterministic":
            labels = [int(present[party % len(present)])]
            while len(labels) < k:
                label = int(rng.choice(present))
                if label not in labels:
                    labels.append(label)
        else:
            labels = rng.choice(present, size=k, replace=False).tolist()
        held.append(labels)
    holders: list[list[int]] = [[] for _ in range(n_classes)]
    for party, labels in enumerate(held):
        for label in labels:
            holders[label].append(party)
    parts: list[list[np.ndarray]] = [[] for _ in range(m)]
    for label, owners in enumerate(holders):
        if not owners:
            continue
        idx = np.flatnonzero(y == label)
        if len(owners) > len(idx):
            raise ConfigError(
                "partition.num_parties",
                f"label {label} goes to {len(owners)} parties but has {len(idx)} samples; "
                "use fewer parties or labels per party, or class_assignment=deterministic",
            )
        for party, run in zip(owners, np.array_split(idx, len(owners))):
            parts[party].append(run)
    return [np.sort(np.concatenate(p)) for p in parts]


def _cut(perm: np.ndarray, sizes: np.ndarray) -> Cut:
    """Consecutive runs of ``perm`` of the given sizes, each run sorted (all at once: by
    (run, row) as one integer key)."""
    n, k = len(perm), len(sizes)
    used = int(sizes.sum())
    key = np.repeat(np.arange(k, dtype=np.int64), sizes) * n + perm[:used]
    key.sort()
    return Cut(key % n, sizes)


def _id_sizes(name: str, fn: Callable[[np.ndarray], np.ndarray]) -> Partitioner:
    """Flower Datasets' IdToSizeFncPartitioner: party i (1-based) holds a share of the
    samples proportional to ``fn(i)``, rounded down, the remainder going to the last party;
    the samples are dealt at random from the seed."""

    def split(y: np.ndarray, cfg: PartitionConfig, n_classes: int, rng: np.random.Generator):
        m, n = cfg.num_parties, len(y)
        units = fn(np.linspace(1, m, m))
        sizes = np.array(units / units.sum() * n, dtype=np.int64)
        sizes[-1] += n - sizes.sum()
        if sizes.min() < 1:
            raise ConfigError(
                "partition.num_parties",
                f"{name} sizes leave party {int(np.argmin(sizes))} without samples "
                f"({m} parties, {n} samples); use fewer parties",
            )
        return _cut(rng.permutation(n), sizes)

    split.__doc__ = f"Size skew: party i's share of the samples grows as {name}(i)."
    return split


PARTITIONERS.register("linear")(_id_sizes("linear", lambda i: i))
PARTITIONERS.register("square")(_id_sizes("square", np.square))
# e^i scaled by e^-m, so a thousand parties do not overflow; the shares are Flower's
PARTITIONERS.register("exponential")(_id_sizes("exponential", lambda i: np.exp(i - i[-1])))


@PARTITIONERS.register("quantity_skew")
def _quantity_skew(y: np.ndarray, cfg: PartitionConfig, n_classes: int, rng: np.random.Generator):
    """Dirichlet quantity skew (NIID-Bench's): the parties' shares of the samples are drawn
    from Dirichlet(alpha), and the shuffled samples are cut at those shares. Redraws (up to
    100 times) until every party holds at least ``min_samples``."""
    m, n = cfg.num_parties, len(y)
    perm = rng.permutation(n)
    for _ in range(100):
        share = rng.dirichlet(np.full(m, cfg.alpha))
        cuts = (np.cumsum(share) * n).astype(np.int64)[:-1]
        sizes = np.diff(np.concatenate([[0], cuts, [n]]))
        if sizes.min() >= cfg.min_samples:
            return _cut(perm, sizes)
    raise ConfigError(
        "partition.alpha",
        f"alpha={cfg.alpha} left some of {m} parties with fewer than {cfg.min_samples} "
        "samples in 100 draws; raise alpha or lower partition.min_samples",
    )


@PARTITIONERS.register("inner_dirichlet")
def _inner_dirichlet(y: np.ndarray, cfg: PartitionConfig, n_classes: int, rng: np.random.Generator):
    """Flower Datasets' InnerDirichletPartitioner: each party's size is fixed
    (``partition.sizes``, default equal shares) and its label mix is drawn from
    Dirichlet(alpha); each of its samples is a label drawn from that mix, and a label that
    has run out is removed from every party's mix (renormalised) and the sample redrawn."""
    m, n = cfg.num_parties, len(y)
    if cfg.sizes is None:
        sizes = np.full(m, n // m, dtype=np.int64)
        sizes[: n % m] += 1
    else:
        sizes = np.asarray(cfg.sizes, dtype=np.int64)
        if len(sizes) != m:
            raise ConfigError("partition.sizes", f"{len(sizes)} sizes for {m} parties")
        if sizes.min() < 0 or sizes.sum() > n:
            raise ConfigError(
                "partition.sizes", f"sizes must be >= 0 and sum to at most {n} (the samples)"
            )
    left = np.bincount(y, minlength=n_classes)
    prior = _renormalised(rng.dirichlet(np.full(n_classes, cfg.alpha), size=m), left)
    # every slot of every party draws its label; where a label is asked for more often than
    # it has samples left, the first askers get them and the rest draw again without it
    slots = rng.permutation(np.repeat(np.arange(m), sizes))
    label_of = np.empty(len(slots), dtype=np.int64)
    todo = np.arange(len(slots))
    while len(todo):
        cdf = np.cumsum(prior[slots[todo]], axis=1)
        draw = (rng.random(len(todo))[:, None] > cdf).sum(axis=1)
        draw = np.minimum(draw, n_classes - 1)
        order = np.argsort(draw, kind="stable")
        rank = np.empty(len(todo), dtype=np.int64)
        counts = np.bincount(draw, minlength=n_classes)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        rank[order] = np.arange(len(todo)) - np.repeat(starts, counts)
        ok = rank < left[draw]
        label_of[todo[ok]] = draw[ok]
        left -= np.bincount(draw[ok], minlength=n_classes)
        prior = _renormalised(prior, left)
        todo = todo[~ok]
    # each label's samples, shuffled, go to the slots that drew it, in slot order
    by_label = np.argsort(label_of, kind="stable")
    counts = np.bincount(label_of, minlength=n_classes)
    pool = [rng.permutation(np.flatnonzero(y == c))[: counts[c]] for c in range(n_classes)]
    row_of = np.empty(len(slots), dtype=np.int64)
    row_of[by_label] = np.concatenate(pool)
    by_party = np.argsort(slots, kind="stable")
    parts = np.split(row_of[by_party], np.cumsum(sizes)[:-1])
    return [np.sort(p) for p in parts]


def _renormalised(prior: np.ndarray, left: np.ndarray) -> np.ndarray:
    """Each party's label mix without the labels that have run out; a party whose mix held
    only those (Dirichlet draws of small alpha can be exactly 0) draws uniformly instead."""
    prior[:, left == 0] = 0
    totals = prior.sum(axis=1, keepdims=True)
    dead = totals[:, 0] == 0
    prior[dead] = left > 0
    totals[dead] = (left > 0).sum()
    return np.divide(prior, totals, out=np.zeros_like(prior), where=totals > 0)


@PARTITIONERS.register("natural")
def _natural(ids: np.ndarray, cfg: PartitionConfig, n_ids: int, rng: np.random.Generator):
    """One party per value of ``partition.by`` (Flower Datasets' NaturalIdPartitioner), the
    values in sorted order; where the column holds more than ``num_parties`` values, that
    many are drawn from the seed (a sample of the writers or users) and the rest left out.

    Receives each training row's value as an index into the sorted distinct values."""
    if cfg.num_parties > n_ids:
        raise ConfigError(
            "partition.num_parties",
            f"{cfg.num_parties} parties but column {cfg.by!r} holds {n_ids} values",
        )
    kept = np.arange(n_ids)
    if cfg.num_parties < n_ids:
        kept = np.sort(rng.choice(n_ids, size=cfg.num_parties, replace=False))
    order = np.argsort(ids, kind="stable")
    starts = np.searchsorted(ids[order], kept)
    ends = np.searchsorted(ids[order], kept, side="right")
    return [order[a:b] for a, b in zip(starts, ends)]


_natural.by_column = True  # type: ignore[attr-defined]


# ---------------------------------------------------------------- the whole path


@dataclass(frozen=True)
class Prepared:
    """The data of one experiment, ready for a trainer, with what describes it."""

    data: FederatedData | VerticalData | GraphData
    feature_names: list[str]
    classes: list
    stats: pa.Table
    """One row per party: party, n_samples, and one count column per label (vertical: the
    party's role, feature count and names, aligned and unaligned samples)."""


def prepare(cfg: ExperimentConfig) -> Prepared:
    """Loads, splits and partitions the data of ``cfg``.

    The labels decide the split and the parties first; the features are then copied once,
    straight from the Arrow columns (a Parquet file's read one at a time) into one float32
    matrix of the training rows in party order, of which every party's samples are a
    slice, and one of the test rows.

    Raises:
        ConfigError: for data that cannot serve the config (too few samples for the parties,
            unreadable files, missing or non-finite values).
    """
    src = load_table(cfg.data, cfg.seed)
    if isinstance(src, GraphSource):
        from orchestrator.graphs import prepare_graph

        return prepare_graph(cfg, src)
    part = cfg.partition
    if src.test is not None:
        src = dataclasses.replace(src, table=_stack(src.table, src.test))
    n_given_test = 0 if src.test is None else src.test.num_rows
    features = src.features
    if part.by is not None:  # the config's check: natural, and only natural, names one
        if part.by not in src.names():
            raise ConfigError(
                "partition.by", f"no column {part.by!r}; columns: {', '.join(src.names())}"
            )
        if cfg.data.features is None:
            features = [f for f in features if f != part.by]
    raw = _label_values(src.column(src.label), src.label)
    classes_arr, y = np.unique(raw, return_inverse=True)
    classes = classes_arr.tolist()
    if len(classes) < 2:
        raise ConfigError("data.label", "fewer than two distinct labels")
    y = y.astype(np.int64)
    if cfg.data.positive:
        unknown = [v for v in cfg.data.positive if v not in classes]
        if unknown:
            raise ConfigError("data.positive", f"no such labels: {unknown}; labels: {classes}")
        y = np.isin(classes_arr[y], cfg.data.positive).astype(np.int64)
        if y.min() == y.max():
            raise ConfigError("data.positive", "every sample falls in one class")
        classes = [0, 1]
    groups = None if part.by is None else src.column(part.by)
    kinds = src.schema or src.table.schema
    columns = []
    for name in features:
        get = functools.partial(src.column, name)
        width = _type_width(kinds.field(name).type)
        columns.append((name, get, width if width is not None else _width(get(), name)))
    image = src.image if features == src.features else None
    n = len(y)
    if n_given_test:
        train_idx, test_idx = np.arange(n - n_given_test), np.arange(n - n_given_test, n)
    else:
        n_test = max(1, int(round(cfg.data.test_fraction * n)))
        if cfg.data.shuffle_split:
            order = np.random.default_rng(derive_seed(cfg.seed, _SPLIT_STREAM)).permutation(n)
        else:
            order = np.arange(n)
        train_idx, test_idx = order[: n - n_test], order[n - n_test :]
    y_train, y_test = y[train_idx], y[test_idx]
    if part.name == VERTICAL:
        (x_train, x_test), names = _features(columns, [train_idx, test_idx])
        if cfg.data.standardize:
            _standardize(x_train, x_test)
        return _prepare_vertical(cfg, x_train, y_train, x_test, y_test, names, classes)
    try:
        rng = np.random.default_rng(derive_seed(cfg.seed, _PARTITION_STREAM))
        parts = _partition(part, y_train, groups, train_idx, len(classes), rng)
    except ConfigError:  # a bad feature column says so first: the likelier mistake
        for name, get, width in columns:
            _checked(get(), name, width)
        raise
    if isinstance(parts, Cut):
        local, sizes = parts.rows, parts.sizes
    else:
        sizes = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
        local = np.concatenate(parts) if len(parts) else np.zeros(0, dtype=np.int64)
    del parts
    (x_train, x_test), names = _features(columns, [train_idx[local], test_idx])
    if cfg.data.standardize:
        _standardize(x_train, x_test)
    ids = np.flatnonzero(sizes)
    if not len(ids):
        raise ConfigError("partition", "every party came out empty")
    offsets = np.concatenate([[0], np.cumsum(sizes[ids])]).astype(np.int64)
    parties = PartyRows(x_train, y_train[local], offsets, ids)
    data = FederatedData(parties, x_test, y_test, x_train.shape[1], len(classes), image)
    return Prepared(data, names, classes, partition_stats(parties, len(classes)))


def _partition(
    part: PartitionConfig,
    y_train: np.ndarray,
    groups: pa.ChunkedArray | None,
    train_idx: np.ndarray,
    n_classes: int,
    rng: np.random.Generator,
) -> Sequence[np.ndarray]:
    """The parties' training rows, by the configured partitioner (``natural`` reads the
    values of ``partition.by`` in the training rows)."""
    if part.num_parties > len(y_train):
        raise ConfigError(
            "partition.num_parties",
            f"{part.num_parties} parties but only {len(y_train)} training samples",
        )
    split = PARTITIONERS.get(part.name)
    if not getattr(split, "by_column", False):
        return split(y_train, part, n_classes, rng)
    assert groups is not None
    if groups.null_count:
        raise ConfigError(
            "partition.by", f"column {part.by!r}: {groups.null_count} rows hold no value"
        )
    values = groups.to_numpy(zero_copy_only=False)[train_idx]
    distinct, codes = np.unique(values, return_inverse=True)
    return split(codes.astype(np.int64), part, len(distinct), rng)


def _stack(train: pa.Table, test: pa.Table) -> pa.Table:
    """The training rows, then the test rows, as one table (no copy: chunks side by side)."""
    try:
        return pa.concat_tables([train, test.select(train.column_names).cast(train.schema)])
    except (KeyError, pa.ArrowException) as exc:
        raise ConfigError("data.test_split", f"does not match the training split: {exc}") from None


def _standardize(x_train: np.ndarray, x_test: np.ndarray, block: int = 65536) -> None:
    """Scales both in place to the training rows' zero mean and unit variance, the moments
    summed in float64 over blocks of rows (no copy of the whole matrix)."""
    n = len(x_train)
    total = np.zeros(x_train.shape[1])
    for a in range(0, n, block):
        total += x_train[a : a + block].sum(axis=0, dtype=np.float64)
    mean = total / max(n, 1)
    square = np.zeros_like(total)
    for a in range(0, n, block):
        square += np.square(x_train[a : a + block] - mean).sum(axis=0)
    std = np.sqrt(square / max(n, 1))
    std[std == 0] = 1.0
    mean32, std32 = mean.astype(np.float32), std.astype(np.float32)
    for x in (x_train, x_test):
        for a in range(0, len(x), block):
            x[a : a + block] -= mean32
            x[a : a + block] /= std32


def feature_split(
    cfg: PartitionConfig, names: list[str], n_features: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Each party's feature columns (party 0, the active party, first).

    Raises:
        ConfigError: a split that cannot serve the data (more parties than features, unknown
            or repeated column names, non-square images).
    """
    v, k = cfg.vertical, cfg.num_parties
    if v.split == "columns":
        if not v.columns or len(v.columns) != k:
            raise ConfigError(
                "partition.vertical.columns",
                f"give one list of feature names per party ({k} parties)",
            )
        index = {n: i for i, n in enumerate(names)}
        out: list[np.ndarray] = []
        seen: set[str] = set()
        for party, cols in enumerate(v.columns):
            unknown = [c for c in cols if c not in index]
            if unknown:
                raise ConfigError(
                    f"partition.vertical.columns[{party}]",
                    f"no such features: {', '.join(unknown[:5])}; features: "
                    f"{', '.join(names[:8])}{', ...' if len(names) > 8 else ''}",
                )
            if not cols:
                raise ConfigError(f"partition.vertical.columns[{party}]", "holds no feature")
            twice = seen.intersection(cols)
            if twice:
                raise ConfigError(
                    f"partition.vertical.columns[{party}]",
                    f"features held by two parties: {', '.join(sorted(twice)[:5])}",
                )
            seen.update(cols)
            out.append(np.array([index[c] for c in cols], dtype=np.int64))
        return out
    if k > n_features:
        raise ConfigError(
            "partition.num_parties", f"{k} parties but the data has {n_features} features"
        )
    if v.split == "image":
        side = int(round(n_features**0.5))
        if side * side != n_features or side < k:
            raise ConfigError(
                "partition.vertical.split",
                f"image needs square images at least {k} pixels wide; "
                f"the data has {n_features} features",
            )
        grid = np.arange(n_features).reshape(side, side)
        return [np.sort(grid[:, strip].ravel()) for strip in np.array_split(np.arange(side), k)]
    order = np.arange(n_features)
    if v.split == "random":
        order = rng.permutation(n_features)
        return [np.sort(block) for block in np.array_split(order, k)]
    return list(np.array_split(order, k))


def _prepare_vertical(
    cfg: ExperimentConfig,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    names: list[str],
    classes: list,
) -> Prepared:
    """The vertical federation: feature columns per party, aligned and unaligned samples."""
    k = cfg.partition.num_parties
    if k < 2:
        raise ConfigError("partition.num_parties", "a vertical federation needs at least 2")
    rng = np.random.default_rng(derive_seed(cfg.seed, _VERTICAL_STREAM))
    columns = feature_split(cfg.partition, names, x_train.shape[1], rng)
    order = rng.permutation(len(y_train))
    n_aligned = int(round(cfg.partition.vertical.aligned * len(y_train)))
    if n_aligned < 2:
        raise ConfigError(
            "partition.vertical.aligned",
            f"leaves {n_aligned} aligned samples of {len(y_train)}; at least 2 are needed",
        )
    aligned = order[:n_aligned]
    local = tuple(np.sort(part) for part in np.array_split(order[n_aligned:], k))
    data = VerticalData(
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        columns=tuple(columns),
        aligned=aligned,
        local=local,
        n_classes=len(classes),
    )
    stats = pa.table(
        {
            "party": pa.array(range(k), pa.int64()),
            "role": pa.array(["active"] + ["passive"] * (k - 1)),
            "n_features": pa.array([len(c) for c in columns], pa.int64()),
            "n_aligned": pa.array([n_aligned] * k, pa.int64()),
            "n_local": pa.array([len(p) for p in local], pa.int64()),
            "features": pa.array([", ".join(names[i] for i in c) for c in columns]),
        }
    )
    return Prepared(data, names, classes, stats)


def partition_stats(parties: Mapping[int, PartyData], n_classes: int) -> pa.Table:
    """Per-party sample counts and label histogram."""
    if isinstance(parties, PartyRows):
        ids = parties.ids
        owner = np.repeat(np.arange(len(ids)), parties.sizes())
        counts = np.bincount(owner * n_classes + parties.y, minlength=len(ids) * n_classes).reshape(
            len(ids), n_classes
        )
    else:
        ids = np.array(sorted(parties), dtype=np.int64)
        counts = np.stack([np.bincount(parties[p].y, minlength=n_classes) for p in ids.tolist()])
    cols: dict[str, pa.Array] = {
        "party": pa.array(ids, pa.int64()),
        "n_samples": pa.array(counts.sum(axis=1), pa.int64()),
    }
    for c in range(n_classes):
        cols[f"label_{c}"] = pa.array(counts[:, c], pa.int64())
    return pa.table(cols)


def write_partitions(prepared: Prepared, out_dir: str | Path) -> list[Path]:
    """Writes each party's samples, as the parties see them (standardized when
    ``data.standardize``), to ``out_dir/party_<id>.parquet``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    data = prepared.data
    if isinstance(data, GraphData):
        from orchestrator.graphs import write_graph_partitions

        return write_graph_partitions(data, prepared.feature_names, out)
    if isinstance(data, VerticalData):  # each party's columns: aligned rows, then its own
        for pid, held in enumerate(data.columns):
            rows = np.concatenate([data.aligned, data.local[pid]])
            table = {prepared.feature_names[c]: data.x_train[rows, c] for c in held}
            table["aligned"] = np.arange(len(rows)) < len(data.aligned)
            if pid == 0:
                table["label"] = data.y_train[rows]
            path = out / f"party_{pid:05d}.parquet"
            pq.write_table(pa.table(table), path)
            paths.append(path)
        return paths
    assert isinstance(data, FederatedData)
    for pid, part in sorted(data.parties.items()):
        cols = {n: part.x[:, i] for i, n in enumerate(prepared.feature_names)}
        cols["label"] = part.y
        path = out / f"party_{pid:05d}.parquet"
        pq.write_table(pa.table(cols), path)
        paths.append(path)
    return paths


import orchestrator.graphs  # noqa: E402, F401 - registers the graph data sets and partitioners
