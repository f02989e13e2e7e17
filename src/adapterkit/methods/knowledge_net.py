"""The network of one K-Adapter knowledge adapter (Wang et al. 2020, arXiv:2002.01808, Sec. 3.1).

A knowledge adapter is a plug-in *outside* the frozen model: K adapter layers, the k-th reading
the output ``h_{l_k}`` of base layer ``l_k`` (the paper: layers 0, 11 and 23 of RoBERTa-large).
Each adapter layer is a down-projection, N transformer layers and an up-projection, with a skip
connection across the two projections (Fig. 2; Sec. 4: N = 2, transformer width H_A = 768 with 12
heads, down-projection to H_d = 768, up-projection to H_u = 1024, RoBERTa-large's width):

    u_k = W_up · T_N(... T_1(W_down · x_k + b_down) ...) + b_up        (batch, seq, d)
    o_k = s_k + u_k

Its input concatenates the base layer's output with the former adapter layer's output (Sec. 3.1:
"we concatenate the output hidden feature of the transformer layer in the pre-trained model and
the output feature of the former adapter layer, as the input feature of the current adapter
layer"), and the skip carries the former adapter layer's output on (the width the projections
return to):

    combine="concat" (the paper's text):  x_k = [h_{l_k} ; o_{k-1}]  (2d),  s_k = o_{k-1}
    combine="sum" (the released code):     x_k = h_{l_k} + o_{k-1}    (d),   s_k = x_k

The first adapter layer has no former one: ``x_1 = s_1 = h_{l_1}``. The network's output is
``o_K``; the head reads ``[h_L ; o_K]``, the model's and the adapter's last hidden features
(``execution.BoundSetup.read_out``). The released code (microsoft/K-Adapter, ``fac-adapter.py``)
sums instead of concatenating, runs its adapter transformer layers with an all-ones attention
mask (padding included) and indexes the layers in ``output_hidden_states``, where 0 is the
embedding output; here ``l`` is a transformer layer's index (0 its first layer) and padding is
masked. The transformer layers are BERT's post-LN layers (GELU, dropout 0.1, initialised N(0,
0.02²)); the projections start at N(0, 2e-4²) with zero biases, as in the released code, so a
fresh adapter's output is close to ``h_{l_1}``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F


class TransformerLayer(nn.Module):
    """One post-LN transformer encoder layer (BERT's): self-attention, then a GELU FFN, each
    followed by dropout, the residual add and a LayerNorm. ``(batch, seq, width)`` in and out."""

    def __init__(self, width: int, heads: int, intermediate: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.attn_norm = nn.LayerNorm(width)
        self.ffn_in = nn.Linear(width, intermediate)
        self.ffn_out = nn.Linear(intermediate, width)
        self.ffn_norm = nn.LayerNorm(width)
        for linear in (self.qkv, self.out, self.ffn_in, self.ffn_out):
            nn.init.normal_(linear.weight, std=0.02)
            nn.init.zeros_(linear.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``mask``: ``(batch, 1, 1, seq)`` bool, True where a key may be attended (None: all)."""
        batch, seq, _ = x.shape
        q, k, v = self.qkv(x).view(batch, seq, 3, self.heads, -1).permute(2, 0, 3, 1, 4)  # 3 x (B, heads, S, w/heads)
        drop = self.dropout if self.training else 0.0
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        attended = attended.transpose(1, 2).reshape(batch, seq, -1)
        x = self.attn_norm(x + F.dropout(self.out(attended), drop, self.training))
        return self.ffn_norm(x + F.dropout(self.ffn_out(F.gelu(self.ffn_in(x))), drop, self.training))


class AdapterLayer(nn.Module):
    """``u = W_up · T_N(...T_1(W_down · x + b_down)) + b_up``: ``(batch, seq, d_in) -> (batch, seq,
    d_out)``; the skip connection is added by :class:`KnowledgeNetwork`."""

    def __init__(
        self, d_in: int, d_out: int, width: int, heads: int, intermediate: int, depth: int, dropout: float, init_std: float
    ):
        super().__init__()
        self.down = nn.Linear(d_in, width)
        self.transformer = nn.ModuleList(TransformerLayer(width, heads, intermediate, dropout) for _ in range(depth))
        self.up = nn.Linear(width, d_out)
        for projection in (self.down, self.up):
            nn.init.normal_(projection.weight, std=init_std)
            nn.init.zeros_(projection.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        z = self.down(x)
        for layer in self.transformer:
            z = layer(z, mask)
        return self.up(z)


class KnowledgeNetwork(nn.Module):
    """The adapter layers of one knowledge adapter (see the module docstring).

    Args:
        taps: the base layers read, ascending: ``l_1 < ... < l_K``.
        hidden: the base model's hidden size ``d``.
        width: ``H_A = H_d``, the width of the adapter's transformer layers.
        heads: attention heads of those layers.
        intermediate: their FFN width.
        depth: ``N``, transformer layers per adapter layer.
        combine: ``concat`` or ``sum`` (how an adapter layer's input joins ``h_{l_k}`` and ``o_{k-1}``).
        dropout: dropout inside the transformer layers.
        init_std: standard deviation of the projections' initial weights.
    """

    def __init__(
        self, taps: tuple[int, ...], hidden: int, width: int, heads: int, intermediate: int, depth: int,
        combine: str, dropout: float, init_std: float,
    ):  # fmt: skip
        super().__init__()
        self.taps, self.combine = taps, combine
        widths = [hidden if k == 0 or combine == "sum" else 2 * hidden for k in range(len(taps))]
        self.layers = nn.ModuleList(
            AdapterLayer(d_in, hidden, width, heads, intermediate, depth, dropout, init_std) for d_in in widths
        )

    def forward(self, tapped: Mapping[int, torch.Tensor], attention_mask: torch.Tensor | None) -> torch.Tensor:
        """``o_K`` ``(batch, seq, d)`` from the tapped layers' outputs (layer index -> ``(batch,
        seq, d)``) and the padding mask ``(batch, seq)`` (None: no padding)."""
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        out: torch.Tensor | None = None
        for tap, layer in zip(self.taps, self.layers):
            h = tapped[tap]
            if out is None:
                x = skip = h
            elif self.combine == "concat":
                x, skip = torch.cat([h, out], dim=-1), out
            else:
                x = skip = h + out
            out = skip + layer(x, mask)
        return out
