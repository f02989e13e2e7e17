"""Every built-in method, registered in this one place (a method is a config class plus a
module class; see ``registry.py``). Importing ``adapterkit.methods`` makes them all available."""

from ..registry import register_method
from .bitfit import BitFitAdapter, BitFitConfig
from .bottleneck import BottleneckAdapter, HoulsbyConfig, ParallelConfig, PfeifferConfig, ScaledParallelConfig
from .finetune import FullConfig, FullFineTune, PartialConfig, PartialFineTune, Probe, ProbeConfig
from .fusion import FusionAdapter, FusionConfig
from .ia3 import IA3Adapter, IA3Config
from .kadapter import KAdapter, KAdapterConfig, KTask, KTaskConfig
from .lora import LoraAdapter, LoraConfig
from .prefix import PrefixAdapter, PrefixConfig
from .prompt import DeepPromptConfig, PromptAdapter, PromptConfig
from .residual import ResidualAdapter, ResidualConfig, ResidualParallelConfig
from .union import MamConfig, UnionAdapter, UnionConfig

BUILT_IN = (
    (HoulsbyConfig, BottleneckAdapter),
    (PfeifferConfig, BottleneckAdapter),
    (ParallelConfig, BottleneckAdapter),
    (ScaledParallelConfig, BottleneckAdapter),
    (LoraConfig, LoraAdapter),
    (IA3Config, IA3Adapter),
    (BitFitConfig, BitFitAdapter),
    (PrefixConfig, PrefixAdapter),
    (PromptConfig, PromptAdapter),
    (DeepPromptConfig, PromptAdapter),
    (UnionConfig, UnionAdapter),
    (MamConfig, UnionAdapter),
    (FusionConfig, FusionAdapter),
    (ResidualConfig, ResidualAdapter),
    (ResidualParallelConfig, ResidualAdapter),
    (KAdapterConfig, KAdapter),
    (KTaskConfig, KTask),
    (FullConfig, FullFineTune),
    (PartialConfig, PartialFineTune),
    (ProbeConfig, Probe),
)
"""(config class, module class) of every built-in method."""

for _config, _module in BUILT_IN:
    register_method(_config, _module)
