"""ImageNet-style image folders: ``ROOT/train/<class>/*.jpg`` and ``ROOT/val/<class>/*.jpg``, decoded with Pillow.

Transforms follow the papers' ILSVRC recipe (random crops and mirroring, no scale augmentation): the shorter side is
resized to ``resize``, then training takes a random ``input_size`` square crop and mirrors it with probability 1/2,
evaluation takes the center crop. A sample's randomness depends only on ``(seed, epoch, index)``, never on which
DataLoader worker decodes it or when.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

IMG_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp")
IMAGENET_MEAN: tuple[float, ...] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, ...] = (0.229, 0.224, 0.225)


def default_resize(input_size: int) -> int:
    """Shorter side before cropping: ``round(input_size * 256 / 224)`` (256 for 224 crops)."""
    return round(input_size * 256 / 224)


def find_classes(split_dir: Path) -> list[str]:
    """Sorted names of the class subfolders of ``split_dir`` (hidden ones skipped)."""
    if not split_dir.is_dir():
        raise FileNotFoundError(
            f"imagefolder: {split_dir} is not a folder: expected ROOT/train/<class>/*.jpg and ROOT/val/<class>/*.jpg"
        )
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"imagefolder: {split_dir} has no class subfolders: expected {split_dir}/<class>/*.jpg")
    return classes


def scan_images(split_dir: Path, classes: list[str]) -> list[tuple[Path, int]]:
    """``(path, label)`` for every image under ``split_dir/<class>/`` (recursively, sorted), label = class index.

    Raises:
        ValueError: the class subfolders differ from ``classes``, or one holds no images.
    """
    found = find_classes(split_dir)
    if found != classes:
        missing, extra = sorted(set(classes) - set(found)), sorted(set(found) - set(classes))
        raise ValueError(
            f"imagefolder: the classes in {split_dir} differ from those in train: missing {missing}, extra {extra}"
        )
    samples = []
    for label, name in enumerate(classes):
        files = sorted(
            p
            for p in (split_dir / name).rglob("*")
            if p.suffix.lower() in IMG_EXTENSIONS and not p.name.startswith(".") and p.is_file()
        )
        if not files:
            raise ValueError(f"imagefolder: {split_dir / name} holds no images ({', '.join(IMG_EXTENSIONS)})")
        samples.extend((f, label) for f in files)
    return samples


def decode_image(path: Path, mode: str) -> Image.Image:
    """Open and fully decode ``path`` in Pillow ``mode`` (``"RGB"`` or ``"L"``); ``ValueError`` naming the file
    if it cannot be decoded."""
    try:
        with Image.open(path) as img:
            return img.convert(mode)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"imagefolder: cannot decode {path}: {e}") from e


class ImageFolderDataset(Dataset):
    """One split of an image folder; items are ``(uint8 (C, input_size, input_size), label)``.

    Args:
        samples: ``(path, label)`` pairs (see :func:`scan_images`).
        input_size: side of the square crop.
        resize: shorter side before cropping (default :func:`default_resize`).
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
        if in_chans not in (1, 3):
            raise ValueError(f"imagefolder: in_chans must be 1 or 3, got {in_chans}")
        self.samples = samples
        self.input_size = input_size
        self.resize = default_resize(input_size) if resize is None else resize
        if self.resize < input_size:
            raise ValueError(f"imagefolder: resize ({self.resize}) must be >= input_size ({input_size})")
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
