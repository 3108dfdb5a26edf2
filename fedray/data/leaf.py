"""LEAF's JSON files (github.com/TalwalkarLab/leaf): `{"users": [...], "num_samples": [...], "user_data":
{user: {"x": [...], "y": [...]}}}`, one file or many (all_data/*.json; train/ and test/ after LEAF's split).

FEMNIST: x is a writer's 28x28 image as 784 floats in [0, 1], y its class (0-9 digits, 10-35 upper, 36-61
lower case); stored as uint8 [N, 28, 28, 1]. Shakespeare: x is 80 characters of a speaking role's lines, y
the next one (next-character prediction); stored as int16 indices into LEAF's 80-character alphabet. The
user (writer, role) is each sample's natural id.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from fedray.dataset_catalog import DataError
from fedray.data.synthetic import Dataset

# LEAF's models/shakespeare (utils/language_utils.py ALL_LETTERS): index = position, as FedJAX's too.
ALPHABET = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
WINDOW = 80
_INDEX = {letter: k for k, letter in enumerate(ALPHABET)}
_TABLE = np.full(256, -1, dtype=np.int16)  # byte -> index into ALPHABET; -1: not in it
_TABLE[[ord(letter) for letter in ALPHABET]] = np.arange(len(ALPHABET))


def load_leaf(name: str, root: str, seed: int) -> Dataset:
    """`name` (femnist | shakespeare) from LEAF's JSON under `root`; without LEAF's train/test split, a
    tenth of each user's samples is the test set (LEAF's own split.sh default)."""
    from fedray.data.held_out import hold_out_test
    from fedray.dataset_catalog import leaf_files

    train_files, test_files = leaf_files(Path(root).expanduser())
    convert = _femnist if name == "femnist" else _shakespeare
    inputs, labels, ids = _read(train_files, convert)
    if not test_files:
        return hold_out_test(inputs, labels, ids, seed)
    test_inputs, test_labels, _ = _read(test_files, convert)
    return Dataset(inputs, labels, test_inputs, test_labels, ids)


def _read(files: list[str], convert) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    inputs, labels, ids = [], [], []
    for file in files:
        try:
            with open(file) as f:
                content = json.load(f)
            users = {user: content["user_data"][user] for user in content["users"]}
            for user, samples in users.items():
                x, y = convert(samples["x"], samples["y"], file)
                inputs.append(x)
                labels.append(y)
                ids.append(np.full(len(y), user))
        except DataError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as err:  # not JSON, or not LEAF's keys
            raise DataError(f"data.root: {file} is not a LEAF JSON file ({type(err).__name__}: {err})") from None
    if not inputs:
        raise DataError(f"data.root: the LEAF files {files[:1]} hold no users")
    return np.concatenate(inputs), np.concatenate(labels), np.concatenate(ids)


def _femnist(x: list[Any], y: list[Any], file: str) -> tuple[np.ndarray, np.ndarray]:
    pixels = np.asarray(x, dtype=np.float32)
    if pixels.ndim != 2 or pixels.shape[1] != 28 * 28:
        raise DataError(f"data.root: {file} holds FEMNIST inputs of shape {list(pixels.shape[1:])}, not 784 pixels")
    images = np.rint(np.clip(pixels, 0, 1) * 255).astype(np.uint8).reshape(-1, 28, 28, 1)
    return images, np.asarray(y, dtype=np.int64)


def _shakespeare(x: list[str], y: list[str], file: str) -> tuple[np.ndarray, np.ndarray]:
    if any(len(window) != WINDOW for window in x) or any(len(letter) != 1 for letter in y):
        raise DataError(f"data.root: {file} holds Shakespeare windows that are not {WINDOW} characters long, "
                        "or targets that are not one character")
    # One table lookup over all the bytes (LEAF's alphabet is ASCII): 4 million windows in seconds, not minutes.
    text = "".join(x) + "".join(y)
    raw = np.frombuffer(text.encode("latin-1", errors="replace"), dtype=np.uint8)
    codes = _TABLE[raw]
    if (codes < 0).any() or not text.isascii():
        bad = next(letter for letter in text if letter not in _INDEX)
        raise DataError(f"data.root: {file} has the character {bad!r}, which is not in LEAF's 80-character alphabet")
    split = len(x) * WINDOW
    return codes[:split].reshape(-1, WINDOW), codes[split:].astype(np.int64)
