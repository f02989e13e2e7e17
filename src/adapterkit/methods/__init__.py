"""Every method registers itself on import; importing this package makes them all available."""

from . import bitfit, bottleneck, finetune, lora  # noqa: F401
from . import prefix, prompt, union  # noqa: F401  (attention-level methods and unions)
