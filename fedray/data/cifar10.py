"""Load the job's dataset once, in the driver, as uint8 arrays the sites share."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from fedray.dataset_catalog import DataError
from fedray.data.synthetic import Dataset, make_synthetic, writer_ids

ARCHIVE = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"


def default_root() -> str:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "fedray", "cifar10")


def ensure_dataset(data: DictConfig) -> None:
    """The quick checks (and the download, if allowed and needed): a bad data.root fails in a second.
    The other datasets' files are checked by `fedray.dataset_catalog.problems`, in the config's validation."""
    if data.name == "cifar10":
        _ensure_files(Path(data.root or default_root()).expanduser(), data.download)


def load_dataset(data: DictConfig) -> Dataset:
    if data.name == "synthetic":
        channels, height, width = data.get("input_shape") or (3, 32, 32)
        dataset = make_synthetic(data.num_train or 50_000, data.num_test or 10_000, seed=data.seed,
                                 shape=(height, width, channels), num_classes=data.get("num_classes") or 10)
        if data.get("num_writers"):  # FEMNIST-shaped writers over the samples, for natural partitions
            dataset = dataset._replace(train_ids=writer_ids(len(dataset.train_labels), data.num_writers, data.seed))
    elif data.name == "cifar10":
        dataset = load_cifar10(data.root or default_root(), data.download, data.check_integrity)
    else:
        from fedray.data.loaders import load

        dataset = load(data)
    return _subsample(dataset, data.num_train, data.num_test, data.seed)


def load_cifar10(root: str, download: bool = True, check_integrity: bool = True) -> Dataset:
    """CIFAR-10 through torchvision's loader, downloading into `root` on first use."""
    import torchvision

    root_path = Path(root).expanduser()
    _ensure_files(root_path, download)
    loader = torchvision.datasets.CIFAR10 if check_integrity else _unchecked_loader()
    try:
        train = loader(str(root_path), train=True, download=False)
        test = loader(str(root_path), train=False, download=False)
    except RuntimeError as err:
        if "corrupted" in str(err):
            raise DataError(
                f"data.root={root}: CIFAR-10 files there fail torchvision's md5 check; re-download them, "
                "or set data.check_integrity=false for files you made in CIFAR-10's format"
            ) from None
        raise DataError(f"data.root={root}: cannot read CIFAR-10 ({err})") from None
    except Exception as err:  # a truncated pickle, a missing batch file
        raise DataError(f"data.root={root}: cannot read CIFAR-10 files ({type(err).__name__}: {err})") from None
    return Dataset(
        np.asarray(train.data, dtype=np.uint8),
        np.asarray(train.targets, dtype=np.int64),
        np.asarray(test.data, dtype=np.uint8),
        np.asarray(test.targets, dtype=np.int64),
    )


def _ensure_files(root: Path, download: bool) -> None:
    have_files = (root / FOLDER).is_dir()
    have_archive = (root / ARCHIVE).is_file()
    if not have_files and (download or have_archive):
        _fetch(root, have_archive)
    elif not have_files:
        raise DataError(
            f"data.root={root}: no CIFAR-10 there and data.download=false; put {ARCHIVE} in that folder, "
            "set data.download=true, or run with data=synthetic"
        )


def _fetch(root: Path, have_archive: bool) -> None:
    import torchvision
    from torchvision.datasets.utils import extract_archive

    try:
        if have_archive:
            extract_archive(str(root / ARCHIVE), str(root))
        else:
            root.mkdir(parents=True, exist_ok=True)
            torchvision.datasets.CIFAR10(str(root), train=True, download=True)
    except Exception as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(
            f"data.root={root}: CIFAR-10 is not there and could not be fetched ({reason}); "
            f"put {ARCHIVE} in that folder, or run with data=synthetic"
        ) from None


def _unchecked_loader(base: Any = None):
    """torchvision's CIFAR10 (or `base`: CIFAR100) without the md5 check, for files in its format that are
    not the official ones."""
    import torchvision

    class UncheckedCIFAR10(base or torchvision.datasets.CIFAR10):
        def _check_integrity(self) -> bool:
            folder = Path(self.root) / self.base_folder
            return all((folder / name).is_file() for name, _ in self.train_list + self.test_list)

        def _load_meta(self) -> None:  # the same as torchvision's, less its md5 check
            with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {name: i for i, name in enumerate(self.classes)}

    return UncheckedCIFAR10


def _subsample(dataset: Dataset, num_train: int | None, num_test: int | None, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)

    def pick(images, labels, count, ids=None):
        if count is None or count >= len(labels):
            return images, labels, ids
        index = np.sort(rng.choice(len(labels), size=count, replace=False))
        return images[index], labels[index], None if ids is None else ids[index]

    train_images, train_labels, train_ids = pick(dataset.train_images, dataset.train_labels, num_train, dataset.train_ids)
    return Dataset(train_images, train_labels, *pick(dataset.test_images, dataset.test_labels, num_test)[:2], train_ids)
