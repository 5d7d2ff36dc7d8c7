"""Importance criteria: which neurons of a group to keep.

Each criterion is a small class with one method per group kind, in the style of
Torch-Pruning's ``importance.py``; the pruner asks it for scores and keeps the
highest. Higher score = more important = kept.

* `SNPImportance` is the paper's criterion (docs/method.md §2–§5).
* `L2Importance`, `RandomImportance` and `ReverseImportance` are the baselines of
  the paper's ablation (ℓ2-norm, random, SNP's ranking inverted).

Shapes: ``q``/``k`` activations are ``[B, H, N, d]`` (batch, heads, tokens, per-head
width); per-head weights are ``[H, d, C]`` (one row of the projection per neuron);
MLP weights are ``[D, C]``; residual producers are ``[E, fan_in]`` (one row per
residual channel).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Sequence

import torch

from .errors import SNPError

_EPS = 1e-12


class Importance(ABC):
    """Scores for the neurons of each kind of group (higher = keep)."""

    name: ClassVar[str]
    #: True when `query_key` needs calibration activations (the pruner then runs
    #: the calibration images through the model and calls `qk_per_image`).
    uses_activations: ClassVar[bool] = False
    #: The constructor's options that a user may set by name (`criterion_from_options` passes these on).
    options: ClassVar[tuple[str, ...]] = ()

    def qk_per_image(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Per-image Q/K pair scores ``[B, H, d]`` from one calibration batch."""
        raise NotImplementedError(f"{self.name} does not use activations")

    @abstractmethod
    def query_key(self, wq: torch.Tensor, wk: torch.Tensor, per_image: torch.Tensor | None) -> torch.Tensor:
        """Scores ``[H, d]`` for query/key pairs (pair i = neuron i of Q and of K)."""

    @abstractmethod
    def value(self, wv: torch.Tensor) -> torch.Tensor:
        """Scores ``[H, d]`` for value neurons."""

    @abstractmethod
    def hidden(self, w: torch.Tensor) -> torch.Tensor:
        """Scores ``[D]`` for MLP hidden neurons, from the rows of the first Linear."""

    @abstractmethod
    def channels(self, producers: Sequence[torch.Tensor]) -> torch.Tensor:
        """Scores ``[E]`` for residual channels, from every layer that writes the stream."""

    def params(self) -> dict:
        """The criterion's settings, recorded in the pruning plan."""
        return {}


# --------------------------------------------------------------------------- #
# The SNP formulas
# --------------------------------------------------------------------------- #


def attention_score_pairs(
    q: torch.Tensor, k: torch.Tensor, gamma: float | int = 0.9, weighting: str = "none"
) -> torch.Tensor:
    """SNP's Q/K pair importance ω_as (docs/method.md §2.1), per image and head: ``[B, H, d]``.

    ω_i = Σ_{j≤γ} |cos(ũ_j, Q_i)| · |cos(ṽ_j, K_i)|, the cheap exact form (§2.2) of
    the cosine between the rank-one term ``Q_i K_iᵀ`` and the top singular
    components of ``A = Q Kᵀ``.

    The N×N SVD is never formed. ``A`` has rank ≤ d, so with thin QRs ``Q = Qq Rq``
    and ``K = Qk Rk``, ``A = Qq (Rq Rkᵀ) Qkᵀ`` and the SVD of the d×d core
    ``Rq Rkᵀ = Um Σ Vmᵀ`` gives ``ũ = Qq Um``, ``ṽ = Qk Vm``. Then
    ``ũ_jᵀ Q_i = (Umᵀ Rq)_{j,i}`` and ``‖Q_i‖ = ‖Rq[:, i]‖``: everything happens in
    d dimensions (DeiT-B: a 64×64 SVD instead of 197×197). Computed in float64.

    `gamma` [INF, docs/method.md §2.3]: an int is a fixed number of singular components;
    a float in (0, 1] keeps, per image and head, the fewest components that hold
    that fraction of Σσ² (default 0.9: the dominant structure, whatever its rank).
    `weighting` [INF, §2.2 caveat]: ``"none"`` is the paper's formula (magnitudes
    ignored); ``"sigma"`` weights component j by σ_j / Σσ, as the figure's σ̃_j
    inside the cosine may intend.
    """
    if q.shape != k.shape or q.dim() != 4:
        raise ValueError(f"q and k must both be [B, H, N, d], got {tuple(q.shape)} and {tuple(k.shape)}")
    q64, k64 = q.double(), k.double()
    _, rq = torch.linalg.qr(q64)  # [B, H, d, d]
    _, rk = torch.linalg.qr(k64)
    um, sigma, vmh = torch.linalg.svd(rq @ rk.transpose(-1, -2))
    rq_n = rq / rq.norm(dim=-2, keepdim=True).clamp_min(_EPS)
    rk_n = rk / rk.norm(dim=-2, keepdim=True).clamp_min(_EPS)
    cos_u = (um.transpose(-1, -2) @ rq_n).abs()  # [B, H, j, i]
    cos_v = (vmh @ rk_n).abs()
    weights = _component_weights(sigma, gamma, weighting)  # [B, H, j]
    return (weights.unsqueeze(-1) * cos_u * cos_v).sum(dim=-2).to(q.dtype)


