"""Where things sit inside a transformer, as data.

Every method in adapterkit acts at a few well-defined places of each transformer layer: the
attention projections (q, k, v, o), the feed-forward input and output projections, and the two
layer norms. Architectures name these differently (``attention.self.query`` in BERT,
``self_attn.q_proj`` in Llama, ``attention.q_lin`` in DistilBERT), so instead of copying each
model's forward code we keep one :class:`Placement` per architecture family: plain module paths,
resolved structurally against the loaded model. A missing entry or a path that matches nothing is
an error that names the model type and says how to supply a placement.

Two facts about a family matter beyond the paths:

* ``norm_first``: post-LN models (BERT) compute ``LN(x + dropout(sublayer(x)))``; pre-LN models
  (Llama) compute ``x + sublayer(LN(x))``. Adapters placed "after the sublayer, before the residual
  add" land in the right spot in both cases when hooked on the sublayer's output dropout (or, where
  a family has no dropout module there, on its output projection).
* ``decoder``: causal decoders get a causal-LM head and are loaded with their LM head.

A placement can name several stacks of layers (a seq2seq model's encoder and decoder layers,
numbered across both in the order given) and the projections of a cross-attention sublayer,
which only the layers that have one get. ``layout`` says how the features of a site are laid
out: ``sequence`` (``(batch, seq, d)``, transformers) or ``image`` (``(batch, C, H, W)``, CNNs).

A CNN is a :class:`ConvPlacement`: its "layers" are its blocks (a ResNet's residual units, an
EfficientNet's MBConv blocks), and each block's convolutions play roles from :data:`CONV_ROLES`,
each with the BatchNorm that follows it. The site width there is the number of channels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from torch import nn

CROSS_ROLES = ("cross_q", "cross_k", "cross_v", "cross_o")
"""Roles of a cross-attention sublayer's projections (seq2seq decoders); optional per layer."""

LINEAR_ROLES = ("q", "k", "v", "o", "ffn_in", "ffn_out", *CROSS_ROLES)
"""Roles of the linear projections inside a layer that methods such as LoRA can target."""

NORM_ROLES = ("attn_norm", "ffn_norm", "cross_norm")
DROPOUT_ROLES = ("attn_dropout", "ffn_dropout", "cross_dropout")
"""Roles of the dropout modules applied to a sublayer's output before the residual add."""
OPTIONAL_ROLES = (*CROSS_ROLES, "cross_norm", "cross_dropout")
"""Roles that only some layers have (the decoder layers of a seq2seq model)."""


class Sublayer(NamedTuple):
    """The roles of one sublayer's modules."""

    first: str
    """its first projection (whose input is the sublayer's input)"""
    last: str
    """its last projection"""
    norm: str
    """its layer norm"""
    dropout: str
    """the dropout on its output, before the residual add"""


SUBLAYERS = {
    "attn": Sublayer("q", "o", "attn_norm", "attn_dropout"),
    "ffn": Sublayer("ffn_in", "ffn_out", "ffn_norm", "ffn_dropout"),
    "cross_attn": Sublayer("cross_q", "cross_o", "cross_norm", "cross_dropout"),
}
"""Sublayer name -> the roles of its modules."""

LAYOUTS = {"sequence": "(batch, seq, d)", "image": "(batch, C, H, W)"}
"""How the features at a site are laid out, by layout name."""

CONV_ROLES = ("expand", "depthwise", "project", "conv1", "conv2", "conv3")
"""Roles of the convolutions of a CNN block: an inverted-residual block (MobileNetV2,
EfficientNet) has ``expand`` (1x1, widening; absent where the expansion ratio is 1),
``depthwise`` (k x k, one filter per channel) and ``project`` (1x1, narrowing); a ResNet-style
block numbers its convolutions ``conv1``, ``conv2`` (``conv3`` in a bottleneck unit)."""


def norm_role(conv_role: str) -> str:
    """The role of the BatchNorm that follows the convolution playing ``conv_role``."""
    return f"{conv_role}_norm"


