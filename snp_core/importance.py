"""Importance criteria: which neurons of a group to keep.

Each criterion is a small class with one method per group kind, in the style of
Torch-Pruning's ``importance.py``; the pruner asks it for scores and keeps the
highest. Higher score = more important = kept.

* `SNPImportance` is the paper's criterion (docs/method.md §2–§5); its options
  `redundancy` and `magnitude` (§14) select the variants registered as
  ``snp_inverted``, ``snp_magnitude`` and ``snp_magnitude_inverted``.
* `L2Importance`, `GeometricMedianImportance`, `RandomImportance` and
  `ReverseImportance` are the baselines of the paper's ablation (ℓ2-norm,
  geometric median, random, SNP's ranking inverted).

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
    return rows.shape[0] - collinearity(rows)


def collinearity(rows: torch.Tensor) -> torch.Tensor:
    """Σ_l |cos(w_i, w_l)| over every row given (the l = i term is 1): n − `redundancy`.

    The same ranking as `redundancy`, reversed, and positive, so a magnitude can weight
    it (docs/method.md §14.1: SNP's ``redundancy="inverted"``).
    """
    w = rows.reshape(rows.shape[0], -1).float()  # float32: DeiT-B's 3072² Gram matrices stay fast
    wn = w / w.norm(dim=1, keepdim=True).clamp_min(_EPS)
    return (wn @ wn.T).abs().sum(dim=1)


def distance_sums(rows: torch.Tensor) -> torch.Tensor:
    """FPGM's score (docs/method.md §14.3): Σ_l ‖w_i − w_l‖ over the rows of each set.

    `rows` is ``[n, F]`` (one set) or ``[S, n, F]`` (S independent sets, e.g. heads);
    the result is ``[n]`` or ``[S, n]``. A row near the sets' geometric median has the
    smallest sum: the others can stand in for it, so it is pruned first. float64, so
    the matrix-product form of `torch.cdist` loses nothing that a ranking could see.
    """
    w = rows.double()
    return torch.cdist(w, w).sum(dim=-1).float()


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

    Two options leave the paper's reading (docs/method.md §14), because the project's
    ablation found its V/FFN direction worse than random and magnitude-blind scores
    behind ℓ2 (§13.4):

    * `redundancy`: ``"paper"`` (default) keeps the least redundant value and hidden
      neurons (score ω of §3); ``"inverted"`` keeps the most collinear ones (score
      `collinearity` = n − ω, the reverse ranking). Residual channels follow
      `channel_score` either way.
    * `magnitude` (default False): the Q/K pair score of each image is multiplied by
      ‖Q_i‖·‖K_i‖, the norms over tokens of that image's query and key activations
      (the calibration activations this criterion always has; not weight norms), before
      the images are aggregated; the value/hidden score is multiplied by the ℓ2 norm of
      the neuron's weight row. Residual channels are unchanged.

    `params` records the two only when they differ from the paper's reading, so plans
    made with the defaults are what they were before the options existed.
    """

    name = "snp"
    uses_activations = True
    options = ("gamma", "weighting", "aggregate", "channel_score", "redundancy", "magnitude")

    def __init__(self, gamma: float | int = 0.9, weighting: str = "none", aggregate: str = "mean",
                 channel_score: str = "redundancy", redundancy: str = "paper", magnitude: bool = False) -> None:
        if aggregate not in ("mean", "median"):
            raise SNPError(f"aggregate {aggregate!r} is not one of: mean, median")
        if channel_score not in ("redundancy", "l2"):
            raise SNPError(f"channel_score {channel_score!r} is not one of: redundancy, l2")
        if redundancy not in ("paper", "inverted"):
            raise SNPError(f"redundancy {redundancy!r} is not one of: paper, inverted")
        if not isinstance(magnitude, bool):
            raise SNPError(f"magnitude {magnitude!r} is not a bool (True or False)")
        _component_weights(torch.ones(1, 1, 2), gamma, weighting)  # validates gamma and weighting now
        self.gamma, self.weighting, self.aggregate, self.channel_score = gamma, weighting, aggregate, channel_score
        self.redundancy, self.magnitude = redundancy, magnitude

    def qk_per_image(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        scores = attention_score_pairs(q, k, self.gamma, self.weighting)
        if self.magnitude:
            scores = scores * (q.double().norm(dim=-2) * k.double().norm(dim=-2)).to(scores.dtype)
        return scores

    def query_key(self, wq, wk, per_image):
        if per_image is None:
            raise SNPError(f"the {self.name} criterion needs calibration activations for query/key pairs")
        return per_image.mean(0) if self.aggregate == "mean" else per_image.median(0).values

    def _rows_score(self, rows: torch.Tensor) -> torch.Tensor:
        """The value/hidden score of each row of ``[n, F]``: §3's ω, or its reverse, times ‖row‖ if asked."""
        score = redundancy(rows) if self.redundancy == "paper" else collinearity(rows)
        return score * rows.float().norm(dim=1) if self.magnitude else score

    def value(self, wv):
        heads, d, _ = wv.shape
        return self._rows_score(wv.reshape(heads * d, -1)).reshape(heads, d)

    def hidden(self, w):
        return self._rows_score(_rows(w))

    def channels(self, producers):
        score = redundancy if self.channel_score == "redundancy" else (lambda r: r.norm(dim=1))
        return group_average([score(_rows(p)) for p in producers])

    def params(self):
        params = {"gamma": self.gamma, "weighting": self.weighting, "aggregate": self.aggregate,
                  "channel_score": self.channel_score}
        if self.redundancy != "paper":
            params["redundancy"] = self.redundancy
        if self.magnitude:
            params["magnitude"] = True
        return params


class _SNPVariant(SNPImportance):
    """SNP with some options fixed by the registered name (`fixed`); the others stay settable.

    A fixed option may be passed only with its fixed value (so a plan's recorded
    params rebuild the criterion); any other value is refused rather than silently
    turning, say, ``snp_inverted`` back into ``snp``.
    """

    fixed: ClassVar[dict[str, object]] = {}

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.options = tuple(o for o in SNPImportance.options if o not in cls.fixed)

    def __init__(self, **options: object) -> None:
        for key, value in options.items():
            if key in self.fixed and value != self.fixed[key]:
                raise SNPError(f"criterion {self.name!r} fixes {key}={self.fixed[key]!r}, got {value!r}; "
                               f"use 'snp' with {key}=... to choose it")
        super().__init__(**{**options, **self.fixed})


class SNPInvertedImportance(_SNPVariant):
    """SNP with the V/FFN redundancy ranking reversed (docs/method.md §14.1)."""

    name = "snp_inverted"
    fixed: ClassVar[dict[str, object]] = {"redundancy": "inverted"}


class SNPMagnitudeImportance(_SNPVariant):
    """SNP with magnitude-aware Q/K and V/FFN scores (docs/method.md §14.2)."""

    name = "snp_magnitude"
    fixed: ClassVar[dict[str, object]] = {"magnitude": True}


class SNPMagnitudeInvertedImportance(_SNPVariant):
    """SNP with both: reversed V/FFN ranking, weighted by magnitudes (docs/method.md §14.1–§14.2)."""

    name = "snp_magnitude_inverted"
    fixed: ClassVar[dict[str, object]] = {"redundancy": "inverted", "magnitude": True}


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


class GeometricMedianImportance(Importance):
    """Baseline: filter pruning via geometric median (FPGM; He et al., CVPR 2019; docs/method.md §14.3).

    Within each set of neurons, the one whose weight row is nearest the set's geometric
    median is the most replaceable; its score is the sum of Euclidean distances from its
    row to every other row of the set (`distance_sums`; higher = keep). The sets:
    Q/K pairs and values within each head (a pair's row is ``[W_q,i, W_k,i]``); MLP
    hidden neurons over the rows of the first Linear; residual channels over the rows
    obtained by concatenating, channel by channel, every producer's row (one score per
    channel, so no per-producer normalisation). Data-free and deterministic.
    """

    name = "gm"

    def query_key(self, wq, wk, per_image):
        return distance_sums(torch.cat([wq, wk], dim=-1))

    def value(self, wv):
        return distance_sums(wv)

    def hidden(self, w):
        return distance_sums(_rows(w))

    def channels(self, producers):
        return distance_sums(torch.cat([_rows(p) for p in producers], dim=1))


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
    cls.name: cls for cls in (SNPImportance, SNPInvertedImportance, SNPMagnitudeImportance,
                              SNPMagnitudeInvertedImportance, L2Importance, GeometricMedianImportance,
                              RandomImportance, ReverseImportance)
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
