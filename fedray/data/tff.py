"""TFF's federated EMNIST (FEMNIST) files, `fed_emnist_train.h5` and `fed_emnist_test.h5`: a group
`examples/<writer>` per writer with `pixels` (float32 [n, 28, 28] in [0, 1]) and `label` (int [n], 62 classes),
as tff.simulation.datasets.emnist.load_data downloads them. Read with h5py (`pip install 'fedray[datasets]'`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedray.dataset_catalog import TFF_FILES, DataError
from fedray.data.synthetic import Dataset


def load_tff_emnist(root: str) -> Dataset:
    """Both files under `root`: uint8 [N, 28, 28, 1] images, int64 labels, and each training image's writer."""
    train = _read(Path(root).expanduser() / TFF_FILES[0])
    test = _read(Path(root).expanduser() / TFF_FILES[1])
    return Dataset(train[0], train[1], test[0], test[1], train[2])


def _read(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import h5py

    images, labels, ids = [], [], []
    try:
        with h5py.File(path, "r") as f:
            for writer, group in f["examples"].items():  # h5py lists them by name: the same order everywhere
                pixels = np.asarray(group["pixels"], dtype=np.float32)
                images.append(np.rint(np.clip(pixels, 0, 1) * 255).astype(np.uint8).reshape(-1, 28, 28, 1))
                labels.append(np.asarray(group["label"], dtype=np.int64).reshape(-1))
                ids.append(np.full(len(labels[-1]), writer))
    except (OSError, KeyError, ValueError) as err:  # not HDF5, or not TFF's layout
        raise DataError(f"data.root: {path} is not TFF's federated EMNIST ({type(err).__name__}: {err})") from None
    if not images:
        raise DataError(f"data.root: {path} holds no writers under examples/")
    return np.concatenate(images), np.concatenate(labels), np.concatenate(ids)
