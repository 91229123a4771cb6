"""Datasets as Arrow tables, the train/test split, and partitioners into parties.

Data flows one way: a dataset loads as a ``pyarrow.Table`` (scikit-learn's bundled sets, a
seeded generator, or the user's Parquet file), becomes a feature matrix and integer labels, is
split into train and test, and the training split is cut into parties. Every random choice
derives from the run's seed, so the same config gives the same parties.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
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
    """A loaded dataset: the table and which of its columns are label and features."""

    table: pa.Table
    label: str
    features: list[str]


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


def _from_arrays(x: np.ndarray, y: np.ndarray, names: list[str]) -> TableSource:
    cols = {n: pa.array(x[:, i].astype(np.float32)) for i, n in enumerate(names)}
    cols["label"] = pa.array(y.astype(np.int64))
    return TableSource(pa.table(cols), "label", names)


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
        return _from_arrays(bunch.data, bunch.target, names)

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
    return _from_arrays(raw[:, :-1], raw[:, -1].astype(int), names)


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
    return _from_arrays(images.reshape(n, -1), y, [f"px{i}" for i in range(side * side)])


@DATASETS.register(PARQUET)
def _parquet(cfg: DataConfig, seed: int) -> TableSource:
    try:
        table = pq.read_table(cfg.path)
    except (OSError, pa.ArrowException) as exc:
        raise ConfigError("data.path", f"cannot read Parquet file {cfg.path}: {exc}") from None
    columns = table.column_names
    if cfg.label not in columns:
        raise ConfigError("data.label", f"no column {cfg.label!r}; columns: {', '.join(columns)}")
    if cfg.features:
        missing = [c for c in cfg.features if c not in columns]
        if missing:
            raise ConfigError("data.features", f"no such columns: {', '.join(missing)}")
        features = list(cfg.features)
    else:
        features = [
            f.name
            for f in table.schema
            if f.name != cfg.label and (pa.types.is_integer(f.type) or pa.types.is_floating(f.type))
        ]
    for name in features:
        kind = table.schema.field(name).type
        if not (
            pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
        ):
            raise ConfigError("data.features", f"column {name!r} is {kind}, not numeric")
    if not features:
        raise ConfigError("data.features", "the file has no numeric feature columns")
    if table.num_rows < 10:
        raise ConfigError("data.path", f"{table.num_rows} rows; at least 10 are needed")
    return TableSource(table, cfg.label, features)


def check_data(cfg: ExperimentConfig) -> None:
    """Reads a user's data file (``data.name=parquet``) and checks every value a run would
    use, so that a sweep or a job is refused before it starts anything rather than failing in
    every trial; generated and bundled data sets need no check.

    Raises:
        ConfigError: naming the setting and the column.
    """
    if cfg.data.name == PARQUET:
        src = load_table(cfg.data, cfg.seed)
        assert isinstance(src, TableSource)
        _to_arrays(src)


def load_table(cfg: DataConfig, seed: int) -> TableSource | GraphSource:
    """Loads the configured dataset as an Arrow table (a graph: as its arrays)."""
    return DATASETS.get(cfg.name)(cfg, seed)


def _to_arrays(src: TableSource) -> tuple[np.ndarray, np.ndarray, list]:
    table = src.table
    columns = []
    for name in src.features:
        col = table.column(name)
        wide = col.to_numpy(zero_copy_only=False).astype(np.float64)
        if col.null_count or np.isnan(wide).any():
            raise ConfigError("data.features", f"column {name!r} has missing values")
        if not np.isfinite(wide).all():
            raise ConfigError("data.features", f"column {name!r} holds infinite values")
        values = wide.astype(np.float32)
        if not np.isfinite(values).all():
            raise ConfigError(
                "data.features", f"column {name!r} holds values beyond float32's range (3.4e38)"
            )
        columns.append(values)
    x = np.column_stack(columns)
    labels = table.column(src.label)
    if labels.null_count:
        raise ConfigError(
            "data.label", f"column {src.label!r}: {labels.null_count} rows have no label"
        )
    kind = labels.type
    if not (
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_boolean(kind)
    ):
        raise ConfigError(
            "data.label", f"column {src.label!r} is {kind}: labels must be numbers or strings"
        )
    raw = labels.to_numpy(zero_copy_only=False)
    if pa.types.is_floating(kind):
        if not np.isfinite(raw).all():
            raise ConfigError("data.label", f"column {src.label!r} holds NaN or infinite labels")
        fractional = raw[raw != np.round(raw)]
        if fractional.size:  # a regression target, not classes
            raise ConfigError(
                "data.label",
                f"column {src.label!r} holds non-integer labels ({fractional[0]:g}): "
                "a label names a class",
            )
    classes, y = np.unique(raw, return_inverse=True)
    if len(classes) < 2:
        raise ConfigError("data.label", "fewer than two distinct labels")
    return x, y.astype(np.int64), classes.tolist()


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
    # each part sorted, all parts at once: by (part, row) as one integer key
    key = np.repeat(np.arange(k, dtype=np.int64), sizes) * n + perm
    key.sort()
    return Cut(key % n, sizes)


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

    Raises:
        ConfigError: for data that cannot serve the config (too few samples for the parties,
            unreadable files, missing or non-finite values).
    """
    src = load_table(cfg.data, cfg.seed)
    if isinstance(src, GraphSource):
        from orchestrator.graphs import prepare_graph

        return prepare_graph(cfg, src)
    x, y, classes = _to_arrays(src)
    if cfg.data.positive:
        unknown = [v for v in cfg.data.positive if v not in classes]
        if unknown:
            raise ConfigError("data.positive", f"no such labels: {unknown}; labels: {classes}")
        y = np.isin(np.asarray(classes)[y], cfg.data.positive).astype(np.int64)
        if y.min() == y.max():
            raise ConfigError("data.positive", "every sample falls in one class")
        classes = [0, 1]
    n = len(y)
    n_test = max(1, int(round(cfg.data.test_fraction * n)))
    if cfg.data.shuffle_split:
        order = np.random.default_rng(derive_seed(cfg.seed, _SPLIT_STREAM)).permutation(n)
    else:
        order = np.arange(n)
    train_idx, test_idx = order[: n - n_test], order[n - n_test :]
    x_train, y_train, x_test, y_test = x[train_idx], y[train_idx], x[test_idx], y[test_idx]
    if cfg.data.standardize:
        mean = x_train.mean(axis=0)
        std = x_train.std(axis=0)
        std[std == 0] = 1.0
        x_train -= mean  # in place: x_train is this function's own copy
        x_train /= std
        x_test = (x_test - mean) / std
    if cfg.partition.name == VERTICAL:
        return _prepare_vertical(cfg, x_train, y_train, x_test, y_test, src.features, classes)
    if cfg.partition.num_parties > len(y_train):
        raise ConfigError(
            "partition.num_parties",
            f"{cfg.partition.num_parties} parties but only {len(y_train)} training samples",
        )
    rng = np.random.default_rng(derive_seed(cfg.seed, _PARTITION_STREAM))
    parts = PARTITIONERS.get(cfg.partition.name)(y_train, cfg.partition, len(classes), rng)
    n_features, features = x.shape[1], src.features
    del x, y, src  # the rows below are the last copy of the training data
    if isinstance(parts, Cut):
        parties = PartyRows.cut(x_train, y_train, parts.rows, parts.sizes)
    else:
        parties = PartyRows.gather(x_train, y_train, parts)
    del x_train, parts
    if not len(parties):
        raise ConfigError("partition", "every party came out empty")
    data = FederatedData(parties, x_test, y_test, n_features, len(classes))
    return Prepared(data, features, classes, partition_stats(parties, len(classes)))


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