def _component_weights(sigma: torch.Tensor, gamma: float | int, weighting: str) -> torch.Tensor:
    """Weight of each singular component j: 0 beyond γ, else 1 (or σ_j/Σσ)."""
    d = sigma.shape[-1]
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)):
        raise SNPError(f"gamma {gamma!r} must be an int ≥ 1 (components) or a float in (0, 1] (energy fraction)")
    if isinstance(gamma, int) and gamma >= 1:
        mask = (torch.arange(d) < gamma).to(sigma.dtype).expand_as(sigma)
    elif isinstance(gamma, float) and 0.0 < gamma <= 1.0:
        energy = sigma.square()
        before = energy.cumsum(-1) - energy  # energy of the components ranked above j
        mask = (before < gamma * energy.sum(-1, keepdim=True)).to(sigma.dtype)
    else:
        raise SNPError(f"gamma {gamma!r} must be an int ≥ 1 (components) or a float in (0, 1] (energy fraction)")
    if weighting == "none":
        return mask
    if weighting == "sigma":
        kept = sigma * mask
        return kept / kept.sum(-1, keepdim=True).clamp_min(_EPS)
    raise SNPError(f"weighting {weighting!r} is not one of: none, sigma")


def redundancy(rows: torch.Tensor) -> torch.Tensor:
    """Inter-neuron redundancy score (docs/method.md §3): ω_i = Σ_l (1 − |cos(w_i, w_l)|).

    Low ω = nearly collinear with many others = redundant = pruned first. The sum runs
    over every row given (for values: all neurons of all heads, hence "inter-head");
    the l = i term is 0. Biases are ignored [INF, §3].
    """
    w = rows.reshape(rows.shape[0], -1).float()  # float32: DeiT-B's 3072² Gram matrices stay fast
    wn = w / w.norm(dim=1, keepdim=True).clamp_min(_EPS)
    return w.shape[0] - (wn @ wn.T).abs().sum(dim=1)


def tss(scores: torch.Tensor) -> torch.Tensor:
    """Total-sum scaling (docs/method.md §5): scores / their sum, so layers become comparable."""
    return scores / scores.sum().clamp_min(_EPS)


def group_average(per_layer: Sequence[torch.Tensor]) -> torch.Tensor:
    """The AVERAGE policy of §5: TSS-normalise each layer's scores, then average."""
    return torch.stack([tss(s) for s in per_layer]).mean(dim=0)


def _rows(producer: torch.Tensor) -> torch.Tensor:
    """A producer's weight as one row per output channel (conv filters flattened)."""
    return producer.reshape(producer.shape[0], -1)


# --------------------------------------------------------------------------- #
# Criteria
# --------------------------------------------------------------------------- #


