"""torchvision's own loaders and files: MNIST, Fashion-MNIST, EMNIST, CIFAR-100 (downloaded when
`data.download` and torchvision can; never needed), and any `ImageFolder` (root/<class>/*.png), as uint8
HWC arrays like CIFAR-10's."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedray.dataset_catalog import DataError
from fedray.data.cifar10 import _unchecked_loader
from fedray.data.synthetic import Dataset

TITLES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "emnist": "EMNIST", "cifar100": "CIFAR-100"}


def load_torchvision(name: str, root: str, download: bool, check_integrity: bool = True, split: str = "byclass") -> Dataset:
    """`name`'s train and test sets through torchvision's class, from `root` (its own layout under it)."""
    import torchvision.datasets as sets

    root_path = Path(root).expanduser()
    loader = {"mnist": sets.MNIST, "fashion_mnist": sets.FashionMNIST, "emnist": sets.EMNIST,
              "cifar100": sets.CIFAR100 if check_integrity else _unchecked_loader(sets.CIFAR100)}[name]
    options = {"split": split} if name == "emnist" else {}
    parts = []
    for train in (True, False):
        try:
            if download:
                root_path.mkdir(parents=True, exist_ok=True)
            parts.append(loader(str(root_path), train=train, download=download, **options))
        except Exception as err:  # no files and no network, a truncated file, an md5 mismatch
            reason = (str(err).splitlines() or [type(err).__name__])[0]
            fix = "; set data.check_integrity=false for files you made in its format" if "corrupt" in reason else ""
            raise DataError(f"data.root={root}: cannot read {TITLES[name]} ({reason}){fix}") from None
    train, test = parts
    return Dataset(_hwc(train.data), np.asarray(train.targets, dtype=np.int64),
                   _hwc(test.data), np.asarray(test.targets, dtype=np.int64))


def _hwc(images) -> np.ndarray:
    """torchvision's images as uint8 [N, H, W, C]: MNIST's [N, 28, 28] tensors get their one channel."""
    array = np.asarray(images.numpy() if hasattr(images, "numpy") else images, dtype=np.uint8)
    return array[..., None] if array.ndim == 3 else array


def load_image_folder(root: str, input_shape: tuple[int, int, int], seed: int) -> Dataset:
    """torchvision's ImageFolder: root/train/<class>/ and root/test/<class>/ (or root/<class>/, a seeded tenth
    of each class held out as the test set), images resized to `input_shape` ([C, H, W]; C=1 grey, 3 RGB)."""
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    from fedray.data.held_out import hold_out_test

    channels, height, width = input_shape
    if channels not in (1, 3):
        raise DataError(f"data.input_shape={list(input_shape)}: an image folder gives 1 (grey) or 3 (RGB) channels")
    folder = Path(root).expanduser()
    train_root = folder / "train" if (folder / "train").is_dir() else folder
    train = ImageFolder(str(train_root))
    images, labels = _decode(train.samples, channels, (width, height))
    if train_root == folder:
        return hold_out_test(images, labels, labels, seed)
    # The test set by the training set's class indices, whatever classes its own folders lack.
    try:
        test_samples = make_dataset(str(folder / "test"), train.class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    except FileNotFoundError as err:
        raise DataError(f"data.root={root}: {err}") from None
    return Dataset(images, labels, *_decode(test_samples, channels, (width, height)))


def _decode(samples: list[tuple[str, int]], channels: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    images = np.empty((len(samples), size[1], size[0], channels), dtype=np.uint8)
    for k, (path, _) in enumerate(samples):
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            if image.size != size:
                image = image.resize(size, Image.BILINEAR)
            images[k] = np.asarray(image).reshape(size[1], size[0], channels)
    return images, np.asarray([label for _, label in samples], dtype=np.int64)