@dataclass(frozen=True)
class Placement:
    """Module paths of one architecture family.

    Args:
        layers: path of the ``nn.ModuleList`` of transformer layers, matched as a suffix of the
            module names of the loaded model (so ``encoder.layer`` matches both a bare
            ``BertModel`` and ``bert.encoder.layer`` inside a task model); a tuple of paths for
            several stacks (encoder, decoder), whose layers are numbered across them in order.
        q, k, v, o: attention projections, relative to one layer.
        ffn_in: the feed-forward input projection(s) (Llama has two: gate and up).
        ffn_out: the feed-forward output projection.
        attn_norm, ffn_norm: the layer norm belonging to the attention / feed-forward sublayer.
        embeddings: the token embedding module, matched as a suffix like ``layers``.
        norm_first: True for pre-LN layers (norm before the sublayer).
        decoder: True for causal decoders.
        cross_q, cross_k, cross_v, cross_o, cross_norm, cross_dropout: the cross-attention
            sublayer of a seq2seq decoder layer (None: the family has none); layers without it
            get no cross sites.
        layout: ``sequence`` or ``image`` (see :data:`LAYOUTS`).
        attn_dropout, ffn_dropout: the dropout module applied to the attention / feed-forward
            sublayer's output before the residual add, relative to one layer (BERT's
            ``attention.output.dropout``); each must be called exactly once per layer call, on
            that output. None: the family has no such module (Llama has no dropout there; BART
            calls ``nn.functional.dropout``), and sublayer sites then sit on the last projection.

    Raises:
        ValueError: an empty path or an unknown layout.
    """

    layers: str | tuple[str, ...]
    q: str
    k: str
    v: str
    o: str
    ffn_in: tuple[str, ...]
    ffn_out: str
    attn_norm: str
    ffn_norm: str
    embeddings: str
    norm_first: bool = False
    decoder: bool = False
    cross_q: str | None = None
    cross_k: str | None = None
    cross_v: str | None = None
    cross_o: str | None = None
    cross_norm: str | None = None
    layout: str = "sequence"
    attn_dropout: str | None = None
    ffn_dropout: str | None = None
    cross_dropout: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.layers, list):
            object.__setattr__(self, "layers", tuple(self.layers))
        if isinstance(self.ffn_in, str):
            object.__setattr__(self, "ffn_in", (self.ffn_in,))
        if self.layout not in LAYOUTS:
            raise ValueError(f"Placement: unknown layout {self.layout!r}; use one of {', '.join(LAYOUTS)}")
        required = [*self.stacks, *self.ffn_in, self.q, self.k, self.v, self.o, self.ffn_out, self.embeddings]
        if not self.stacks or not self.ffn_in or not all(isinstance(p, str) and p for p in required):
            raise ValueError("Placement: layers, q, k, v, o, ffn_in, ffn_out and embeddings need non-empty module paths")

    @property
    def stacks(self) -> tuple[str, ...]:
        """The paths of the layer stacks, in the order their layers are numbered."""
        return (self.layers,) if isinstance(self.layers, str) else tuple(self.layers)

    def role_paths(self, role: str) -> tuple[str, ...]:
        """Paths (relative to a layer) of the module(s) that play ``role`` (empty: none)."""
        if role == "ffn_in":
            return self.ffn_in
        path = getattr(self, role)
        return () if path is None else (path,)


_BERT = Placement(
    layers="encoder.layer",
    q="attention.self.query",
    k="attention.self.key",
    v="attention.self.value",
    o="attention.output.dense",
    ffn_in=("intermediate.dense",),
    ffn_out="output.dense",
    attn_norm="attention.output.LayerNorm",
    ffn_norm="output.LayerNorm",
    embeddings="embeddings.word_embeddings",
    attn_dropout="attention.output.dropout",
    ffn_dropout="output.dropout",
)
_DISTILBERT = Placement(
    layers="transformer.layer",
    q="attention.q_lin",
    k="attention.k_lin",
    v="attention.v_lin",
    o="attention.out_lin",
    ffn_in=("ffn.lin1",),
    ffn_out="ffn.lin2",
    attn_norm="sa_layer_norm",
    ffn_norm="output_layer_norm",
    embeddings="embeddings.word_embeddings",
    ffn_dropout="ffn.dropout",  # the attention output has no dropout in DistilBERT
)
_MPNET = Placement(
    layers="encoder.layer",
    q="attention.attn.q",
    k="attention.attn.k",
    v="attention.attn.v",
    o="attention.attn.o",
    ffn_in=("intermediate.dense",),
    ffn_out="output.dense",
    attn_norm="attention.LayerNorm",
    ffn_norm="output.LayerNorm",
    embeddings="embeddings.word_embeddings",
    attn_dropout="attention.dropout",
    ffn_dropout="output.dropout",
)
_LLAMA = Placement(
    layers="layers",
    q="self_attn.q_proj",
    k="self_attn.k_proj",
    v="self_attn.v_proj",
    o="self_attn.o_proj",
    ffn_in=("mlp.gate_proj", "mlp.up_proj"),
    ffn_out="mlp.down_proj",
    attn_norm="input_layernorm",
    ffn_norm="post_attention_layernorm",
    embeddings="embed_tokens",
    norm_first=True,
    decoder=True,
)

