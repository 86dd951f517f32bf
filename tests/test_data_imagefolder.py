"""Image folders: pixel-exact decoding (16-bit images scaled), determinism and sharding, errors, splits, limits."""

import numpy as np
import pytest
import torch
from data_helpers import all_batches, make_imagefolder, write_image
from PIL import Image

from lowrankcnn.data import ImageFolderDataset, build_data
from lowrankcnn.data.imagefolder import scan_images, to_8bit
from lowrankcnn.errors import ConfigError, DataError, DataNotFoundError


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


# 16-bit values and their 8-bit scaling round(v / 257): 65535 -> 255, 25700 = 100 * 257 -> 100, 1000 -> 3.9 -> 4,
# 128 -> 0.498 -> 0, 129 -> 0.502 -> 1, 65406 -> 254.498 -> 254.
WIDE = np.array([[0, 25700, 65535, 1000], [128, 129, 385, 65406]], dtype=np.uint16)
EIGHT = np.array([[0, 100, 255, 4], [0, 1, 1, 254]], dtype=np.uint8)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize("in_chans", [1, 3])
def test_16bit_images_are_scaled_not_clipped(tmp_path, suffix, in_chans):
    """A real 16-bit grayscale file (written by Pillow) decodes to round(v / 257), not to near-white."""
    path = tmp_path / "val" / "a" / f"wide{suffix}"
    write_image(path, WIDE)
    with Image.open(path) as img:
        assert img.mode.startswith("I;16")
    x, _ = ImageFolderDataset([(path, 0)], input_size=2, resize=2, in_chans=in_chans)[0]
    # resize=2 on a 2x4 image keeps it (shorter side already 2); the center crop takes columns 1..2
    assert x.shape == (in_chans, 2, 2)
    assert torch.equal(x, torch.from_numpy(EIGHT[:, 1:3]).expand(in_chans, 2, 2))


def test_32bit_integer_tiff_is_read_as_16_bit(tmp_path):
    path = tmp_path / "wide32.tif"
    Image.fromarray(WIDE.astype(np.int32)).save(path)
    with Image.open(path) as img:
        assert img.mode == "I"
    x, _ = ImageFolderDataset([(path, 0)], input_size=2, resize=2, in_chans=1)[0]
    assert torch.equal(x[0], torch.from_numpy(EIGHT[:, 1:3]))


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L", "I"])
def test_to_8bit_scales_every_wide_integer_mode(mode):
    if mode == "I":
        img = Image.fromarray(WIDE.astype(np.int32))
    else:
        dtype = ">u2" if mode == "I;16B" else "<u2"
        img = Image.frombytes(mode, (4, 2), WIDE.astype(dtype).tobytes())
    assert img.mode == mode and np.array_equal(np.asarray(img), WIDE)
    out = to_8bit(img)
    assert out.mode == "L" and np.array_equal(np.asarray(out), EIGHT)
    rgb = np.asarray(to_8bit(img).convert("RGB"))
    assert all(np.array_equal(rgb[..., c], EIGHT) for c in range(3))


def test_to_8bit_leaves_8_bit_images_alone():
    img = Image.fromarray(EIGHT)
    assert to_8bit(img) is img


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


def test_imagefolder_val_only_with_the_test_split(tmp_path):
    """An image folder with only ``val/`` serves ``splits=("test",)``; its class names come from ``val/``."""
    make_imagefolder(tmp_path, size=(8, 8), splits=("val",))
    assert not (tmp_path / "train").exists()
    bundle = build_data("imagefolder", str(tmp_path), batch_size=256, input_size=8, workers=0, splits=("test",))
    assert bundle.train is None and bundle.class_names == ["cat", "dog"] and bundle.test.num_samples == 6
    x, y = next(iter(bundle.test))
    first, _ = ImageFolderDataset([(tmp_path / "val" / "cat" / "0.png", 0)], input_size=8)[0]
    mean, std = torch.tensor(bundle.mean).view(3, 1, 1), torch.tensor(bundle.std).view(3, 1, 1)
    torch.testing.assert_close(x[0], (first.float() / 255 - mean) / std)
    assert y.tolist() == [0, 0, 0, 1, 1, 1]
    with pytest.raises(DataNotFoundError, match="train is not a folder"):
        build_data("imagefolder", str(tmp_path), input_size=8)


def test_imagefolder_errors(tmp_path):
    make_imagefolder(tmp_path)
    bad = tmp_path / "val" / "cat" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    for workers in (0, 1):  # from a DataLoader worker too: the library's error type, one line
        bundle = build_data("imagefolder", str(tmp_path), batch_size=2, input_size=8, workers=workers)
        with pytest.raises(DataError, match=f"^imagefolder: cannot decode {bad}: ") as info:
            all_batches(bundle.test)
        assert type(info.value) is DataError and "\n" not in str(info.value)
    (tmp_path / "val" / "bird").mkdir()
    with pytest.raises(DataError, match=r"differ from those in train: missing \[\], extra \['bird'\]"):
        build_data("imagefolder", str(tmp_path), input_size=8)
    (tmp_path / "val" / "bird").rmdir()
    (tmp_path / "train" / "cow").mkdir()
    (tmp_path / "val" / "cow").mkdir()
    with pytest.raises(DataError, match="cow holds no images"):
        build_data("imagefolder", str(tmp_path), input_size=8)
    with pytest.raises(DataNotFoundError, match="pass data_dir pointing at a folder with train/<class>/") as info:
        build_data("imagefolder", None, input_size=8)
    assert info.value.param == "data_dir"


def test_imagefolder_huge_input_size_is_refused_before_decoding(tmp_path):
    make_imagefolder(tmp_path)
    with pytest.raises(ConfigError, match="input_size=100000 is larger than the 4096 pixels") as info:
        build_data("imagefolder", str(tmp_path), input_size=100000, workers=0)
    assert info.value.param == "input_size"
    with pytest.raises(ConfigError, match="test batches of 256 images of 3x4096x4096 would take 48.0 GiB"):
        build_data("imagefolder", str(tmp_path), input_size=4096, batch_size=4, eval_batch_size=256, workers=0)
    samples = scan_images(tmp_path / "val", ["cat", "dog"])
    with pytest.raises(ConfigError, match="input_size=100000 is larger"):
        ImageFolderDataset(samples, input_size=100000)
    with pytest.raises(ConfigError, match="resize must be <= 8192, got 100000"):
        ImageFolderDataset(samples, input_size=8, resize=100000)
    with pytest.raises(ConfigError, match="in_chans must be 1 or 3, got 2") as info:
        build_data("imagefolder", str(tmp_path), input_size=8, in_chans=2)
    assert info.value.param == "in_chans"
