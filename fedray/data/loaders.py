"""Loading any dataset but CIFAR-10 and the stand-in (fedray/data/cifar10.py's `load_dataset` hands them
here): the reader `data.name` and `data.format` pick, imported when used, and the check that the files hold
what the dataset declares."""

from __future__ import annotations

from typing import Any

import numpy as np

from fedray.dataset_catalog import FORMATS, TORCHVISION_FILES, DataError, DataSpec, default_root, spec_of
from fedray.data.synthetic import Dataset


def load(data: Any) -> Dataset:
    """The dataset `data.name` names, by its reader (any but CIFAR-10 and the stand-in), checked against its
    declaration (`spec_of`)."""
    name, form = data.name, data.format or FORMATS.get(data.name, ("",))[0]
    root = data.root or default_root(name)
    if name in TORCHVISION_FILES:
        from fedray.data.torchvision_sets import load_torchvision

        dataset = load_torchvision(name, root, data.download, data.check_integrity, data.split or "byclass")
    elif name == "image_folder":
        from fedray.data.torchvision_sets import load_image_folder

        dataset = load_image_folder(root, tuple(data.input_shape), data.seed)
    elif form == "leaf":
        from fedray.data.leaf import load_leaf

        dataset = load_leaf(name, root, data.seed)
    elif form == "tff":
        from fedray.data.tff import load_tff_emnist

        dataset = load_tff_emnist(root)
    else:
        from fedray.data.huggingface import load_local_files

        dataset = load_local_files(data, form, root)
    check_loaded(dataset, spec_of(data), name)
    return dataset


def check_loaded(dataset: Dataset, spec: DataSpec, name: str) -> None:
    """The files hold what the dataset declares: one line naming the key when they do not."""
    inputs = dataset.train_images
    shape = tuple(inputs.shape[1:]) if inputs.ndim != 4 else (inputs.shape[3], *inputs.shape[1:3])
    if shape != spec.input_shape:
        raise DataError(f"data.input_shape={_listed(spec.input_shape)}: data={name}'s files hold inputs of shape "
                        f"{_listed(shape)}; set data.input_shape={_listed(shape)}")
    labels = np.concatenate([dataset.train_labels, dataset.test_labels])
    if len(labels) and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise DataError(f"data.num_classes={spec.num_classes}: data={name}'s labels run from {labels.min()} to "
                        f"{labels.max()}; set data.num_classes={labels.max() + 1}")
    if len(dataset.train_labels) == 0 or len(dataset.test_labels) == 0:
        raise DataError(f"data={name}: the files hold {len(dataset.train_labels)} training and "
                        f"{len(dataset.test_labels)} test samples; a job needs both")


def _listed(shape: tuple[int, ...]) -> str:
    """A shape as the override that sets it: [1,28,28]."""
    return "[" + ",".join(str(size) for size in shape) + "]"
