"""The datasets beyond CIFAR-10, each read from small files written here in its real on-disk format
(torchvision's idx files and pickles, image folders, LEAF's JSON, TFF's HDF5, Hugging Face's parquet and csv);
their one-line errors before Ray; and one tiny job each on FEMNIST and Shakespeare."""

from __future__ import annotations

import json
import pickle
import struct

import numpy as np
import pytest
from PIL import Image

from fedray import load_config, run_job
from fedray.config import ConfigError
from fedray.data.cifar10 import load_dataset
from fedray.data.leaf import ALPHABET
from fedray.data.synthetic import make_synthetic, writer_ids
from fedray.dataset_catalog import DataError

RNG = np.random.default_rng(0)


def _images(count: int, shape: tuple[int, ...]) -> np.ndarray:
    return RNG.integers(0, 256, size=(count, *shape), dtype=np.uint8)


def _data(*overrides: str):
    return load_config(["model=femnist_cnn", *overrides], code_check=False).data


# --- torchvision's own files -------------------------------------------------------------------------------

def _write_idx(folder, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    """MNIST's idx format, uncompressed, as torchvision keeps it in <Name>/raw/."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, len(images), 28, 28) + images.tobytes())
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, len(labels)) + labels.astype(np.uint8).tobytes())


@pytest.mark.parametrize("name, folder, prefixes, classes", [
    ("mnist", "MNIST", ("train", "t10k"), 10),
    ("fashion_mnist", "FashionMNIST", ("train", "t10k"), 10),
    ("emnist", "EMNIST", ("emnist-byclass-train", "emnist-byclass-test"), 62),
])
def test_torchvision_idx_files_load_with_one_grey_channel(tmp_path, name, folder, prefixes, classes):
    written = {}
    for prefix, count in zip(prefixes, (40, 12)):
        images, labels = _images(count, (28, 28)), RNG.integers(0, classes, size=count)
        _write_idx(tmp_path / folder / "raw", prefix, images, labels)
        written[prefix] = images, labels
    dataset = load_dataset(_data(f"data={name}", f"data.root={tmp_path}", "data.download=false"))
    assert dataset.train_images.shape == (40, 28, 28, 1)
    assert np.array_equal(dataset.train_images[..., 0], written[prefixes[0]][0])
    assert np.array_equal(dataset.test_labels, written[prefixes[1]][1])


def test_cifar100_pickles_load_with_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    parts = {}
    for split, count in (("train", 30), ("test", 10)):
        images, labels = _images(count, (32, 32, 3)), RNG.integers(0, 100, size=count)
        rows = images.transpose(0, 3, 1, 2).reshape(count, 3072)
        with open(folder / split, "wb") as f:
            pickle.dump({"data": rows, "fine_labels": labels.tolist(), "coarse_labels": (labels // 5).tolist(),
                         "filenames": [f"{k}.png" for k in range(count)], "batch_label": split}, f)
        parts[split] = images, labels
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{k}" for k in range(100)], "coarse_label_names": [f"s{k}" for k in range(20)]}, f)
    dataset = load_dataset(_data("data=cifar100", f"data.root={tmp_path}", "data.download=false",
                                 "data.check_integrity=false"))
    assert np.array_equal(dataset.train_images, parts["train"][0])
    assert np.array_equal(dataset.test_labels, parts["test"][1])


def test_image_folder_uses_the_training_classes_for_the_test_set_and_resizes(tmp_path):
    for split, classes in (("train", ("ant", "bee", "cat")), ("test", ("bee", "cat"))):
        for name in classes:
            (tmp_path / split / name).mkdir(parents=True)
            for k in range(3):
                Image.fromarray(_images(1, (20, 24, 3))[0]).save(tmp_path / split / name / f"{k}.png")
    dataset = load_dataset(_data("data=image_folder", f"data.root={tmp_path}", "data.input_shape=[3,16,16]"))
    assert dataset.train_images.shape == (9, 16, 16, 3)
    assert sorted(set(dataset.train_labels)) == [0, 1, 2]
    assert sorted(set(dataset.test_labels)) == [1, 2]  # bee and cat keep the training set's numbers


# --- FEMNIST: LEAF's JSON, TFF's HDF5, Hugging Face's parquet ----------------------------------------------

def _femnist_writers(count: int = 3, per_writer: int = 20) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Writers' 28x28 images as LEAF stores them (floats k/255) and their classes (of 62)."""
    return {f"f{k:04d}_{k}": (_images(per_writer, (28, 28)), RNG.integers(0, 62, size=per_writer)) for k in range(count)}


def _write_leaf(path, users: dict[str, dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"users": list(users), "num_samples": [len(u["y"]) for u in users.values()],
                                "user_data": users}))


