"""timm VisionTransformer (DeiT, DeiT-III, ViT) with the standard `Attention`.

Groups (docs/method.md §1):

* ``embed``: the residual stream, one group for the whole network, cut with the
  same indices everywhere: patch-embed conv outputs, cls/dist/reg tokens,
  pos_embed, every LayerNorm and LayerScale, qkv/fc1 input columns, proj/fc2
  output rows, the final norm and the head(s) input columns.
* ``blocks.<b>.qk``: query/key pairs of block b, per head (same count per head,
  different indices allowed), cut from Q and K at the same index.
* ``blocks.<b>.v``: value neurons of block b, per head, plus proj input columns.
* ``blocks.<b>.ffn``: hidden neurons of block b's MLP (fc1 rows, fc2 columns).
* ``blocks.<b>.heads``: whole heads of block b (conventional head pruning,
  docs/method.md §6): a removed head loses its q, k and v rows and its proj columns.
  The qk and v groups then keep neurons of the surviving heads only. Plans
  without this group keep every head.

Because q/k and v widths differ, timm's ``Attention`` (one fused qkv with a single
``(3, H, head_dim)`` reshape) is replaced by `PrunedAttention`: one fused Linear of
width ``H·(2·d_qk + d_v)`` split into q, k, v, and the original softmax scale
``head_dim ** -0.5`` kept (§2.3).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from timm.layers import LayerScale, Mlp
from timm.layers.attention import Attention
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from .. import surgery
from ..errors import UnsupportedModelError
from ..flops import register_attention
from ..groups import Group
from .base import Adapter, Keep, zero_outputs


#: How `PrunedAttention` computes softmax(q kᵀ · scale) v (see `PrunedAttention.kernel`).
KERNELS = ("auto", "explicit", "sdpa", "sdpa_padded")


class PrunedAttention(nn.Module):
    """Multi-head self-attention whose q/k width per head differs from its v width.

    One Linear computes q, k and v for all heads (one GEMM instead of three), laid
    out ``[q of all heads | k of all heads | v of all heads]``.

    `kernel` picks how the attention itself is computed, because the fast kernels
    differ per runtime and the traced artifacts bake the choice in (`attention_kernel`;
    the exporters choose per format and target, docs/speedup.md):

    * ``"explicit"``: matmul, softmax, matmul. What the ONNX graphs hold (runtimes
      fuse the scale and k's transpose into one MatMul themselves).
    * ``"sdpa"``: ``F.scaled_dot_product_attention`` with unequal widths. On CUDA a
      fused kernel takes them; on CPU it falls back to a generic path ~2x slower
      than "explicit".
    * ``"sdpa_padded"``: the narrower of q/k and v padded with zeros to the wider
      width, so CPU SDPA takes its fused (flash) kernel; zero q/k columns add 0 to
      every q·k, zero v columns are sliced off the output, so the result is the same.
    * ``"auto"`` (default, eager use): SDPA when the widths are equal, on CUDA, with
      a mask or in training; otherwise "explicit".
    """

    def __init__(self, dim: int, num_heads: int, qk_dim: int, v_dim: int, scale: float, qkv_bias: bool = True,
                 proj_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        self.num_heads, self.qk_dim, self.v_dim, self.scale = num_heads, qk_dim, v_dim, scale
        self.kernel = "auto"
        self.qkv = nn.Linear(dim, num_heads * (2 * qk_dim + v_dim), bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(num_heads * v_dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k ``[B, H, N, d_qk]`` and v ``[B, H, N, d_v]`` for tokens `x` ``[B, N, C]``."""
        B, N, _ = x.shape
        H, dqk = self.num_heads, self.qk_dim
        q, k, v = self.qkv(x).split([H * dqk, H * dqk, H * self.v_dim], dim=-1)
        return (q.view(B, N, H, dqk).transpose(1, 2), k.view(B, N, H, dqk).transpose(1, 2),
                v.view(B, N, H, self.v_dim).transpose(1, 2))

    def _kernel(self, q: torch.Tensor, masked: bool) -> str:
        if masked or self.training:
            return "sdpa"
        if self.kernel != "auto":
            return self.kernel
        return "sdpa" if self.qk_dim == self.v_dim or q.is_cuda else "explicit"

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        B, N, _ = x.shape
        q, k, v = self.project(x)
        kernel = self._kernel(q, attn_mask is not None or is_causal)
        if kernel == "explicit":
            x = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
        elif kernel == "sdpa_padded" and self.qk_dim != self.v_dim:
            width = max(self.qk_dim, self.v_dim)
            q, k = F.pad(q, (0, width - self.qk_dim)), F.pad(k, (0, width - self.qk_dim))
            x = F.scaled_dot_product_attention(q, k, F.pad(v, (0, width - self.v_dim)), scale=self.scale)
            x = x[..., : self.v_dim]
        else:
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=self.scale,
                                               dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(B, N, self.num_heads * self.v_dim)
        return self.proj_drop(self.proj(x))


@contextlib.contextmanager
def attention_kernel(model: nn.Module, kernel: str) -> Iterator[None]:
    """Run (or trace) `model` with every `PrunedAttention` on `kernel` (`KERNELS`), restoring theirs after."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown attention kernel {kernel!r}; known: {', '.join(KERNELS)}")
    modules = [m for m in model.modules() if isinstance(m, PrunedAttention)]
    saved = [m.kernel for m in modules]
    for m in modules:
        m.kernel = kernel
    try:
        yield
    finally:
        for m, k in zip(modules, saved):
            m.kernel = k


def _timm_attention_macs(m: Attention, x: torch.Tensor) -> int:
    B, N, _ = x.shape
    return B * m.num_heads * N * N * 2 * m.head_dim


def _pruned_attention_macs(m: PrunedAttention, x: torch.Tensor) -> int:
    B, N, _ = x.shape
    return B * m.num_heads * N * N * (m.qk_dim + m.v_dim)


register_attention(Attention, _timm_attention_macs)
register_attention(PrunedAttention, _pruned_attention_macs)

_TOKENS = ("cls_token", "reg_token", "dist_token", "pos_embed")
_HEADS = ("head", "head_dist")


class VitAdapter(Adapter):
    family = "vit"
    covers = "vit (timm VisionTransformer with standard Attention: deit_*, deit3_*, vit_*_patch16_224)"
    # DeiT-T cut to 2 blocks of width 48 (3 heads of 16) on 32x32 images in 8x8 patches: 17 tokens
    tiny = ("deit_tiny_patch16_224", dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3,
                                          num_classes=10))

    @classmethod
    def claims(cls, model: nn.Module) -> bool:
        return isinstance(model, VisionTransformer)

    @classmethod
    def check(cls, model: VisionTransformer) -> None:
        def refuse(feature: str) -> None:
            raise UnsupportedModelError(f"unsupported ViT feature: {feature}; supported: {cls.covers}")

        if getattr(model, "attn_pool", None) is not None:
            refuse("attention-pool head (global_pool='map')")
        if not isinstance(model.patch_embed.proj, nn.Conv2d) or model.patch_embed.proj.groups != 1:
            refuse("patch embedding that is not a plain Conv2d")
        for b, blk in enumerate(model.blocks):
            if type(blk) is not Block:
                refuse(f"block type {type(blk).__name__} (block {b})")
            attn, mlp = blk.attn, blk.mlp
            if isinstance(attn, PrunedAttention):
                refuse("model is already pruned (prune the original, or rebuild with snp_core.load)")
            if type(attn) is not Attention:
                refuse(f"attention type {type(attn).__name__}")
            if not all(isinstance(m, nn.Identity) for m in (attn.q_norm, attn.k_norm, attn.norm)) or attn.gate is not None:
                refuse("qk-norm / scale-norm / gated attention")
            if type(mlp) is not Mlp or not isinstance(mlp.norm, nn.Identity) or not isinstance(mlp.fc1, nn.Linear):
                refuse(f"MLP type {type(mlp).__name__} (only timm Mlp with Linear layers)")
            for norm in (blk.norm1, blk.norm2):
                if not isinstance(norm, nn.LayerNorm):
                    refuse(f"norm layer {type(norm).__name__}")
            for ls in (blk.ls1, blk.ls2):
                if not isinstance(ls, (LayerScale, nn.Identity)):
                    refuse(f"layer scale {type(ls).__name__}")
        for name in ("norm_pre", "norm", "fc_norm"):
            if not isinstance(getattr(model, name), (nn.LayerNorm, nn.Identity)):
                refuse(f"{name} of type {type(getattr(model, name)).__name__}")

    # -- description ---------------------------------------------------------

    def groups(self) -> list[Group]:
        groups = [Group("embed", "embed", self.model.embed_dim)]
        for b, blk in enumerate(self.model.blocks):
            heads, head_dim, head_group = blk.attn.num_heads, blk.attn.head_dim, f"blocks.{b}.heads"
            groups += [Group(f"blocks.{b}.qk", "qk", head_dim, heads, head_group),
                       Group(f"blocks.{b}.v", "v", head_dim, heads, head_group),
                       Group(f"blocks.{b}.ffn", "ffn", blk.mlp.fc1.out_features)]
        # head groups last: ratio files and plans list the neuron groups first, as before
        groups += [Group(f"blocks.{b}.heads", "heads", blk.attn.num_heads) for b, blk in enumerate(self.model.blocks)]
        return groups

    def _block(self, group: str) -> Block:
        return self.model.blocks[int(group.split(".")[1])]

    def _qkv_rows(self, group: str) -> torch.Tensor:
        """qkv weight as [3, H, head_dim, C] (timm's row layout: q, k, v; head-major)."""
        attn = self._block(group).attn
        return attn.qkv.weight.detach().reshape(3, attn.num_heads, attn.head_dim, -1)

    def qk_sources(self):
        def extractor(heads: int, head_dim: int):
            def qk(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                B, N, _ = out.shape
                qkv = out.reshape(B, N, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
                return qkv[0], qkv[1]
            return qk

        return [(f"blocks.{b}.qk", blk.attn.qkv, extractor(blk.attn.num_heads, blk.attn.head_dim))
                for b, blk in enumerate(self.model.blocks)]

    def qk_weights(self, group):
        rows = self._qkv_rows(group)
        return rows[0], rows[1]

    def value_weights(self, group):
        return self._qkv_rows(group)[2]

    def hidden_weights(self, group):
        return self._block(group).mlp.fc1.weight.detach()

    def head_proj_columns(self, group):
        attn = self._block(group).attn
        return attn.proj.weight.detach().reshape(-1, attn.num_heads, attn.head_dim).transpose(0, 1)

    def channel_producers(self, group):
        m = self.model
        producers = [m.patch_embed.proj.weight.detach()]
        for blk in m.blocks:
            producers += [blk.attn.proj.weight.detach(), blk.mlp.fc2.weight.detach()]
        return producers

    def macs(self, widths: dict[str, int]) -> int:
        m = self.model
        E = widths["embed"]
        patches = m.patch_embed.num_patches
        N = patches + m.num_prefix_tokens
        proj = m.patch_embed.proj
        total = patches * proj.in_channels * proj.kernel_size[0] * proj.kernel_size[1] * E
        for b, blk in enumerate(m.blocks):
            H = widths.get(f"blocks.{b}.heads", blk.attn.num_heads)
            dqk, dv, hidden = widths[f"blocks.{b}.qk"], widths[f"blocks.{b}.v"], widths[f"blocks.{b}.ffn"]
            total += N * E * H * (2 * dqk + dv) + H * N * N * (dqk + dv) + N * H * dv * E + 2 * N * E * hidden
        for name in _HEADS:
            head = getattr(m, name, None)
            if isinstance(head, nn.Linear):
                total += E * head.out_features
        return total

    def zero_neuron(self, group, neuron):
        kind = group.rsplit(".", 1)[-1]
        if kind == "embed":
            raise NotImplementedError("every LayerNorm normalises over the whole residual stream: a cut channel "
                                      "changes the mean and variance over the others, which no zeroed weight "
                                      "reproduces")
        blk = self._block(group)
        if kind == "ffn":  # GELU(0) = 0: fc2 never sees the neuron
            zero_outputs(blk.mlp.fc1, neuron)
            return
        inner, d = blk.attn.num_heads * blk.attn.head_dim, blk.attn.head_dim
        if kind == "heads":  # q = k = 0 and v = 0: the head outputs 0
            rows = [part * inner + neuron * d + i for part in range(3) for i in range(d)]
        else:  # qk: the pair's q and k rows (q_i·k_i = 0); v: the value's row (its proj input is 0)
            h, i = neuron
            rows = [h * d + i, inner + h * d + i] if kind == "qk" else [2 * inner + h * d + i]
        zero_outputs(blk.attn.qkv, rows)

    # -- surgery -------------------------------------------------------------

    def apply(self, keep: Keep) -> None:
        m = self.model
        embed = torch.as_tensor(keep["embed"], dtype=torch.long)
        surgery.slice_conv_out(m.patch_embed.proj, embed)
        surgery.slice_norm(m.patch_embed.norm, embed)
        for name in _TOKENS:
            if isinstance(getattr(m, name, None), nn.Parameter):
                setattr(m, name, surgery.slice_last_dim(getattr(m, name), embed))
        surgery.slice_norm(m.norm_pre, embed)
        for b, blk in enumerate(m.blocks):
            surgery.slice_norm(blk.norm1, embed)
            surgery.slice_norm(blk.norm2, embed)
            for ls in (blk.ls1, blk.ls2):
                if isinstance(ls, LayerScale):
                    ls.gamma = surgery.slice_last_dim(ls.gamma, embed)
            heads = keep.get(f"blocks.{b}.heads", list(range(blk.attn.num_heads)))
            blk.attn = _pruned_attention(blk.attn, heads, keep[f"blocks.{b}.qk"], keep[f"blocks.{b}.v"], embed)
            hidden = torch.as_tensor(keep[f"blocks.{b}.ffn"], dtype=torch.long)
            surgery.slice_linear(blk.mlp.fc1, out_idx=hidden, in_idx=embed)
            surgery.slice_linear(blk.mlp.fc2, out_idx=embed, in_idx=hidden)
        surgery.slice_norm(m.norm, embed)
        surgery.slice_norm(m.fc_norm, embed)
        for name in _HEADS:
            head = getattr(m, name, None)
            if isinstance(head, nn.Linear):
                surgery.slice_linear(head, in_idx=embed)
        m.embed_dim = m.num_features = m.head_hidden_size = len(embed)


def _head_rows(heads: list[int], per_head: list[list[int]], head_dim: int, offset: int = 0) -> torch.Tensor:
    """Row indices into a head-major projection for the kept neurons of each kept head."""
    return torch.tensor([offset + h * head_dim + i for h, kept in zip(heads, per_head) for i in kept], dtype=torch.long)


def _pruned_attention(attn: Attention, heads: list[int], qk: list[list[int]], v: list[list[int]],
                      embed: torch.Tensor) -> PrunedAttention:
    """A PrunedAttention holding `attn`'s weights for the kept heads, q/k pairs, values and channels.

    `qk` and `v` hold one list per kept head, in the order of `heads`.
    """
    hd = attn.head_dim
    inner = attn.num_heads * hd
    rows = torch.cat([_head_rows(heads, qk, hd), _head_rows(heads, qk, hd, inner), _head_rows(heads, v, hd, 2 * inner)])
    new = PrunedAttention(len(embed), len(heads), len(qk[0]), len(v[0]), attn.scale,
                          qkv_bias=attn.qkv.bias is not None, proj_bias=attn.proj.bias is not None,
                          attn_drop=attn.attn_drop.p, proj_drop=attn.proj_drop.p)
    surgery.slice_linear(attn.qkv, out_idx=rows, in_idx=embed)
    surgery.slice_linear(attn.proj, out_idx=embed, in_idx=_head_rows(heads, v, hd))
    new.qkv, new.proj = attn.qkv, attn.proj
    return new.to(attn.qkv.weight.dtype)