_BART = Placement(
    layers=("encoder.layers", "decoder.layers"),
    q="self_attn.q_proj",
    k="self_attn.k_proj",
    v="self_attn.v_proj",
    o="self_attn.out_proj",
    ffn_in=("fc1",),
    ffn_out="fc2",
    attn_norm="self_attn_layer_norm",
    ffn_norm="final_layer_norm",
    embeddings="shared",
    cross_q="encoder_attn.q_proj",
    cross_k="encoder_attn.k_proj",
    cross_v="encoder_attn.v_proj",
    cross_o="encoder_attn.out_proj",
    cross_norm="encoder_attn_layer_norm",
)  # BART's dropouts are nn.functional calls: no module to name

PLACEMENTS: dict[str, Placement | ConvPlacement] = {
    "bert": _BERT,
    "roberta": _BERT,
    "xlm-roberta": _BERT,
    "camembert": _BERT,
    "electra": _BERT,
    "distilbert": _DISTILBERT,
    "mpnet": _MPNET,
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "bart": _BART,
    "mbart": _BART,
}


@dataclass(frozen=True)
class ConvPlacement:
    """Module paths of a CNN family: its blocks, and each block's convolutions with their BatchNorms.

    Args:
        layers: path of the ``nn.ModuleList`` of blocks, matched as a suffix like
            :attr:`Placement.layers`. Each block is one "layer": adapters are added per block.
        convs: ``(role, convolution path, BatchNorm path)`` for each convolution of a block, in
            the order the block applies them, paths relative to one block, roles from
            :data:`CONV_ROLES`. A block may lack some (EfficientNet's first block has no
            ``expand``); every block must have the last one.
        layout: always ``image`` (``(batch, C, H, W)``).

    The model's ``config.hidden_size`` is the number of channels of its final feature map (what
    the heads pool). Sites (``sites.py``): ``<block>.<role>`` (a convolution's output, ``x`` its
    input), ``<block>.<role>_norm`` (its BatchNorm's output, ``x`` the convolution's output) and
    ``<block>.block`` (the block's last convolution's output, ``x`` the block's input: where a
    parallel residual adapter adds its branch).

    Raises:
        ValueError: no convolution, a role outside :data:`CONV_ROLES`, a role named twice or an
            empty path.
    """

    layers: str
    convs: tuple[tuple[str, str, str], ...]
    layout: str = "image"
    norm_first: bool = False
    decoder: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "convs", tuple(tuple(c) for c in self.convs))
        roles = [c[0] for c in self.convs]
        if not self.convs or not self.layers or any(len(c) != 3 or not all(c) for c in self.convs):
            raise ValueError("ConvPlacement: layers and (role, conv path, norm path) for each convolution are needed")
        bad = [r for r in roles if r not in CONV_ROLES]
        if bad or len(set(roles)) != len(roles):
            raise ValueError(f"ConvPlacement: roles {roles} must be distinct and among {', '.join(CONV_ROLES)}")
        if self.layout != "image":
            raise ValueError(f"ConvPlacement: a CNN's layout is 'image', not {self.layout!r}")

    @property
    def stacks(self) -> tuple[str, ...]:
        return (self.layers,)

    @property
    def last_role(self) -> str:
        """The role of a block's last convolution (before its skip connection)."""
        return self.convs[-1][0]


_EFFICIENTNET = ConvPlacement(
    layers="_blocks",
    convs=(("expand", "_expand_conv", "_bn0"), ("depthwise", "_depthwise_conv", "_bn1"), ("project", "_project_conv", "_bn2")),
)  # MBConv blocks (Tan & Le 2019); the first block has no expansion
PLACEMENTS["efficientnet_lite"] = _EFFICIENTNET


def register_placement(model_type: str, placement: Placement | ConvPlacement) -> None:
    """Teach adapterkit a new architecture family (``config.model_type`` -> paths)."""
    PLACEMENTS[model_type] = placement


@dataclass
class LayerParts:
    """The resolved modules of one transformer layer, by role.

    ``index`` numbers the layers across all stacks; ``stack`` is the position of this layer's
    stack in :attr:`Placement.stacks`.
    """

    index: int
    layer: nn.Module
    modules: dict[str, tuple[nn.Module, ...]] = field(default_factory=dict)
    stack: int = 0

    def role(self, role: str) -> tuple[nn.Module, ...]:
        """The module(s) playing ``role`` (empty for an optional role this layer lacks)."""
        return self.modules.get(role, ())

    def has(self, role: str) -> bool:
        return bool(self.modules.get(role))


