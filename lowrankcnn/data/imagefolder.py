"""ImageNet-style image folders: ``ROOT/train/<class>/*.jpg`` and ``ROOT/val/<class>/*.jpg``, decoded with Pillow.

Transforms follow the papers' ILSVRC recipe (random crops and mirroring, no scale augmentation): the shorter side is
resized to ``resize``, then training takes a random ``input_size`` square crop and mirrors it with probability 1/2,
evaluation takes the center crop. A sample's randomness depends only on ``(seed, epoch, index)``, never on which
DataLoader worker decodes it or when.

Images are decoded to 8 bits per channel. Integer images of more than 8 bits (16-bit PNGs and TIFFs, Pillow modes
``I;16``, ``I;16B``, ``I;16L``, ``I;16N`` and ``I``) are scaled as ``round(v / 257)`` (65535 -> 255), with ``I``
taken as 16-bit and clipped to ``0..65535``; float images (mode ``F``) keep Pillow's convention of values in
``0..255``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError, DataNotFoundError
from .checks import MAX_INPUT_SIZE, Split, check_input_size, check_int

IMG_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp")
IMAGENET_MEAN: tuple[float, ...] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, ...] = (0.229, 0.224, 0.225)
SPLIT_FOLDERS: dict[Split, str] = {"train": "train", "test": "val"}
"""The subfolder of the root holding each split."""


def default_resize(input_size: int) -> int:
    """Shorter side before cropping: ``round(input_size * 256 / 224)`` (256 for 224 crops)."""
    return round(input_size * 256 / 224)


def find_classes(split_dir: Path) -> list[str]:
    """Sorted names of the class subfolders of ``split_dir`` (hidden ones skipped)."""
    if not split_dir.is_dir():
        raise DataNotFoundError(
            f"imagefolder: {split_dir} is not a folder: expected ROOT/train/<class>/*.jpg and ROOT/val/<class>/*.jpg",
            param="data_dir",
        )
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"imagefolder: {split_dir} has no class subfolders: expected {split_dir}/<class>/*.jpg")
    return classes


def scan_images(split_dir: Path, classes: list[str], reference: str = "train") -> list[tuple[Path, int]]:
    """``(path, label)`` for every image under ``split_dir/<class>/`` (recursively, sorted), label = class index.

    Raises:
        DataError: the class subfolders differ from ``classes`` (those of the ``reference`` split), or one holds
            no images.
    """
    found = find_classes(split_dir)
    if found != classes:
        missing, extra = sorted(set(classes) - set(found)), sorted(set(found) - set(classes))
        raise DataError(
            f"imagefolder: the classes in {split_dir} differ from those in {reference}: missing {missing}, "
            f"extra {extra}"
        )
    samples = []
    for label, name in enumerate(classes):
        files = sorted(
            p
            for p in (split_dir / name).rglob("*")
            if p.suffix.lower() in IMG_EXTENSIONS and not p.name.startswith(".") and p.is_file()
        )
        if not files:
            raise DataError(f"imagefolder: {split_dir / name} holds no images ({', '.join(IMG_EXTENSIONS)})")
        samples.extend((f, label) for f in files)
    return samples


def to_8bit(img: Image.Image) -> Image.Image:
    """``img`` with 8 bits per channel: 16-bit integer modes scaled to ``L`` as ``round(v / 257)`` (see the module
    doc); any other mode is returned unchanged (Pillow's ``convert`` handles it)."""
    if img.mode != "I" and not img.mode.startswith("I;16"):
        return img
    wide = np.clip(np.asarray(img).astype(np.int64), 0, 65535)
    return Image.fromarray(((2 * wide + 257) // 514).astype(np.uint8))  # round half up of v / 257


def decode_image(path: Path, mode: str) -> Image.Image:
    """Open and fully decode ``path`` in Pillow ``mode`` (``"RGB"`` or ``"L"``), 8 bits per channel.

    Raises:
        DataError: the file cannot be decoded (one line naming it).
    """
    try:
        with Image.open(path) as img:
            return to_8bit(img).convert(mode)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"imagefolder: cannot decode {path}: {e}") from e


class ImageFolderDataset(Dataset):
    """One split of an image folder; items are ``(uint8 (C, input_size, input_size), label)``.

    Args:
        samples: ``(path, label)`` pairs (see :func:`scan_images`).
        input_size: side of the square crop, at most :data:`~lowrankcnn.data.checks.MAX_INPUT_SIZE`.
        resize: shorter side before cropping (default :func:`default_resize`), ``input_size .. 2 * MAX_INPUT_SIZE``.
        train: random crop + mirroring, else center crop.
        in_chans: 3 (RGB) or 1 (grayscale).
        seed: with the epoch (:meth:`set_epoch`) and the sample index, fixes each training sample's crop and flip.
    """

    def __init__(
        self,
        samples: list[tuple[Path, int]],
        input_size: int,
        resize: int | None = None,
        train: bool = False,
        in_chans: int = 3,
        seed: int = 0,
    ) -> None:
        check_input_size(input_size)
        check_int("seed", seed, 0)
        if in_chans not in (1, 3):
            raise ConfigError(f"imagefolder: $in_chans must be 1 or 3, got {in_chans!r}", param="in_chans")
        self.samples = samples
        self.input_size = input_size
        self.resize = default_resize(input_size) if resize is None else resize
        check_int("resize", self.resize, input_size)
        if self.resize > 2 * MAX_INPUT_SIZE:
            raise ConfigError(
                f"imagefolder: $resize must be <= {2 * MAX_INPUT_SIZE}, got {self.resize}", param="resize"
            )
        self.train = train
        self.mode = "L" if in_chans == 1 else "RGB"
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose crops and flips :meth:`__getitem__` returns (set before creating workers)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        img = decode_image(path, self.mode)
        w, h = img.size
        scale = self.resize / min(w, h)
        if scale != 1:
            w, h = max(self.input_size, round(w * scale)), max(self.input_size, round(h * scale))
            img = img.resize((w, h), Image.Resampling.BILINEAR)
        s = self.input_size
        if self.train:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            top, left = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
            flip = bool(rng.integers(0, 2))
        else:
            top, left, flip = (h - s) // 2, (w - s) // 2, False
        img = img.crop((left, top, left + s, top + s))
        if flip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        array = np.asarray(img, dtype=np.uint8)
        x = torch.from_numpy(array.copy())
        return (x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1).contiguous()), label


def _evenly_spaced(samples: list, k: int | None) -> list:
    """``k`` samples spread evenly over ``samples`` (all of them when ``k`` is ``None`` or too large)."""
    if k is None or k >= len(samples):
        return samples
    return [samples[i * len(samples) // k] for i in range(k)]


def open_image_folder(
    data_dir: str | Path | None,
    splits: Sequence[Split],
    input_size: int,
    in_chans: int,
    augment: bool,
    seed: int,
    subsets: dict[Split, int | None],
) -> tuple[dict[Split, ImageFolderDataset], list[str]]:
    """The datasets of ``splits`` (``ROOT/train`` and ``ROOT/val``) and the class names.

    The class names are those of ``train/`` when the training split is built (``val/`` must then have the same),
    else those of ``val/``; nothing of a split not asked for is read. ``subsets[split]`` keeps that many evenly
    spaced samples (all when ``None``); only the training dataset augments, and only when ``augment``.
    """
    if data_dir is None:
        raise DataNotFoundError(
            "imagefolder: no data directory given: pass $data_dir pointing at a folder with train/<class>/ and "
            "val/<class>/",
            param="data_dir",
        )
    root = Path(data_dir).expanduser()
    reference = SPLIT_FOLDERS[splits[0]]
    classes = find_classes(root / reference)
    datasets = {}
    for split in splits:
        samples = _evenly_spaced(scan_images(root / SPLIT_FOLDERS[split], classes, reference), subsets[split])
        train = split == "train"
        datasets[split] = ImageFolderDataset(samples, input_size, train=train and augment, in_chans=in_chans, seed=seed)
    return datasets, classes
