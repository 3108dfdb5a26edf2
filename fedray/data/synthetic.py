"""A learnable stand-in for CIFAR-10, and a writer of CIFAR-10's on-disk format.

Each class is a fixed random low-resolution colour pattern; samples are that
pattern shifted by a few pixels, with per-sample contrast, coarse colour
blotches of the same scale as the patterns, and pixel grain. The tutorial CNN
learns it round after round, well above chance but short of 100%.
`write_cifar10` stores any such arrays exactly as `cifar-10-batches-py/`, so
torchvision's own CIFAR10 loader reads them (with `data.check_integrity=false`,
since their md5 sums are not the official ones).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import NamedTuple

import numpy as np

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class Dataset(NamedTuple):
    """Images as uint8 [N, 32, 32, 3] (HWC, as torchvision's CIFAR10.data) and int64 labels."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def make_synthetic(num_train: int = 50_000, num_test: int = 10_000, seed: int = 0,
                   signal: float = 0.22, blotch: float = 60.0, grain: float = 25.0) -> Dataset:
    """Images of 10 classes; `signal` (how far apart the class patterns are, 0..1), `blotch`
    (coarse noise shaped like the patterns) and `grain` (pixel noise) set how hard it is."""
    rng = np.random.default_rng(seed)
    shared = rng.uniform(0, 255, size=(1, 4, 4, 3))
    coarse = (1 - signal) * shared + signal * rng.uniform(0, 255, size=(len(CLASSES), 4, 4, 3))
    prototypes = _upsample(coarse).astype(np.float32)  # [10, 32, 32, 3]
    # Every class pattern rolled by every (dy, dx) in [-3, 3]: samples pick one by index.
    shifted = np.stack([np.stack([np.roll(prototypes, (dy, dx), axis=(1, 2)) for dx in range(-3, 4)], axis=1)
                        for dy in range(-3, 4)], axis=1)  # [10, 7, 7, 32, 32, 3]
    # Pixel noise is drawn from a bank: fresh normals for 60,000 images would dominate the time.
    grain_bank = grain * rng.standard_normal(size=(2048, 32, 32, 3), dtype=np.float32)
    train = _draw(shifted, grain_bank, num_train, blotch, rng)
    test = _draw(shifted, grain_bank, num_test, blotch, rng)
    return Dataset(*train, *test)


def _upsample(coarse: np.ndarray) -> np.ndarray:
    return np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)


def _draw(shifted: np.ndarray, grain_bank: np.ndarray, count: int, blotch: float, rng: np.random.Generator):
    labels = rng.integers(0, len(shifted), size=count).astype(np.int64)
    images = np.empty((count, 32, 32, 3), dtype=np.uint8)
    for start in range(0, count, 5000):  # chunks keep the float temporaries small
        chunk = slice(start, min(start + 5000, count))
        n = chunk.stop - chunk.start
        dy, dx = rng.integers(0, 7, size=(2, n))
        sample = shifted[labels[chunk], dy, dx]
        sample -= 128
        sample *= rng.uniform(0.6, 1.2, size=(n, 1, 1, 1)).astype(np.float32)
        sample += 128
        sample += _upsample(blotch * rng.standard_normal(size=(n, 4, 4, 3), dtype=np.float32))
        sample += grain_bank[rng.integers(0, len(grain_bank), size=n)]
        images[chunk] = np.clip(sample, 0, 255)
    return images, labels


def write_cifar10(root: str | os.PathLike, dataset: Dataset) -> Path:
    """Write `dataset` as `root/cifar-10-batches-py/` (5 train batches, test_batch, batches.meta)."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    batches = np.array_split(np.arange(len(dataset.train_labels)), 5)
    for k, index in enumerate(batches, start=1):
        _write_batch(folder / f"data_batch_{k}", f"training batch {k} of 5",
                     dataset.train_images[index], dataset.train_labels[index])
    _write_batch(folder / "test_batch", "testing batch 1 of 1", dataset.test_images, dataset.test_labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(CLASSES), "num_cases_per_batch": len(batches[0]), "num_vis": 3072}, f)
    return folder


def _write_batch(path: Path, label: str, images: np.ndarray, labels: np.ndarray) -> None:
    # CIFAR-10 rows are 3072 bytes: the red plane, then green, then blue (CHW).
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
    entry = {
        "batch_label": label,
        "labels": [int(y) for y in labels],
        "data": np.ascontiguousarray(rows, dtype=np.uint8),
        "filenames": [f"synthetic_{i:05d}.png" for i in range(len(labels))],
    }
    with open(path, "wb") as f:
        pickle.dump(entry, f)
