"""THE table of method configurations the method tests run, and the helpers they share.

One :class:`Row` per method configuration: the method and its (tiny) options, the tiny
architectures the generic checks of ``test_methods.py`` run it on, the architectures that refuse
it, what must be on the model before it (a fusion's fused adapters), and the expectations that
differ between rows (identity at init, the parameter-count formula, which base parameters it
trains, whether folding changes it). Which generic check applies to a row follows from the
capabilities its method's module class declares (``REGISTRY[method].capabilities``): ``merge``,
``fold``, ``modifies_base``. Every registered method has at least one row (``missing_rows``).

Method-specific checks stay in their own files and use these rows and helpers:
``test_attention_methods.py`` builds its models with :func:`make` from the rows and shares
:func:`perturb` and :func:`hidden`; ``test_fusion.py`` shares :func:`hidden` and :func:`default_head`;
the hand computations of ``test_fusion.py``, ``test_composition.py`` and ``test_bottleneck.py``
share :func:`sublayer_hooks` and :func:`run`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from tiny_models import ALL_ARCHITECTURES, ARCHITECTURES, CNN_CHANNELS, DECODERS, ENCODERS, HIDDEN, IMAGE_ARCHITECTURES, LAYERS, batch_for, tiny_base

import adapterkit.methods  # noqa: F401  (registers every built-in method)
from adapterkit import AdapterModel, HeadConfig
from adapterkit.registry import REGISTRY
from adapterkit.sites import SiteInputs, SiteModule, site_input

FFN = 64  # intermediate size of the tiny models (tiny_models._ENCODER / _DECODER)
M = 4  # bottleneck width used by the bottleneck rows
R = 2  # LoRA rank used by the LoRA rows
L_PREFIX, K_PROMPT, MLP = 3, 3, 8  # prefix length, prompt length, prefix reparameterisation width
NUM_LABELS = 3
NO_PREFIX = {"mpnet": "MPNetSelfAttention .* computes attention in its own forward.*use prompt"}
"""Architectures that refuse a prefix (``attention.check_attention_module``), with the error."""

NO_EMBEDDING_LAYER = "insert_at='embedding_output'.*embedding layer is only the token lookup.*use insert_at='input'"
"""The error of a prompt after the embedding layer on a model whose embedding layer is the token lookup."""

ATTENTION_ARCHS = ("bert", "distilbert", "llama")  # where the attention-level rows run (keeps the suite fast)
EVERY_ARCH = ALL_ARCHITECTURES  # transformers and the tiny CNN: rows of methods that make sense on both


# ----------------------------------------------------------------------------- dimensions and formulas
def kv_width(arch: str) -> int:
    """Width of the key/value projections: the tiny decoders use 2 of 4 heads for k/v (GQA)."""
    return HIDDEN // 2 if arch in DECODERS else HIDDEN


def ffn_in_count(arch: str) -> int:
    """Projections playing ``ffn_in``: gate and up on the (SwiGLU) decoders, one on encoders."""
    return 2 if arch in DECODERS else 1


def bottleneck_params(m: int = M, d: int = HIDDEN) -> int:
    """``W_down (m x d) + b_down + W_up (d x m) + b_up``."""
    return 2 * d * m + d + m


def norm_params(arch: str) -> int:
    """A layer norm's gain and bias (LayerNorm) or gain only (RMSNorm on the decoders)."""
    return 2 * HIDDEN if arch in ENCODERS else HIDDEN


def lora_params(arch: str, targets: Sequence[str], r: int = R) -> int:
    """``r (d_in + d_out)`` per adapted projection, every layer."""
    d, kv = HIDDEN, kv_width(arch)
    per_role = {"q": r * (d + d), "k": r * (d + kv), "v": r * (d + kv), "o": r * (d + d),
                "ffn_in": ffn_in_count(arch) * r * (d + FFN), "ffn_out": r * (FFN + d)}
    return LAYERS * sum(per_role[t] for t in targets)


