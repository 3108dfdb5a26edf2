"""The datasets a job can name (`data.name`): what each declares (its task, input shape and classes, which
the model check, the sites and the stand-in follow), what files it needs (`problems`: one line each, checked
by `fedray.config.validate` before Ray starts), and which reader loads it. No torch here: the readers import
theirs (torchvision, h5py, Hugging Face `datasets`) when they run.
"""

from __future__ import annotations

import csv
import glob
import os
from pathlib import Path
from typing import Any, NamedTuple


TASKS = ("image_classification", "next_token")
NAMES = ("cifar10", "synthetic", "mnist", "fashion_mnist", "emnist", "cifar100", "image_folder", "femnist",
         "shakespeare", "huggingface")
# The formats each name reads (`data.format`); null: the first.
FORMATS = {"femnist": ("leaf", "tff", "parquet"), "shakespeare": ("leaf",), "huggingface": ("parquet", "csv", "imagefolder")}
# torchvision's EMNIST splits and their classes (`letters` keeps torchvision's unused class 0, N/A).
EMNIST_CLASSES = {"byclass": 62, "bymerge": 47, "balanced": 47, "letters": 27, "digits": 10, "mnist": 10}
KNOWN_CLASSES = {"cifar10": 10, "synthetic": 10, "mnist": 10, "fashion_mnist": 10, "cifar100": 100, "femnist": 62, "shakespeare": 80}
# torchvision's folder under data.root and a file its loader needs, by name: the quick check before Ray.
TORCHVISION_FILES = {
    "mnist": "MNIST/raw/train-images-idx3-ubyte",
    "fashion_mnist": "FashionMNIST/raw/train-images-idx3-ubyte",
    "emnist": "EMNIST/raw/emnist-{split}-train-images-idx3-ubyte",
    "cifar100": "cifar-100-python/train",
}
TFF_FILES = ("fed_emnist_train.h5", "fed_emnist_test.h5")
EXTRA = "pip install 'fedray[datasets]'"


class DataError(RuntimeError):
    """The dataset cannot be loaded; the message is one line naming the key or path."""


class DataSpec(NamedTuple):
    """What a dataset gives the model: `input_shape` ([C, H, W] images; [L] token windows), the number of
    classes (of the next token: the vocabulary), and the task."""

    task: str
    input_shape: tuple[int, ...]
    num_classes: int


def spec_of(data: Any) -> DataSpec:
    """The dataset's declaration: `data.task` and `data.input_shape` as configured (conf/data/ sets them per
    dataset), `data.num_classes` or, when null, the dataset's own count (an EMNIST split's, an image folder's
    class folders)."""
    num_classes = data.num_classes
    if num_classes is None:
        if data.name == "emnist":
            num_classes = EMNIST_CLASSES.get(data.split or "byclass", 0)
        elif data.name == "image_folder":
            num_classes = len(_class_folders(_image_folder_train(Path(data.root))))
        else:
            num_classes = KNOWN_CLASSES.get(data.name, 0)
    return DataSpec(data.task, tuple(int(size) for size in data.input_shape), int(num_classes))


def has_natural_id(data: Any) -> bool:
    """Whether the dataset's training samples carry a natural id (a writer, a speaking role) for
    partition=natural: LEAF's and TFF's files always, a Hugging Face layout by its `data.id_column`, the
    stand-in with `data.num_writers`."""
    if data.name == "synthetic":
        return bool(data.num_writers)
    if data.name in ("femnist", "shakespeare") and (data.format or "leaf") in ("leaf", "tff"):
        return True
    return data.name in ("femnist", "huggingface") and bool(data.id_column)


def default_root(name: str) -> str:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "fedray", name)


