import numpy as np
import pytest

from fedray.data.partition import partition


def _labels(n=2000, classes=10, seed=0):
    return np.random.default_rng(seed).integers(0, classes, size=n)


@pytest.mark.parametrize("method", ["iid", "dirichlet"])
def test_shards_cover_every_sample_exactly_once(method):
    labels = _labels()
    shards = partition(labels, 7, method=method, alpha=0.3, val_fraction=0.1, seed=5)
    everything = np.concatenate([np.concatenate([s.train, s.val]) for s in shards])
    assert np.array_equal(np.sort(everything), np.arange(len(labels)))
    for shard in shards:
        assert len(shard.val) >= 1 and len(shard.train) >= 1


def test_iid_is_balanced_and_holds_out_the_val_fraction():
    shards = partition(_labels(1000), 4, val_fraction=0.2, seed=0)
    sizes = [len(s.train) + len(s.val) for s in shards]
    assert sizes == [250] * 4
    assert all(len(s.val) == 50 for s in shards)


def test_seed_decides_the_split():
    labels = _labels()
    a = partition(labels, 5, method="dirichlet", alpha=0.5, seed=1)
    b = partition(labels, 5, method="dirichlet", alpha=0.5, seed=1)
    c = partition(labels, 5, method="dirichlet", alpha=0.5, seed=2)
    assert all(np.array_equal(x.train, y.train) for x, y in zip(a, b))
    assert not all(np.array_equal(x.train, y.train) for x, y in zip(a, c))


def test_small_alpha_skews_labels():
    labels = _labels(5000)

    def top_class_share(alpha):
        shards = partition(labels, 5, method="dirichlet", alpha=alpha, seed=0)
        shares = [np.bincount(labels[s.train], minlength=10).max() / len(s.train) for s in shards]
        return float(np.mean(shares))

    assert top_class_share(0.1) > 2 * top_class_share(100.0)
    assert top_class_share(100.0) < 0.2


def test_impossible_dirichlet_names_the_fix():
    with pytest.raises(ValueError, match="partition.alpha"):
        partition(_labels(100), 50, method="dirichlet", alpha=0.01, min_samples=2, seed=0)
