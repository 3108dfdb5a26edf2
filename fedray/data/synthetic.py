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
from typing import NamedTuple, Optional

import numpy as np

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class Dataset(NamedTuple):
    """Inputs and int64 labels. Images are uint8 [N, H, W, C] (HWC, as torchvision's CIFAR10.data; C=1 for
    grey); token windows (next-token prediction) are int16 [N, L]; other features float32 [N, ...].
    `train_ids`: each training sample's natural id (its writer, its speaking role), or None."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    train_ids: Optional[np.ndarray] = None


def make_synthetic(num_train: int = 50_000, num_test: int = 10_000, seed: int = 0,
                   signal: float = 0.22, blotch: float = 60.0, grain: float = 25.0,
                   shape: tuple[int, int, int] = (32, 32, 3), num_classes: int = 10) -> Dataset:
    """Images (HWC `shape`) of `num_classes` classes; `signal` (how far apart the class patterns are, 0..1),
    `blotch` (coarse noise shaped like the patterns) and `grain` (pixel noise) set how hard it is.
    CIFAR-10's shape and classes by default (the same draws, so the same bits, as before shapes were keys)."""
    height, width, channels = shape
    rng = np.random.default_rng(seed)
    shared = rng.uniform(0, 255, size=(1, 4, 4, channels))
    coarse = (1 - signal) * shared + signal * rng.uniform(0, 255, size=(num_classes, 4, 4, channels))
    prototypes = _upsample(coarse, height, width).astype(np.float32)  # [K, H, W, C]
    # Every class pattern rolled by every (dy, dx) in [-3, 3]: samples pick one by index.
    shifted = np.stack([np.stack([np.roll(prototypes, (dy, dx), axis=(1, 2)) for dx in range(-3, 4)], axis=1)
                        for dy in range(-3, 4)], axis=1)  # [K, 7, 7, H, W, C]
    # Pixel noise is drawn from a bank: fresh normals for 60,000 images would dominate the time.
    grain_bank = grain * rng.standard_normal(size=(2048, height, width, channels), dtype=np.float32)
    train = _draw(shifted, grain_bank, num_train, blotch, rng)
    test = _draw(shifted, grain_bank, num_test, blotch, rng)
    return Dataset(*train, *test)


def _upsample(coarse: np.ndarray, height: int = 32, width: int = 32) -> np.ndarray:
    """A 4x4 grid blown up to height x width (cells of ceil(size / 4) pixels, cropped)."""
    grown = np.repeat(np.repeat(coarse, -(-height // 4), axis=1), -(-width // 4), axis=2)
    return grown[:, :height, :width]


def _draw(shifted: np.ndarray, grain_bank: np.ndarray, count: int, blotch: float, rng: np.random.Generator):
    height, width, channels = shifted.shape[3:]
    labels = rng.integers(0, len(shifted), size=count).astype(np.int64)
    images = np.empty((count, height, width, channels), dtype=np.uint8)
    for start in range(0, count, 5000):  # chunks keep the float temporaries small
        chunk = slice(start, min(start + 5000, count))
        n = chunk.stop - chunk.start
        dy, dx = rng.integers(0, 7, size=(2, n))
        sample = shifted[labels[chunk], dy, dx]
        sample -= 128
        sample *= rng.uniform(0.6, 1.2, size=(n, 1, 1, 1)).astype(np.float32)
        sample += 128
        sample += _upsample(blotch * rng.standard_normal(size=(n, 4, 4, channels), dtype=np.float32), height, width)
        sample += grain_bank[rng.integers(0, len(grain_bank), size=n)]
        images[chunk] = np.clip(sample, 0, 255)
    return images, labels


# LEAF's FEMNIST (Caldas et al. 2018, table 1): 226.83 samples per writer on average, standard deviation 88.94.
LEAF_FEMNIST_MEAN, LEAF_FEMNIST_STD = 226.83, 88.94


def writer_ids(num_samples: int, num_writers: int, seed: int) -> np.ndarray:
    """Each of `num_samples` samples' writer (0 .. num_writers - 1), the writers' counts shaped as LEAF's
    FEMNIST's (a normal of its mean and deviation, at least 1/10 of the mean), scaled to `num_samples`;
    seeded by (seed, "writers"), so the images' own draws are untouched."""
    if not 1 <= num_writers <= num_samples:
        raise ValueError(f"data.num_writers={num_writers}: must be between 1 and the {num_samples} training samples")
    rng = np.random.default_rng([seed, int.from_bytes(b"writers", "little")])
    shape = np.clip(rng.normal(LEAF_FEMNIST_MEAN, LEAF_FEMNIST_STD, size=num_writers), LEAF_FEMNIST_MEAN / 10, None)
    counts = np.maximum(np.floor(shape / shape.sum() * num_samples).astype(np.int64), 1)
    counts[np.argsort(-shape)[: max(0, num_samples - counts.sum())]] += 1  # the remainder, to the largest writers
    while counts.sum() > num_samples:  # the floor of 1 took more than the remainder: from the largest
        counts[np.argmax(counts)] -= 1
    return rng.permutation(np.repeat(np.arange(num_writers), counts))


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