def out_features(arch: str, targets: Sequence[str]) -> int:
    """Output features of the adapted projections of one layer (one DoRA magnitude or IA3 scale each)."""
    d, kv = HIDDEN, kv_width(arch)
    per_role = {"q": d, "k": kv, "v": kv, "o": d, "ffn_in": ffn_in_count(arch) * FFN, "ffn_out": d}
    return sum(per_role[t] for t in targets)


def in_features(arch: str, targets: Sequence[str]) -> int:
    """Input features of the adapted projections of one layer (one IA3 input scale each)."""
    d = HIDDEN
    per_role = {"q": d, "k": d, "v": d, "o": d, "ffn_in": ffn_in_count(arch) * d, "ffn_out": FFN}
    return sum(per_role[t] for t in targets)


def dora_params(arch: str, targets: Sequence[str], r: int = R) -> int:
    """LoRA's ``r (d_in + d_out)`` plus DoRA's magnitude ``m`` (``d_out``) per adapted projection."""
    return lora_params(arch, targets, r) + LAYERS * out_features(arch, targets)


# the tiny CNN (tiny_models.TinyCNN): block 0 maps 8 -> 8 channels, block 1 8 -> 16 (stride 2);
# each block: conv1 (3x3) + bn1, conv2 (3x3) + bn2, and a 1x1 shortcut in block 1
CNN_BLOCKS = ((CNN_CHANNELS[0], CNN_CHANNELS[0]), (CNN_CHANNELS[0], CNN_CHANNELS[1]))  # (C_in, C_out) per block


def residual_params(domain_norms: bool = True) -> int:
    """Series adapters after each block's last conv: ``α (C x C)``, ``BN_a`` and ``BN_d`` (2C each);
    the other BatchNorm (bn1) domain-specific too (2C). Without domain BatchNorms: ``α`` and ``BN_a``."""
    if not domain_norms:
        return sum(c * c + 2 * c for _, c in CNN_BLOCKS)
    return sum(c * c + 4 * c + 2 * c for _, c in CNN_BLOCKS)


def residual_parallel_params() -> int:
    """A parallel 1x1 ``α (C_out x C_in)`` per block and both of its BatchNorms domain-specific (2 x 2C)."""
    return sum(c_in * c_out + 2 * 2 * c_out for c_in, c_out in CNN_BLOCKS)


def conv_lora_params(r: int = R) -> int:
    """``A (r x C_in x 3 x 3)`` and ``B (C_out x r)`` on conv1 and conv2 of each block."""
    return sum(r * c_in * 9 + c_out * r + r * c_out * 9 + c_out * r for c_in, c_out in CNN_BLOCKS)


def bitfit_params(arch: str) -> int:
    """A bias delta on every projection and on every LayerNorm (the decoders' RMSNorms have none);
    on the CNN, on every BatchNorm of the blocks (its convolutions have no bias)."""
    if arch in IMAGE_ARCHITECTURES:
        return sum(2 * c_out for _, c_out in CNN_BLOCKS)
    d, kv = HIDDEN, kv_width(arch)
    linear_biases = d + kv + kv + d + ffn_in_count(arch) * FFN + d
    norm_biases = 2 * d if arch in ENCODERS else 0
    return LAYERS * (linear_biases + norm_biases)


def prefix_plain_params(arch: str, length: int = L_PREFIX) -> int:
    """``layers x 2 x l x d_kv``."""
    return LAYERS * 2 * length * kv_width(arch)


def prefix_mlp_params(arch: str, length: int = L_PREFIX, width: int = MLP) -> int:
    """``P' (l x d)``, ``W_1 (h x d) + b_1``, ``W_2 (n 2 d_kv x h) + b_2``."""
    d, out = HIDDEN, LAYERS * 2 * kv_width(arch)
    return length * d + (d * width + width) + (width * out + out)


