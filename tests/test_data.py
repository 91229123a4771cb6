"""Datasets as Arrow tables, the split, and the partitioners."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator import ConfigError, load_config
from orchestrator.data import PARTITIONERS, load_table, prepare, write_partitions

from .conftest import tiny


@pytest.mark.parametrize(
    ("name", "rows", "features", "classes"),
    [("digits", 1797, 64, 10), ("breast_cancer", 569, 30, 2), ("wine", 178, 13, 3)],
)
def test_bundled_datasets_load_as_tables(name, rows, features, classes):
    src = load_table(load_config(None, [f"data.name={name}"]).data, seed=0)
    assert isinstance(src.table, pa.Table)
    assert src.table.num_rows == rows
    assert len(src.features) == features
    assert len(set(src.table.column("label").to_pylist())) == classes


def test_synthetic_is_seeded():
    cfg = load_config(None, ["data.name=synthetic", "data.n_samples=300"])
    a, b = load_table(cfg.data, seed=1).table, load_table(cfg.data, seed=1).table
    c = load_table(cfg.data, seed=2).table
    assert a.equals(b)
    assert not a.equals(c)
    assert a.num_rows == 300 and a.num_columns == 21


def test_parquet_with_string_labels_and_feature_subset(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.parquet"
    pq.write_table(
        pa.table(
            {
                "a": rng.normal(size=200),
                "b": rng.integers(0, 5, 200),
                "ignored": rng.normal(size=200),
                "kind": rng.choice(["cat", "dog", "eel"], 200),
            }
        ),
        path,
    )
    cfg = load_config(
        tiny(), ["data.name=parquet", f"data.path={path}", "data.label=kind", "data.features=[a,b]"]
    )
    prepared = prepare(cfg)
    assert prepared.feature_names == ["a", "b"]
    assert prepared.classes == ["cat", "dog", "eel"]
    assert prepared.data.n_features == 2 and prepared.data.n_classes == 3
    total = sum(len(p) for p in prepared.data.parties.values()) + len(prepared.data.y_test)
    assert total == 200


def test_parquet_errors_name_the_key(tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"x": np.arange(50.0), "y": np.arange(50) % 2, "s": ["q"] * 50}), path)
    with pytest.raises(ConfigError) as info:
        prepare(
            load_config(tiny(), ["data.name=parquet", f"data.path={path}", "data.label=target"])
        )
    assert info.value.key == "data.label" and "columns: x, y, s" in info.value.problem
    with pytest.raises(ConfigError) as info:
        prepare(
            load_config(
                tiny(),
                ["data.name=parquet", f"data.path={path}", "data.label=y", "data.features=[s]"],
            )
        )
    assert info.value.key == "data.features" and "not numeric" in info.value.problem
    junk = tmp_path / "junk.parquet"
    junk.write_text("not parquet")
    with pytest.raises(ConfigError) as info:
        prepare(load_config(tiny(), ["data.name=parquet", f"data.path={junk}"]))
    assert info.value.key == "data.path" and "cannot read Parquet" in info.value.problem


def test_tail_split_keeps_order():
    cfg = load_config(
        tiny(), ["data.shuffle_split=false", "data.standardize=false", "data.test_fraction=0.25"]
    )
    prepared = prepare(cfg)
    from sklearn.datasets import load_digits

    x, _ = load_digits(return_X_y=True)
    n_test = round(0.25 * len(x))
    np.testing.assert_array_equal(prepared.data.x_test, x[-n_test:].astype(np.float32))


def _partition(name: str, y: np.ndarray, seed: int = 0, **kw):
    cfg = load_config(
        None, [f"partition.name={name}", *[f"partition.{k}={v}" for k, v in kw.items()]]
    )
    return PARTITIONERS.get(name)(y, cfg.partition, int(y.max()) + 1, np.random.default_rng(seed))


@pytest.fixture()
def labels() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 10, 1000)


def _is_partition(parts, n):
    joined = np.concatenate(parts)
    return len(joined) == n and len(np.unique(joined)) == n


def test_iid_is_equal_sized_and_complete(labels):
    parts = _partition("iid", labels, num_parties=7)
    assert _is_partition(parts, len(labels))
    assert {len(p) for p in parts} <= {142, 143}


def test_dirichlet_small_alpha_skews_labels(labels):
    skewed = _partition("dirichlet", labels, num_parties=10, alpha=0.05)
    even = _partition("dirichlet", labels, num_parties=10, alpha=100.0)
    assert _is_partition(skewed, len(labels)) and _is_partition(even, len(labels))

    def labels_held(parts):  # mean number of labels holding >= 5% of a party's samples
        return np.mean(
            [np.sum(np.bincount(labels[p], minlength=10) >= 0.05 * len(p)) for p in parts]
        )

    assert labels_held(skewed) < 4 < 9 < labels_held(even)


def test_dirichlet_min_samples_error(labels):
    with pytest.raises(ConfigError) as info:
        _partition("dirichlet", labels, num_parties=200, alpha=0.01, min_samples=10)
    assert info.value.key == "partition.alpha"


def test_shards_give_exactly_k_labels(labels):
    parts = _partition("shards", labels, num_parties=20, labels_per_party=2)
    assert _is_partition(parts, len(labels))
    assert [len(np.unique(labels[p])) for p in parts] == [2] * 20
    holders = np.bincount(np.concatenate([np.unique(labels[p]) for p in parts]), minlength=10)
    assert holders.tolist() == [4] * 10  # every label held by 20 * 2 / 10 parties
    pairs = {tuple(np.unique(labels[p])) for p in parts}
    assert len(pairs) >= 8  # varied label pairs, not a handful repeated


def test_shards_more_labels_than_classes_is_an_error(labels):
    with pytest.raises(ConfigError) as info:
        _partition("shards", labels, num_parties=5, labels_per_party=11)
    assert info.value.key == "partition.labels_per_party"


@pytest.mark.parametrize("name", ["iid", "dirichlet", "shards"])
def test_partitions_reproducible_from_seed(labels, name):
    a = _partition(name, labels, seed=5, num_parties=8)
    b = _partition(name, labels, seed=5, num_parties=8)
    c = _partition(name, labels, seed=6, num_parties=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_prepare_is_reproducible_and_writes_parquet(tmp_path):
    cfg = load_config(
        tiny(),
        ["partition.name=dirichlet", "partition.num_parties=5", f"partition.output_dir={tmp_path}"],
    )
    one, two = prepare(cfg), prepare(cfg)
    for pid in one.data.parties:
        np.testing.assert_array_equal(one.data.parties[pid].x, two.data.parties[pid].x)
    paths = write_partitions(one, tmp_path)
    assert [p.name for p in paths] == [f"party_{i:05d}.parquet" for i in range(5)]
    back = pq.read_table(paths[2])
    assert back.num_rows == len(one.data.parties[2])
    np.testing.assert_array_equal(back.column("label").to_numpy(), one.data.parties[2].y)
    stats = one.stats
    assert stats.column("n_samples").to_pylist() == [len(one.data.parties[i]) for i in range(5)]
    assert sum(stats.column("label_3").to_pylist()) == sum(
        int((p.y == 3).sum()) for p in one.data.parties.values()
    )


def test_too_many_parties_is_a_config_error():
    with pytest.raises(ConfigError) as info:
        prepare(load_config(tiny(), ["data.name=wine", "partition.num_parties=500"]))
    assert info.value.key == "partition.num_parties"