class SNPImportance(Importance):
    """The SNP criterion.

    * Q/K pairs: attention-score preservation (`attention_score_pairs`), per image
      and head on the calibration images, then aggregated over images with
      `aggregate` (``"mean"``, the default [INF, §2.3], or ``"median"``).
    * Values and MLP hidden neurons: inter-head redundancy of their weight rows
      (`redundancy`, data-free).
    * Residual channels: `channel_score` of each producer's output-channel rows
      (``"redundancy"``, the default [INF, docs/method.md §5: the suggested reading], or ``"l2"``),
      TSS-normalised per producer and averaged over producers (policy AVERAGE).
    """

    name = "snp"
    uses_activations = True
    options = ("gamma", "weighting", "aggregate", "channel_score")

    def __init__(self, gamma: float | int = 0.9, weighting: str = "none", aggregate: str = "mean",
                 channel_score: str = "redundancy") -> None:
        if aggregate not in ("mean", "median"):
            raise SNPError(f"aggregate {aggregate!r} is not one of: mean, median")
        if channel_score not in ("redundancy", "l2"):
            raise SNPError(f"channel_score {channel_score!r} is not one of: redundancy, l2")
        _component_weights(torch.ones(1, 1, 2), gamma, weighting)  # validates gamma and weighting now
        self.gamma, self.weighting, self.aggregate, self.channel_score = gamma, weighting, aggregate, channel_score

    def qk_per_image(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return attention_score_pairs(q, k, self.gamma, self.weighting)

    def query_key(self, wq, wk, per_image):
        if per_image is None:
            raise SNPError("the snp criterion needs calibration activations for query/key pairs")
        return per_image.mean(0) if self.aggregate == "mean" else per_image.median(0).values

    def value(self, wv):
        heads, d, _ = wv.shape
        return redundancy(wv.reshape(heads * d, -1)).reshape(heads, d)

    def hidden(self, w):
        return redundancy(w)

    def channels(self, producers):
        score = redundancy if self.channel_score == "redundancy" else (lambda r: r.norm(dim=1))
        return group_average([score(_rows(p)) for p in producers])

    def params(self):
        return {"gamma": self.gamma, "weighting": self.weighting, "aggregate": self.aggregate,
                "channel_score": self.channel_score}


class L2Importance(Importance):
    """Baseline: weight magnitude. A Q/K pair scores ‖W_q,i‖·‖W_k,i‖ (the scale of its
    rank-one logit term); other neurons score the ℓ2 norm of their row; residual
    channels average the TSS-normalised row norms of the producers."""

    name = "l2"

    def query_key(self, wq, wk, per_image):
        return wq.norm(dim=-1) * wk.norm(dim=-1)

    def value(self, wv):
        return wv.norm(dim=-1)

    def hidden(self, w):
        return _rows(w).norm(dim=1)

    def channels(self, producers):
        return group_average([_rows(p).norm(dim=1) for p in producers])


class RandomImportance(Importance):
    """Baseline: uniform random scores from a seeded generator (reproducible)."""

    name = "random"
    options = ("seed",)

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed)

    def _draw(self, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=self._generator)

    def query_key(self, wq, wk, per_image):
        return self._draw(*wq.shape[:2])

    def value(self, wv):
        return self._draw(*wv.shape[:2])

    def hidden(self, w):
        return self._draw(w.shape[0])

    def channels(self, producers):
        return self._draw(producers[0].shape[0])

    def params(self):
        return {"seed": self.seed}


class ReverseImportance(SNPImportance):
    """Ablation: SNP's ranking inverted (prune the most informative neurons first)."""

    name = "reverse"

    def query_key(self, wq, wk, per_image):
        return -super().query_key(wq, wk, per_image)

    def value(self, wv):
        return -super().value(wv)

    def hidden(self, w):
        return -super().hidden(w)

    def channels(self, producers):
        return -super().channels(producers)


CRITERIA: dict[str, type[Importance]] = {
    cls.name: cls for cls in (SNPImportance, L2Importance, RandomImportance, ReverseImportance)
}


def get_criterion(name: str, **params) -> Importance:
    """A criterion by name, e.g. ``get_criterion("snp", gamma=8)``; every param must be one it takes."""
    if name not in CRITERIA:
        raise SNPError(f"unknown criterion {name!r}; known: {', '.join(CRITERIA)}")
    return CRITERIA[name](**params)


def criterion_from_options(name: str, **options: object) -> Importance:
    """A criterion by name from a pool of user options (command-line flags, a config table).

    Each criterion takes the options it declares (`Importance.options`: e.g. ``gamma``
    for ``snp``, ``seed`` for ``random``) and ignores the rest, so a caller passes every
    option it has and never needs to know which criterion takes which. Options whose
    value is None are left at the criterion's default.
    """
    if name not in CRITERIA:
        raise SNPError(f"unknown criterion {name!r}; known: {', '.join(CRITERIA)}")
    cls = CRITERIA[name]
    return cls(**{k: v for k, v in options.items() if k in cls.options and v is not None})
