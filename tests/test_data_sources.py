"""The data researchers bring: Hugging Face data sets, torchvision's files, the partitioners
that match Flower Datasets', the image models, the preview, and large files without copies.

Everything is made here, in temporary directories: nothing is downloaded."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import orchestrator
from orchestrator import ConfigError, load_config
from orchestrator.cli import main
from orchestrator.data import PARTITIONERS, prepare
from orchestrator.preview import skew

from .conftest import tiny
from .vision_files import write_cifar10, write_mnist

datasets = pytest.importorskip("datasets")


def _images(rng: np.random.Generator, n: int, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8)


def _hf_dict(tmp_path, n=80, side=12, channels=1, writers=7):
    """A DatasetDict with an image column, a ClassLabel and a writer id, saved to disk."""
    from PIL import Image

    rng = np.random.default_rng(0)
    shape = (side, side) if channels == 1 else (side, side, channels)
    pixels = _images(rng, n, shape)
    labels = rng.integers(0, 4, n)
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=["a", "b", "c", "d"]),
            "writer": datasets.Value("string"),
            "score": datasets.Value("float32"),
        }
    )

    def split(rows: slice) -> datasets.Dataset:
        return datasets.Dataset.from_dict(
            {
                "image": [Image.fromarray(p) for p in pixels[rows]],
                "label": labels[rows].tolist(),
                "writer": [f"w{i % writers}" for i in range(n)][rows],
                "score": rng.normal(size=n)[rows].tolist(),
            },
            features=features,
        )

    path = tmp_path / "hf"
    datasets.DatasetDict({"train": split(slice(0, 60)), "test": split(slice(60, n))}).save_to_disk(
        str(path)
    )
    return path, pixels, labels


def test_a_saved_hugging_face_data_set_with_images_loads_decoded(tmp_path):
    path, pixels, labels = _hf_dict(tmp_path, channels=3)
    cfg = load_config(
        tiny(),
        [
            "data.name=hf",
            f"data.path={path}",
            "data.test_split=test",
            "data.standardize=false",
            "partition.num_parties=3",
        ],
    )
    prepared = prepare(cfg)
    data = prepared.data
    assert data.image == (3, 12, 12)
    assert data.n_features == 3 * 12 * 12
    # the test split is the data set's own, in its order, channels first
    want = pixels[60:].transpose(0, 3, 1, 2).reshape(20, -1).astype(np.float32)
    np.testing.assert_array_equal(data.x_test, want)
    np.testing.assert_array_equal(data.y_test, labels[60:])
    # every training image is in some party, exactly once
    train = pixels[:60].transpose(0, 3, 1, 2).reshape(60, -1)
    seen = sorted(map(bytes, data.parties.x.astype(np.uint8)))
    assert seen == sorted(map(bytes, train))


def test_hf_natural_partition_gives_one_party_per_writer(tmp_path):
    path, _, _ = _hf_dict(tmp_path)
    cfg = load_config(
        tiny(),
        [
            "data.name=hf",
            f"data.path={path}",
            "partition.name=natural",
            "partition.by=writer",
            "partition.num_parties=7",
        ],
    )
    prepared = prepare(cfg)
    sizes = prepared.stats.column("n_samples").to_pylist()
    # 60 training rows of writers w0..w6 in turn, less the random test share
    assert len(sizes) == 7 and sum(sizes) == 60 - round(0.2 * 60)
    # the features are the image's pixels only: the writer and the score are not features
    assert prepared.data.n_features == 144


def test_hf_reads_local_parquet_files_by_glob(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(2):
        pq.write_table(
            pa.table(
                {"a": rng.normal(size=30), "b": rng.normal(size=30), "y": rng.integers(0, 3, 30)}
            ),
            tmp_path / f"part{i}.parquet",
        )
    cfg = load_config(
        tiny(), ["data.name=hf", f"data.path={tmp_path}/part*.parquet", "data.label=y"]
    )
    prepared = prepare(cfg)
    assert prepared.feature_names == ["a", "b"]
    assert (
        len(prepared.data.y_test) + int(prepared.stats.column("n_samples").to_numpy().sum()) == 60
    )


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["data.test_split=validation"],
            "data.test_split: no split 'validation'; splits: train, test",
        ),
        (["data.split=dev"], "data.split: no split 'dev'"),
        (["data.label=digit"], "data.label: no column 'digit'"),
        (["data.features=[image,writer]"], "data.features: column 'writer' is string"),
        (["partition.name=natural"], "partition.by: natural needs the column"),
        (["partition.name=natural", "partition.by=pen"], "partition.by: no column 'pen'"),
        (
            ["partition.name=natural", "partition.by=writer", "partition.num_parties=9"],
            "partition.num_parties: 9 parties but column 'writer' holds 7 values",
        ),
        (["partition.by=writer"], "partition.by: read by the natural partitioner, not iid"),
    ],
)
def test_hf_bad_input_is_one_line(tmp_path, overrides, expected):
    path, _, _ = _hf_dict(tmp_path)
    with pytest.raises(ConfigError) as err:
        prepare(load_config(tiny(), ["data.name=hf", f"data.path={path}", *overrides]))
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_hf_hub_id_offline_and_mixed_image_sizes_are_refused(tmp_path, monkeypatch):
    import huggingface_hub.constants
    from PIL import Image

    # read when datasets was imported: the switches themselves, or it retries for 20 s
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cfg = load_config(tiny(), ["data.name=hf", "data.path=nobody/no-such-data-set"])
    assert cfg.data.path == "nobody/no-such-data-set"  # a hub id is not made a path
    with pytest.raises(ConfigError, match="data.path: cannot load nobody/no-such-data-set"):
        prepare(cfg)
    # a data file's name that is not there is a missing file, never asked of the hub
    missing = load_config(tiny(), ["data.name=hf", "data.path=nowhere/x.parquet"])
    with pytest.raises(ConfigError, match="data.path: no such file: nowhere/x.parquet"):
        prepare(missing)
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(_images(rng, 1, (8 + i % 2, 8))[0]) for i in range(12)]
    ds = datasets.Dataset.from_dict(
        {"image": imgs, "label": [i % 2 for i in range(12)]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}),
    )
    ds.save_to_disk(str(tmp_path / "mixed"))
    cfg = load_config(tiny(), ["data.name=hf", f"data.path={tmp_path / 'mixed'}"])
    with pytest.raises(ConfigError, match=r"images of shapes \(1, 8, 8\) and \(1, 9, 8\)"):
        prepare(cfg)


def test_torchvision_files_load_with_their_own_test_set(tmp_path):
    rng = np.random.default_rng(2)
    x, y = _images(rng, 50, (1, 28, 28)), rng.integers(0, 10, 50)
    xt, yt = _images(rng, 12, (1, 28, 28)), rng.integers(0, 10, 12)
    write_mnist(tmp_path, "FashionMNIST", x, y, xt, yt)
    cfg = load_config(
        tiny(),
        [
            "data.name=torchvision",
            "data.dataset=FashionMNIST",
            f"data.root={tmp_path}",
            "data.standardize=false",
            "partition.num_parties=5",
        ],
    )
    prepared = prepare(cfg)
    assert prepared.data.image == (1, 28, 28)
    np.testing.assert_array_equal(prepared.data.x_test, xt.reshape(12, -1))
    assert int(prepared.stats.column("n_samples").to_numpy().sum()) == 50
    with pytest.raises(ConfigError, match="data.root: .*FashionMNIST/raw/train-images"):
        prepare(
            load_config(
                tiny(),
                [
                    "data.name=torchvision",
                    "data.dataset=FashionMNIST",
                    f"data.root={tmp_path / 'empty'}",
                ],
            )
        )
    with pytest.raises(ConfigError, match="data.root: required when data.name is torchvision"):
        load_config(tiny(), ["data.name=torchvision", "data.dataset=MNIST"])


@pytest.mark.parametrize("model", ["image_cnn", "resnet"])
def test_the_image_models_train_on_colour_images_from_the_data(tmp_path, model):
    """CIFAR-10's layout, with images whose class is their brightest channel: a model that
    reads the channels learns it."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 240)
    x = _images(rng, 240, (3, 32, 32)) // 4
    x[np.arange(240), y] += 150  # the class's channel is bright
    write_cifar10(tmp_path, x[:200], y[:200], x[200:], y[200:], ["r", "g", "b"])
    result = orchestrator.run(
        tiny(),
        [
            "data.name=torchvision",
            "data.dataset=CIFAR10",
            f"data.root={tmp_path}",
            f"model.name={model}",
            "model.channels=[8,16]",
            "trainer.rounds=3",
            "trainer.lr=0.05",
            "partition.num_parties=4",
        ],
    )
    assert result.metrics["test_accuracy"] > 0.8, result.metrics


