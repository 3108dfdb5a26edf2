"""Any Hugging Face dataset from local files: `datasets.load_dataset("parquet" | "csv" | "imagefolder",
data_files=...)`, with the input, label and (optional) natural-id columns named by keys; FEMNIST's Hugging Face
layout (flwrlabs/femnist: `image`, `character`, `writer_id`) is this with its column names. A CSV's input
column names image files (paths under `data.root`). Needs Hugging Face
`datasets` (`pip install 'fedray[datasets]'`), imported here only.

Inputs: an image column becomes uint8 [N, H, W, C] (converted and resized to `data.input_shape`), integer
sequences int16 token windows, other numbers float32. Labels: integers as they are; strings numbered in
sorted order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fedray.data.held_out import hold_out_test
from fedray.dataset_catalog import DataError, data_files, default_root
from fedray.data.synthetic import Dataset


def load_local_files(data: Any, form: str, root: str) -> Dataset:
    import datasets

    files = {"train": data_files(Path(root), data.train_files or "**/*.parquet")}
    if data.test_files:
        files["test"] = data_files(Path(root), data.test_files)
    input_column = data.input_column or "image"  # imagefolder's own names
    label_column = data.label_column or "label"
    try:
        loaded = datasets.load_dataset(form, data_files=files, cache_dir=default_root("huggingface"))
    except Exception as err:  # unreadable files, a parquet schema that differs between files
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise DataError(f"data.root={root}: datasets.load_dataset({form!r}) cannot read the files ({reason})") from None
    for split in loaded.values():
        for key, column in (("input_column", input_column), ("label_column", label_column), ("id_column", data.id_column)):
            if column and column not in split.column_names:
                raise DataError(f"data.{key}={column}: no such column (the files have {', '.join(split.column_names)})")
    if form == "csv":  # a CSV lists image files (paths under data.root) and their labels
        loaded = loaded.map(lambda row: {input_column: str(Path(root).expanduser() / row[input_column])})
        loaded = loaded.cast_column(input_column, datasets.Image())
    shape = tuple(data.input_shape)
    names = _label_names([split[label_column] for split in loaded.values()])
    train = loaded["train"]
    inputs, labels = _inputs(train, input_column, shape), _labels(train[label_column], names)
    ids = np.asarray(train[data.id_column]) if data.id_column else None
    if "test" not in loaded:
        return hold_out_test(inputs, labels, ids, data.seed)
    test = loaded["test"]
    return Dataset(inputs, labels, _inputs(test, input_column, shape), _labels(test[label_column], names), ids)


def _inputs(split: Any, column: str, shape: tuple[int, ...]) -> np.ndarray:
    import datasets

    if isinstance(split.features[column], datasets.Image):
        channels, height, width = shape if len(shape) == 3 else (0, 0, 0)
        if channels not in (1, 3):
            raise DataError(f"data.input_shape={list(shape)}: column {column} holds images; set it to [C, H, W], C 1 or 3")
        images = np.empty((len(split), height, width, channels), dtype=np.uint8)
        for k, image in enumerate(split[column]):
            image = image.convert("L" if channels == 1 else "RGB")
            if image.size != (width, height):
                image = image.resize((width, height))
            images[k] = np.asarray(image).reshape(height, width, channels)
        return images
    values = np.asarray(split.with_format("numpy")[column])
    if values.dtype == np.uint8:
        return values
    return values.astype(np.int16 if np.issubdtype(values.dtype, np.integer) else np.float32)


def _label_names(columns: list[Any]) -> list[str] | None:
    """Strings' class numbers: the sorted names over every split (the same number in train and test)."""
    values = [value for column in columns for value in column]
    if values and isinstance(values[0], str):
        return sorted(set(values))
    return None


def _labels(column: Any, names: list[str] | None) -> np.ndarray:
    if names is None:
        return np.asarray(column, dtype=np.int64)
    index = {name: k for k, name in enumerate(names)}
    return np.asarray([index[value] for value in column], dtype=np.int64)
