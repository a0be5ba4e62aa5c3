"""Training data helpers."""

import torch

from lowbit.training import ShuffledBatches, train_classifier


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


def test_channels_last_training_learns_the_same_task_and_hands_back_contiguous_weights():
    """Channels-last only changes the convolutions' memory order (faster on the CPU): the model learns a
    separable task as the default layout does, and its weights come back contiguous (as saved and loaded)."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (256,), generator=g)
    images = torch.rand(256, 1, 8, 8, generator=g) * 0.5
    images[labels == 1, :, :4] += 0.5  # class 1: the top half brighter
    losses = {}
    for channels_last in (False, True):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
                                    torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(32, 2))
        train_classifier(model, images, labels, epochs=8, lr=0.1, batch_size=32, augmentation=False,
                         channels_last=channels_last, device="cpu", progress=False)
        assert all(p.is_contiguous() for p in model.parameters()) and not model.training
        with torch.no_grad():
            losses[channels_last] = float(torch.nn.functional.cross_entropy(model(images), labels))
    assert losses[True] < 0.05 and abs(losses[True] - losses[False]) < 0.01
