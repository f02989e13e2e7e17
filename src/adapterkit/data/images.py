"""Images as a CNN reads them: examples, preprocessing, label-keeping augmentation, batches.

An image task is a :class:`~adapterkit.data.task.TaskData` with ``modality="image"`` whose
examples are :class:`ImageExample` (a ``uint8`` array, ``(H, W)`` grey or ``(H, W, 3)`` RGB,
and a class id). An :class:`ImageProcessor` resizes every image to the model's input size (a
square, bilinear), repeats a grey channel three times and normalises the pixels as the model was
trained (EfficientNet-Lite: ``(x - 127) / 128``), giving ``(3, size, size)`` floats.

:class:`Augment` draws, for each training image on each visit, a random rotation, scale and shift
(a random crop that keeps the whole object roughly in view) and, only where the task allows it,
a horizontal flip: mirrored digits and letters are other symbols, so their tasks never flip. The
draws come from a generator seeded by ``(seed, epoch, index)``, so a run (and a resumed one) sees
the same images. Images are resized once, before training; augmentation then works at the input
size, which keeps CPU training practical.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from .batching import EpochShuffleSampler


@dataclass(frozen=True, eq=False)
class ImageExample:
    """One image (``uint8``, ``(H, W)`` or ``(H, W, 3)``) and its class id."""

    image: np.ndarray
    label: int


@dataclass(frozen=True)
class ImageProcessor:
    """Resize to ``size`` x ``size``, grey to three channels, ``(pixel - mean) / scale``."""

    size: int = 64
    mean: float = 127.0
    scale: float = 128.0

    def __post_init__(self) -> None:
        if not 8 <= self.size <= 1024:
            raise ValueError(f"image size must be between 8 and 1024 pixels, got {self.size}")

    def resize(self, image: np.ndarray) -> Image.Image:
        """``image`` as an RGB PIL image of the input size."""
        picture = Image.fromarray(as_uint8(image))
        return picture.convert("RGB").resize((self.size, self.size), Image.BILINEAR)

    def tensor(self, picture: Image.Image) -> torch.Tensor:
        """An RGB PIL image of the input size as ``(3, size, size)`` normalised floats."""
        pixels = torch.from_numpy(np.asarray(picture, dtype=np.float32).copy()).permute(2, 0, 1)
        return (pixels - self.mean) / self.scale

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return self.tensor(self.resize(image))


def as_uint8(image: np.ndarray) -> np.ndarray:
    """``image`` as ``uint8`` pixels: floats in ``[0, 1]`` are scaled by 255.

    Raises:
        ValueError: not ``(H, W)`` or ``(H, W, 3)``.
    """
    array = np.asarray(image)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ValueError(f"an image must be (H, W) grey or (H, W, 3) RGB, got shape {array.shape}")
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, :3]
    if array.dtype != np.uint8:
        scale = 255.0 if array.max(initial=0) <= 1.0 else 1.0
        array = np.clip(array * scale, 0, 255).round().astype(np.uint8)
    return array


@dataclass(frozen=True)
class Augment:
    """Label-keeping augmentation: rotation up to ``rotation`` degrees either way, scale within
    ``1 ± scale``, shift up to ``shift`` of the size either way, and a horizontal flip with
    probability 1/2 when ``flip``."""

    rotation: float = 10.0
    scale: float = 0.1
    shift: float = 0.1
    flip: bool = False

    def __call__(self, picture: Image.Image, rng: np.random.Generator) -> Image.Image:
        angle = math.radians(rng.uniform(-self.rotation, self.rotation))
        zoom = rng.uniform(1 - self.scale, 1 + self.scale)
        width, height = picture.size
        dx, dy = (rng.uniform(-self.shift, self.shift) * s for s in (width, height))
        # output pixel p comes from input c + R(-angle) (p - c - d) / zoom (PIL wants that inverse map)
        cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
        cx, cy = width / 2, height / 2
        a, b, d, e = cos, sin, -sin, cos
        c = cx - a * (cx + dx) - b * (cy + dy)
        f = cy - d * (cx + dx) - e * (cy + dy)
        moved = picture.transform(picture.size, Image.AFFINE, (a, b, c, d, e, f), resample=Image.BILINEAR)
        if self.flip and rng.random() < 0.5:
            moved = moved.transpose(Image.FLIP_LEFT_RIGHT)
        return moved


class ImageDataset(Dataset):
    """Preprocessed images (resized once) with their labels; augmented per visit when
    ``augment`` is given (call :meth:`set_epoch` each epoch)."""

    def __init__(
        self, examples: Sequence[ImageExample], processor: ImageProcessor, augment: Augment | None = None, seed: int = 0
    ):
        self.pictures = [processor.resize(e.image) for e in examples]
        self.labels = [e.label for e in examples]
        self.processor, self.augment, self.seed, self.epoch = processor, augment, seed, 0
        self._fixed = None if augment is not None else [processor.tensor(p) for p in self.pictures]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pictures)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        if self._fixed is not None:
            pixels = self._fixed[index]
        else:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            pixels = self.processor.tensor(self.augment(self.pictures[index], rng))
        return {"pixel_values": pixels, "labels": self.labels[index]}


class _EpochSampler(EpochShuffleSampler):
    """The shuffle order of an epoch, also telling the dataset which epoch it is (augmentation)."""

    def __init__(self, dataset: ImageDataset, seed: int):
        super().__init__(len(dataset), seed)
        self.dataset = dataset

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.dataset.set_epoch(epoch)


def collate_images(items: list[dict]) -> dict[str, torch.Tensor]:
    return {
        "pixel_values": torch.stack([item["pixel_values"] for item in items]),
        "labels": torch.tensor([item["labels"] for item in items], dtype=torch.long),
    }


def make_image_loader(
    examples: Sequence[ImageExample],
    processor: ImageProcessor,
    batch_size: int,
    shuffle_seed: int | None = None,
    augment: Augment | None = None,
) -> DataLoader:
    """A DataLoader of ``{"pixel_values": (B, 3, S, S), "labels": (B,)}``; shuffled (and
    augmented, with ``augment``) per epoch when ``shuffle_seed`` is given."""
    dataset = ImageDataset(examples, processor, augment if shuffle_seed is not None else None, shuffle_seed or 0)
    sampler = _EpochSampler(dataset, shuffle_seed) if shuffle_seed is not None else None
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_images)


def read_image(path) -> np.ndarray:
    """An image file as ``uint8`` pixels: ``(H, W)`` for grey images, ``(H, W, 3)`` otherwise.
    16-bit grey images are scaled from ``0..65535`` and float ones by :func:`as_uint8`, not clipped.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not an image PIL can read, or one too large to open safely (naming it).
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    try:
        with Image.open(path) as picture:
            picture.load()
            if picture.mode.startswith("I"):  # 16-bit grey (PNG, TIFF; "I" in older Pillows)
                return np.clip(np.asarray(picture, dtype=np.float64) / 257, 0, 255).round().astype(np.uint8)
            if picture.mode == "F":
                return as_uint8(np.asarray(picture))
            return np.asarray(picture.convert("L" if picture.mode in ("L", "1") else "RGB"))
    except Image.DecompressionBombError as error:
        raise ValueError(f"{path}: {error} Shrink it first: it is resized to the model's input size anyway") from error
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not an image adapterkit can read ({error}); use PNG, JPEG, BMP, GIF or WebP") from error
