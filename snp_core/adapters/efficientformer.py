"""timm EfficientFormer (efficientformer_l1, _l3, _l7): Meta4D conv blocks, then Meta3D attention blocks.

Groups (docs/method.md §11: the §2–§5 criteria applied to EfficientFormer):

* ``stages.<s>.embed`` (s = 0..3): the residual channel width of stage s, one
  group per stage (the downsampling conv between stages changes the width, so
  each stage's stream is cut on its own), with the same indices everywhere in
  the stage: the stem's ``conv2`` output channels and its BN ``norm2`` (stage 0)
  or the stage's ``downsample.conv`` output channels and its BN (s ≥ 1); every
  block's LayerScale gammas ``ls1``/``ls2``; in Meta4D blocks the ``mlp.fc1``
  input channels, ``mlp.fc2`` output channels and the BN ``mlp.norm2``; in
  Meta3D blocks (last stage, after ``Flat``) the LayerNorms ``norm1``/``norm2``,
  the ``token_mixer.qkv`` input columns, ``token_mixer.proj`` output rows,
  ``mlp.fc1`` input columns and ``mlp.fc2`` output rows; the next stage's
  ``downsample.conv`` input channels; after the last stage the final ``norm``
  and the ``head``/``head_dist`` input columns. The stem's ``conv1`` channels
  feed no residual add and are not a group. The Pooling token mixer
  (avg-pool minus identity) works per channel and has no weights.
* ``stages.<s>.blocks.<b>.ffn``: hidden neurons of block b's MLP. Meta4D: the
  1×1-conv ``fc1`` output channels, its BN ``mlp.norm1`` and the 1×1-conv ``fc2``
  input channels; Meta3D: the Linear ``fc1`` rows and ``fc2`` columns. ``b`` is
  the index in the stage's Sequential, which also holds the weightless ``Flat``.
* ``stages.<s>.blocks.<b>.qk`` / ``.v`` (Meta3D blocks): query/key pairs per
  head (same count per head), cut from Q and K at the same index, and value
  neurons per head plus the matching ``proj`` input columns.

timm's fused ``qkv`` is head-major interleaved: head h's rows are
``[q (key_dim) | k (key_dim) | v (val_dim)]``, read back with
``reshape(B, N, H, -1)`` and a split. Surgery keeps that layout and only narrows
each head's slices, so timm's own forward runs the pruned module
(`PrunedMeta3DAttention`). The learned attention biases ``[H, 49]`` add to every
head's Q Kᵀ; no head is removed, so they stay as they are. The softmax scale
stays the original ``key_dim ** -0.5`` (§2.3).
"""

from __future__ import annotations

import math
from typing import Callable, Iterator

import torch
from timm.layers import LayerScale, LayerScale2d, Mlp
from timm.models.efficientformer import (Attention, ConvMlpWithNorm, Downsample, EfficientFormer, Flat, MetaBlock1d,
                                         MetaBlock2d, Pooling)
from torch import nn

from .. import surgery
from ..errors import UnsupportedModelError
from ..flops import register_attention
from ..groups import Group
from ..models import input_size
from .base import Adapter, Keep, zero_outputs


class PrunedMeta3DAttention(Attention):
    """timm's EfficientFormer `Attention` after surgery: narrower q/k and v per head, timm's forward.

    Two differences from timm's class, and why:

    * the q/k width (``key_dim``) and the v width (``val_dim``) per head are set
      independently, and ``scale`` is the original module's (§2.3);
    * in eval mode the ``[H, N, N]`` bias table is a non-persistent buffer, refreshed
      whenever the module enters eval mode or loads weights, instead of timm's
      per-device dict cache that timm bypasses while tracing. Exported graphs then
      hold the table as a constant instead of gathering ``attention_biases`` at run
      time (docs/design.md §3: no index ops in the pruned graph). Training indexes the
      learned biases live, as timm does. Like timm's cache, the table does not see
      in-place edits of ``attention_biases`` made while in eval mode until the next
      ``eval()`` or ``load_state_dict``.
    """

    def __init__(self, dim: int, key_dim: int, val_dim: int, num_heads: int, resolution: int, scale: float) -> None:
        super().__init__(dim, key_dim, num_heads, attn_ratio=val_dim / key_dim, resolution=resolution)
        self.scale = scale
        self.val_dim, self.val_attn_dim = val_dim, val_dim * num_heads
        self.qkv = nn.Linear(dim, num_heads * (2 * key_dim + val_dim))
        self.proj = nn.Linear(self.val_attn_dim, dim)
        self.register_buffer("attention_bias_table", self._bias_table(), persistent=False)

    def _bias_table(self) -> torch.Tensor:
        # a plain tensor (no autograd history, not an inference tensor) wherever it is built from
        with torch.inference_mode(False), torch.no_grad():
            return self.attention_biases[:, self.attention_bias_idxs]

    def refresh_bias_table(self) -> None:
        """Recompute the eval-mode bias table from the learned ``attention_biases``."""
        self.attention_bias_table = self._bias_table()

    def get_attention_biases(self, device: torch.device) -> torch.Tensor:
        if self.training:
            return self.attention_biases[:, self.attention_bias_idxs]
        return self.attention_bias_table

    def train(self, mode: bool = True) -> "PrunedMeta3DAttention":
        super().train(mode)
        if not mode:
            self.refresh_bias_table()
        return self

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self.refresh_bias_table()


