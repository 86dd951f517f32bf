"""``build_data``: bundles, splits, normalization, argument errors and allocation limits."""

import pytest
import torch
from data_helpers import all_batches, fashion_mnist_folder, make_cifar, make_fashion_mnist, make_imagefolder

from lowrankcnn.data import (
    DATASETS,
    FASHION_MNIST_CLASSES,
    MAX_INPUT_SIZE,
    BatchSource,
    build_data,
    load_fashion_mnist,
    normalization,
)
from lowrankcnn.errors import ConfigError

fmnist_dir = pytest.fixture(fashion_mnist_folder, name="fmnist_dir")


def test_build_fashion_mnist_bundle(fmnist_dir):
    bundle = build_data("fashion-mnist", str(fmnist_dir), batch_size=8, augment=False)
    assert DATASETS == ("fashion-mnist", "cifar10", "cifar100", "imagefolder")
    assert (bundle.num_classes, bundle.in_chans, bundle.input_size) == (10, 1, 28)
    assert bundle.class_names == list(FASHION_MNIST_CLASSES) and isinstance(bundle.train, BatchSource)
    assert len(bundle.train) == 5 and bundle.train.num_samples == 40
    assert len(bundle.test) == 2 and bundle.test.num_samples == 12
    x, y = next(iter(bundle.train))
    assert x.shape == (8, 1, 28, 28) and x.dtype == torch.float32 and y.shape == (8,) and y.dtype == torch.int64
    test_x, test_y = map(torch.cat, zip(*all_batches(bundle.test), strict=True))
    images, labels = load_fashion_mnist(fmnist_dir, train=False)
    torch.testing.assert_close(test_x, (images.float() / 255 - 0.2860) / 0.3530)  # in order, not augmented
    assert torch.equal(test_y, labels)


@pytest.mark.parametrize("name", ["fashion-mnist", "cifar10", "cifar100", "imagefolder"])
def test_bundle_records_the_normalization_it_applies(tmp_path, name):
    """``bundle.mean/std`` and ``normalization()`` are what every batch went through: ``(x/255 - mean) / std``."""
    if name == "fashion-mnist":
        make_fashion_mnist(tmp_path)
    elif name == "imagefolder":
        make_imagefolder(tmp_path, size=(8, 8))
    else:
        make_cifar(tmp_path, name)
    kwargs = dict(batch_size=2, augment=False, splits=("test",), workers=0)
    bundle = build_data(name, str(tmp_path), **kwargs, **({"input_size": 8} if name == "imagefolder" else {}))
    assert (bundle.mean, bundle.std) == normalization(name, bundle.in_chans)
    assert len(bundle.mean) == len(bundle.std) == bundle.in_chans and all(s > 0 for s in bundle.std)
    x, _ = next(iter(bundle.test))
    raw = x * torch.tensor(bundle.std).view(-1, 1, 1) + torch.tensor(bundle.mean).view(-1, 1, 1)
    pixels = raw * 255  # back to the uint8 pixels, which are whole numbers in 0..255
    assert torch.allclose(pixels, pixels.round(), atol=1e-3) and pixels.min() > -1e-3 and pixels.max() < 255 + 1e-3


def test_normalization_function():
    assert normalization("fashion-mnist", 1) == ((0.2860,), (0.3530,))
    assert normalization("imagefolder", 3) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    mean, std = normalization("imagefolder", 1)
    assert mean == pytest.approx((0.449,)) and std == pytest.approx((0.226,))
    with pytest.raises(ConfigError, match="cifar10 has 3 channel") as info:
        normalization("cifar10", 1)
    assert info.value.param == "in_chans"
    with pytest.raises(ConfigError, match="name must be a dataset of fashion-mnist, .*, got 'mnist'"):
        normalization("mnist", 1)


