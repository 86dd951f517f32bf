"""Augmentation and batch sources: the determinism/sharding contract, lazy padding, argument errors."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from data_helpers import all_batches

from lowrankcnn.data import AugmentParams, BatchAugment, TensorSource
from lowrankcnn.data.sources import ShardedSource
from lowrankcnn.errors import ConfigError, ShapeError


def _images(n: int = 6, c: int = 3, h: int = 8, w: int = 8) -> torch.Tensor:
    return torch.randint(1, 256, (n, c, h, w), dtype=torch.uint8)


def test_augment_normalize_only_without_generator():
    aug = BatchAugment((0.5, 0.4, 0.3), (0.2, 0.25, 0.5), crop_padding=2, flip=True)
    x = _images()
    out = aug(x)
    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(3, 1, 1), torch.tensor([0.2, 0.25, 0.5]).view(3, 1, 1)
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out, (x.float() / 255 - mean) / std)
    randomized = aug(x, torch.Generator().manual_seed(0))
    assert randomized.shape == x.shape and not torch.equal(randomized, out)


def test_augment_crop_shifts_content_and_pads_with_zeros():
    aug = BatchAugment((0.0,), (1.0,), crop_padding=2)
    x = _images(n=2, c=1)
    offsets = torch.tensor([[2, 2], [3, 0]])  # identity; content moved up by 1 and right by 2
    out = aug.apply(x, AugmentParams(offsets, torch.zeros(2, dtype=torch.bool))) * 255
    assert torch.equal(out[0].round().byte(), x[0])
    shifted = out[1, 0].round().byte()
    assert torch.equal(shifted[:7, 2:], x[1, 0, 1:, :6])
    assert (shifted[:, :2] == 0).all() and (shifted[7] == 0).all()


def test_augment_flip_mirrors():
    aug = BatchAugment((0.0,), (1.0,), crop_padding=1, flip=True)
    x = _images(n=2, c=3, h=5, w=7)
    params = AugmentParams(torch.ones(2, 2, dtype=torch.int64), torch.tensor([True, False]))
    out = (aug.apply(x, params) * 255).round().byte()
    assert torch.equal(out[0], x[0].flip(-1)) and torch.equal(out[1], x[1])


def test_augment_params_slice_like_the_batch():
    aug = BatchAugment((0.1, 0.2, 0.3), (0.3, 0.2, 0.1), crop_padding=4, flip=True)
    x = _images(n=8)
    params = aug.draw_params(8, torch.Generator().manual_seed(3))
    assert params.offsets.shape == (8, 2) and int(params.offsets.max()) <= 8 and params.flips.dtype == torch.bool
    whole = aug.apply(x, params)
    assert torch.equal(torch.cat([aug.apply(x[:4], params[:4]), aug.apply(x[4:], params[4:])]), whole)


def test_augment_pad_equals_padding_the_images_first():
    """``pad`` (per batch) gives exactly what padding the whole data set up front gave, crops and flips included."""
    x = _images(n=5, c=1, h=6, w=6)
    lazy = BatchAugment((0.3,), (0.4,), crop_padding=2, flip=True, pad=3)
    eager = BatchAugment((0.3,), (0.4,), crop_padding=2, flip=True)
    params = lazy.draw_params(5, torch.Generator().manual_seed(1))
    out = lazy.apply(x, params)
    assert out.shape == (5, 1, 12, 12)
    assert torch.equal(out, eager.apply(F.pad(x, (3, 3, 3, 3)), params))
    assert torch.equal(lazy(x), eager(F.pad(x, (3, 3, 3, 3))))


def test_augment_argument_errors_are_library_errors():
    with pytest.raises(ConfigError, match="mean .* and std .* must have the same"):
        BatchAugment((0.1, 0.2), (0.3,))
    with pytest.raises(ConfigError, match="pad must be an integer >= 0, got -1") as info:
        BatchAugment((0.1,), (0.3,), pad=-1)
    assert info.value.param == "pad"
    with pytest.raises(ShapeError, match="expected uint8 .N, C, H, W. images"):
        BatchAugment((0.1,), (0.3,))(torch.zeros(2, 1, 4, 4))


def _tensor_source(world_size: int = 1, rank: int = 0, seed: int = 0, n: int = 50, batch: int = 8) -> TensorSource:
    gen = torch.Generator().manual_seed(99)
    images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=gen)
    aug = BatchAugment((0.5,) * 3, (0.25,) * 3, crop_padding=2, flip=True)
    return TensorSource(images, torch.arange(n), aug, batch, train=True, seed=seed, rank=rank, world_size=world_size)


def test_training_order_depends_only_on_seed_and_epoch():
    source = _tensor_source()
    assert len(source) == 6 and source.num_samples == 48  # 50 samples, batches of 8: the last 2 are dropped
    source.set_epoch(3)
    first = all_batches(source)
    again = _tensor_source()
    again.set_epoch(3)
    for (x1, y1), (x2, y2) in zip(first, all_batches(again), strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    again.set_epoch(4)
    assert not torch.equal(torch.cat([y for _, y in all_batches(again)]), torch.cat([y for _, y in first]))
    other_seed = _tensor_source(seed=1)
    other_seed.set_epoch(3)
    assert not torch.equal(next(iter(other_seed))[1], first[0][1])
    labels = torch.cat([y for _, y in first])
    assert len(labels.unique()) == 48  # a permutation: no sample twice


def test_rank_slices_concatenate_to_the_single_process_batch():
    single = _tensor_source(world_size=1)
    ranks = [_tensor_source(world_size=2, rank=r) for r in range(2)]
    for epoch in (0, 5):
        for s in (single, *ranks):
            s.set_epoch(epoch)
        assert all(len(r) == len(single) and r.num_samples == single.num_samples // 2 for r in ranks)
        for (x, y), (x0, y0), (x1, y1) in zip(single, *ranks, strict=True):
            assert x0.shape[0] == 4 and torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)


@pytest.mark.parametrize(
    "kwargs, param, message",
    [
        (dict(world_size=4, batch_size=6), "batch_size", r"batch_size=6 is the global batch and must be divisible"),
        (dict(batch_size=0), "batch_size", "batch_size must be an integer >= 1, got 0"),
        (dict(batch_size=2.5), "batch_size", "batch_size must be an integer >= 1, got 2.5"),
        (dict(seed=-1), "seed", "seed must be an integer >= 0, got -1"),
        (dict(rank=2, world_size=2), "rank", "rank must be in 0..world_size-1, got rank=2, world_size=2"),
        (dict(rank=-1, world_size=2), "rank", "rank must be an integer >= 0, got -1"),
        (dict(world_size=0), "world_size", "world_size must be an integer >= 1, got 0"),
        (dict(num_total=5, batch_size=8), "batch_size", "the training set has 5 samples, fewer than one batch of"),
    ],
    ids=["indivisible", "zero-batch", "float-batch", "seed", "rank", "negative-rank", "world-size", "small-set"],
)
def test_sharding_argument_errors_name_the_argument(kwargs, param, message):
    args = dict(num_total=50, batch_size=8, train=True, seed=0, rank=0, world_size=1) | kwargs
    with pytest.raises(ConfigError, match=message) as info:
        ShardedSource(**args)
    assert info.value.param == param and f"${param}" in info.value.template


def test_evaluation_source_takes_any_size():
    source = ShardedSource(5, 256, train=False, seed=0, rank=0, world_size=1)
    assert len(source) == 1 and source.num_samples == 5
    assert len(ShardedSource(5, np.int64(2), train=False, seed=np.int32(1), rank=0, world_size=1)) == 3  # numpy ints
