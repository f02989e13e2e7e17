"""adapterkit: adapters and other parameter-efficient methods for Hugging Face transformers."""

from .composition import Setup, Stack
from .heads import HeadConfig
from .model import AdapterModel
from .placement import PLACEMENTS, Placement, register_placement
from .registry import REGISTRY, MethodConfig, make_config, register_method

__version__ = "0.1.0"

__all__ = [
    "AdapterModel",
    "HeadConfig",
    "MethodConfig",
    "PLACEMENTS",
    "Placement",
    "REGISTRY",
    "Setup",
    "Stack",
    "make_config",
    "register_method",
    "register_placement",
]