def knowledge_params(taps: int = LAYERS, m: int = 8, depth: int = 1, combine: str = "concat", d: int = HIDDEN) -> int:
    """A K-Adapter knowledge network: per adapter layer a down-projection (``d`` wide input for the
    first, ``2 d`` after it when concatenating), ``depth`` transformer layers of width ``m`` (fused
    q/k/v, output, FFN ``4 m`` wide, two LayerNorms) and an up-projection back to ``d``."""
    ffn = 4 * m
    transformer = 3 * m * m + 3 * m + m * m + m + m * ffn + ffn + ffn * m + m + 2 * 2 * m
    inputs = [d if k == 0 or combine == "sum" else 2 * d for k in range(taps)]
    return sum(d_in * m + m + depth * transformer + m * d + d for d_in in inputs)


def layer_params(arch: str) -> int:
    """One transformer layer of the tiny model (what ``partial`` with ``top_layers=1`` trains)."""
    if arch in IMAGE_ARCHITECTURES:  # conv1, bn1, conv2, bn2 and the 1x1 shortcut of the last block
        c_in, c_out = CNN_BLOCKS[-1]
        return c_in * c_out * 9 + 2 * c_out + c_out * c_out * 9 + 2 * c_out + c_in * c_out
    d, kv = HIDDEN, kv_width(arch)
    if arch in ENCODERS:  # q, k, v, o with biases, two LayerNorms, the FFN with biases
        return 4 * (d * d + d) + 2 * 2 * d + (d * FFN + FFN) + (FFN * d + d)
    qkv_biases = d + 2 * kv if arch == "qwen2" else 0  # Qwen2 has q/k/v biases, Llama none
    return 2 * d * d + 2 * d * kv + qkv_biases + 3 * d * FFN + 2 * d


# ----------------------------------------------------------------------------- base parameters trained
def all_base(model: AdapterModel) -> set[str]:
    """Full fine-tuning: every parameter of the base model."""
    return {name for name, _ in model.base.named_parameters()}


def top_layer(model: AdapterModel) -> set[str]:
    """Partial fine-tuning with ``top_layers=1``: the parameters of the last layer."""
    top = {id(p) for p in model.parts.layers[-1].layer.parameters()}
    return {name for name, p in model.base.named_parameters() if id(p) in top}


# ----------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Prerequisite:
    """An adapter a row needs on the model before its own (with a head, perturbed so it is not the
    identity: a fusion fuses trained adapters)."""

    name: str
    method: str
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Row:
    """One method configuration of the table.

    Attributes:
        method: the registered method.
        options: its options (tiny, so a 32-wide, 2-layer model hosts it and the suite stays fast).
        archs: the tiny architectures the generic checks run it on.
        params: the number of parameters the adapter trains besides its head, from the method's
            formula: ``params(arch, model)``.
        identity_at_init: a fresh adapter leaves the hidden states bit-identical; when False the
            generic check asserts the opposite (that the fresh adapter does change them).
        folds: ``fold_adapter`` has a training-only reparameterisation to fold away (needs the
            ``fold`` capability); folding a ``fold`` method without one changes nothing.
        trains_base: for ``modifies_base`` methods, the base parameters (names in the base model)
            it trains in place; exactly those and its head train.
        refused: architectures on which adding it is refused, with the error (a regex).
        prerequisites: adapters added before it, in order.
    """

    method: str
    options: Mapping[str, Any]
    archs: tuple[str, ...]
    params: Callable[[str, AdapterModel], int]
    identity_at_init: bool = True
    folds: bool = False
    trains_base: Callable[[AdapterModel], set[str]] | None = None
    refused: Mapping[str, str] = field(default_factory=dict)
    prerequisites: tuple[Prerequisite, ...] = ()

    @property
    def capabilities(self) -> frozenset[str]:
        return REGISTRY[self.method].capabilities


