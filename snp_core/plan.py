"""The pruning plan: a JSON document from which the pruned architecture is rebuilt.

A plan names the timm model (and the kwargs it was created with), the criterion
and ratios used, where calibration images came from, and for every group the
indices of the neurons KEPT (one list per head for per-head groups). Together
with a ``state_dict`` it rebuilds the pruned model without pickling any class:
create the original architecture, cut it to the kept indices, load the weights.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .errors import PlanError
from .groups import Group

PLAN_FORMAT = "snp-plan/1"
PLAN_FILE = "plan.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class Plan:
    model: str
    family: str
    keep: dict[str, list]
    widths: dict[str, int]
    ratios: dict[str, float]
    criterion: dict
    model_kwargs: dict = field(default_factory=dict)
    round_to: int | None = None
    calibration: dict | None = None
    macs: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def to_dict(self) -> dict:
        return {"format": PLAN_FORMAT, **asdict(self)}

    def fingerprint(self) -> str:
        """sha256 of the plan's content without its creation time: equal plans, equal ids.

        Used as the plan id in artifact manifests and export cache keys, so pruning
        the same model the same way twice reuses the same artifacts.
        """
        content = {k: v for k, v in self.to_dict().items() if k != "created"}
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def read(cls, path: Path) -> "Plan":
        """Read and validate a plan file; any problem is a one-line PlanError."""
        if path.is_dir():
            path = path / PLAN_FILE
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            raise PlanError(f"plan file {str(path)!r} does not exist") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PlanError(f"corrupt plan file {str(path)!r}: not valid JSON ({exc})") from None
        return cls.from_dict(doc, str(path))

    @classmethod
    def from_dict(cls, doc: object, where: str = "plan") -> "Plan":
        def bad(reason: str) -> PlanError:
            return PlanError(f"corrupt plan file {where!r}: {reason}")

        if not isinstance(doc, dict) or doc.get("format") != PLAN_FORMAT:
            raise bad(f"'format' is not {PLAN_FORMAT!r}")
        required = {"model": str, "family": str, "keep": dict, "widths": dict, "ratios": dict, "criterion": dict}
        for key, typ in required.items():
            if not isinstance(doc.get(key), typ):
                raise bad(f"field {key!r} is missing or not a {typ.__name__}")
        for name, kept in doc["keep"].items():
            _check_kept(name, kept, bad)
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in doc.items() if k in known})

    def check_against(self, groups: list[Group]) -> None:
        """Raise PlanError unless the kept indices fit the model's groups exactly.

        A ``heads`` group may be absent (plans written before head pruning existed):
        every head is then kept.
        """
        names = {g.name for g in groups}
        optional = {g.name for g in groups if g.kind == "heads"}
        if not names - optional <= set(self.keep) <= names:
            missing, extra = sorted(names - optional - set(self.keep)), sorted(set(self.keep) - names)
            raise PlanError(f"plan for {self.model!r} does not fit the model: missing groups {missing[:3]}, "
                            f"unknown groups {extra[:3]}")
        for g in groups:
            if g.name not in self.keep:
                continue
            kept = self.keep[g.name]
            heads = kept if g.heads > 1 else [kept]
            expected = len(self.keep[g.head_group]) if g.head_group in self.keep else g.heads
            if len(heads) != expected or any(max(h, default=-1) >= g.width for h in heads):
                raise PlanError(f"plan group {g.name!r} does not fit the model ({expected} head(s) of width {g.width})")


def _check_kept(name: str, kept: object, bad) -> None:
    """Kept indices: a non-empty ascending list of ints, or a list of such lists of equal length."""
    if not isinstance(kept, list) or not kept:
        raise bad(f"keep[{name!r}] is not a non-empty list")
    heads = kept if isinstance(kept[0], list) else [kept]
    for head in heads:
        if not isinstance(head, list) or not head or not all(isinstance(i, int) and i >= 0 for i in head):
            raise bad(f"keep[{name!r}] must hold non-negative integer indices")
        if any(a >= b for a, b in zip(head, head[1:])):
            raise bad(f"keep[{name!r}] indices are not strictly ascending")
    if len({len(h) for h in heads}) != 1:
        raise bad(f"keep[{name!r}] heads keep different numbers of neurons")