def _femnist_leaf(root, writers) -> None:
    users = {name: {"x": (images.reshape(len(images), -1) / 255).tolist(), "y": labels.tolist()}
             for name, (images, labels) in writers.items()}
    _write_leaf(root / "all_data" / "all_data_0.json", users)


def test_femnist_leaf_json_keeps_pixels_writers_and_holds_out_a_tenth_of_each(tmp_path):
    writers = _femnist_writers()
    _femnist_leaf(tmp_path, writers)
    dataset = load_dataset(_data("data=femnist", f"data.root={tmp_path}"))
    assert dataset.train_images.shape[1:] == (28, 28, 1) and len(dataset.test_labels) == 3 * 2
    for name, (images, labels) in writers.items():
        mine = dataset.train_ids == name
        assert mine.sum() == 18
        # Every training image of this writer is one of its written images, bit for bit after k/255 and back.
        written = {image.tobytes(): label for image, label in zip(images, labels)}
        assert all(written[image[..., 0].tobytes()] == label
                   for image, label in zip(dataset.train_images[mine], dataset.train_labels[mine]))


def test_femnist_tff_h5_reads_every_writer(tmp_path):
    h5py = pytest.importorskip("h5py")
    writers = _femnist_writers()
    for file, count in (("fed_emnist_train.h5", 15), ("fed_emnist_test.h5", 5)):
        with h5py.File(tmp_path / file, "w") as f:
            for name, (images, labels) in writers.items():
                f.create_dataset(f"examples/{name}/pixels", data=images[:count].astype(np.float32) / 255)
                f.create_dataset(f"examples/{name}/label", data=labels[:count].astype(np.int32))
    dataset = load_dataset(_data("data=femnist", "data.format=tff", f"data.root={tmp_path}"))
    first = next(iter(writers))
    assert np.array_equal(dataset.train_images[dataset.train_ids == first][..., 0], writers[first][0][:15])
    assert len(dataset.test_labels) == 15 and sorted(set(dataset.train_ids)) == sorted(writers)


def _hf_femnist_parquet(path, writers) -> None:
    datasets = pytest.importorskip("datasets")
    rows = {"image": [], "writer_id": [], "hsf_id": [], "character": []}
    for name, (images, labels) in writers.items():
        rows["image"] += [Image.fromarray(image, mode="L") for image in images]
        rows["writer_id"] += [name] * len(labels)
        rows["hsf_id"] += [0] * len(labels)
        rows["character"] += labels.tolist()
    features = datasets.Features({"image": datasets.Image(), "writer_id": datasets.Value("string"),
                                  "hsf_id": datasets.Value("int64"), "character": datasets.Value("int64")})
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))


def test_femnist_hugging_face_parquet_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    writers = _femnist_writers()
    _hf_femnist_parquet(tmp_path / "files" / "data" / "train-00000-of-00001.parquet", writers)
    dataset = load_dataset(_data("data=femnist", "data.format=parquet", f"data.root={tmp_path / 'files'}"))
    name = sorted(writers)[1]
    images, labels = writers[name]
    mine = dataset.train_ids == name
    written = {image.tobytes(): label for image, label in zip(images, labels)}
    assert mine.sum() == 18 and all(written[image[..., 0].tobytes()] == label for image, label
                                    in zip(dataset.train_images[mine], dataset.train_labels[mine]))