_FUSED = (Prerequisite("fused_a", "pfeiffer", {"bottleneck_size": M}), Prerequisite("fused_b", "pfeiffer", {"bottleneck_size": M}))
K_OPTIONS = MappingProxyType({"bottleneck_size": 8, "num_heads": 2, "transformer_layers": 1})
"""A tiny knowledge adapter (K-Adapter) reading both layers of the tiny models."""
_KNOWLEDGE = (Prerequisite("know_a", "k_adapter", K_OPTIONS), Prerequisite("know_b", "k_adapter", {**K_OPTIONS, "combine": "sum"}))

ROWS: Mapping[str, Row] = MappingProxyType({
    # --- bottleneck adapters, LoRA, BitFit and the baselines: every tiny architecture
    "houlsby": Row("houlsby", {"bottleneck_size": M}, ARCHITECTURES,
                   lambda arch, model: LAYERS * 2 * (bottleneck_params() + norm_params(arch))),
    # Pfeiffer et al. 2020's adapter reads the FFN's Add & Norm output with that (frozen) norm: no parameters more
    "pfeiffer": Row("pfeiffer", {"bottleneck_size": M}, ARCHITECTURES, lambda arch, model: LAYERS * bottleneck_params()),
    "pfeiffer_houlsby_form": Row("pfeiffer", {"bottleneck_size": M, "original_ln_before": False}, ARCHITECTURES,
                                 lambda arch, model: LAYERS * bottleneck_params()),
    "parallel": Row("parallel", {"bottleneck_size": M}, ARCHITECTURES, lambda arch, model: LAYERS * bottleneck_params()),
    # a learned scaling is one more parameter per bottleneck
    "scaled_parallel": Row("scaled_parallel", {"bottleneck_size": M, "scaling": "learned"}, ARCHITECTURES,
                           lambda arch, model: LAYERS * (bottleneck_params() + 1)),
    "lora": Row("lora", {"r": R, "targets": ["q", "k", "v", "o", "ffn_in", "ffn_out"]}, ARCHITECTURES,
                lambda arch, model: lora_params(arch, ("q", "k", "v", "o", "ffn_in", "ffn_out"))),
    # DoRA: LoRA's factors plus a magnitude per output feature; rsLoRA changes only the scaling
    "dora": Row("lora", {"r": R, "targets": ["q", "v", "ffn_in", "ffn_out"], "use_dora": True, "use_rslora": True},
                ARCHITECTURES, lambda arch, model: dora_params(arch, ("q", "v", "ffn_in", "ffn_out"))),
    # IA3: a vector per scaled output (k, v) and per scaled input (the FFN's output projection:
    # the paper's and peft's l_ff); AdapterHub's placement scales the FFN input projection's output
    "ia3": Row("ia3", {}, ARCHITECTURES,
               lambda arch, model: LAYERS * (out_features(arch, ("k", "v")) + in_features(arch, ("ffn_out",)))),
    "ia3_adapterhub": Row("ia3", {"targets": ["k", "v", "ffn_in"], "input_targets": []}, ARCHITECTURES,
                          lambda arch, model: LAYERS * out_features(arch, ("k", "v", "ffn_in"))),
    "bitfit": Row("bitfit", {}, EVERY_ARCH, lambda arch, model: bitfit_params(arch)),
    "probe": Row("probe", {}, EVERY_ARCH, lambda arch, model: 0),  # only the head trains
    "partial": Row("partial", {"top_layers": 1}, EVERY_ARCH, lambda arch, model: layer_params(arch),
                   trains_base=top_layer),
    # full fine-tuning's "formula" is its definition: every base parameter
    "full": Row("full", {}, EVERY_ARCH, lambda arch, model: sum(p.numel() for p in model.base.parameters()),
                trains_base=all_base),
    # --- CNN methods (Rebuffi et al. 2017, 2018) and LoRA on convolutions: the tiny CNN; they are refused
    # on transformers (a transformer has no convolution to adapt)
    "residual": Row("residual", {}, IMAGE_ARCHITECTURES, lambda arch, model: residual_params(),
                    refused={"bert": "residual adapts the convolutions of a CNN"}),
    "residual_base_norms": Row("residual", {"domain_norms": False}, IMAGE_ARCHITECTURES,
                               lambda arch, model: residual_params(domain_norms=False)),
    "residual_parallel": Row("residual_parallel", {}, IMAGE_ARCHITECTURES, lambda arch, model: residual_parallel_params(),
                             refused={"llama": "residual_parallel adapts the convolutions of a CNN"}),
    "conv_lora": Row("lora", {"r": R, "targets": ["conv1", "conv2"]}, IMAGE_ARCHITECTURES,
                     lambda arch, model: conv_lora_params(), refused={"bert": "no projection plays the role"}),
    # --- attention-level methods and unions: what attention (or the input) sees changes, so a fresh
    # prefix or prompt is not the identity (test_attention_methods checks that a prefix hidden from
    # every example is)
    "prefix": Row("prefix", {"prefix_length": L_PREFIX, "reparam_hidden": MLP}, ATTENTION_ARCHS,
                  lambda arch, model: prefix_mlp_params(arch), identity_at_init=False, folds=True, refused=NO_PREFIX),
    "prefix_plain": Row("prefix", {"prefix_length": L_PREFIX, "reparameterize": False}, ATTENTION_ARCHS,
                        lambda arch, model: prefix_plain_params(arch), identity_at_init=False, refused=NO_PREFIX),
    "prompt": Row("prompt", {"prompt_length": K_PROMPT}, ATTENTION_ARCHS,
                  lambda arch, model: K_PROMPT * HIDDEN, identity_at_init=False),
    # the input prompt and one prompt per layer above the first
    "deep_prompt": Row("deep_prompt", {"prompt_length": K_PROMPT}, ATTENTION_ARCHS,
                       lambda arch, model: LAYERS * K_PROMPT * HIDDEN, identity_at_init=False),
    # AdapterHub's place: after the embedding layer, which a decoder's bare token lookup does not have
    "deep_prompt_after_embeddings": Row("deep_prompt", {"prompt_length": K_PROMPT, "insert_at": "embedding_output"},
                                        ("bert", "distilbert"), lambda arch, model: LAYERS * K_PROMPT * HIDDEN,
                                        identity_at_init=False, refused={"llama": NO_EMBEDDING_LAYER}),
    # prefix + a scaled parallel FFN adapter (scaling 4.0 is a constant, not a parameter)
    "mam": Row("mam", {"prefix_length": L_PREFIX, "reparam_hidden": MLP, "bottleneck_size": M}, ATTENTION_ARCHS,
               lambda arch, model: prefix_mlp_params(arch) + LAYERS * bottleneck_params(),
               identity_at_init=False, folds=True, refused=NO_PREFIX),
    # a union is 'fold'-capable whatever its members; with no prefix inside, folding changes nothing
    "lora+pfeiffer": Row("union", {"configs": [{"method": "lora", "r": R}, {"method": "pfeiffer", "bottleneck_size": M}]},
                         ATTENTION_ARCHS, lambda arch, model: lora_params(arch, ("q", "v")) + LAYERS * bottleneck_params()),
    # --- AdapterFusion over two (perturbed, i.e. trained-looking) Pfeiffer adapters: Q, K (no
    # bias) and V per FFN sublayer. NOT the identity at init: V starts as the identity, but the
    # fusion returns the attention-weighted mean of the fused adapters' outputs, which differ from
    # the base's (test_fusion checks that mean against the paper's formula).
    "fusion": Row("fusion", {"adapters": [p.name for p in _FUSED]}, ARCHITECTURES,
                  lambda arch, model: LAYERS * (3 * HIDDEN * HIDDEN + 2 * HIDDEN),
                  identity_at_init=False, prerequisites=_FUSED),
    # AdapterHub's default form: the residual added after the value matrix (the same parameters)
    "fusion_residual_after": Row("fusion", {"adapters": [p.name for p in _FUSED], "residual_before": False}, ATTENTION_ARCHS,
                                 lambda arch, model: LAYERS * (3 * HIDDEN * HIDDEN + 2 * HIDDEN),
                                 identity_at_init=False, prerequisites=_FUSED),
    # --- K-Adapter: a knowledge adapter outside the model (it changes no output, so the hidden
    # states stay the base's) and a task head over the model and two of them (only the head
    # trains, unless it retrains copies of them)
    "k_adapter": Row("k_adapter", K_OPTIONS, ARCHITECTURES, lambda arch, model: knowledge_params()),
    "k_adapter_sum": Row("k_adapter", {**K_OPTIONS, "combine": "sum", "layers": [-1]}, ("bert", "llama"),
                         lambda arch, model: knowledge_params(taps=1, combine="sum")),
    "k_task": Row("k_task", {"adapters": [p.name for p in _KNOWLEDGE]}, ARCHITECTURES, lambda arch, model: 0,
                  prerequisites=_KNOWLEDGE),
    "k_task_retrained": Row("k_task", {"adapters": [p.name for p in _KNOWLEDGE], "train_adapters": True}, ("bert", "llama"),
                            lambda arch, model: knowledge_params() + knowledge_params(combine="sum"),
                            prerequisites=_KNOWLEDGE),
})

