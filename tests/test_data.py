"""The data layer: readers of the real on-disk formats, augmentation, and the determinism/sharding contract."""

import gzip
import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lowrankcnn.data import (
    DATASETS,
    FASHION_MNIST_CLASSES,
    AugmentParams,
    BatchAugment,
    BatchSource,
    ImageFolderDataset,
    TensorSource,
    build_data,
    load_cifar,
    load_cifar_classes,
    load_fashion_mnist,
    read_idx,
)
from lowrankcnn.data.fashion_mnist import DEFAULT_DIR
from lowrankcnn.data.imagefolder import scan_images

# --------------------------------------------------------------------------------------------------- fixtures


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` (uint8) as an IDX file, gzipped when ``path`` ends in ``.gz``."""
    raw = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def make_fashion_mnist(folder: Path, n_train: int = 40, n_test: int = 12, gz: bool = True) -> dict[str, np.ndarray]:
    """A tiny Fashion-MNIST in the package's layout; returns the arrays written."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        arrays[f"{prefix}-images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{prefix}-labels"] = (np.arange(n) % 10).astype(np.uint8)
        ext = ".gz" if gz else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", arrays[f"{prefix}-images"])
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", arrays[f"{prefix}-labels"])
    return arrays


@pytest.fixture
def fmnist_dir(tmp_path: Path) -> Path:
    make_fashion_mnist(tmp_path / "fmnist")
    return tmp_path / "fmnist"


class Py2Pickler(pickle._Pickler):
    """Writes ``bytes`` as Python-2 ``str`` opcodes (SHORT_BINSTRING/BINSTRING), as the official CIFAR files do."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def write_py2_pickle(path: Path, obj: object) -> None:
    """Protocol 2, Python-2 strings, and numpy's pre-2.0 module path, like ``cifar-10-python.tar.gz``."""
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    path.write_bytes(buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))


def make_cifar(root: Path, variant: str, per_file: int = 6, n_test: int = 10) -> dict[str, np.ndarray]:
    """A tiny CIFAR-10/100 in the official python-pickle layout under ``root``; returns the arrays written."""
    rng = np.random.default_rng(1)
    nc, key = (10, b"labels") if variant == "cifar10" else (100, b"fine_labels")
    folder = root / ("cifar-10-batches-py" if variant == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True)
    names = (["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"], "test_batch")
    if variant == "cifar100":
        names = (["train"], "test")
    written: dict[str, list] = {"train_x": [], "train_y": [], "test_x": [], "test_y": []}
    for split, files, n in (("train", names[0], per_file), ("test", [names[1]], n_test)):
        for name in files:
            data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
            labels = [int(v) for v in rng.integers(0, nc, n)]
            batch = {b"batch_label": b"batch " + name.encode(), key: labels, b"data": data}
            batch[b"filenames"] = [f"img_{i}.png".encode() for i in range(n)]
            if variant == "cifar100":
                batch[b"coarse_labels"] = [v // 5 for v in labels]
            write_py2_pickle(folder / name, batch)
            written[f"{split}_x"].append(data.reshape(n, 3, 32, 32))
            written[f"{split}_y"].append(np.array(labels))
    class_names = [f"class_{i}".encode() for i in range(nc)]
    if variant == "cifar10":
        write_py2_pickle(folder / "batches.meta", {b"num_cases_per_batch": per_file, b"label_names": class_names})
    else:
        meta = {b"fine_label_names": class_names, b"coarse_label_names": [b"c"] * 20}
        write_py2_pickle(folder / "meta", meta)
    return {k: np.concatenate(v) for k, v in written.items()}


def write_image(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_imagefolder(root: Path, size: tuple[int, int] = (12, 10)) -> dict[Path, np.ndarray]:
    """``root/{train,val}/{cat,dog}/*.png`` (RGB, ``size`` = (h, w)) plus one JPEG; returns the PNG arrays."""
    rng = np.random.default_rng(2)
    arrays = {}
    for split, n in (("train", 5), ("val", 3)):
        for cls in ("cat", "dog"):
            for i in range(n):
                arrays[root / split / cls / f"{i}.png"] = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    for path, array in arrays.items():
        write_image(path, array)
    write_image(root / "train" / "dog" / "z.jpg", np.full((*size, 3), 128, dtype=np.uint8))
    (root / "train" / "dog" / "notes.txt").write_text("not an image")
    return arrays


def all_batches(source: BatchSource) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(source)


# --------------------------------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("name", ["x-images-idx3-ubyte.gz", "x-images-idx3-ubyte"])
def test_read_idx_round_trip(tmp_path, name):
    images = np.random.default_rng(0).integers(0, 256, (3, 4, 5), dtype=np.uint8)
    labels = np.array([9, 0, 3], dtype=np.uint8)
    got = read_idx(write_idx(tmp_path / name, images))
    assert got.dtype == torch.uint8 and got.shape == (3, 4, 5) and torch.equal(got, torch.from_numpy(images))
    assert torch.equal(read_idx(write_idx(tmp_path / f"{name}-labels", labels)), torch.from_numpy(labels))


def _idx_bytes(images: np.ndarray) -> bytes:
    return struct.pack(">I", 0x803) + struct.pack(">3I", *images.shape) + images.tobytes()


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda raw: gzip.compress(raw[:30]),
            "truncated IDX file: header says 3x4x5 (60 bytes) but only 14 bytes follow",
        ),
        (lambda raw: gzip.compress(raw + b"junk"), "trailing garbage after IDX payload: header says 3x4x5 (60 bytes)"),
        (lambda raw: gzip.compress(b"\x00\x00\x0d\x03" + raw[4:]), "magic number 0x00000d03"),
        (lambda raw: gzip.compress(raw[:10]), "truncated IDX header"),
        (lambda raw: gzip.compress(raw)[:-12], "truncated gzip file"),
        (lambda raw: raw, "corrupt or unreadable file"),  # not gzip at all
        (lambda raw: (lambda z: z[:12] + bytes(b ^ 0xFF for b in z[12:-8]) + z[-8:])(gzip.compress(raw)), "corrupt"),
    ],
    ids=["short-payload", "trailing-garbage", "bad-magic", "short-header", "truncated-gzip", "not-gzip", "bad-deflate"],
)
def test_read_idx_rejects_corrupt_files_with_one_line(tmp_path, make, message):
    raw = _idx_bytes(np.zeros((3, 4, 5), dtype=np.uint8))
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(make(raw))
    with pytest.raises(ValueError) as info:
        read_idx(path, hint="reinstall it")
    text = str(info.value)
    assert text.startswith(f"{path}: ") and message in text and text.endswith("; reinstall it") and "\n" not in text


# --------------------------------------------------------------------------------------------------- Fashion-MNIST


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_reads_fixture_exactly(tmp_path, gz):
    arrays = make_fashion_mnist(tmp_path, gz=gz)
    for train, prefix in ((True, "train"), (False, "t10k")):
        x, y = load_fashion_mnist(tmp_path, train=train)
        assert x.dtype == torch.uint8 and x.shape == (len(arrays[f"{prefix}-images"]), 1, 28, 28)
        assert y.dtype == torch.int64
        assert torch.equal(x[:, 0], torch.from_numpy(arrays[f"{prefix}-images"]))
        assert torch.equal(y, torch.from_numpy(arrays[f"{prefix}-labels"]).long())


def test_fashion_mnist_dir_from_env(fmnist_dir, monkeypatch):
    monkeypatch.setenv("LOWRANKCNN_FASHION_MNIST", str(fmnist_dir))
    assert load_fashion_mnist(None, train=False)[0].shape == (12, 1, 28, 28)


def test_fashion_mnist_missing_dir_says_how_to_install(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    monkeypatch.setenv("LOWRANKCNN_FASHION_MNIST", str(missing))
    with pytest.raises(FileNotFoundError) as info:
        load_fashion_mnist(None, train=True)
    text = str(info.value)
    assert "\n" not in text and f"Fashion-MNIST not found in {missing}" in text
    assert "apt-get update && apt-get install -y dataset-fashion-mnist" in text and "LOWRANKCNN_FASHION_MNIST" in text


def test_fashion_mnist_count_mismatch(fmnist_dir):
    write_idx(fmnist_dir / "t10k-labels-idx1-ubyte.gz", np.zeros(11, dtype=np.uint8))
    with pytest.raises(ValueError, match="12 images but t10k-labels-idx1-ubyte.gz holds 11 labels"):
        load_fashion_mnist(fmnist_dir, train=False)


def test_real_fashion_mnist():
    if not (DEFAULT_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST is not installed in {DEFAULT_DIR} (apt-get install dataset-fashion-mnist)")
    x, y = load_fashion_mnist(DEFAULT_DIR, train=True)
    assert x.shape == (60000, 1, 28, 28) and x.dtype == torch.uint8 and y.shape == (60000,) and y.dtype == torch.int64
    assert torch.equal(torch.bincount(y, minlength=10), torch.full((10,), 6000))
    mean = x.float().div(255).mean().item()
    assert abs(mean - 0.2860) < 1e-3
    x, y = load_fashion_mnist(DEFAULT_DIR, train=False)
    assert x.shape == (10000, 1, 28, 28) and int(y.min()) == 0 and int(y.max()) == 9
    assert torch.equal(torch.bincount(y, minlength=10), torch.full((10,), 1000))


# --------------------------------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("variant", ["cifar10", "cifar100"])
def test_cifar_reads_official_format_exactly(tmp_path, variant):
    arrays = make_cifar(tmp_path, variant)
    folder = next(tmp_path.iterdir())
    for data_dir in (tmp_path, folder):  # the batch folder itself or its parent
        x, y = load_cifar(variant, data_dir, train=True)
        assert x.dtype == torch.uint8 and x.shape == (len(arrays["train_x"]), 3, 32, 32) and y.dtype == torch.int64
        assert torch.equal(x, torch.from_numpy(arrays["train_x"])) and torch.equal(
            y, torch.from_numpy(arrays["train_y"])
        )
    x, y = load_cifar(variant, tmp_path, train=False)
    assert torch.equal(x, torch.from_numpy(arrays["test_x"])) and torch.equal(y, torch.from_numpy(arrays["test_y"]))
    names = load_cifar_classes(variant, tmp_path)
    assert names == [f"class_{i}" for i in range(10 if variant == "cifar10" else 100)]


def test_cifar_accepts_python3_pickles_with_str_keys(tmp_path):
    make_cifar(tmp_path, "cifar10")
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    path.write_bytes(pickle.dumps({"data": data, "labels": [3, 4]}, protocol=2))
    x, y = load_cifar("cifar10", tmp_path, train=False)
    assert torch.equal(x.flatten(1), torch.from_numpy(data)) and y.tolist() == [3, 4]


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_refuses_malicious_pickle_without_running_it(tmp_path):
    make_cifar(tmp_path, "cifar10")
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    marker = tmp_path / "pwned"
    path.write_bytes(pickle.dumps({b"data": _Exploit(marker), b"labels": []}, protocol=2))
    with pytest.raises(ValueError) as info:
        load_cifar("cifar10", tmp_path, train=False)
    assert f"refusing to unpickle {path}: it references" in str(info.value) and "system" in str(info.value)
    assert not marker.exists()


def test_cifar_truncated_and_malformed_batches(tmp_path):
    make_cifar(tmp_path, "cifar100")
    path = tmp_path / "cifar-100-python" / "test"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ValueError, match=f"{path}: truncated or corrupt CIFAR pickle"):
        load_cifar("cifar100", tmp_path, train=False)
    write_py2_pickle(path, {b"data": np.zeros((2, 1024), dtype=np.uint8), b"fine_labels": [0, 1]})
    with pytest.raises(ValueError, match=r"'data' must be a uint8 array of shape \(N, 3072\)"):
        load_cifar("cifar100", tmp_path, train=False)
    write_py2_pickle(path, {b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [0, 1]})
    with pytest.raises(ValueError, match="missing key"):
        load_cifar("cifar100", tmp_path, train=False)


def test_cifar_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="CIFAR-10 not found in .*data_batch_1.*cifar-10-batches-py"):
        load_cifar("cifar10", tmp_path, train=True)


# --------------------------------------------------------------------------------------------------- augmentation


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


# --------------------------------------------------------------------------------------------------- sources


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


def test_batch_size_must_divide_by_world_size():
    with pytest.raises(ValueError, match=r"batch_size \(6\) is the global batch and must be divisible by world_size"):
        _tensor_source(world_size=4, batch=6)


def test_test_source_shards_contiguously(fmnist_dir):
    whole = build_data("fashion-mnist", str(fmnist_dir), batch_size=4, test_subset=11).test
    kwargs = dict(name="fashion-mnist", data_dir=str(fmnist_dir), batch_size=3, eval_batch_size=6, world_size=3)
    shards = [build_data(**kwargs, rank=r).test for r in range(3)]
    assert whole.num_samples == 11 and len(whole) == 3
    assert [s.num_samples for s in shards] == [4, 4, 4] and sum(len(s) for s in shards) == 6
    ys = [y for s in shards for _, y in s]
    assert torch.equal(torch.cat(ys), torch.arange(12) % 10)


def test_subsets_and_argument_checks(fmnist_dir):
    bundle = build_data("fashion-mnist", str(fmnist_dir), batch_size=4, train_subset=10, test_subset=5)
    assert bundle.train.num_samples == 8 and bundle.test.num_samples == 5
    assert sorted(torch.cat([y for _, y in bundle.train]).tolist()) != list(range(8))  # shuffled within the subset
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        build_data("mnist", str(fmnist_dir))
    with pytest.raises(ValueError, match="input_size=27"):
        build_data("fashion-mnist", str(fmnist_dir), input_size=27)
    with pytest.raises(ValueError, match="input_size=31"):
        build_data("fashion-mnist", str(fmnist_dir), input_size=31)


def test_padding_to_a_larger_input_size(fmnist_dir):
    native = build_data("fashion-mnist", str(fmnist_dir), batch_size=4, augment=False, test_subset=4)
    padded = build_data("fashion-mnist", str(fmnist_dir), batch_size=4, augment=False, test_subset=4, input_size=32)
    assert padded.input_size == 32
    (x28, _), (x32, _) = next(iter(native.test)), next(iter(padded.test))
    assert x32.shape[-2:] == (32, 32)
    assert torch.equal(x32[..., 2:30, 2:30], x28)
    background = (0 - 0.2860) / 0.3530  # a zero pixel, normalized
    assert torch.allclose(x32[..., :2, :], torch.full_like(x32[..., :2, :], background))


@pytest.mark.parametrize("variant", ["cifar10", "cifar100"])
def test_build_cifar_bundle(tmp_path, variant):
    make_cifar(tmp_path, variant)
    bundle = build_data(variant, str(tmp_path), batch_size=6, seed=1)
    assert bundle.num_classes == (10 if variant == "cifar10" else 100) and bundle.class_names[1] == "class_1"
    assert (bundle.in_chans, bundle.input_size) == (3, 32)
    x, y = next(iter(bundle.train))
    assert x.shape == (6, 3, 32, 32) and x.dtype == torch.float32 and int(y.max()) < bundle.num_classes


# --------------------------------------------------------------------------------------------------- image folders


def test_imagefolder_decodes_pixel_exact(tmp_path):
    arrays = make_imagefolder(tmp_path, size=(8, 8))
    classes = ["cat", "dog"]
    samples = scan_images(tmp_path / "val", classes)
    assert [(p.parent.name, label) for p, label in samples] == [("cat", 0)] * 3 + [("dog", 1)] * 3
    dataset = ImageFolderDataset(samples, input_size=8, resize=8)
    for i, (path, label) in enumerate(samples):
        x, got_label = dataset[i]
        assert x.dtype == torch.uint8 and got_label == label
        assert torch.equal(x, torch.from_numpy(arrays[path]).permute(2, 0, 1))
    gray, _ = ImageFolderDataset(samples, input_size=8, resize=8, in_chans=1)[0]
    assert gray.shape == (1, 8, 8)
    train = scan_images(tmp_path / "train", classes)
    assert len(train) == 11 and train[-1][0].name == "z.jpg"  # the JPEG is found, the .txt is not
    jpeg, _ = ImageFolderDataset(train, input_size=8, resize=8)[10]
    assert (jpeg.int() - 128).abs().max() <= 2


def test_imagefolder_train_crops_without_rescaling(tmp_path):
    arrays = make_imagefolder(tmp_path, size=(8, 20))  # shorter side already 8: random crops of the original
    samples = scan_images(tmp_path / "train", ["cat", "dog"])[:10]
    dataset = ImageFolderDataset(samples, input_size=8, resize=8, train=True, seed=0)
    lefts = set()
    for i, (path, _) in enumerate(samples):
        x, _ = dataset[i]
        assert torch.equal(x, dataset[i][0])  # per-sample randomness is fixed by (seed, epoch, index)
        original = torch.from_numpy(arrays[path]).permute(2, 0, 1)
        windows = {left: original[:, :, left : left + 8] for left in range(13)}
        matches = [left for left, win in windows.items() if torch.equal(x, win) or torch.equal(x, win.flip(-1))]
        assert matches, "a training sample must be a (possibly mirrored) crop of the image"
        lefts.update(matches)
    assert len(lefts) > 1
    center = ImageFolderDataset(samples, input_size=8, resize=8)[0][0]
    assert torch.equal(center, torch.from_numpy(arrays[samples[0][0]]).permute(2, 0, 1)[:, :, 6:14])


def test_imagefolder_bundle_is_deterministic_and_shards_exactly(tmp_path):
    make_imagefolder(tmp_path)
    kwargs = dict(name="imagefolder", data_dir=str(tmp_path), batch_size=4, seed=3, input_size=8, workers=0)
    single = build_data(**kwargs)
    assert (single.num_classes, single.in_chans, single.input_size, single.class_names) == (2, 3, 8, ["cat", "dog"])
    assert len(single.train) == 2 and single.test.num_samples == 6
    ranks = [build_data(**kwargs, rank=r, world_size=2).train for r in range(2)]
    for s in (single.train, *ranks):
        s.set_epoch(1)
    batches = all_batches(single.train)
    for (x, y), (x0, y0), (x1, y1) in zip(batches, *ranks, strict=True):
        assert x.shape == (4, 3, 8, 8) and torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)
    workers = build_data(**{**kwargs, "workers": 2}).train
    workers.set_epoch(1)
    for (x, y), (xw, yw) in zip(batches, workers, strict=True):
        assert torch.equal(x, xw) and torch.equal(y, yw)
    single.train.set_epoch(2)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(batches, single.train, strict=True))


def test_imagefolder_errors(tmp_path):
    make_imagefolder(tmp_path)
    bad = tmp_path / "val" / "cat" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    for workers in (0, 1):
        bundle = build_data("imagefolder", str(tmp_path), batch_size=2, input_size=8, workers=workers)
        with pytest.raises(ValueError, match=f"^imagefolder: cannot decode {bad}: ") as info:
            all_batches(bundle.test)
        assert "\n" not in str(info.value)
    (tmp_path / "val" / "bird").mkdir()
    with pytest.raises(ValueError, match=r"differ from those in train: missing \[\], extra \['bird'\]"):
        build_data("imagefolder", str(tmp_path), input_size=8)
    (tmp_path / "val" / "bird").rmdir()
    (tmp_path / "train" / "cow").mkdir()
    (tmp_path / "val" / "cow").mkdir()
    with pytest.raises(ValueError, match="cow holds no images"):
        build_data("imagefolder", str(tmp_path), input_size=8)