def test_image_models_refuse_data_that_is_not_images(tmp_path):
    with pytest.raises(ConfigError, match="model.name: resnet reads images"):
        orchestrator.run(tiny(), ["data.name=breast_cancer", "model.name=resnet"])
    # a colour image of a square pixel count is not a one-channel square image
    rng = np.random.default_rng(5)
    x = _images(rng, 60, (3, 32, 32))
    write_cifar10(tmp_path, x[:50], rng.integers(0, 3, 50), x[50:], rng.integers(0, 3, 10))
    with pytest.raises(ConfigError, match="model.name: cnn reads one-channel square images"):
        orchestrator.run(
            tiny(),
            [
                "data.name=torchvision",
                "data.dataset=CIFAR10",
                f"data.root={tmp_path}",
                "model.name=cnn",
            ],
        )


def test_nested_lists_and_a_test_split_that_trains_are_refused(tmp_path):
    nested = pa.table({"v": [[[1.0, 2.0]]] * 20, "label": [0, 1] * 10})
    pq.write_table(nested, tmp_path / "nested.parquet")
    cfg = load_config(
        tiny(),
        ["data.name=parquet", f"data.path={tmp_path / 'nested.parquet'}", "data.features=[v]"],
    )
    with pytest.raises(ConfigError, match="data.features: column 'v' is list<element: list"):
        prepare(cfg)
    with pytest.raises(ConfigError, match=r"data.test_split: is the training split \(train\)"):
        load_config(tiny(), ["data.name=hf", "data.path=x", "data.test_split=train"])
    with pytest.raises(ConfigError, match="data.dataset: torchvision reads MNIST, .*; got 'Cora'"):
        load_config(tiny(), ["data.name=torchvision", f"data.root={tmp_path}"])