def test_test_source_shards_contiguously(fmnist_dir):
    whole = build_data("fashion-mnist", str(fmnist_dir), batch_size=4, test_subset=11).test
    kwargs = dict(name="fashion-mnist", data_dir=str(fmnist_dir), batch_size=3, eval_batch_size=6, world_size=3)
    shards = [build_data(**kwargs, rank=r).test for r in range(3)]
    assert whole.num_samples == 11 and len(whole) == 3
    assert [s.num_samples for s in shards] == [4, 4, 4] and sum(len(s) for s in shards) == 6
    ys = [y for s in shards for _, y in s]
    assert torch.equal(torch.cat(ys), torch.arange(12) % 10)


def test_subsets(fmnist_dir):
    bundle = build_data("fashion-mnist", str(fmnist_dir), batch_size=4, train_subset=10, test_subset=5)
    assert bundle.train.num_samples == 8 and bundle.test.num_samples == 5
    assert sorted(torch.cat([y for _, y in bundle.train]).tolist()) != list(range(8))  # shuffled within the subset
    assert sorted(torch.cat([y for _, y in bundle.test]).tolist()) == [0, 1, 2, 3, 4]  # the first 5, in order


@pytest.mark.parametrize(
    "kwargs, param, message",
    [
        (dict(name="mnist"), "name", "name must be a dataset of fashion-mnist, cifar10, cifar100, imagefolder"),
        (dict(train_subset=-5), "train_subset", r"train_subset must be an integer >= 1 \(or None\), got -5"),
        (dict(train_subset=0), "train_subset", "train_subset must be an integer >= 1"),
        (dict(test_subset=-1), "test_subset", "test_subset must be an integer >= 1"),
        (dict(test_subset=2.5), "test_subset", "test_subset must be an integer >= 1"),
        (dict(input_size=27), "input_size", "input_size may be 28 or larger by an even amount.*got 27"),
        (dict(input_size=31), "input_size", "input_size may be 28 or larger by an even amount.*got 31"),
        (dict(input_size=0), "input_size", "input_size must be an integer >= 1, got 0"),
        (dict(in_chans=3), "in_chans", "fashion-mnist has 1 channel"),
        (dict(batch_size=0), "batch_size", "batch_size must be an integer >= 1, got 0"),
        (dict(eval_batch_size=-2), "eval_batch_size", "eval_batch_size must be an integer >= 1, got -2"),
        (dict(workers=-1), "workers", "workers must be an integer >= 0, got -1"),
        (dict(rank=3, world_size=2), "rank", "rank must be in 0..world_size-1"),
        (dict(seed=-3), "seed", "seed must be an integer >= 0"),
        (dict(splits=("val",)), "splits", r"splits must be a non-empty subset of \('train', 'test'\)"),
        (dict(splits=()), "splits", "splits must be a non-empty subset"),
        (dict(splits="test"), "splits", "splits must be a non-empty subset"),
    ],
)
def test_argument_errors_name_the_argument_before_reading_anything(tmp_path, kwargs, param, message):
    """Each bad argument is one ConfigError naming it as ``$name`` (a flag on the command line), raised before the
    (here missing) data is looked for."""
    args = dict(name="fashion-mnist", data_dir=str(tmp_path / "missing"), batch_size=4) | kwargs
    with pytest.raises(ConfigError, match=message) as info:
        build_data(**args)
    assert info.value.param == param and f"${param}" in info.value.template and "\n" not in str(info.value)


def test_training_set_smaller_than_a_batch(fmnist_dir):
    with pytest.raises(ConfigError, match="the training set has 40 samples, fewer than one batch of batch_size=64"):
        build_data("fashion-mnist", str(fmnist_dir), batch_size=64)


