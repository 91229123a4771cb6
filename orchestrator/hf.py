"""Hugging Face data sets as Arrow tables, images decoded into arrays.

``data.path`` names a directory written by ``Dataset.save_to_disk`` or
``DatasetDict.save_to_disk``, local data files (Parquet, CSV, JSON; a glob is fine), or a
hub id, which ``datasets`` fetches only where the machine reaches the hub. The table a run
reads is the data set's own Arrow table (memory-mapped where ``datasets`` keeps it so); an
image column (``datasets.Image``) is decoded once into a fixed-length list of ``uint8``
values per row, channel by channel, and its shape is what the image models read.
"""

from __future__ import annotations

import glob
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from orchestrator.errors import ConfigError

if TYPE_CHECKING:
    from orchestrator.config import DataConfig
    from orchestrator.data import TableSource

__all__ = ["load_hf"]

_SHOW_PROGRESS = 20_000
"""Images from which decoding shows a progress bar (some seconds of Pillow)."""
_BUILDERS = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json"}


def load_hf(cfg: DataConfig) -> TableSource:
    """The training split (``data.split``) and, where ``data.test_split`` names one, the
    test split, with the label and feature columns picked.

    Raises:
        ConfigError: no ``datasets`` package, an unreadable path, an unknown split, a
            missing column, or images of different shapes.
    """
    from orchestrator.data import TableSource, pick_columns

    loaded = _load(cfg.path or "")
    splits = _splits(loaded, cfg)
    train, test = splits[cfg.split], splits.get(cfg.test_split) if cfg.test_split else None
    table, images = _decoded(train)
    test_table = _decoded(test)[0] if test is not None else None
    # an image data set's other numeric columns are ids (a writer, a user), not features
    wanted = list(cfg.features or images) or None
    label, features = pick_columns(table.schema, cfg.label, wanted)
    image = images[features[0]] if len(features) == 1 and features[0] in images else None
    if table.num_rows < 10:
        raise ConfigError("data.split", f"{cfg.split} holds {table.num_rows} rows; at least 10")
    return TableSource(table, label, features, test_table, image)


def _load(path: str) -> Any:
    """A Dataset or DatasetDict from a save_to_disk directory, data files or the hub."""
    try:
        import datasets
    except ImportError:
        raise ConfigError(
            "data.name", "hf needs the datasets package: pip install 'fedsweep[hf]'"
        ) from None
    where = Path(path)
    try:
        if where.is_dir() and any(
            (where / marker).is_file() for marker in ("state.json", "dataset_dict.json")
        ):
            return datasets.load_from_disk(str(where))
        files = sorted(glob.glob(path)) if not where.is_dir() else []
        if files:
            builder = _BUILDERS.get(Path(files[0]).suffix.lower())
            if builder is None:
                raise ConfigError(
                    "data.path",
                    f"{files[0]}: reads {', '.join(sorted(_BUILDERS))} files or a "
                    "save_to_disk directory",
                )
            return datasets.load_dataset(builder, data_files=files)
        if where.is_absolute() or where.exists():
            raise ConfigError(
                "data.path", f"{path} is neither a save_to_disk directory nor data files"
            )
        if where.suffix.lower() in _BUILDERS:  # a data file that is not there, not a hub id
            raise ConfigError("data.path", f"no such file: {path}")
        return datasets.load_dataset(path)
    except ConfigError:
        raise
    except Exception as exc:  # datasets raises many kinds; one line names the path
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError("data.path", f"cannot load {path}: {first}") from None


def _splits(loaded: Any, cfg: DataConfig) -> dict[str, Any]:
    """The loaded splits by name (a lone Dataset is the split ``data.split``)."""
    import datasets

    if isinstance(loaded, datasets.Dataset):
        if cfg.test_split:
            raise ConfigError(
                "data.test_split", f"{cfg.path} holds one split; leave test_split unset"
            )
        return {cfg.split: loaded}
    names = list(loaded)
    for key, name in (("split", cfg.split), ("test_split", cfg.test_split)):
        if name and name not in names:
            raise ConfigError(f"data.{key}", f"no split {name!r}; splits: {', '.join(names)}")
    return dict(loaded)


def _decoded(ds: Any) -> tuple[pa.Table, dict[str, tuple[int, int, int]]]:
    """The split's Arrow table with every image column decoded, and each image column's
    (channels, height, width)."""
    import datasets

    table = ds.with_format("arrow")[:]
    images = {}
    for name, kind in ds.features.items():
        if isinstance(kind, datasets.Image):
            column, shape = _images(table.column(name), name)
            table = table.set_column(table.schema.get_field_index(name), name, column)
            images[name] = shape
    return table, images


def _images(column: pa.ChunkedArray, name: str) -> tuple[pa.Array, tuple[int, int, int]]:
    """Encoded images (``{bytes, path}`` structs) as one fixed-length ``uint8`` list per
    row, channels first."""
    from PIL import Image
    from tqdm import tqdm

    shape: tuple[int, ...] | None = None
    out: np.ndarray | None = None
    cells = tqdm(
        column.to_pylist(),
        desc=f"decoding {name}",
        unit="image",
        disable=len(column) < _SHOW_PROGRESS,
        leave=False,
    )
    for i, cell in enumerate(cells):
        if cell is None:
            raise ConfigError("data.features", f"column {name!r}: row {i} holds no image")
        source = io.BytesIO(cell["bytes"]) if cell.get("bytes") else cell["path"]
        with Image.open(source) as img:
            pixels = np.asarray(img)
        if pixels.ndim == 2:
            pixels = pixels[None]
        else:
            pixels = pixels.transpose(2, 0, 1)
        if pixels.dtype != np.uint8:
            raise ConfigError(
                "data.features", f"column {name!r}: {pixels.dtype} images; 8-bit images only"
            )
        if out is None:
            shape = pixels.shape
            out = np.empty((len(column), pixels.size), dtype=np.uint8)
        elif pixels.shape != shape:
            raise ConfigError(
                "data.features",
                f"column {name!r}: images of shapes {shape} and {pixels.shape} (channels, "
                "height, width); resize them to one shape first",
            )
        out[i] = pixels.ravel()
    if out is None or shape is None:
        raise ConfigError("data.features", f"column {name!r} holds no image")
    values = pa.FixedSizeListArray.from_arrays(pa.array(out.ravel()), out.shape[1])
    c, h, w = shape
    return values, (int(c), int(h), int(w))