def problems(data: Any) -> list[str]:
    """What stops `data` from loading, found without reading the data: a missing folder, file, column or
    reader library; one line each, naming the key and the fix."""
    name = data.name
    if name in ("cifar10", "synthetic"):
        return []  # CIFAR-10 may still be downloaded: fedray.data.cifar10.ensure_dataset checks it
    if name in FORMATS and (data.format or FORMATS[name][0]) not in FORMATS[name]:
        return [f"data.format={data.format}: data={name} reads {', '.join(FORMATS[name])}"]
    if name == "emnist" and (data.split or "byclass") not in EMNIST_CLASSES:
        return [f"data.split={data.split}: EMNIST's splits are {', '.join(EMNIST_CLASSES)}"]
    if name in TORCHVISION_FILES:
        root = Path(data.root or default_root(name)).expanduser()
        needed = root / TORCHVISION_FILES[name].format(split=data.split or "byclass")
        if not needed.is_file() and not data.download:
            return [f"data.root={root}: no {needed.relative_to(root)} there and data.download=false; put torchvision's "
                    f"{name} files there or set data.download=true"]
        return []
    if not data.root:
        return [f"data.root: data={name} reads local files; set data.root to their folder"]
    root = Path(data.root).expanduser()
    if not root.is_dir():
        return [f"data.root={data.root}: no such folder"]
    if name == "image_folder":
        if not _class_folders(_image_folder_train(root)):
            return [f"data.root={data.root}: no class folders (root/<class>/*.png, or root/train/<class>/ and "
                    "root/test/<class>/) there"]
        return []
    form = data.format or FORMATS[name][0]
    if form == "leaf":
        if not leaf_files(root)[0]:
            return [f"data.root={data.root}: no LEAF JSON files (train/*.json and test/*.json, or all_data/*.json) there"]
        return []
    if form == "tff":
        missing = [file for file in TFF_FILES if not (root / file).is_file()]
        if missing:
            return [f"data.root={data.root}: no {missing[0]} there (TFF's federated EMNIST: {' and '.join(TFF_FILES)})"]
        return _missing_library("h5py", "data.format=tff")
    return _file_problems(data, root, form)


def _file_problems(data: Any, root: Path, form: str) -> list[str]:
    """Hugging Face's local files (and FEMNIST's parquet layout): the files exist, the columns are there."""
    if data.name == "huggingface":
        if data.num_classes is None:
            return ["data.num_classes: set it for data=huggingface (the number of labels in data.label_column)"]
        if not data.train_files:
            return ["data.train_files: set it for data=huggingface (a glob under data.root, e.g. 'train-*.parquet')"]
    for key in ("input_column", "label_column"):
        if form != "imagefolder" and not data[key]:
            return [f"data.{key}: set it for data={data.name} format={form} (the column's name)"]
    for key in ("train_files", "test_files"):
        pattern = data[key] or ("**/*.parquet" if key == "train_files" else None)
        if pattern and not data_files(root, pattern):
            return [f"data.{key}={pattern}: no file under data.root={data.root} matches it"]
    missing = _missing_library("datasets", f"data={data.name} format={form}")
    if missing or form == "imagefolder":
        return missing
    wanted = [column for column in (data.input_column, data.label_column, data.id_column) if column]
    for file in data_files(root, data.train_files or "**/*.parquet")[:1] + data_files(root, data.test_files or "")[:1]:
        columns = _columns(file, form)
        absent = [column for column in wanted if column not in columns]
        if absent:
            key = {data.input_column: "input_column", data.label_column: "label_column", data.id_column: "id_column"}[absent[0]]
            return [f"data.{key}={absent[0]}: {file} has no such column (it has {', '.join(columns)})"]
    return []


def _columns(file: str, form: str) -> list[str]:
    if form == "csv":
        with open(file, newline="") as f:
            return next(csv.reader(f), [])
    import pyarrow.parquet as pq

    return list(pq.read_schema(file).names)


def _missing_library(module: str, what: str) -> list[str]:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        return [f"{what}: needs {module}, which is not installed; {EXTRA}"]
    return []


def data_files(root: Path, pattern: str) -> list[str]:
    """The files under `root` matching the glob `pattern` (sorted: the same order on every machine)."""
    if not pattern:
        return []
    return sorted(path for path in glob.glob(str(Path(root).expanduser() / pattern), recursive=True) if os.path.isfile(path))


def leaf_files(root: Path) -> tuple[list[str], list[str]]:
    """LEAF's JSON files: (train, test) after its split (train/*.json, test/*.json), else (all, []) from
    all_data/*.json or the folder itself."""
    train, test = data_files(root, "train/*.json"), data_files(root, "test/*.json")
    if train:
        return train, test
    return data_files(root, "all_data/*.json") or data_files(root, "*.json"), []


def _image_folder_train(root: Path) -> Path:
    return root / "train" if (root / "train").is_dir() else root


def _class_folders(folder: Path) -> list[str]:
    return sorted(entry.name for entry in folder.iterdir() if entry.is_dir()) if folder.is_dir() else []