# ---------------------------------------------------------------- partitioners


def _split(name: str, y: np.ndarray, seed: int = 0, **settings):
    cfg = load_config(
        None, [f"partition.name={name}"] + [f"partition.{k}={v}" for k, v in settings.items()]
    )
    return [
        np.asarray(p)
        for p in PARTITIONERS.get(name)(
            y, cfg.partition, int(y.max()) + 1, np.random.default_rng(seed)
        )
    ]


def _flower_sizes(units: np.ndarray, n: int) -> np.ndarray:
    """IdToSizeFncPartitioner's rule, written out: shares of the units, rounded down, the
    remainder to the last party."""
    sizes = np.array(units / units.sum() * n, dtype=np.int64)
    sizes[-1] += n - sizes.sum()
    return sizes


@pytest.mark.parametrize(
    ("name", "units"),
    [
        ("linear", lambda i: i),
        ("square", lambda i: i**2),
        ("exponential", np.exp),
    ],
)
def test_size_skew_matches_flowers_definition(name, units):
    y = np.random.default_rng(0).integers(0, 5, 997)
    parts = _split(name, y, num_parties=6)
    want = _flower_sizes(units(np.linspace(1, 6, 6)), 997)
    np.testing.assert_array_equal([len(p) for p in parts], want)
    rows = np.concatenate(parts)
    assert len(np.unique(rows)) == len(rows) == 997
    again = _split(name, y, num_parties=6)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = _split(name, y, seed=1, num_parties=6)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


