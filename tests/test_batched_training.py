"""Batched site training (torch.func over K sites) against K sequential `train_epochs` runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedray.data.synthetic import make_synthetic
from fedray.models import Net
from fedray.site.batched_training import train_sites_batched
from fedray.site.training import get_params, load_params, to_device, train_epochs

# float32 rounding, not training noise: observed differences are ~1.5e-8 absolute (an ulp of weights
# ~0.1; vmap turns each convolution into a grouped one, which sums in another order) after 10 steps.
# A wrong update (a padded item counted, a masked site moved, momentum off by a step) moves weights
# by 1e-4 and more: each of the tutorial CNN's tensors moves 2e-4..1e-1 here.
ATOL, RTOL = 1e-6, 1e-5
BATCH = 16
# Unequal shards: 5, 3 and 2 batches an epoch, each epoch ending in a short batch (70 = 4*16 + 6, ...).
SHARD_SIZES = (70, 45, 20)


@pytest.fixture(scope="module")
def data():
    dataset = make_synthetic(200, 10, seed=1, signal=0.9, blotch=20.0)
    images, labels = to_device(np.ascontiguousarray(dataset.train_images.transpose(0, 3, 1, 2)),
                               dataset.train_labels, torch.device("cpu"))
    order = np.random.default_rng(0).permutation(len(labels))
    bounds = np.cumsum((0, *SHARD_SIZES))
    shards = [np.sort(order[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    return images, labels, shards


def _generators(count: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(1000 + k) for k in range(count)]


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_batched_sites_equal_sequential_training(data, momentum):
    images, labels, shards = data
    torch.manual_seed(0)
    model = Net()
    start = get_params(model)
    settings = dict(epochs=2, batch_size=BATCH, lr=0.05, momentum=momentum)

    sequential = []
    for shard, generator in zip(shards, _generators(len(shards))):
        load_params(model, start)
        loss, steps = train_epochs(model, images, labels, shard, generator=generator, **settings)
        sequential.append((get_params(model), steps, loss))

    load_params(model, start)
    batched = train_sites_batched(model, images, labels, shards, generators=_generators(len(shards)), **settings)

    assert [r.steps for r in batched] == [steps for _, steps, _ in sequential] == [10, 6, 4]
    for (params, _, loss), result in zip(sequential, batched):
        assert list(result.params) == list(params)
        for name in params:
            assert result.params[name].dtype == params[name].dtype
            np.testing.assert_allclose(result.params[name], params[name], rtol=RTOL, atol=ATOL, err_msg=name)
            # Beyond the tolerance: a site that trained fewer steps than it should would fail.
            assert np.abs(result.params[name] - start[name]).max() > 100 * ATOL
        assert result.train_loss == pytest.approx(loss, rel=1e-5)
    # The model lent its structure only: its weights are still the global ones.
    assert all(np.array_equal(value, start[name]) for name, value in get_params(model).items())


def test_batchnorm_model_is_refused_in_one_line(data):
    images, labels, shards = data
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(10))
    with pytest.raises(ValueError, match=r"^batched site training does not support models with buffers[^\n]*$"):
        train_sites_batched(model, images, labels, shards, generators=_generators(len(shards)),
                            epochs=1, batch_size=BATCH, lr=0.1, momentum=0.0)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_plain_sgd_gives_torch_sgds_bits(momentum):
    from fedray.models import Net
    from fedray.site.training import PlainSGD

    torch.manual_seed(0)
    ours, theirs = Net(), Net()
    theirs.load_state_dict(ours.state_dict())
    mine, torchs = PlainSGD(ours.parameters(), lr=0.05, momentum=momentum), torch.optim.SGD(theirs.parameters(), lr=0.05, momentum=momentum)
    data = torch.Generator().manual_seed(1)
    for _ in range(5):
        x, y = torch.randn(8, 3, 32, 32, generator=data), torch.randint(0, 10, (8,), generator=data)
        for model, optimizer in ((ours, mine), (theirs, torchs)):
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()))
