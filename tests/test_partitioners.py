"""The partitioners beyond IID and Dirichlet (fedray/data/partitioners.py), partition.json and its heat map.

Pure functions on generated labels and ids, checked against flwr-datasets' own partitioners where that package is
installed (it is not a fedray dependency), plus one tiny job whose run folder must describe the split it trained on.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedray import load_config
from fedray.config import ConfigError
from fedray.data.partition import partition
from fedray.data.partitioners import size_skew_sizes
from fedray.records.partition_file import partition_summary, save_partition

NEW_METHODS = ("inner_dirichlet", "natural", "shard", "pathological", "linear", "square", "exponential")


def _labels(n: int = 2000, classes: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, classes, size=n)


def _writers(n: int = 2000, writers: int = 37, seed: int = 1) -> np.ndarray:
    """String ids, as LEAF's writers ("f0123_45"), of uneven sample counts, each writer at least once."""
    weights = np.random.default_rng(seed).pareto(1.5, writers) + 0.1
    drawn = np.r_[np.arange(writers), np.random.default_rng(seed + 1).choice(writers, size=n - writers,
                                                                              p=weights / weights.sum())]
    return np.array([f"f{w:04d}_{w % 7}" for w in drawn])


def _members(shard) -> np.ndarray:
    return np.concatenate([shard.train, shard.val])


def _split(method: str, num_sites: int = 6, labels=None, ids=None, **keys):
    labels = _labels() if labels is None else labels
    ids = _writers(len(labels)) if ids is None and method == "natural" else ids
    return partition(labels, num_sites, method=method, ids=ids, **{"seed": 3, "val_fraction": 0.1, **keys})


@pytest.mark.parametrize("method", NEW_METHODS)
def test_no_sample_is_on_two_sites_and_every_site_has_train_and_val(method):
    shards = _split(method)
    everything = np.concatenate([_members(s) for s in shards])
    assert len(np.unique(everything)) == len(everything)
    assert all(len(s.train) >= 1 and len(s.val) >= 1 for s in shards)
    if method not in ("shard", "pathological"):  # these two may leave a remainder out (see their docstrings)
        assert np.array_equal(np.sort(everything), np.arange(2000))


@pytest.mark.parametrize("method", NEW_METHODS)
def test_the_seed_decides_the_split(method):
    a, b, c = _split(method, seed=1), _split(method, seed=1), _split(method, seed=2)
    assert all(np.array_equal(x.train, y.train) and np.array_equal(x.val, y.val) for x, y in zip(a, b))
    assert not all(np.array_equal(x.train, y.train) for x, y in zip(a, c))


