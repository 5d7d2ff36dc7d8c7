"""The two yardsticks a pruned model's latency is held to (issue 15, docs/speedup.md).

* `HandWrittenViT`: a plain ViT written from scratch with exactly the widths of an
  SNP-pruned timm ViT (per block: heads, q/k and v width per head, MLP hidden;
  one residual width), one fused qkv Linear split into q, k and v. It is what a
  person would write for those widths with no pruning library in the way, so a
  pruned graph slower than it carries overhead of the library's making. Built
  from a pruned model with `HandWrittenViT.like`, which copies the weights too,
  so the two compute the same function (checked by the benchmark).
* `uniform_peer`: what a generic structural pruner gives at the same MACs --
  Torch-Pruning (``torch_pruning``, a benchmark-only dependency) cutting every
  head width, MLP hidden width and the residual width of a timm ViT by one ratio,
  found by bisection so that its MACs match a target.

Random weights everywhere: latency does not depend on them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from snp_core.adapters import PrunedAttention, adapter_for
from snp_core.flops import count_macs


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, qk: int, v: int, hidden: int, scale: float, eps: float) -> None:
        super().__init__()
        self.heads, self.qk, self.v, self.scale = heads, qk, v, scale
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=eps), nn.LayerNorm(dim, eps=eps)
        self.qkv = nn.Linear(dim, heads * (2 * qk + v))
        self.proj = nn.Linear(heads * v, dim)
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        H = self.heads
        q, k, v = self.qkv(self.norm1(x)).split([H * self.qk, H * self.qk, H * self.v], dim=-1)
        q = q.view(B, N, H, self.qk).transpose(1, 2)
        k = k.view(B, N, H, self.qk).transpose(1, 2)
        v = v.view(B, N, H, self.v).transpose(1, 2)
        a = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
        x = x + self.proj(a.transpose(1, 2).reshape(B, N, H * self.v))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class HandWrittenViT(nn.Module):
    """Patch-embed conv, class token, position embedding, blocks, final norm, head on the class token."""

    def __init__(self, in_chans: int, patch: int, tokens: int, dim: int, blocks: list[tuple[int, int, int, int]],
                 scale: float, classes: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(in_chans, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, dim))
        self.blocks = nn.Sequential(*(_Block(dim, h, qk, v, hid, scale, eps) for h, qk, v, hid in blocks))
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])

    @classmethod
    def like(cls, pruned: VisionTransformer) -> HandWrittenViT:
        """The hand-written model with `pruned`'s widths and weights (a plain DeiT-style ViT only)."""
        if pruned.num_prefix_tokens != 1 or pruned.global_pool != "token" or not isinstance(pruned.head, nn.Linear):
            raise ValueError("HandWrittenViT covers one class token, token pooling and a Linear head (DeiT, ViT)")
        conv = pruned.patch_embed.proj
        widths = []
        for blk in pruned.blocks:
            attn = blk.attn
            if not isinstance(attn, PrunedAttention):
                raise ValueError("HandWrittenViT.like takes an SNP-pruned model (PrunedAttention blocks)")
            widths.append((attn.num_heads, attn.qk_dim, attn.v_dim, blk.mlp.fc1.out_features))
        ref = cls(conv.in_channels, conv.kernel_size[0], pruned.pos_embed.shape[1], conv.out_channels, widths,
                  pruned.blocks[0].attn.scale, pruned.head.out_features, pruned.norm.eps)
        ref.patch_embed.load_state_dict(conv.state_dict())
        ref.cls_token.data.copy_(pruned.cls_token.data)
        ref.pos_embed.data.copy_(pruned.pos_embed.data)
        for mine, theirs in zip(ref.blocks, pruned.blocks):
            for a, b in ((mine.norm1, theirs.norm1), (mine.norm2, theirs.norm2), (mine.qkv, theirs.attn.qkv),
                         (mine.proj, theirs.attn.proj), (mine.fc1, theirs.mlp.fc1), (mine.fc2, theirs.mlp.fc2)):
                a.load_state_dict(b.state_dict())
        ref.norm.load_state_dict(pruned.norm.state_dict())
        ref.head.load_state_dict(pruned.head.state_dict())
        return ref.eval()


def _uniform_cut(model: VisionTransformer, ratio: float, example: torch.Tensor) -> VisionTransformer:
    """Torch-Pruning's uniform model: head dims, MLP hidden and residual width each cut by `ratio` (ℓ2 magnitude)."""
    import torch_pruning as tp

    num_heads = {blk.attn.qkv: blk.attn.num_heads for blk in model.blocks}
    pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=ratio, ignored_layers=[model.head], num_heads=num_heads,
                                  prune_head_dims=True, prune_num_heads=False, round_to=None)
    pruner.step()
    for blk in model.blocks:  # Torch-Pruning narrows the Linear layers; timm's Attention reads these in forward
        blk.attn.head_dim = blk.attn.qkv.out_features // (3 * blk.attn.num_heads)
        blk.attn.attn_dim = blk.attn.num_heads * blk.attn.head_dim
    model.embed_dim = model.num_features = model.head_hidden_size = model.patch_embed.proj.out_channels
    return model


def uniform_peer(make: callable, target_macs: int, input_size: tuple[int, ...]) -> tuple[nn.Module, float, int]:
    """The Torch-Pruning uniform model of ``make()`` (a timm ViT) at about `target_macs`: model, ratio, MACs.

    The ratio is found by bisection on the MACs the ViT adapter computes for widths
    cut as Torch-Pruning cuts them (``w - ceil(w * ratio)`` of every head width, MLP
    hidden width and the residual width), then Torch-Pruning prunes once; its MACs
    are counted by `snp_core.flops.count_macs`, as the pruned model's are.
    """
    original = make().eval()
    adapter = adapter_for(original)

    def macs(ratio: float) -> int:
        return adapter.macs({g.name: g.width - math.ceil(g.width * ratio) for g in adapter.groups() if g.kind != "heads"})

    lo, hi = 0.0, 0.95
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if macs(mid) > target_macs else (lo, mid)
    ratio = min((lo, hi), key=lambda r: abs(macs(r) - target_macs))
    model = _uniform_cut(original, ratio, torch.randn(1, *input_size)).eval()
    return model, ratio, count_macs(model, input_size)
