"""Training data helpers."""

import torch

from lowbit.training import ShuffledBatches


def test_shuffled_batches_depend_only_on_seed_and_epoch():
    images, labels = torch.rand(70, 1, 8, 8), torch.arange(70)
    batches = ShuffledBatches(images, labels, 32, seed=3)
    assert len(batches) == 3
    first = [y for _, y in batches]
    assert sorted(torch.cat(first).tolist()) == list(range(70)) and [len(y) for y in first] == [32, 32, 6]
    again = [y for _, y in ShuffledBatches(images, labels, 32, seed=3)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    batches.set_epoch(1)
    assert not torch.equal(torch.cat([y for _, y in batches]), torch.cat(first))
    x, _ = next(iter(ShuffledBatches(images, labels, 32, augmentation=False)))
    assert any(torch.equal(x[0], img) for img in images)