def test_any_hugging_face_dataset_from_parquet_csv_or_an_image_folder(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    images = _images(12, (8, 8, 3))
    names = ["cat", "dog", "emu"] * 4
    features = datasets.Features({"img": datasets.Image(), "animal": datasets.Value("string")})
    for split, part in (("train", slice(0, 9)), ("test", slice(9, 12))):
        datasets.Dataset.from_dict({"img": [Image.fromarray(i) for i in images[part]], "animal": names[part]},
                                   features=features).to_parquet(str(tmp_path / "pq" / f"{split}.parquet"))
    common = ("data=huggingface", "data.num_classes=3", "data.input_shape=[3,8,8]")
    parquet = load_dataset(_data(*common, f"data.root={tmp_path / 'pq'}", "data.train_files=train.parquet",
                                 "data.test_files=test.parquet", "data.input_column=img", "data.label_column=animal"))
    assert np.array_equal(parquet.train_images, images[:9]) and parquet.test_labels.tolist() == [0, 1, 2]

    (tmp_path / "csv" / "png").mkdir(parents=True)
    lines = ["file,animal"]
    for k, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / "csv" / "png" / f"{k}.png")
        lines.append(f"png/{k}.png,{names[k]}")
    (tmp_path / "csv" / "all.csv").write_text("\n".join(lines) + "\n")
    csv = load_dataset(_data(*common, f"data.root={tmp_path / 'csv'}", "data.format=csv", "data.train_files=all.csv",
                             "data.input_column=file", "data.label_column=animal"))
    assert len(csv.train_labels) + len(csv.test_labels) == 12 and csv.train_images.shape[1:] == (8, 8, 3)

    for k, image in enumerate(images):
        (tmp_path / "folder" / names[k]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(tmp_path / "folder" / names[k] / f"{k}.png")
    folder = load_dataset(_data(*common, f"data.root={tmp_path / 'folder'}", "data.format=imagefolder",
                                "data.train_files=**/*.png"))
    assert sorted(set(folder.train_labels) | set(folder.test_labels)) == [0, 1, 2]


# --- Shakespeare --------------------------------------------------------------------------------------------

def _shakespeare_roles(count: int = 3, per_role: int = 24) -> dict[str, dict]:
    text = "".join(RNG.choice(list(ALPHABET[1:]), size=400))
    return {f"THE_TRAGEDY_{k}_ROLE{k}": {"x": [text[s:s + 80] for s in range(k, k + per_role)],
                                          "y": [text[s + 80] for s in range(k, k + per_role)]} for k in range(count)}


def test_shakespeare_leaf_json_gives_token_windows_and_next_characters(tmp_path):
    roles = _shakespeare_roles()
    _write_leaf(tmp_path / "train" / "all_data_niid_0_train_9.json", roles)
    _write_leaf(tmp_path / "test" / "all_data_niid_0_test_9.json", {k: {"x": v["x"][:2], "y": v["y"][:2]} for k, v in roles.items()})
    dataset = load_dataset(_data("data=shakespeare", f"data.root={tmp_path}", "model=char_lstm"))
    assert dataset.train_images.shape == (72, 80) and dataset.train_images.dtype == np.int16
    first = next(iter(roles))
    assert "".join(ALPHABET[t] for t in dataset.train_images[0]) == roles[first]["x"][0]
    assert ALPHABET[dataset.train_labels[0]] == roles[first]["y"][0] and dataset.train_ids[0] == first
    assert len(dataset.test_labels) == 6


# --- the stand-in --------------------------------------------------------------------------------------------

def test_synthetic_takes_any_image_shape_and_writers_shaped_as_leafs():
    dataset = make_synthetic(500, 50, seed=3, shape=(28, 28, 1), num_classes=62)
    assert dataset.train_images.shape == (500, 28, 28, 1) and dataset.train_labels.max() < 62
    counts = np.bincount(writer_ids(340_000, 1500, seed=0))
    assert counts.sum() == 340_000 and len(counts) == 1500 and counts.min() >= 1
    assert 200 < counts.mean() < 250 and 60 < counts.std() < 110  # LEAF's 226.83 and 88.94
    assert np.array_equal(writer_ids(1000, 10, seed=1), writer_ids(1000, 10, seed=1))


def test_which_datasets_carry_a_natural_id_for_partition_natural():
    from omegaconf import OmegaConf

    from fedray.dataset_catalog import has_natural_id

    def data(**keys):
        return OmegaConf.create({"format": None, "id_column": None, "num_writers": None, **keys})

    assert has_natural_id(data(name="femnist")) and has_natural_id(data(name="shakespeare"))
    assert has_natural_id(data(name="femnist", format="tff"))
    assert has_natural_id(data(name="femnist", format="parquet", id_column="writer_id"))
    assert not has_natural_id(data(name="femnist", format="parquet"))
    assert has_natural_id(data(name="huggingface", id_column="user")) and not has_natural_id(data(name="huggingface"))
    assert has_natural_id(data(name="synthetic", num_writers=10)) and not has_natural_id(data(name="synthetic"))
    assert not any(has_natural_id(data(name=name)) for name in ("cifar10", "mnist", "emnist", "cifar100", "image_folder"))


# --- bad input: one line before Ray --------------------------------------------------------------------------

def test_bad_input_is_one_line_naming_the_key(tmp_path):
    def error(*overrides, code_check=True):
        with pytest.raises((ConfigError, DataError)) as caught:
            load_config(list(overrides), code_check=code_check)
        message = str(caught.value)
        assert "\n" not in message
        return message

    assert error("data=femnist").startswith("data.root: data=femnist reads local files")
    assert "fed_emnist_train.h5" in error("data=femnist", "data.format=tff", f"data.root={tmp_path}")
    assert "data.download=false" in error("data=mnist", f"data.root={tmp_path}", "data.download=false")
    _hf_femnist_parquet(tmp_path / "hf" / "train.parquet", _femnist_writers(1, 3))
    assert error("data=femnist", "data.format=parquet", f"data.root={tmp_path / 'hf'}", "data.id_column=author",
                 "model=femnist_cnn").startswith("data.id_column=author:")
    _femnist_leaf(tmp_path / "leaf", _femnist_writers(1, 3))
    femnist = ("data=femnist", f"data.root={tmp_path / 'leaf'}")
    assert "model=femnist_cnn" in error(*femnist)  # the CIFAR-10 tutorial CNN cannot take 28x28 grey images
    assert "(2, 62)" in error(*femnist, "model=femnist_cnn", "model.num_classes=10")
    assert "model=char_lstm" in error("data=shakespeare", f"data.root={tmp_path / 'leaf'}", "data.format=leaf")
    with pytest.raises(DataError, match=r"data.input_shape=\[1,32,32\]"):  # files that hold other than declared
        load_dataset(_data(*femnist, "data.input_shape=[1,32,32]"))


# --- tiny jobs, end to end ----------------------------------------------------------------------------------

@pytest.mark.usefixtures("ray_session")
@pytest.mark.parametrize("dataset, model, sites", [("femnist", "femnist_cnn", 3), ("shakespeare", "char_lstm", 2)])
def test_tiny_job_trains_and_evaluates(tmp_path, dataset, model, sites):
    if dataset == "femnist":
        _femnist_leaf(tmp_path / "data", _femnist_writers(sites, 30))
    else:
        _write_leaf(tmp_path / "data" / "all_data" / "all_data_0.json", _shakespeare_roles(sites, 30))
    cfg = load_config([f"data={dataset}", f"data.root={tmp_path / 'data'}", f"model={model}", f"num_clients={sites}",
                       "rounds=1", "local_epochs=1", "batch_size=16", "lr=0.05", "eval_batch_size=64"])
    summary = run_job(cfg, tmp_path / "run")
    assert summary["status"] == "completed" and len(summary["rounds"]) == 1
    last = summary["rounds"][-1]
    assert len(last["sites"]) == sites
    assert all(np.isfinite(site["train_loss"]) and site["num_steps"] > 0 for site in last["sites"].values())
    assert 0 <= last["global"]["test_accuracy"] <= 1 and np.isfinite(last["global"]["test_loss"])
    # Every site scored every site's best model and the server's on its validation split.
    matrix = summary["cross_site"]["results"]
    assert len(matrix) == sites and all(len(row) == sites + 2 for row in matrix.values())


@pytest.mark.usefixtures("ray_session")
def test_femnist_by_writer_gives_the_same_bits_one_site_a_task_on_two_actors_or_batched_on_one(tmp_path):
    """LEAF's FEMNIST split by writer (partition=natural) and LEAF's CNN: its 6.6M-parameter dense layer and
    its convolutions on one torch thread per site give the same weights whatever the batching and actors."""
    import torch

    _femnist_leaf(tmp_path / "data", _femnist_writers(3, 30))
    base = [f"data.root={tmp_path / 'data'}", "data=femnist", "model=femnist_cnn", "partition=natural", "num_clients=3",
            "rounds=2", "local_epochs=1", "batch_size=16", "lr=0.05", "eval_batch_size=64",
            "workflows.cross_site_validate.enabled=false"]
    weights = []
    for layout in (["site.sites_per_task=1", "site.num_actors=2"], ["site.sites_per_task=3", "site.num_actors=1"]):
        run_dir = tmp_path / layout[0]
        summary = run_job(load_config([*base, *layout]), run_dir)
        assert summary["status"] == "completed" and all(len(r["sites"]) == 3 for r in summary["rounds"])
        weights.append(torch.load(run_dir / "models" / "FL_global_model.pt", weights_only=True)["model"])
    partition = json.loads((tmp_path / "site.sites_per_task=1" / "partition.json").read_text())
    assert sorted(len(site["ids"]) for site in partition["sites"].values()) == [1, 1, 1]  # a writer a site
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