def test_exponential_with_too_many_parties_is_refused():
    y = np.zeros(100, dtype=np.int64)
    y[::2] = 1
    with pytest.raises(ConfigError, match="partition.num_parties: exponential sizes leave party 0"):
        _split("exponential", y, num_parties=40)


@pytest.mark.parametrize("mode", ["random", "deterministic", "first_deterministic"])
def test_pathological_gives_each_party_its_k_labels(mode):
    y = np.repeat(np.arange(10), 30)
    parts = _split("pathological", y, num_parties=8, labels_per_party=3, class_assignment=mode)
    held = [sorted(set(y[p].tolist())) for p in parts]
    assert all(len(h) == 3 for h in held)
    if mode == "deterministic":
        assert held == [sorted({(i + j) % 10 for j in range(3)}) for i in range(8)]
    if mode == "first_deterministic":
        assert all(i % 10 in h for i, h in enumerate(held))
    rows = np.concatenate(parts)
    assert len(np.unique(rows)) == len(rows)
    # each label's samples are cut into equal runs among its holders (Flower's array_split)
    for label in range(10):
        holders = [i for i, h in enumerate(held) if label in h]
        if holders:
            got = sorted(int((y[parts[i]] == label).sum()) for i in holders)
            assert got == sorted(len(r) for r in np.array_split(np.arange(30), len(holders)))


def test_pathological_refuses_more_labels_than_the_data_has():
    with pytest.raises(
        ConfigError, match="partition.labels_per_party: 4 labels per party but the data has 3"
    ):
        _split("pathological", np.repeat(np.arange(3), 5), labels_per_party=4)


def test_inner_dirichlet_keeps_the_sizes_and_skews_the_labels():
    y = np.repeat(np.arange(5), 200)
    sizes = [50, 150, 25, 125, 150]  # half the data: the labels rarely run out
    parts = _split(
        "inner_dirichlet", y, num_parties=5, sizes=str(sizes).replace(" ", ""), alpha=0.1
    )
    assert [len(p) for p in parts] == sizes
    rows = np.concatenate(parts)
    assert len(np.unique(rows)) == len(rows) == 500
    # with alpha 0.1, a party's mix is dominated by a label or two
    top = [np.bincount(y[p], minlength=5).max() / len(p) for p in parts]
    assert np.mean(top) > 0.5
    flat = _split("inner_dirichlet", y, num_parties=5, alpha=1000.0)
    assert [len(p) for p in flat] == [200] * 5
    assert max(np.bincount(y[p], minlength=5).max() / len(p) for p in flat) < 0.4
    with pytest.raises(ConfigError, match="partition.sizes: 2 sizes for 5 parties"):
        _split("inner_dirichlet", y, num_parties=5, sizes="[1,2]")


