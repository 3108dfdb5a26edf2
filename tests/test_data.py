import numpy as np
import pytest
from omegaconf import OmegaConf

from fedray import make_synthetic, write_cifar10
from fedray.data.cifar10 import DataError, load_cifar10, load_dataset


def test_written_files_read_back_through_torchvision(tmp_path):
    dataset = make_synthetic(250, 60, seed=4)
    write_cifar10(tmp_path, dataset)
    loaded = load_cifar10(str(tmp_path), download=False, check_integrity=False)
    for ours, theirs in zip(dataset, loaded):
        assert np.array_equal(ours, theirs)


def test_integrity_check_rejects_unofficial_files_with_the_fix(tiny_cifar):
    with pytest.raises(DataError, match="data.check_integrity=false"):
        load_cifar10(tiny_cifar, download=False, check_integrity=True)


def test_missing_root_without_download_names_the_key(tmp_path):
    with pytest.raises(DataError) as caught:
        load_cifar10(str(tmp_path / "absent"), download=False)
    assert "data.root=" in str(caught.value) and "cifar-10-python.tar.gz" in str(caught.value)


def test_corrupt_batch_is_a_data_error(tmp_path):
    write_cifar10(tmp_path, make_synthetic(100, 20))
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="data.root="):
        load_cifar10(str(tmp_path), download=False, check_integrity=False)


def test_synthetic_is_seeded_and_shaped_like_cifar10():
    a, b = make_synthetic(300, 50, seed=7), make_synthetic(300, 50, seed=7)
    assert a.train_images.shape == (300, 32, 32, 3) and a.train_images.dtype == np.uint8
    assert set(np.unique(a.train_labels)) <= set(range(10))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_subsample_is_seeded(tiny_cifar):
    data = OmegaConf.create({"name": "cifar10", "root": tiny_cifar, "download": False,
                             "check_integrity": False, "num_train": 100, "num_test": 30, "seed": 0})
    first, second = load_dataset(data), load_dataset(data)
    assert len(first.train_labels) == 100 and len(first.test_labels) == 30
    assert np.array_equal(first.train_images, second.train_images)