COMBOS = [(arch, name) for name, row in ROWS.items() for arch in row.archs]
"""(architecture, row name) for every generic check."""


def missing_rows() -> list[str]:
    """Registered methods (``adapterkit.registry.REGISTRY``) that no row of the table runs."""
    covered = {row.method for row in ROWS.values()}
    return sorted(name for name in REGISTRY if name not in covered)


def combos_with(capability: str, present: bool = True) -> list[tuple[str, str]]:
    """The combos whose row's method has (or, with ``present=False``, lacks) ``capability``."""
    return [(arch, name) for arch, name in COMBOS if (capability in ROWS[name].capabilities) == present]


# ----------------------------------------------------------------------------- helpers
def default_head(num_labels: int = NUM_LABELS) -> HeadConfig:
    """A classification head without dropout (so eval and train passes compute the same)."""
    return HeadConfig(num_labels=num_labels, dropout=0.0)


def row_of(row: Row | str) -> Row:
    return ROWS[row] if isinstance(row, str) else row


def bare(arch: str, row: Row | str, seed: int = 0) -> AdapterModel:
    """A tiny model of ``arch`` with the row's prerequisites on it, deterministic for ``seed`` (so
    a fresh one holds the very same prerequisites: what a saved adapter of the row loads into).
    Their initial values come from the global RNG, which ``tiny_base`` seeds just before."""
    model = AdapterModel(tiny_base(arch, seed))
    for k, prerequisite in enumerate(row_of(row).prerequisites):
        model.add_adapter(prerequisite.name, prerequisite.method, default_head(), **prerequisite.options)
        perturb(model, prerequisite.name, seed=100 + k)
    return model.eval()