@dataclass
class ResolvedModel:
    """A placement resolved against one loaded model."""

    model_type: str
    placement: Placement | ConvPlacement
    root: nn.Module
    layers: list[LayerParts]
    embeddings: nn.Embedding | None
    hidden_size: int

    @property
    def num_layers(self) -> int:
        return len(self.layers)


def _how_to_fix(model_type: str) -> str:
    return (
        f"adapterkit.register_placement({model_type!r}, Placement(layers=..., q=..., ...)) "
        "or pass placement=Placement(...) when loading the model; "
        f"known model types: {', '.join(sorted(PLACEMENTS))}"
    )


def _find_by_suffix(model: nn.Module, suffix: str, model_type: str) -> nn.Module:
    matches = [m for name, m in model.named_modules() if name == suffix or name.endswith("." + suffix)]
    if len(matches) != 1:
        found = "nothing" if not matches else f"{len(matches)} modules"
        raise ValueError(
            f"placement path {suffix!r} matched {found} in a {model_type!r} model; "
            f"fix the placement: {_how_to_fix(model_type)}"
        )
    return matches[0]


def _get_path(layer: nn.Module, path: str, model_type: str, optional: bool = False) -> nn.Module | None:
    """The module at ``path`` in ``layer``; None for an ``optional`` path that is not there."""
    try:
        return layer.get_submodule(path)
    except AttributeError:
        if optional:
            return None
        raise ValueError(
            f"placement path {path!r} does not exist in the layers of a {model_type!r} model "
            f"(layer type {type(layer).__name__}); fix the placement: {_how_to_fix(model_type)}"
        ) from None


def resolve(model: nn.Module, placement: Placement | ConvPlacement | None = None) -> ResolvedModel:
    """Resolve the placement of ``model`` (a Hugging Face ``PreTrainedModel``, or a CNN with a
    ``config.model_type`` and a :class:`ConvPlacement`) to modules.

    Raises:
        ValueError: the model type has no placement entry, or a path matches nothing.
    """
    config = model.config
    model_type = config.model_type
    if placement is None:
        if model_type not in PLACEMENTS:
            raise ValueError(
                f"adapterkit has no placement for model type {model_type!r}: "
                f"add one with {_how_to_fix(model_type)}"
            )
        placement = PLACEMENTS[model_type]
    if isinstance(placement, ConvPlacement):
        return _resolve_cnn(model, placement, model_type)
    layers = []
    for stack, path in enumerate(placement.stacks):
        layer_list = _find_by_suffix(model, path, model_type)
        if not isinstance(layer_list, nn.ModuleList):
            raise ValueError(f"placement path {path!r} is a {type(layer_list).__name__}, not a ModuleList")
        for layer in layer_list:
            parts = LayerParts(index=len(layers), layer=layer, stack=stack)
            for role in LINEAR_ROLES + NORM_ROLES + DROPOUT_ROLES:
                optional = role in OPTIONAL_ROLES
                found = tuple(
                    module
                    for module in (_get_path(layer, p, model_type, optional) for p in placement.role_paths(role))
                    if module is not None
                )
                if found:
                    parts.modules[role] = found
            layers.append(parts)
    embeddings = _find_by_suffix(model, placement.embeddings, model_type)
    return ResolvedModel(
        model_type=model_type,
        placement=placement,
        root=model,
        layers=layers,
        embeddings=embeddings,
        hidden_size=embeddings.embedding_dim,
    )


def _resolve_cnn(model: nn.Module, placement: ConvPlacement, model_type: str) -> ResolvedModel:
    blocks = _find_by_suffix(model, placement.layers, model_type)
    if not isinstance(blocks, nn.ModuleList):
        raise ValueError(f"placement path {placement.layers!r} is a {type(blocks).__name__}, not a ModuleList")
    layers = []
    for index, block in enumerate(blocks):
        parts = LayerParts(index=index, layer=block)
        for role, conv_path, norm_path in placement.convs:
            optional = role != placement.last_role
            conv = _get_path(block, conv_path, model_type, optional)
            if conv is not None:
                parts.modules[role] = (conv,)
                parts.modules[norm_role(role)] = (_get_path(block, norm_path, model_type),)
        layers.append(parts)
    hidden = getattr(model.config, "hidden_size", None)
    if not isinstance(hidden, int):
        raise ValueError(f"a {model_type!r} CNN needs config.hidden_size: the channels of its final feature map")
    return ResolvedModel(model_type, placement, model, layers, None, hidden)
