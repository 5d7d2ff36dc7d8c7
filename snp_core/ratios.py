"""Where per-group pruning ratios come from.

Three sources, all producing a plain ``{group name: fraction removed}`` dict:

* a named config shipped in ``snp_core/configs/`` (the paper's ``deit_tiny``,
  ``deit_small``, ``deit_small_1.3g``, ``deit_base``, and configs this project found
  for the paper's other rows, e.g. ``deit_base_head_3.5g``; `config_names` lists
  them) or ``"paper"`` for the one made for the model;
* a file: our ``snp-ratios/1`` JSON, or the paper's original files (keys
  ``matmul_{2b}``, ``matmul_{2b+1}``, ``blocks_{b}_mlp_fc1``, ``add_{2*depth}``);
* uniform ratios per kind (``--qk 0.5 --v 0.4 --ffn 0.3 --embed 0.2``).

`scale_to_target` turns any of them into ratios that hit a MACs target.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Iterable, Mapping

from timm.models import split_model_name_tag

from .errors import RatioError
from .groups import KINDS, Group, check_ratio

CONFIG_DIR = Path(__file__).with_name("configs")
Ratios = dict[str, float]
#: A ratio spec as users write it: "paper", a config name or a JSON path; or ratios per kind.
RatioSpec = str | Mapping[str, float]
#: Pattern scaled to a budget when the model has no paper ratios and none is given:
#: attention pruned hardest, the residual stream least, as in the paper's files.
DEFAULT_PATTERN: Mapping[str, float] = {"qk": 0.5, "v": 0.5, "ffn": 0.5, "embed": 0.2}


def config_names() -> list[str]:
    """Names of the ratio configs shipped with the package."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def load_config(name: str) -> dict:
    """The shipped config document called `name`."""
    path = CONFIG_DIR / f"{name}.json"
    if not path.is_file():
        raise RatioError(f"unknown ratio config {name!r}; known: {', '.join(config_names())}, 'paper', or a JSON file path")
    return json.loads(path.read_text())


def paper_config_for(model_name: str) -> str:
    """The shipped config made for `model_name`: the one marked ``"primary": true``, else the first by name.

    A model with several configs stands for the paper's first row of it: DeiT-S →
    ``deit_small`` (2.0 G, first by name); EfficientFormer-L1 →
    ``efficientformer_l1_0.6g`` (marked primary, since ``0.5g`` sorts first).
    """
    names = [name for name in config_names() if load_config(name)["model"] == model_name]
    if names:
        return next((name for name in names if load_config(name).get("primary")), names[0])
    models = sorted({load_config(n)["model"] for n in config_names()})
    raise RatioError(
        f"no paper ratios for model {model_name!r}; configs are shipped for {', '.join(models)}. "
        "Use uniform ratios (--qk/--v/--ffn/--embed) or --target-gmacs"
    )


def resolve(spec: str, model_name: str) -> Ratios:
    """Ratios from `spec`: "paper", a shipped config name, or a JSON file path.

    `model_name` may carry a timm pretrained tag (``deit_tiny_patch16_224.fb_in1k``):
    ratios belong to the architecture.  A document that names the model it was
    made for (``"model"`` of snp-ratios/1) is refused for another one.
    """
    model_name = split_model_name_tag(model_name)[0]
    if spec == "paper":
        spec = paper_config_for(model_name)
    path = Path(spec)
    if path.suffix == ".json" or path.exists():
        if not path.is_file():
            raise RatioError(f"ratio file {spec!r} does not exist")
        try:
            doc = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RatioError(f"ratio file {spec!r} is not valid JSON ({exc})") from None
        where = str(path)
    else:
        doc, where = load_config(spec), spec
    made_for = doc.get("model") if isinstance(doc, dict) and doc.get("format") == "snp-ratios/1" else None
    if isinstance(made_for, str) and split_model_name_tag(made_for)[0] != model_name:
        raise RatioError(f"ratios {where!r} were made for {made_for!r}, not {model_name!r}; use the ratios of "
                         f"{model_name!r} ('paper' picks them) or uniform ratios")
    return from_document(doc, where)