def make(arch: str, row: Row | str, head: HeadConfig | None = None, seed: int = 0, **overrides: Any) -> AdapterModel:
    """A tiny model of ``arch`` with the row's adapter added as ``task`` (with ``head``, by default
    a 3-class head without dropout; ``overrides`` change the row's options), in eval mode."""
    row = row_of(row)
    model = bare(arch, row, seed)
    model.add_adapter("task", row.method, head or default_head(), **{**row.options, **overrides})
    return model.eval()


@torch.no_grad()
def perturb(model: AdapterModel, name: str = "task", seed: int = 3) -> None:
    """Give every parameter an adapter owns non-zero values (fresh adapters are mostly zeros), and
    move its BatchNorms' running statistics (a trained domain's are not the base's)."""
    generator = torch.Generator().manual_seed(seed)
    for param in model.adapter_parameters(name).values():
        param.add_(0.1 * torch.randn(param.shape, generator=generator))
    for buffer in model.adapter_state(name).buffers.values():
        if buffer.is_floating_point():
            buffer.add_(0.1 * torch.rand(buffer.shape, generator=generator))


@torch.no_grad()
def hidden(model: AdapterModel, batch: Mapping[str, torch.Tensor], adapters: Any = "task") -> torch.Tensor:
    """The last hidden states of the model's body with ``adapters`` (None: the plain base)."""
    with model.using(adapters):
        return model.body(**batch).last_hidden_state