def test_shards_are_label_sorted_pieces_of_equal_size():
    labels = _labels(1000)
    shards = _split("shard", num_sites=10, labels=labels, shards_per_site=2)
    assert [len(_members(s)) for s in shards] == [2 * (1000 // 20)] * 10
    # A shard is a run of the label-sorted order: at most two labels each, so at most 4 on a site of 2 shards.
    assert max(len(np.unique(labels[_members(s)])) for s in shards) <= 4
    assert np.mean([len(np.unique(labels[_members(s)])) for s in shards]) < 3.5  # far from IID's 10


@pytest.mark.parametrize("assignment", ["first-deterministic", "random", "deterministic"])
def test_pathological_gives_each_site_exactly_its_classes(assignment):
    labels = _labels(3000)
    shards = _split("pathological", num_sites=12, labels=labels, classes_per_site=3, class_assignment=assignment)
    assert all(len(np.unique(labels[_members(s)])) == 3 for s in shards)
    if assignment != "random":  # 12 sites >= 10 classes: these two use every class, so every sample
        assert sum(len(_members(s)) for s in shards) == 3000


def test_deterministic_assignment_gives_site_k_the_classes_from_k_on():
    labels = _labels(1000)
    shards = _split("pathological", num_sites=4, labels=labels, classes_per_site=2, class_assignment="deterministic")
    assert [sorted(np.unique(labels[_members(s)]).tolist()) for s in shards] == [[0, 1], [1, 2], [2, 3], [3, 4]]


@pytest.mark.parametrize("skew, f", [("linear", lambda k: k), ("square", lambda k: k * k),
                                      ("exponential", lambda k: np.exp(k))])
def test_size_skews_give_site_k_a_share_f_of_k(skew, f):
    sizes = np.array([len(_members(s)) for s in _split(skew, num_sites=5, labels=_labels(10_000))])
    k = np.arange(1, 6)
    assert sizes.sum() == 10_000 and np.all(np.diff(sizes) > 0)
    np.testing.assert_allclose(sizes, f(k) / f(k).sum() * 10_000, atol=5)


@pytest.mark.parametrize("sizes", ["equal", "square"])
def test_inner_dirichlet_gives_each_site_its_size_and_small_alpha_skews_its_labels(sizes):
    labels = _labels(6000)
    expected = [600] * 10 if sizes == "equal" else size_skew_sizes(6000, 10, "square").tolist()

    def split(alpha):
        shards = _split("inner_dirichlet", num_sites=10, labels=labels, alpha=alpha, sizes=sizes)
        assert [len(_members(s)) for s in shards] == expected
        return _top_class_share(labels, shards)

    assert split(0.1) > 0.5 > 0.2 > split(100.0)


def _top_class_share(labels: np.ndarray, shards) -> float:
    """The mean over sites of the share of a site's most common class: 1/classes for IID, 1 for one class each."""
    return float(np.mean([np.bincount(labels[_members(s)]).max() / len(_members(s)) for s in shards]))


def test_exponential_sizes_stay_finite_for_many_sites():
    sizes = size_skew_sizes(10**9, 800, "exponential")  # e^800 overflows; the shifted shares do not
    assert sizes.sum() == 10**9 and sizes[-1] > 0.6 * 10**9 and sizes.min() >= 0


def test_natural_with_as_many_ids_as_sites_gives_site_k_the_k_th_id():
    ids = np.array(["carol", "alice", "bob", "alice", "carol", "carol", "bob", "alice"] * 5)
    shards = _split("natural", num_sites=3, labels=_labels(len(ids)), ids=ids)
    assert [np.unique(ids[_members(s)]).tolist() for s in shards] == [["alice"], ["bob"], ["carol"]]
    assert [len(_members(s)) for s in shards] == [15, 10, 15]


def test_natural_groups_more_ids_than_sites_whole_and_evenly_by_id_count():
    ids = _writers(writers=37)
    shards = _split("natural", num_sites=5, ids=ids)
    groups = [np.unique(ids[_members(s)]) for s in shards]
    assert sorted(len(g) for g in groups) == [7, 7, 7, 8, 8]  # np.array_split of 37 ids into 5
    assert len(np.unique(np.concatenate(groups))) == 37  # every writer on exactly one site, whole


def test_natural_ids_may_be_integers_or_mixed():
    ids = np.repeat(np.array([17, 3, 42, 8]), 25)
    shards = _split("natural", num_sites=4, labels=_labels(100), ids=ids)
    assert [np.unique(ids[_members(s)]).tolist() for s in shards] == [[3], [8], [17], [42]]
    mixed = np.array([7, "b", None, 7, "b", None], dtype=object)  # as a column read from a file may be
    shards = partition(_labels(6), 3, method="natural", ids=mixed, val_fraction=0)
    summary = partition_summary(_labels(6), shards, {"name": "natural"}, 0, 0.0, mixed)
    assert [site["ids"] for site in summary["sites"].values()] == [["7"], ["None"], ["b"]]


@pytest.mark.parametrize("method, keys, line", [
    ("shard", {"labels": _labels(50), "shards_per_site": 10},
     "partition.shards_per_site=10: 10 x num_clients=6 shards need at least 60 training samples, there are 50; "
     "lower partition.shards_per_site or num_clients"),
    ("pathological", {"classes_per_site": 11},
     "partition.classes_per_site=11: the training set has 10 classes; choose at most 10"),
    ("pathological", {"labels": np.r_[np.zeros(100, int), 1, 2], "classes_per_site": 3},
     "partition.classes_per_site=3: class 1 has 1 samples for the 6 sites that drew it"),
    ("exponential", {"labels": _labels(1000), "num_sites": 10},
     "partition.name=exponential: num_clients=10 sites leave site-1 0 of the 1000 training samples"),
    ("natural", {"ids": np.array(["a", "b", "a", "c"] * 10), "labels": _labels(40)},
     "num_clients=6: the training set has 3 natural ids, fewer than the sites; lower num_clients to at most 3 "
     "or use another partition"),
])
def test_an_impossible_split_is_one_line_naming_the_key(method, keys, line):
    with pytest.raises(ValueError) as caught:
        _split(method, **keys)
    assert str(caught.value).startswith(line) and "\n" not in str(caught.value)


def test_natural_without_ids_is_one_line():
    with pytest.raises(ValueError, match="^partition.name=natural: this dataset has no natural id"):
        partition(_labels(40), 4, method="natural", ids=None)


@pytest.mark.parametrize("overrides, line", [
    (["data=synthetic", "partition=natural"], "data.name=synthetic: synthetic has no natural id"),
    (["data=synthetic", "data.num_train=100", "num_clients=8", "partition=shard", "partition.shards_per_site=20"],
     "partition.shards_per_site=20: 20 x num_clients=8 shards need at least 160 training samples, data.num_train=100"),
    (["data=synthetic", "data.num_train=1000", "num_clients=10", "partition=exponential"],
     "partition.name=exponential: num_clients=10 sites leave site-1 0 of data.num_train=1000 samples"),
    (["data=synthetic", "data.num_train=1000", "num_clients=50", "partition=inner_dirichlet", "partition.sizes=square"],
     "partition.sizes=square: num_clients=50 sites leave site-1 0 of data.num_train=1000 samples"),
    (["partition=pathological", "partition.classes_per_site=0"], "partition.classes_per_site=0: must be at least 1"),
    (["partition=pathological", "partition.class_assignment=cyclic"],
     "partition.class_assignment=cyclic: must be one of first-deterministic, random, deterministic"),
])
def test_what_the_config_alone_rules_out_is_one_line_before_ray(overrides, line):
    with pytest.raises(ConfigError) as caught:
        load_config(overrides)
    assert str(caught.value).startswith(line) and "\n" not in str(caught.value)


def test_the_heat_map_of_hundreds_of_sites_shows_an_evenly_spaced_hundred(tmp_path):
    labels, ids = _labels(5000, classes=62), _writers(5000, writers=500)
    shards = partition(labels, 250, method="natural", ids=ids, seed=0)
    drawn = save_partition(tmp_path, labels, shards, {"name": "natural"}, 0, 0.1, ids).result(timeout=120)
    assert drawn == tmp_path / "plots" / "partition.png"
    saved = json.loads((tmp_path / "partition.json").read_text())
    assert len(saved["sites"]) == 250 and saved["unassigned"] == 0 and len(saved["classes"]) == 62
    assert sorted(len(site["ids"]) for site in saved["sites"].values()) == [2] * 250  # 500 writers, 2 a site
    from fedray.records.plots import MAX_HEATMAP_SITES

    assert MAX_HEATMAP_SITES == 100 and (tmp_path / "plots" / "partition.png").stat().st_size > 10_000


@pytest.mark.slow
def test_a_run_saves_the_split_it_trained_on(job_config, tmp_path, ray_session):
    from fedray import run_job

    job = job_config("partition=pathological", "partition.classes_per_site=2", "rounds=1", "local_epochs=1",
                     "workflows.cross_site_validate.enabled=false", "site.num_actors=1")
    run_job(job, tmp_path)
    saved = json.loads((tmp_path / "partition.json").read_text())
    assert (tmp_path / "plots" / "partition.png").stat().st_size > 0
    assert saved["partition"]["name"] == "pathological" and saved["partition"]["classes_per_site"] == 2
    # The split the job trained on is the one partition() gives for its config: the same counts, site by site.
    from fedray.data.cifar10 import load_dataset

    labels = load_dataset(job.data).train_labels
    shards = partition(labels, 3, method="pathological", classes_per_site=2, val_fraction=job.data.val_fraction,
                       seed=job.seed)
    for site, shard in zip(("site-1", "site-2", "site-3"), shards):
        entry = saved["sites"][site]
        assert (entry["train"], entry["val"]) == (len(shard.train), len(shard.val))
        assert entry["label_counts"] == np.bincount(labels[_members(shard)], minlength=10).tolist()
        assert sum(count > 0 for count in entry["label_counts"]) == 2
        # ...and the sites trained on those shards: a step per batch of their train part.
        trained = json.loads((tmp_path / "summary.json").read_text())["rounds"][0]["sites"][site]
        assert trained["num_steps"] == -(-len(shard.train) // job.batch_size)
    from fedray.records.report import report

    assert "partition=pathological(classes_per_site=2)" in report(tmp_path)  # fedray-report names the split's key


# -- the same splits as flwr-datasets' partitioners, where it is installed ---------------------------------

def _flwr(partitioner, labels: np.ndarray, ids: np.ndarray | None = None) -> list[set[int]]:
    datasets = pytest.importorskip("datasets")
    columns = {"label": labels.tolist(), "row": list(range(len(labels)))}
    if ids is not None:
        columns["writer"] = ids.tolist()
    partitioner.dataset = datasets.Dataset.from_dict(columns)
    return [set(partitioner.load_partition(k)["row"]) for k in range(partitioner.num_partitions)]


def _sites(shards) -> list[set[int]]:
    return [set(_members(s).tolist()) for s in shards]


@pytest.mark.parametrize("assignment", ["first-deterministic", "random", "deterministic"])
def test_pathological_equals_flwr_datasets_for_the_same_seed(assignment):
    flwr = pytest.importorskip("flwr_datasets.partitioner")
    labels = _labels(600)
    ours = _sites(partition(labels, 7, method="pathological", classes_per_site=3, class_assignment=assignment, seed=4))
    theirs = _flwr(flwr.PathologicalPartitioner(7, "label", 3, class_assignment_mode=assignment, seed=4), labels)
    assert ours == theirs


def test_shard_equals_flwr_datasets_for_the_same_seed():
    flwr = pytest.importorskip("flwr_datasets.partitioner")
    labels = _labels(1003)  # not a multiple of the shard count: the same remainder left out
    ours = _sites(partition(labels, 5, method="shard", shards_per_site=3, seed=9))
    assert ours == _flwr(flwr.ShardPartitioner(5, "label", num_shards_per_partition=3, seed=9), labels)


@pytest.mark.parametrize("skew", ["linear", "square", "exponential"])
def test_size_skews_have_flwr_datasets_sizes(skew):
    flwr = pytest.importorskip("flwr_datasets.partitioner")
    partitioner = {"linear": flwr.LinearPartitioner, "square": flwr.SquarePartitioner,
                   "exponential": flwr.ExponentialPartitioner}[skew](6)
    theirs = [len(rows) for rows in _flwr(partitioner, _labels(997))]
    assert [len(_members(s)) for s in partition(_labels(997), 6, method=skew)] == theirs


def test_natural_equals_flwr_datasets_natural_id_partitioner():
    flwr = pytest.importorskip("flwr_datasets.partitioner")
    ids = _writers(500, writers=9)
    assert _sites(partition(_labels(500), 9, method="natural", ids=ids)) == _flwr(flwr.NaturalIdPartitioner("writer"),
                                                                                   _labels(500), ids)


def test_inner_dirichlet_skews_labels_as_much_as_flwr_datasets_sample_by_sample_draws():
    flwr = pytest.importorskip("flwr_datasets.partitioner")
    labels, sizes = _labels(4000), size_skew_sizes(4000, 40, "linear")
    ours, theirs = [], []
    for seed in range(3):
        shards = partition(labels, 40, method="inner_dirichlet", alpha=0.5, sizes="linear", seed=seed)
        ours.append(_top_class_share(labels, shards))
        rows = _flwr(flwr.InnerDirichletPartitioner(sizes.tolist(), "label", 0.5, seed=seed), labels)
        assert [len(r) for r in rows] == [len(_members(s)) for s in shards] == sizes.tolist()
        theirs.append(float(np.mean([np.bincount(labels[list(r)]).max() / len(r) for r in rows])))
    assert abs(np.mean(ours) - np.mean(theirs)) < 0.05, (ours, theirs)