def test_test_split_alone_reads_nothing_of_the_training_split(tmp_path):
    """``splits=("test",)`` (eval, rank): no training files needed, and a test set smaller than one batch is fine."""
    arrays = make_fashion_mnist(tmp_path / "fm", n_test=12, splits=("t10k",))
    bundle = build_data("fashion-mnist", str(tmp_path / "fm"), batch_size=256, splits=("test",))
    assert bundle.train is None and bundle.test.num_samples == 12 and len(bundle.test) == 1
    x, y = next(iter(bundle.test))
    torch.testing.assert_close(x[:, 0], (torch.from_numpy(arrays["t10k-images"]).float() / 255 - 0.2860) / 0.3530)
    make_cifar(tmp_path / "c", "cifar100", splits=("test",))
    bundle = build_data("cifar100", str(tmp_path / "c"), batch_size=256, splits=["test"])
    assert bundle.train is None and bundle.test.num_samples == 10 and bundle.class_names[99] == "class_99"
    make_fashion_mnist(tmp_path / "full")
    train_only = build_data("fashion-mnist", str(tmp_path / "full"), batch_size=4, splits=("train",), input_size=32)
    assert train_only.test is None and train_only.train.num_samples == 40 and train_only.input_size == 32


@pytest.mark.parametrize("augment", [False, True])
def test_padding_to_a_larger_input_size_is_lazy(fmnist_dir, augment):
    kwargs = dict(batch_size=4, augment=augment, test_subset=4)
    native = build_data("fashion-mnist", str(fmnist_dir), **kwargs)
    padded = build_data("fashion-mnist", str(fmnist_dir), **kwargs, input_size=32)
    assert padded.input_size == 32
    assert padded.train.images.shape[-2:] == (28, 28) and padded.test.images.shape[-2:] == (28, 28)  # not in memory
    (x28, _), (x32, _) = next(iter(native.test)), next(iter(padded.test))
    assert x32.shape[-2:] == (32, 32)
    assert torch.equal(x32[..., 2:30, 2:30], x28)
    background = (0 - 0.2860) / 0.3530  # a zero pixel, normalized
    assert torch.allclose(x32[..., :2, :], torch.full_like(x32[..., :2, :], background))
    padded.train.set_epoch(2)
    x, _ = next(iter(padded.train))
    assert x.shape == (4, 1, 32, 32)


def test_subset_applies_before_anything_is_padded(fmnist_dir):
    bundle = build_data("fashion-mnist", str(fmnist_dir), batch_size=2, train_subset=3, test_subset=2, input_size=64)
    assert tuple(bundle.train.images.shape) == (3, 1, 28, 28) and tuple(bundle.test.images.shape) == (2, 1, 28, 28)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(input_size=100000), f"input_size=100000 is larger than the {MAX_INPUT_SIZE} pixels"),
        (dict(input_size=4096, batch_size=256), r"training batches of 256 images of 1x4096x4096 would take 16.0 GiB"),
        (dict(input_size=4096, batch_size=4, eval_batch_size=512), r"test batches of 512 .*32.0 GiB.*eval_batch_size$"),
        (dict(input_size=4096, batch_size=512, splits=("test",)), r"test batches of 512 .*input_size or batch_size$"),
    ],
    ids=["input-size", "train-batch", "eval-batch", "eval-batch-from-batch-size"],
)
def test_impossible_sizes_are_refused_before_any_allocation(fmnist_dir, kwargs, message):
    with pytest.raises(ConfigError, match=message) as info:
        build_data("fashion-mnist", str(fmnist_dir), **kwargs)
    assert info.value.param == "input_size"


@pytest.mark.parametrize("variant", ["cifar10", "cifar100"])
def test_build_cifar_bundle(tmp_path, variant):
    make_cifar(tmp_path, variant)
    bundle = build_data(variant, str(tmp_path), batch_size=6, seed=1)
    assert bundle.num_classes == (10 if variant == "cifar10" else 100) and bundle.class_names[1] == "class_1"
    assert (bundle.in_chans, bundle.input_size) == (3, 32)
    x, y = next(iter(bundle.train))
    assert x.shape == (6, 3, 32, 32) and x.dtype == torch.float32 and int(y.max()) < bundle.num_classes