def test_quantity_skew_cuts_at_dirichlet_shares():
    y = np.random.default_rng(0).integers(0, 4, 2000)
    parts = _split("quantity_skew", y, num_parties=10, alpha=0.5, min_samples=5)
    sizes = np.array([len(p) for p in parts])
    assert sizes.sum() == 2000 and sizes.min() >= 5
    assert sizes.std() / sizes.mean() > 0.3  # skewed sizes
    # the labels are not skewed: every large party holds every label
    for p in parts:
        if len(p) > 200:
            assert len(set(y[p].tolist())) == 4
    again = _split("quantity_skew", y, num_parties=10, alpha=0.5, min_samples=5)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["partition.sizes=[1,2]"],
            "partition.sizes: read by the inner_dirichlet partitioner, not iid",
        ),
        (
            ["partition.class_assignment=deterministic"],
            "partition.class_assignment: read by the pathological",
        ),
        (["data.test_split=test"], "data.test_split: read by data.name=hf only"),
        (["data.variant=letters"], "data.variant: read by data.name=torchvision only"),
        (["data.download=true"], "data.download: read by data.name=torchvision only"),
    ],
)
def test_settings_of_another_source_or_partitioner_are_refused(overrides, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(tiny(), overrides)


def test_natural_keeps_a_seeded_sample_of_the_ids():
    ids = np.repeat(np.arange(20), 5)
    parts = _split("natural", ids, num_parties=20, by="writer")
    assert [sorted(set(ids[p].tolist())) for p in parts] == [[i] for i in range(20)]
    some = _split("natural", ids, num_parties=6, by="writer")
    kept = [int(ids[p][0]) for p in some]
    assert len(kept) == 6 == len(set(kept)) and kept == sorted(kept)
    assert all(len(p) == 5 for p in some)


# ---------------------------------------------------------------- preview, large files


def test_fedsweep_data_prints_the_table_and_draws_the_heatmap(tmp_path, capsys):
    import yaml

    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(tiny()))
    out = tmp_path / "preview"
    argv = [
        "data",
        str(config),
        "partition.name=dirichlet",
        "partition.alpha=0.2",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(
        "digits: 1438 training rows, 359 test rows, 64 features (1x8x8 images), 10 classes; 6 parties by dirichlet (alpha 0.2)"
    )
    stats = pq.read_table(out / "parties.parquet")
    assert stats.num_rows == 6
    assert printed[1].split()[:3] == ["party", "n_samples", "0"]
    assert [int(r.split()[1]) for r in printed[2:8]] == stats.column("n_samples").to_pylist()
    summary = skew(stats)
    assert summary.line() in printed
    assert summary.label_tv > 0.2  # alpha 0.2 is skewed
    assert (out / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((out / "parties").glob("party_*.parquet"))) == 6
    # again with fewer parties: only theirs are left
    assert main([*argv, "partition.num_parties=4"]) == 0
    assert len(list((out / "parties").glob("party_*.parquet"))) == 4


def test_skew_of_an_even_partition_is_none():
    stats = pa.table(
        {"party": [0, 1], "n_samples": [20, 20], "label_0": [10, 10], "label_1": [10, 10]}
    )
    s = skew(stats)
    assert (s.size_cv, s.label_tv, s.labels_per_party) == (0.0, 0.0, 2.0)
    assert s.effective_labels == pytest.approx(2.0)


def test_a_parquet_file_becomes_one_matrix_that_every_party_slices(tmp_path):
    rng = np.random.default_rng(4)
    n = 5000
    table = pa.table(
        {
            **{f"x{i}": rng.normal(size=n).astype(np.float32) for i in range(8)},
            "label": rng.integers(0, 10, n),
        }
    )
    pq.write_table(table, tmp_path / "big.parquet")
    cfg = load_config(
        tiny(),
        [
            "data.name=parquet",
            f"data.path={tmp_path / 'big.parquet'}",
            "partition.name=dirichlet",
            "partition.num_parties=50",
            "data.standardize=false",
        ],
    )
    data = prepare(cfg).data
    parties = data.parties
    # the parties are slices of one matrix, which owns its memory: no copy per party
    assert parties.x.flags.c_contiguous and parties.x.flags.owndata
    assert np.shares_memory(parties[int(parties.ids[3])].x, parties.x)
    assert parties.x.nbytes + data.x_test.nbytes == n * 8 * 4
    # and the rows are the file's
    want = np.column_stack([table.column(f"x{i}").to_numpy() for i in range(8)])
    got = np.concatenate([parties.x, data.x_test])
    assert sorted(map(bytes, got)) == sorted(map(bytes, want))