def from_spec(spec: RatioSpec | None, model_name: str, groups: list[Group]) -> Ratios:
    """Validated ratios for every group of the model from any spec the project accepts.

    The one reading of a ratio spec, shared by ``bench compress``, ``bench.toml``
    model entries and the experiments: None or ``"paper"`` (the paper's file for
    `model_name`), a shipped config name, a JSON file, or a mapping of group kind to
    ratio (``{"qk": 0.5, "ffn": 0.3}``: `uniform`).
    """
    if isinstance(spec, Mapping):
        return uniform(groups, **spec)
    return validate(resolve(spec or "paper", model_name), groups)


def budget_pattern(model_name: str, groups: list[Group]) -> tuple[Ratios, str]:
    """The pattern a MACs or latency budget scales when no ratios are given, and its name.

    The paper's ratios when they fit this model (not, say, a shallower one made
    with other ``model_kwargs``), else `DEFAULT_PATTERN`.
    """
    try:
        return from_spec("paper", model_name, groups), "paper pattern"
    except RatioError:
        return uniform(groups, **DEFAULT_PATTERN), "default pattern"


def from_document(doc: object, where: str) -> Ratios:
    """Ratios from a parsed JSON document in either supported format."""
    if isinstance(doc, dict) and doc.get("format") == "snp-ratios/1":
        ratios = doc.get("ratios")
        if not isinstance(ratios, dict):
            raise RatioError(f"ratio file {where!r} has no 'ratios' object")
        return {str(k): _number(v, k, where) for k, v in ratios.items()}
    if isinstance(doc, dict) and any(re.fullmatch(r"matmul(_\d+)?|add_\d+|blocks_\d+_mlp_fc1", str(k)) for k in doc):
        return _from_paper_keys(doc, where)
    raise RatioError(f"ratio file {where!r} is neither an snp-ratios/1 document nor a paper ratio file (matmul_*/add_*/blocks_*_mlp_fc1 keys)")


