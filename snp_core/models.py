"""Creating timm models by name, with clear errors and explicit weights.

`weights` is explicit because this tool runs both online (real pruning of
pretrained DeiTs: ``"pretrained"``, timm's own hub download) and offline (tests,
demos: ``"random"``), and silently falling back from one to the other would make
every figure downstream meaningless.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import timm
import torch
from torch import nn

from .errors import PlanError, UnknownModelError


def create(name: str, weights: str = "random", **kwargs) -> nn.Module:
    """A timm model in eval mode: ``weights`` is "random", "pretrained" or a checkpoint path.

    "random" is timm's initialisation under a fixed seed, so two calls give the same
    weights (and the exporters the same artifact).
    """
    if not timm.is_model(name):
        names = timm.list_models()
        close = [n for n in names if n.startswith(name)][:3] or difflib.get_close_matches(name, names, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models('deit*')"
        raise UnknownModelError(f"unknown model {name!r}: not a timm model name{hint}")
    if weights not in ("random", "pretrained") and not Path(weights).is_file():
        raise PlanError(f"weights {weights!r} is not 'random', 'pretrained' or an existing checkpoint file")
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # "random" weights are the same every time: same artifact, same sha256
            model = timm.create_model(name, pretrained=weights == "pretrained", **kwargs)
    except (OSError, RuntimeError) as exc:
        if weights == "pretrained":
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise PlanError(f"cannot download pretrained weights for {name!r} ({first}); "
                            "pass --weights PATH to a checkpoint, or --weights random for a smoke test") from None
        raise
    if weights not in ("random", "pretrained"):
        model.load_state_dict(read_state_dict(Path(weights)))
    return model.eval()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Weights from a .safetensors file, or a torch file read with ``weights_only=True``."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # every reader error means the same to the user: a bad file
        raise PlanError(f"cannot read weights {str(path)!r}: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):  # common training checkpoint layout
        state = state["model"]
    if not isinstance(state, dict):
        raise PlanError(f"weights file {str(path)!r} does not hold a state_dict")
    return state


def input_size(model: nn.Module) -> tuple[int, int, int]:
    """(C, H, W) the model takes: its patch embedding's when it has one (``img_size=`` overrides
    timm's default), else its pretrained config's."""
    embed = getattr(model, "patch_embed", None)
    if embed is not None and getattr(embed, "img_size", None) is not None:
        return (embed.proj.in_channels, *embed.img_size)
    return tuple(getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224)))
