"""Image tasks without network or big downloads: the readers on tiny fake files of each package's
format, letters rendered from matplotlib's fonts, user folders, preprocessing and augmentation,
the restricted unpickler, and training a residual adapter on the tiny CNN end to end."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import IMAGE, tiny_base

from adapterkit import AdapterModel
from adapterkit.data import image_tasks
from adapterkit.data.image_folders import folder_task_name, load_image_folders
from adapterkit.data.image_tasks import image_task_data
from adapterkit.data.images import Augment, ImageExample, ImageProcessor, make_image_loader, read_image
from adapterkit.data.letters import LETTERS, render, split_fonts
from adapterkit.data.numpy_pickle import load_arrays
from adapterkit.data.task import Example, TaskData


def write_pickle(path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as stream:
        pickle.dump(value, stream)


def test_mnist_and_animal_readers_take_the_packages_pickled_arrays(tmp_path):
    rng = np.random.default_rng(0)
    split = lambda n: (rng.random((n, 784), dtype=np.float32), np.arange(n) % 10)  # noqa: E731
    write_pickle(tmp_path / "data" / "mnist.pkl.gz", (split(20), split(5), split(5)))
    records = image_tasks._mnist(tmp_path)
    assert len(records) == 30 and records[0][0].shape == (28, 28) and records[0][0].dtype == np.uint8
    assert {label for _, label in records} == {str(d) for d in range(10)}
    folder = tmp_path / "data" / "Animal_MNIST"
    write_pickle(folder / "animal_data_version_3.gz", rng.integers(0, 256, (12, 28, 28), dtype=np.uint8))
    write_pickle(folder / "animal_label_version_3.gz", np.arange(12) % 10)
    assert image_tasks._animal_mnist(tmp_path)[11][1] == "animal_1"


def test_the_unpickler_refuses_anything_but_numpy_arrays(tmp_path):
    write_pickle(tmp_path / "evil.gz", {"f": print})
    with pytest.raises(pickle.UnpicklingError, match="refusing builtins.print"):
        load_arrays(tmp_path / "evil.gz")


def test_digits_lfw_fashion_and_texture_readers(tmp_path, monkeypatch):
    rows = np.hstack([np.full((4, 64), 16.0), np.arange(4)[:, None]])
    (tmp_path / "datasets" / "data").mkdir(parents=True)
    with gzip.open(tmp_path / "datasets" / "data" / "digits.csv.gz", "wt") as stream:
        np.savetxt(stream, rows, delimiter=",")
    digits = image_tasks._digits(tmp_path)
    assert digits[3][1] == "3" and digits[0][0].shape == (8, 8) and digits[0][0].max() == 255
    (tmp_path / "data").mkdir()
    np.save(tmp_path / "data" / "lfw_subset.npy", np.random.default_rng(0).random((200, 25, 25)))
    faces = image_tasks._lfw_faces(tmp_path)
    assert [faces[k][1] for k in (0, 99, 100, 199)] == ["face", "face", "not_face", "not_face"]
    fashion = tmp_path / "fashion"
    fashion.mkdir()
    for prefix, n in (("train", 3), ("t10k", 2)):
        with gzip.open(fashion / f"{prefix}-images-idx3-ubyte.gz", "wb") as stream:
            stream.write(bytes([0, 0, 8, 3]) + b"".join(v.to_bytes(4, "big") for v in (n, 28, 28)) + bytes(n * 784))
        with gzip.open(fashion / f"{prefix}-labels-idx1-ubyte.gz", "wb") as stream:
            stream.write(bytes([0, 0, 8, 1]) + n.to_bytes(4, "big") + bytes(range(n)))
    monkeypatch.setattr(image_tasks, "FASHION_DIR", fashion)
    records = image_tasks._fashion_mnist(None)
    assert len(records) == 5 and records[1][1] == "trouser" and records[0][0].shape == (28, 28)
    monkeypatch.setattr(image_tasks, "FASHION_DIR", tmp_path / "absent")
    with pytest.raises(ModuleNotFoundError, match="apt-get install dataset-fashion-mnist"):
        image_tasks._fashion_mnist(None)
    for label in ("nominal", "local", "global"):
        folder = tmp_path / "data" / "textile_images" / "simulated" / label
        folder.mkdir(parents=True)
        Image.new("RGB", (250, 250), (10, 20, 30)).save(folder / "textile_0001.jpg")
    textures = image_tasks._textures(tmp_path)
    assert [t[1] for t in textures] == ["nominal", "local", "global"] and textures[0][0].shape == (96, 96, 3)


def test_letters_render_from_matplotlibs_fonts_and_split_by_font():
    import matplotlib
    from PIL import ImageFont

    font = ImageFont.truetype(f"{matplotlib.get_data_path()}/fonts/ttf/DejaVuSans.ttf", 42)
    glyphs = [render(letter, font) for letter in LETTERS]
    assert all(g is not None and g.shape == (28, 28) and g.max() > 200 for g in glyphs)
    assert not np.array_equal(glyphs[0], glyphs[1])
    validation, test = split_fonts([f"font{k}" for k in range(22)], seed=0)
    assert len(validation) == len(test) == 2 and not validation & test
    assert split_fonts([f"font{k}" for k in range(22)], seed=0) == (validation, test)


def test_bundled_image_tasks_are_listed_and_split_with_a_seed():
    from adapterkit.data import available_tasks

    assert {"mnist", "digits", "animal_mnist", "lfw_faces", "letters", "textures", "fashion_mnist"} <= set(available_tasks())
    task = image_tasks.load_image_task("letters", seed=0, max_examples=40)
    assert task.modality == "image" and task.num_labels == 26 and len(task.train) == 40
    again = image_tasks.load_image_task("letters", seed=0, max_examples=40)
    assert all(np.array_equal(a.image, b.image) and a.label == b.label for a, b in zip(task.test, again.test))


def test_image_folders_load_one_class_per_sub_folder(tmp_path):
    for k, name in enumerate(["cat", "dog"]):
        (tmp_path / "train" / name).mkdir(parents=True)
        for i in range(10):
            Image.new("L" if k else "RGB", (12, 10), 40 * i).save(tmp_path / "train" / name / f"{i}.png")
    (tmp_path / "train" / "notes.txt").write_text("not an image")
    task = load_image_folders(tmp_path / "train", seed=0)
    assert task.label_names == ("cat", "dog") and task.modality == "image" and task.name == tmp_path.name  # not "train"
    assert (len(task.train), len(task.validation), len(task.test)) == (16, 2, 2)
    assert {e.image.ndim for e in task.train} == {2, 3}  # grey stays grey until the processor
    with pytest.raises(ValueError, match="has 0 class sub-folder.*one sub-folder per class"):
        load_image_folders(tmp_path / "train" / "cat")
    assert folder_task_name(tmp_path / "sketches") == "sketches"
    with pytest.raises(ValueError, match="notes.txt: not a folder; give a folder with one sub-folder of images per class"):
        load_image_folders(tmp_path / "train" / "notes.txt")
    (tmp_path / "test" / "bird").mkdir(parents=True)
    Image.new("L", (4, 4)).save(tmp_path / "test" / "bird" / "0.png")
    (tmp_path / "test" / "cat").mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "test" / "cat" / "0.png")
    with pytest.raises(ValueError, match="class 'bird' is not among the training classes"):
        load_image_folders(tmp_path / "train", test_dir=tmp_path / "test")
    (tmp_path / "train" / "owl" / "2020").mkdir(parents=True)
    Image.new("L", (4, 4)).save(tmp_path / "train" / "owl" / "2020" / "0.png")
    with pytest.raises(ValueError, match="owl has its images in sub-folders, which are not read"):  # not 2 classes of 3
        load_image_folders(tmp_path / "train")


def test_read_image_scales_16_bit_and_float_grey_and_names_a_missing_or_huge_file(tmp_path, monkeypatch):
    ramp = np.linspace(0, 65535, 64).reshape(8, 8).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")  # 16-bit grey: scaled, not clipped to white
    assert np.array_equal(read_image(tmp_path / "deep.png"), np.round(ramp / 257).astype(np.uint8))
    Image.fromarray((ramp / 65535).astype(np.float32)).save(tmp_path / "float.tif")  # floats in [0, 1]
    assert np.abs(read_image(tmp_path / "float.tif").astype(int) - np.round(ramp / 257)).max() <= 1
    with pytest.raises(FileNotFoundError, match="missing.png: no such image file"):
        read_image(tmp_path / "missing.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # PIL refuses more than twice that: a decompression bomb
    with pytest.raises(ValueError, match="deep.png: Image size \\(64 pixels\\) exceeds limit.*Shrink it first"):
        read_image(tmp_path / "deep.png")


def test_the_processor_resizes_repeats_grey_and_normalises():
    processor = ImageProcessor(size=32)
    grey = processor(np.full((8, 8), 255, dtype=np.uint8))
    assert grey.shape == (3, 32, 32) and torch.allclose(grey, torch.full_like(grey, 1.0))
    colour = processor(np.zeros((20, 30, 3), dtype=np.uint8))
    assert torch.allclose(colour, torch.full_like(colour, -127 / 128))
    floats = processor(np.ones((5, 5)))  # floats in [0, 1] are pixels / 255
    assert torch.allclose(floats, grey)


def test_augmentation_is_seeded_keeps_the_size_and_flips_only_where_allowed():
    picture = Image.fromarray(np.tril(np.full((16, 16), 255, dtype=np.uint8)))
    draw = lambda augment, seed: np.asarray(augment(picture, np.random.default_rng(seed)))  # noqa: E731
    assert draw(Augment(), 1).shape == (16, 16)
    assert np.array_equal(draw(Augment(), 1), draw(Augment(), 1)) and not np.array_equal(draw(Augment(), 1), draw(Augment(), 2))
    still = Augment(rotation=0, scale=0, shift=0)
    assert np.array_equal(draw(still, 1), np.asarray(picture))
    flips = {draw(Augment(rotation=0, scale=0, shift=0, flip=True), s).tobytes() for s in range(8)}
    assert flips == {np.asarray(picture).tobytes(), np.asarray(picture)[:, ::-1].tobytes()}
    assert not image_tasks.AUGMENTATION["mnist"].flip and not image_tasks.AUGMENTATION["letters"].flip


def test_a_loader_gives_pixel_batches_and_augments_only_when_shuffled():
    examples = [ImageExample(np.full((8, 8), 20 * k, dtype=np.uint8), k % 2) for k in range(5)]
    loader = make_image_loader(examples, ImageProcessor(IMAGE), batch_size=4)
    batch = next(iter(loader))
    assert batch["pixel_values"].shape == (4, 3, IMAGE, IMAGE) and batch["labels"].tolist() == [0, 1, 0, 1]
    shuffled = make_image_loader(examples, ImageProcessor(IMAGE), 5, shuffle_seed=0, augment=Augment(shift=0.3))
    shuffled.sampler.set_epoch(0)
    first = next(iter(shuffled))
    shuffled.sampler.set_epoch(1)
    assert not torch.equal(next(iter(shuffled))["pixel_values"], first["pixel_values"])


def test_training_a_residual_adapter_on_an_image_task_end_to_end(tmp_path):
    from adapterkit.inference.predict import evaluate_images, predict_images
    from adapterkit.training import Trainer, TrainingConfig, add_task_adapter

    rng = np.random.default_rng(0)
    make = lambda n: [ImageExample((rng.random((8, 8)) * 60 + 190 * (k % 2)).astype(np.uint8), k % 2) for k in range(n)]  # noqa: E731
    task = image_task_data("bright", make(24), make(8), make(8), ("dark", "light"))
    model = AdapterModel(tiny_base("cnn"))
    model.processor = ImageProcessor(IMAGE)
    add_task_adapter(model, "bright", "residual", task)
    base = {k: v.clone() for k, v in model.base.state_dict().items()}
    config = TrainingConfig(epochs=2, batch_size=8, learning_rate=1e-2, output_dir=str(tmp_path / "run"), progress=False)
    result = Trainer(model, "bright", task, config).train()
    assert result.test_metrics["accuracy"] >= 0.5 and result.epochs_run == 2
    assert all(torch.equal(v, base[k]) for k, v in model.base.state_dict().items())  # BatchNorm statistics too
    assert evaluate_images(model, task.test, "bright") == result.test_metrics
    assert set(predict_images(model, [e.image for e in task.test], "bright")) <= {"dark", "light"}
    text = AdapterModel(tiny_base("bert"))
    text.add_adapter("bright", "probe", model.heads["bright"].config)
    with pytest.raises(ValueError, match="task 'bright' is images.*--model efficientnet-lite0"):
        Trainer(text, "bright", task, config)
    words = TaskData("words", "classification", ("text",), ("dark", "light"), [Example(("x",), 1)], [], [])
    with pytest.raises(ValueError, match="task 'words' is text, but .* model reads images; .*--model minilm"):
        Trainer(model, "bright", words, config)  # not "the model has no tokenizer"


@pytest.mark.integration
@pytest.mark.parametrize("name", image_tasks.IMAGE_TASKS)
def test_the_real_bundled_image_tasks_load(name):
    task = image_tasks.load_image_task(name, seed=0)
    assert task.train and task.validation and task.test
    assert all(0 <= e.label < task.num_labels and e.image.dtype == np.uint8 for e in task.test)