@contextlib.contextmanager
def sublayer_hooks(model: AdapterModel, compute: Callable[[int, SiteInputs, torch.Tensor], torch.Tensor],
                   position: str = "ffn") -> Iterator[None]:
    """Plain hooks that replace every layer's ``position`` sublayer output (after its dropout) by
    ``compute(layer, inputs, out)``, with ``inputs`` the sublayer's input and residual input: a
    computation by hand, for passes without adapters."""
    handles = []
    for layer in range(model.parts.num_layers):
        site, seen = model.sites[f"{layer}.{position}"], {}
        handles += [
            site.input_module.register_forward_pre_hook(lambda m, args, seen=seen: seen.update(input=args[0])),
            site.residual_module.register_forward_pre_hook(lambda m, args, seen=seen: seen.update(residual=args[0])),
            site.output_module.register_forward_hook(
                lambda m, args, out, layer=layer, seen=seen: compute(layer, SiteInputs(seen["input"], seen["residual"]), out)
            ),
        ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def run(module: SiteModule, inputs: SiteInputs, out: torch.Tensor) -> torch.Tensor:
    """``module``'s output at its site, given the site's inputs as the model would give them."""
    return module(site_input(module, inputs), out)


def add_bystanders(model: AdapterModel, arch: str) -> list[str]:
    """Other adapters beside ``task`` (perturbed, with heads): a Houlsby adapter (sequential
    bottlenecks on both sublayers and norm deltas) and, where the architecture takes one, a prefix;
    on the CNN another domain's residual and parallel residual adapters (BatchNorms of their own).
    Returns the names of every adapter besides ``task`` (the row's prerequisites included)."""
    added = [("other_houlsby", "houlsby", {"bottleneck_size": M})]
    if arch in IMAGE_ARCHITECTURES:
        added = [("other_residual", "residual", {}), ("other_parallel", "residual_parallel", {})]
    elif arch not in NO_PREFIX:
        added.append(("other_prefix", "prefix", {"prefix_length": 2}))
    for k, (name, method, options) in enumerate(added):
        model.add_adapter(name, method, default_head(), **options)
        perturb(model, name, seed=10 + k)
    model.eval()
    return [name for name in model.adapters if name != "task"]


def train_and_check_isolation(model: AdapterModel, batch: Mapping[str, torch.Tensor], others: Sequence[str] = (),
                              steps: int = 2) -> None:
    """Train adapter ``task`` for a few steps and assert that only what it owns changed (its
    parameters, its head, and for ``modifies_base`` methods the base weights it trains): every
    other tensor of the model, the base's included (its BatchNorms' running statistics too, though
    the model is in train mode), stays bit-identical, so do the predictions of the adapters
    ``others``, and ``task`` moved."""
    state = model.state_dict(keep_vars=True)
    owned = {id(t) for t in model.adapter_state("task").tensors().values()}
    owned_keys = {key for key, tensor in state.items() if id(tensor) in owned}
    before = {key: tensor.detach().clone() for key, tensor in state.items()}
    others_before = {name: model(**batch, adapters=name).logits for name in others}
    model.train_adapter("task")
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    labels = torch.arange(next(iter(batch.values())).shape[0]) % NUM_LABELS
    for _ in range(steps):
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    after = model.state_dict()
    changed = {key for key, value in before.items() if not torch.equal(after[key], value)}
    assert changed, "training changed nothing"
    assert changed <= owned_keys, f"training changed tensors the adapter does not own: {sorted(changed - owned_keys)}"
    for name, logits in others_before.items():
        assert torch.equal(model(**batch, adapters=name).logits, logits), name
