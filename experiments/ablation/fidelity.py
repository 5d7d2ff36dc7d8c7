"""Attention-map fidelity: how well a pruned model keeps the original's attention (docs/method.md §9.2).

The quantitative form of the paper's qualitative attention-map ablation (ℓ2 / GM / Reverse /
SNP): per image, block and head, the attention probabilities ``softmax(q kᵀ · scale)`` of
the original and of the pruned model are compared. q and k are taken where the library
takes them: the ViT adapter's `qk_sources` for an unpruned model (the hooks SNP's own
calibration uses), `PrunedAttention.project` for a pruned one (the adapter refuses pruned
models, and `project` is the pruned module's own q/k computation).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

import snp_core
from snp_core.adapters.vit import PrunedAttention

#: One block's (q, k, scale): q and k ``[B, H, N, d]``, scale the softmax temperature.
QK = tuple[torch.Tensor, torch.Tensor, float]


@contextmanager
def captured_qk(model: nn.Module) -> Iterator[list[QK]]:
    """While inside, every forward pass of `model` appends each block's (q, k, scale) to the list
    yielded, in block order."""
    captured: list[QK] = []
    pruned = [blk.attn for blk in model.blocks if isinstance(blk.attn, PrunedAttention)]
    if pruned:
        def from_project(module: PrunedAttention, args: tuple) -> None:
            q, k, _ = module.project(args[0])
            captured.append((q, k, module.scale))

        handles = [attn.register_forward_pre_hook(from_project) for attn in pruned]
    else:
        def from_source(extract, scale: float):
            def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
                captured.append((*extract(out), scale))
            return hook

        # qk group "blocks.<b>.qk" belongs to the attention module of block <b>
        handles = [module.register_forward_hook(
                       from_source(extract, model.get_submodule(name.rsplit(".", 1)[0]).attn.scale))
                   for name, module, extract in snp_core.adapter_for(model).qk_sources()]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


@torch.inference_mode()
def attention_maps(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Per block, the attention probabilities ``softmax(q kᵀ · scale)`` ``[B, H, N, N]`` for images `x`."""
    model.eval()
    with captured_qk(model) as captured:
        model(x)
    return [((q * scale) @ k.transpose(-2, -1)).softmax(-1) for q, k, scale in captured]


def attention_fidelity(original: nn.Module, pruned: nn.Module, x: torch.Tensor, batch_size: int = 128) -> dict:
    """How well `pruned` keeps `original`'s attention maps on images `x` (see `fidelity_to`)."""
    return fidelity_to(attention_maps(original, x), pruned, x, batch_size)


@torch.inference_mode()
def fidelity_to(reference: list[torch.Tensor], pruned: nn.Module, x: torch.Tensor, batch_size: int = 128) -> dict:
    """How well `pruned` keeps the attention maps `reference` (the original's `attention_maps` of
    `x`, computed once for many pruned models) on images `x`.

    ``cosine``: cosine similarity of the flattened N×N maps, per image, block and head, averaged
    (1.0 = identical maps). ``kl``: KL(original ‖ pruned) of each query row, averaged over
    rows, heads, blocks and images (0 = identical). ``per_block_cosine``: the cosine per block.
    """
    cos_sum = [0.0] * len(reference)
    kl_sum = [0.0] * len(reference)
    for s in range(0, len(x), batch_size):
        maps = attention_maps(pruned, x[s:s + batch_size])
        for i, (full, pb) in enumerate(zip(reference, maps)):
            pa = full[s:s + batch_size]
            cos = F.cosine_similarity(pa.flatten(2), pb.flatten(2), dim=-1)  # [B, H]
            kl = (pa * (pa.clamp_min(1e-12).log() - pb.clamp_min(1e-12).log())).sum(-1).mean(-1)  # [B, H]
            cos_sum[i] += float(cos.mean(-1).sum())
            kl_sum[i] += float(kl.mean(-1).sum())
    per_block = [c / len(x) for c in cos_sum]
    return {"cosine": sum(per_block) / len(per_block), "kl": sum(kl_sum) / len(x) / len(kl_sum),
            "per_block_cosine": per_block}


@torch.inference_mode()
def output_kl(original: nn.Module, pruned: nn.Module, x: torch.Tensor) -> float:
    """Mean KL(original ‖ pruned) of the class distributions: how much the prediction moved
    (the fidelity measure for whole-head pruning, where removed heads have no map to compare)."""
    log_p, log_q = original(x).log_softmax(-1), pruned(x).log_softmax(-1)
    return float((log_p.exp() * (log_p - log_q)).sum(-1).mean())