def _attention_macs(m: Attention, x: torch.Tensor) -> int:
    B, N, _ = x.shape
    return B * m.num_heads * N * N * (m.key_dim + m.val_dim)


register_attention(Attention, _attention_macs)
register_attention(PrunedMeta3DAttention, _attention_macs)

_HEADS = ("head", "head_dist")


def _index(kept: list[int]) -> torch.Tensor:
    return torch.as_tensor(kept, dtype=torch.long)


def _conv_out(conv: nn.Conv2d, h: int, w: int) -> tuple[int, int]:
    """Spatial size after `conv` (integer padding, as timm's EfficientFormer uses)."""
    return tuple((size + 2 * p - d * (k - 1) - 1) // s + 1
                 for size, p, d, k, s in zip((h, w), conv.padding, conv.dilation, conv.kernel_size, conv.stride))


def _conv_macs(conv: nn.Conv2d, pixels: int, in_channels: int, out_channels: int) -> int:
    return pixels * in_channels * out_channels * conv.kernel_size[0] * conv.kernel_size[1]


class EfficientFormerAdapter(Adapter):
    family = "efficientformer"
    covers = "efficientformer (timm EfficientFormer: efficientformer_l1, efficientformer_l3, efficientformer_l7)"
    # L1 with one block per stage and 16..48 channels; the last stage is Meta4D, Flat, Meta3D (timm's 8 heads of
    # key_dim 32, val_dim 128). 224x224 input: the attention biases are fixed at 7x7 tokens.
    tiny = ("efficientformer_l1", dict(depths=(1, 1, 1, 2), embed_dims=(16, 24, 32, 48), num_classes=10))

    @classmethod
    def claims(cls, model: nn.Module) -> bool:
        return isinstance(model, EfficientFormer)

    @classmethod
    def check(cls, model: EfficientFormer) -> None:
        def refuse(feature: str) -> None:
            raise UnsupportedModelError(f"unsupported EfficientFormer feature: {feature}; supported: {cls.covers}")

        if not _conv_bn(model.stem.conv2, model.stem.norm2):
            refuse("stem that is not conv-BN-conv-BN")
        last = len(model.stages) - 1
        for s, stage in enumerate(model.stages):
            down = stage.downsample
            if s == 0 and not isinstance(down, nn.Identity):
                refuse("downsampling in the first stage")
            if s > 0 and not (type(down) is Downsample and _conv_bn(down.conv, down.norm)):
                refuse(f"stage {s} without a strided conv + BatchNorm downsample")
            tokens = False  # after Flat, blocks see [B, N, C] tokens
            for b, blk in enumerate(stage.blocks):
                where = f"stages.{s}.blocks.{b}"
                if type(blk) is Flat and s == last and not tokens:
                    tokens = True
                elif type(blk) is MetaBlock2d and not tokens:
                    cls._check_meta4d(blk, where, refuse)
                elif type(blk) is MetaBlock1d and tokens:
                    cls._check_meta3d(blk, where, refuse)
                else:
                    refuse(f"block type {type(blk).__name__} at {where}")
        if not isinstance(model.norm, nn.LayerNorm):
            refuse(f"final norm of type {type(model.norm).__name__}")
        for name in _HEADS:
            if not isinstance(getattr(model, name), (nn.Linear, nn.Identity)):
                refuse(f"{name} of type {type(getattr(model, name)).__name__}")

    @staticmethod
    def _check_meta4d(blk: MetaBlock2d, where: str, refuse: Callable[[str], None]) -> None:
        mlp = blk.mlp
        if type(blk.token_mixer) is not Pooling:
            refuse(f"token mixer {type(blk.token_mixer).__name__} at {where}")
        if type(mlp) is not ConvMlpWithNorm or not all(isinstance(n, nn.BatchNorm2d) for n in (mlp.norm1, mlp.norm2)):
            refuse(f"conv MLP without BatchNorms at {where}")
        if any(c.groups != 1 or c.kernel_size != (1, 1) for c in (mlp.fc1, mlp.fc2)):
            refuse(f"conv MLP layers that are not 1x1 convolutions at {where}")
        if not all(type(ls) is LayerScale2d for ls in (blk.ls1, blk.ls2)):
            refuse(f"layer scale other than LayerScale2d at {where}")

    @staticmethod
    def _check_meta3d(blk: MetaBlock1d, where: str, refuse: Callable[[str], None]) -> None:
        if isinstance(blk.token_mixer, PrunedMeta3DAttention):
            refuse("model is already pruned (prune the original, or rebuild with snp_core.load)")
        if type(blk.token_mixer) is not Attention:
            refuse(f"token mixer {type(blk.token_mixer).__name__} at {where}")
        mlp = blk.mlp
        if type(mlp) is not Mlp or not isinstance(mlp.norm, nn.Identity) or not isinstance(mlp.fc1, nn.Linear):
            refuse(f"MLP type {type(mlp).__name__} at {where} (only timm Mlp with Linear layers)")
        if not all(isinstance(n, nn.LayerNorm) for n in (blk.norm1, blk.norm2)):
            refuse(f"norm layers other than LayerNorm at {where}")
        if not all(type(ls) is LayerScale for ls in (blk.ls1, blk.ls2)):
            refuse(f"layer scale other than LayerScale at {where}")

    # -- description ---------------------------------------------------------

    def _stage_conv(self, s: int) -> nn.Conv2d:
        """The conv whose output channels start stage s's residual stream."""
        return self.model.stem.conv2 if s == 0 else self.model.stages[s].downsample.conv

    def _blocks(self, s: int) -> Iterator[tuple[str, nn.Module]]:
        """(group-name prefix, block) for the Meta4D and Meta3D blocks of stage s."""
        for b, blk in enumerate(self.model.stages[s].blocks):
            if isinstance(blk, (MetaBlock2d, MetaBlock1d)):
                yield f"stages.{s}.blocks.{b}", blk

    def _meta3d_blocks(self) -> Iterator[tuple[str, MetaBlock1d]]:
        """(group-name prefix, block) for every Meta3D block."""
        for s in range(len(self.model.stages)):
            yield from ((prefix, blk) for prefix, blk in self._blocks(s) if isinstance(blk, MetaBlock1d))

    def _block(self, group: str) -> nn.Module:
        parts = group.split(".")
        return self.model.stages[int(parts[1])].blocks[int(parts[3])]

    def groups(self) -> list[Group]:
        groups = []
        for s in range(len(self.model.stages)):
            groups.append(Group(f"stages.{s}.embed", "embed", self._stage_conv(s).out_channels))
            for prefix, blk in self._blocks(s):
                if isinstance(blk, MetaBlock1d):
                    attn = blk.token_mixer
                    groups += [Group(f"{prefix}.qk", "qk", attn.key_dim, attn.num_heads),
                               Group(f"{prefix}.v", "v", attn.val_dim, attn.num_heads)]
                groups.append(Group(f"{prefix}.ffn", "ffn", blk.mlp.fc1.weight.shape[0]))
        return groups

    def _qkv_rows(self, group: str) -> tuple[torch.Tensor, int]:
        """qkv weight as [H, 2·key_dim + val_dim, C] (timm's head-major interleaved rows) and key_dim."""
        attn = self._block(group).token_mixer
        return attn.qkv.weight.detach().reshape(attn.num_heads, 2 * attn.key_dim + attn.val_dim, -1), attn.key_dim

    def qk_sources(self):
        def extractor(heads: int, key_dim: int):
            def qk(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                B, N, _ = out.shape
                per_head = out.reshape(B, N, heads, -1).transpose(1, 2)
                return per_head[..., :key_dim], per_head[..., key_dim:2 * key_dim]
            return qk

        return [(f"{prefix}.qk", blk.token_mixer.qkv, extractor(blk.token_mixer.num_heads, blk.token_mixer.key_dim))
                for prefix, blk in self._meta3d_blocks()]

    def qk_weights(self, group):
        rows, key_dim = self._qkv_rows(group)
        return rows[:, :key_dim], rows[:, key_dim:2 * key_dim]

    def value_weights(self, group):
        rows, key_dim = self._qkv_rows(group)
        return rows[:, 2 * key_dim:]

    def hidden_weights(self, group):
        w = self._block(group).mlp.fc1.weight.detach()
        return w.reshape(w.shape[0], -1)

    def channel_producers(self, group):
        s = int(group.split(".")[1])
        producers = [self._stage_conv(s).weight.detach()]
        for _, blk in self._blocks(s):
            if isinstance(blk, MetaBlock1d):
                producers.append(blk.token_mixer.proj.weight.detach())
            producers.append(blk.mlp.fc2.weight.detach())
        return producers

    def macs(self, widths: dict[str, int]) -> int:
        m = self.model
        _, h, w = input_size(m)
        conv1 = m.stem.conv1
        h, w = _conv_out(conv1, h, w)
        total = _conv_macs(conv1, h * w, conv1.in_channels, conv1.out_channels)
        previous = conv1.out_channels
        for s in range(len(m.stages)):
            conv, E = self._stage_conv(s), widths[f"stages.{s}.embed"]
            h, w = _conv_out(conv, h, w)
            N = h * w
            total += _conv_macs(conv, N, previous, E)
            for prefix, blk in self._blocks(s):
                total += 2 * N * E * widths[f"{prefix}.ffn"]
                if isinstance(blk, MetaBlock1d):
                    H, dqk, dv = blk.token_mixer.num_heads, widths[f"{prefix}.qk"], widths[f"{prefix}.v"]
                    total += N * E * H * (2 * dqk + dv) + H * N * N * (dqk + dv) + N * H * dv * E
            previous = E
        tokens = 1 if m.global_pool == "avg" else N
        for name in _HEADS:
            head = getattr(m, name)
            if isinstance(head, nn.Linear):
                total += tokens * previous * head.out_features
        return total

    def zero_neuron(self, group, neuron):
        parts = group.split(".")
        kind, s = parts[-1], int(parts[1])
        if kind == "embed":
            if s == len(self.model.stages) - 1:
                raise NotImplementedError("the last stage's channels are normalised by LayerNorms (Meta3D blocks, the "
                                          "final norm): a cut channel changes the statistics over the others")
            # BatchNorm is per channel: with the stage's BN zeroed the channel leaves the stage conv as 0, the
            # Pooling mixer keeps it 0, zeroed LayerScales add 0 to it, so every reader of it multiplies 0.
            zero_outputs(self.model.stem.norm2 if s == 0 else self.model.stages[s].downsample.norm, neuron)
            with torch.no_grad():
                for _, blk in self._blocks(s):
                    blk.ls1.gamma[neuron] = blk.ls2.gamma[neuron] = 0
            return
        blk = self._block(group)
        if kind == "ffn":  # the activation's input is 0 (Meta4D: the BN after fc1 outputs 0), GELU(0) = 0
            zero_outputs(blk.mlp.norm1 if isinstance(blk, MetaBlock2d) else blk.mlp.fc1, neuron)
            return
        attn, (h, i) = blk.token_mixer, neuron
        base = h * (2 * attn.key_dim + attn.val_dim)
        # qk: the pair's q and k rows (q_i·k_i = 0); v: the value's row (its proj input is 0)
        zero_outputs(attn.qkv, [base + i, base + attn.key_dim + i] if kind == "qk" else [base + 2 * attn.key_dim + i])

    # -- surgery -------------------------------------------------------------

    def apply(self, keep: Keep) -> None:
        m = self.model
        embeds = [_index(keep[f"stages.{s}.embed"]) for s in range(len(m.stages))]
        surgery.slice_conv_out(m.stem.conv2, embeds[0])
        surgery.slice_batchnorm(m.stem.norm2, embeds[0])
        for s, stage in enumerate(m.stages):
            embed = embeds[s]
            if s > 0:
                surgery.slice_conv_out(stage.downsample.conv, embed)
                surgery.slice_conv_in(stage.downsample.conv, embeds[s - 1])
                surgery.slice_batchnorm(stage.downsample.norm, embed)
            for prefix, blk in self._blocks(s):
                hidden = _index(keep[f"{prefix}.ffn"])
                for ls in (blk.ls1, blk.ls2):
                    ls.gamma = surgery.slice_last_dim(ls.gamma, embed)
                if isinstance(blk, MetaBlock2d):
                    _cut_conv_mlp(blk.mlp, embed, hidden)
                else:
                    _cut_meta3d(blk, embed, hidden, keep[f"{prefix}.qk"], keep[f"{prefix}.v"])
        surgery.slice_norm(m.norm, embeds[-1])
        for name in _HEADS:
            head = getattr(m, name)
            if isinstance(head, nn.Linear):
                surgery.slice_linear(head, in_idx=embeds[-1])
        m.num_features = m.head_hidden_size = len(embeds[-1])


def _conv_bn(conv: nn.Module, norm: nn.Module) -> bool:
    """A plain (ungrouped) Conv2d followed by a BatchNorm2d: both sliceable along the channels."""
    return isinstance(conv, nn.Conv2d) and conv.groups == 1 and isinstance(norm, nn.BatchNorm2d)


def _cut_conv_mlp(mlp: ConvMlpWithNorm, embed: torch.Tensor, hidden: torch.Tensor) -> None:
    """Cut a Meta4D conv MLP (fc1 → BN → GELU → fc2 → BN) to the kept channels and hidden neurons."""
    surgery.slice_conv_out(mlp.fc1, hidden)
    surgery.slice_conv_in(mlp.fc1, embed)
    surgery.slice_batchnorm(mlp.norm1, hidden)
    surgery.slice_conv_out(mlp.fc2, embed)
    surgery.slice_conv_in(mlp.fc2, hidden)
    surgery.slice_batchnorm(mlp.norm2, embed)


def _cut_meta3d(blk: MetaBlock1d, embed: torch.Tensor, hidden: torch.Tensor, qk: list[list[int]],
                v: list[list[int]]) -> None:
    """Cut a Meta3D block's LayerNorms, attention and Linear MLP (`apply` cuts the LayerScales of every block)."""
    surgery.slice_norm(blk.norm1, embed)
    surgery.slice_norm(blk.norm2, embed)
    blk.token_mixer = _pruned_attention(blk.token_mixer, qk, v, embed)
    surgery.slice_linear(blk.mlp.fc1, out_idx=hidden, in_idx=embed)
    surgery.slice_linear(blk.mlp.fc2, out_idx=embed, in_idx=hidden)


def _kept_qkv_rows(qk: list[list[int]], v: list[list[int]], key_dim: int, val_dim: int) -> torch.Tensor:
    """Rows of timm's interleaved qkv to keep, in the same layout: per head, kept q, kept k, kept v."""
    per_head = 2 * key_dim + val_dim
    rows = []
    for h, (pairs, values) in enumerate(zip(qk, v)):
        base = h * per_head
        rows += [base + i for i in pairs] + [base + key_dim + i for i in pairs]
        rows += [base + 2 * key_dim + i for i in values]
    return torch.tensor(rows, dtype=torch.long)


def _pruned_attention(attn: Attention, qk: list[list[int]], v: list[list[int]],
                      embed: torch.Tensor) -> PrunedMeta3DAttention:
    """A PrunedMeta3DAttention holding `attn`'s weights for the kept q/k pairs, values and channels."""
    H = attn.num_heads
    new = PrunedMeta3DAttention(len(embed), len(qk[0]), len(v[0]), H, math.isqrt(attn.attention_bias_idxs.shape[0]),
                                attn.scale)
    value_columns = torch.tensor([h * attn.val_dim + i for h, kept in enumerate(v) for i in kept], dtype=torch.long)
    surgery.slice_linear(attn.qkv, out_idx=_kept_qkv_rows(qk, v, attn.key_dim, attn.val_dim), in_idx=embed)
    surgery.slice_linear(attn.proj, out_idx=embed, in_idx=value_columns)
    new.qkv, new.proj = attn.qkv, attn.proj
    new.attention_biases, new.attention_bias_idxs = attn.attention_biases, attn.attention_bias_idxs
    return new.to(attn.qkv.weight.dtype).train(attn.training)
