import itertools

import numpy as np
import pytest

from fedray import fedavg


def _models(count, seed=0):
    rng = np.random.default_rng(seed)
    return [
        {
            "conv.weight": rng.normal(size=(4, 3, 2, 2)).astype(np.float32),
            "fc.bias": rng.normal(scale=1e-3, size=(7,)).astype(np.float32),
            "bn.num_batches_tracked": np.array(rng.integers(0, 100), dtype=np.int64),
        }
        for _ in range(count)
    ]


def test_matches_numpy_weighted_average_with_unequal_weights():
    models = _models(4)
    weights = [3.0, 1.0, 10.0, 0.5]
    result = fedavg(zip(models, weights))
    for name in models[0]:
        stacked = np.stack([m[name].astype(np.float64) for m in models])
        expected = np.tensordot(np.array(weights), stacked, axes=1) / sum(weights)
        assert result[name].dtype == models[0][name].dtype
        if np.issubdtype(models[0][name].dtype, np.integer):
            assert result[name] == np.rint(expected)
        else:
            np.testing.assert_allclose(result[name], expected.astype(np.float32), rtol=1e-6, atol=1e-9)
    # The heaviest model dominates: not an unweighted mean.
    unweighted = np.mean([m["conv.weight"] for m in models], axis=0)
    assert not np.allclose(result["conv.weight"], unweighted)


def test_result_does_not_depend_on_arrival_order():
    models = _models(5, seed=3)
    weights = [17.0, 3.0, 250.0, 1.0, 42.0]
    results = [fedavg((models[i], weights[i]) for i in order) for order in itertools.permutations(range(5))]
    for other in results[1:]:
        for name in models[0]:
            assert np.array_equal(results[0][name], other[name])


def test_single_update_is_returned_unchanged():
    (model,) = _models(1)
    result = fedavg([(model, 12.0)])
    for name in model:
        assert np.array_equal(result[name], model[name])


def test_consumes_updates_lazily():
    models = _models(3)
    seen = []

    def stream():
        for i, model in enumerate(models):
            seen.append(i)
            yield model, 1.0

    fedavg(stream())
    assert seen == [0, 1, 2]


def test_rejects_bad_input():
    models = _models(2)
    with pytest.raises(ValueError, match="no updates"):
        fedavg([])
    with pytest.raises(ValueError, match="sum to zero"):
        fedavg([(models[0], 0.0), (models[1], 0.0)])
    with pytest.raises(ValueError, match="variables"):
        fedavg([(models[0], 1.0), ({"other": np.zeros(2)}, 1.0)])


def test_a_pickled_sum_travels_without_its_scratch_and_folds_on_to_the_same_bits():
    """Folds work in place on scratch arrays the sum keeps (a batch folds 25 sites in a row); a pickled
    sum (a batch's result) carries only its sums and errors, and goes on folding to the same bits."""
    import pickle

    from fedray.aggregation import CompensatedSum

    rng = np.random.default_rng(5)
    # Large enough that the scratch (three arrays a variable) would dwarf the 2000 bytes allowed below.
    models = [{"w": rng.normal(size=4000).astype(np.float32), "b": rng.normal(scale=1e-3, size=(7,)).astype(np.float32)}
              for _ in range(6)]
    whole = CompensatedSum()
    for k, model in enumerate(models):
        whole.add(model, float(k + 1))
    travelled = CompensatedSum()
    for k, model in enumerate(models[:3]):
        travelled.add(model, float(k + 1))
    size = sum(array.nbytes for array in [*travelled.sums.values(), *travelled.errors.values()])
    blob = pickle.dumps(travelled)
    assert len(blob) < size + 2000  # no scratch arrays on the wire
    travelled = pickle.loads(blob)
    for k, model in enumerate(models[3:], start=3):
        travelled.add(model, float(k + 1))
    for name in whole.sums:
        assert np.array_equal(whole.sums[name], travelled.sums[name]) and np.array_equal(whole.errors[name], travelled.errors[name])