def _number(value: object, key: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RatioError(f"ratio {value!r} for {key} in {where!r} is not a number")
    return float(value)


def _from_paper_keys(doc: dict, where: str) -> Ratios:
    """Map the paper's fx node names to group names (docs/method.md §7.2)."""
    ratios: Ratios = {}
    adds = []
    for key, value in doc.items():
        value = _number(value, key, where)
        if key == "matmul" or (m := re.fullmatch(r"matmul_(\d+)", key)):
            index = 0 if key == "matmul" else int(m.group(1))
            ratios[f"blocks.{index // 2}.{'qk' if index % 2 == 0 else 'v'}"] = value
        elif m := re.fullmatch(r"blocks_(\d+)_mlp_fc1", key):
            ratios[f"blocks.{m.group(1)}.ffn"] = value
        elif m := re.fullmatch(r"add_(\d+)", key):
            adds.append((int(m.group(1)), value))
        else:
            raise RatioError(f"unknown key {key!r} in paper ratio file {where!r}")
    if adds:
        # the last residual Add stands for the whole residual-stream group
        ratios["embed"] = max(adds)[1]
    return ratios


def uniform(groups: list[Group], **per_kind: float | None) -> Ratios:
    """The same ratio for every group of a kind; kinds not given are not pruned."""
    for kind, ratio in per_kind.items():
        if kind not in KINDS:
            raise RatioError(f"unknown group kind {kind!r}; known: {', '.join(KINDS)}")
        if ratio is not None:
            check_ratio(ratio, f"--{kind}")
    return {g.name: float(per_kind.get(g.kind) or 0.0) for g in groups}


def validate(ratios: Mapping[str, float], groups: list[Group]) -> Ratios:
    """Check that `ratios` names only groups of the model and that each is in range.

    Groups the ratios do not name are not pruned (ratio 0).
    """
    known = {g.name for g in groups}
    unknown = sorted(set(ratios) - known)
    if unknown:
        example = ", ".join(sorted(known)[:4])
        raise RatioError(f"ratio for unknown layer group {unknown[0]!r}; this model's groups look like: {example}, ...")
    for name, ratio in ratios.items():
        check_ratio(ratio, name)
    return {g.name: float(ratios.get(g.name, 0.0)) for g in groups}


def scale_to_target(
    base: Ratios,
    groups: list[Group],
    macs_of: Callable[[dict[str, int]], int],
    target_macs: float,
    round_to: int | None = None,
    tolerance: float = 0.02,
    max_ratio: float = 0.95,
    fixed: Iterable[str] = (),
) -> Ratios:
    """Scale a ratio pattern so the pruned model has `target_macs` MACs (within `tolerance`).

    Schedule: every ratio becomes ``min(s * base_ratio, max_ratio)`` for one scalar
    ``s >= 0``, found by bisection. This keeps the pattern's shape (the paper prunes
    late blocks harder than early ones and the residual stream least), so a model
    without published ratios can borrow a pattern or start from a uniform one.
    MACs only fall as ``s`` grows, so bisection converges. Rounding of kept widths
    (most of all with `round_to`) makes that curve a staircase:

    1. the two scales bracketing the target are mixed: groups switch from the
       lower to the higher step one at a time, in model order;
    2. the residual stream (``embed``) touches every layer, so one of its steps can
       exceed the tolerance alone: it is pinned at each of its two bracketing
       ratios in turn and the other groups are fitted again.

    The closest total wins. Groups named in `fixed` keep their ratio from `base`
    (e.g. a head-pruning ratio chosen first, with SNP scaled around it).
    """
    base = validate(base, groups)
    held = {n: base[n] for n in fixed}
    if not any(r for n, r in base.items() if n not in held):
        raise RatioError("--target-gmacs needs a ratio pattern with at least one non-zero ratio to scale")

    def macs_of_ratios(ratios: Ratios) -> int:
        return macs_of({g.name: g.kept_width(ratios[g.name], round_to) for g in groups})

    def fit(pinned: Ratios) -> tuple[Ratios, Ratios, Ratios] | None:
        """(closest mix, lighter bracket, heavier bracket) with `pinned` ratios held fixed."""
        free = [n for n in base if n not in pinned]
        scalable = [base[n] for n in free if base[n] > 0]
        if not scalable:
            return None

        def ratios_at(s: float) -> Ratios:
            return {**{n: min(s * base[n], max_ratio) for n in free}, **pinned}

        lo, hi = 0.0, max_ratio / min(scalable)
        if not macs_of_ratios(ratios_at(hi)) <= target_macs < macs_of_ratios(ratios_at(lo)):
            return None
        for _ in range(60):  # invariant: macs(lo) > target >= macs(hi)
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if macs_of_ratios(ratios_at(mid)) > target_macs else (lo, mid)
        light, heavy = ratios_at(lo), ratios_at(hi)
        mixes = [{n: (heavy if i < k else light)[n] for i, n in enumerate(base)} for k in range(len(base) + 1)]
        return min(mixes, key=lambda r: abs(macs_of_ratios(r) - target_macs)), light, heavy

    full = macs_of_ratios({n: held.get(n, 0.0) for n in base})
    floor = macs_of_ratios({n: held.get(n, min(r * 1e9, max_ratio)) for n, r in base.items()})
    first = fit(held)
    if first is None:
        if abs(full - target_macs) <= tolerance * target_macs:
            return {n: held.get(n, 0.0) for n in base}
        raise RatioError(
            f"target {target_macs / 1e9:.3f} GMACs is out of reach: this model spans "
            f"{floor / 1e9:.3f} (every ratio at {max_ratio}) to {full / 1e9:.3f} GMACs "
            f"({'only the fixed ratios' if held else 'unpruned'})"
        )
    candidates = [first[0]]
    for g in groups:
        if g.kind == "embed" and g.name not in held:
            for ratio in {first[1][g.name], first[2][g.name]}:
                refit = fit({**held, g.name: ratio})
                if refit:
                    candidates.append(refit[0])
    best = min(candidates, key=lambda r: abs(macs_of_ratios(r) - target_macs))
    achieved = macs_of_ratios(best)
    if abs(achieved - target_macs) > tolerance * target_macs:
        raise RatioError(
            f"target {target_macs / 1e9:.3f} GMACs not reachable within {tolerance:.0%} with this pattern "
            f"(closest: {achieved / 1e9:.3f} GMACs); try another --ratios pattern or --round-to"
        )
    return best
