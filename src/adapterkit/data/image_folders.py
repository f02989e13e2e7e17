"""The user's own images: a folder with one sub-folder per class (``train/cat/*.jpg``, ...).

Class names are the sub-folders' names, sorted; the task is named after the training folder, or
after its parent when that folder is named for a split (``photos/train``: ``photos``, so that
domains trained from ``photos/train`` and ``sketches/train`` keep apart). Without a validation or test folder, a seeded,
stratified 10% of the training images is held out for each. Every problem names the folder or
file and the fix.
"""

from __future__ import annotations

import os
from pathlib import Path

from .image_tasks import image_task_data
from .images import ImageExample, read_image
from .splitting import split_examples
from .task import TaskData

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_HELD_OUT = 0.1
_SPLITS = ("train", "training", "validation", "val", "test")


def folder_task_name(folder: str | os.PathLike[str]) -> str:
    """The task name of an image folder (see the module docstring)."""
    path = Path(folder).absolute()
    return path.parent.name if path.name.lower() in _SPLITS and path.parent.name else path.name


def class_folders(folder: Path, minimum: int = 2) -> list[Path]:
    """The class sub-folders of ``folder``, sorted by name.

    Raises:
        ValueError: ``folder`` is missing, has fewer than ``minimum`` class sub-folders with images, or
            a sub-folder whose images are only in deeper folders.
    """
    if not folder.is_dir():
        problem = "not a folder" if folder.exists() else "no such folder"
        raise ValueError(f"{folder}: {problem}; give a folder with one sub-folder of images per class")
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and any(_images(p)))
    for nested in sorted(p for p in folder.iterdir() if p.is_dir() and p not in classes):  # not silently one class fewer
        if any(q.suffix.lower() in IMAGE_SUFFIXES for q in nested.rglob("*")):
            raise ValueError(
                f"{nested} has its images in sub-folders, which are not read; put a class's images directly in its folder"
            )
    if len(classes) < minimum:
        raise ValueError(
            f"{folder} has {len(classes)} class sub-folder(s) with images; give one sub-folder per class "
            f"(at least {minimum}), e.g. {folder}/cat/1.jpg and {folder}/dog/2.jpg"
        )
    return classes


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _read(folder: Path, names: tuple[str, ...]) -> list[ImageExample]:
    examples = []
    for class_folder in class_folders(folder, minimum=1):  # an evaluation folder may hold some of the classes
        if class_folder.name not in names:
            raise ValueError(f"{class_folder}: class {class_folder.name!r} is not among the training classes {list(names)}")
        examples += [ImageExample(read_image(path), names.index(class_folder.name)) for path in _images(class_folder)]
    return examples


def load_image_folders(
    train_dir: str | os.PathLike[str],
    validation_dir: str | os.PathLike[str] | None = None,
    test_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    classes: tuple[str, ...] | None = None,
) -> TaskData:
    """An image task from class sub-folders (named by :func:`folder_task_name`); ``classes``: its
    class names (default: the training folder's sub-folders, at least two)."""
    train_path = Path(train_dir)
    names = classes or tuple(p.name for p in class_folders(train_path))
    fractions = (_HELD_OUT if validation_dir is None else 0.0, _HELD_OUT if test_dir is None else 0.0)
    train, validation, test = split_examples(_read(train_path, names), fractions, seed, stratify=True)
    validation = validation if validation_dir is None else _read(Path(validation_dir), names)
    test = test if test_dir is None else _read(Path(test_dir), names)
    for split, examples in (("validation", validation), ("test", test)):
        if not examples:
            raise ValueError(
                f"{train_path} has too few images per class to hold out a {split} set; add images or give --{split}-dir"
            )
    return image_task_data(folder_task_name(train_path), train, validation, test, names)
