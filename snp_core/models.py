"""Creating timm models by name, with clear errors and explicit weights.

`weights` is explicit because this tool runs both online (real pruning of
pretrained DeiTs: ``"pretrained"``, timm's own hub download) and offline (tests,
demos: ``"random"``), and silently falling back from one to the other would make
every figure downstream meaningless.
"""

from __future__ import annotations

import difflib
import functools
import os
import socket
import urllib.parse
from pathlib import Path

import timm
import torch
from timm.models import get_pretrained_cfg, split_model_name_tag
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
    source = _offline_source(name) if weights == "pretrained" else {}
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # "random" weights are the same every time: same artifact, same sha256
            model = timm.create_model(name, pretrained=weights == "pretrained", **source, **kwargs)
    except (OSError, RuntimeError) as exc:
        if weights == "pretrained":
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise _no_weights(name, first) from None
        raise
    if weights not in ("random", "pretrained"):
        model.load_state_dict(read_state_dict(Path(weights)))
    return model.eval()


def _no_weights(name: str, why: str) -> PlanError:
    return PlanError(f"cannot download pretrained weights for {name!r} ({why}); "
                     "pass --weights PATH to a checkpoint, or --weights random for a smoke test")


#: Weight files timm looks for in a Hugging Face hub repository, in its order.
_HUB_FILES = ("model.safetensors", "pytorch_model.bin")


def _offline_source(name: str) -> dict:
    """Extra ``timm.create_model`` arguments for loading pretrained weights when offline.

    Offline, the hub client retries each file for about a minute before timm's
    error. So one connection attempt (remembered for the process) to the host
    the weights come from decides: reachable, timm downloads as usual ({});
    unreachable, weights already in the hub's or torch's cache are loaded from
    that file (timm's ``file`` source, ``weights_only`` as for a download), and
    without them the same error as timm's comes at once.
    """
    found = get_pretrained_cfg(name)  # what timm's own loader consults (the default tag for a bare name)
    cfg = found.to_dict() if found is not None else {}
    hub_id, url = cfg.get("hf_hub_id"), cfg.get("url")
    if os.environ.get("HF_HUB_OFFLINE") or not (hub_id or url):
        return {}  # the hub client answers from its cache alone at once; or timm has nothing to download
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo = "/".join(hub_id.split("/")[:2])
        names = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else list(_HUB_FILES)
        cached = next((c for c in (try_to_load_from_cache(repo, n) for n in names) if isinstance(c, str)), None)
        endpoint = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    else:
        endpoint = urllib.parse.urlparse(url)
        file = Path(torch.hub.get_dir()) / "checkpoints" / Path(endpoint.path).name
        cached = str(file) if file.is_file() else None
    problem = _unreachable(endpoint.hostname or "", endpoint.port or 443)
    if not problem:
        return {}
    if cached is None:
        raise _no_weights(name, f"offline? {problem}; they are not in the local cache either")
    return {"pretrained_cfg_overlay": {"file": cached}}


@functools.lru_cache(maxsize=None)
def _unreachable(host: str, port: int, timeout_s: float = 5.0) -> str:
    """Why `host` cannot be reached ("" when it can): one DNS lookup and TCP connection, once per process."""
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        return f"cannot reach {host}:{port}: {exc.strerror or exc}"
    return ""


def base_name(name: str) -> str:
    """A timm name without its pretrained tag: ``deit_tiny_patch16_224.fb_in1k`` -> ``deit_tiny_patch16_224``.

    Tags name weights, not architectures: ratios, plans and adapters are made per architecture.
    """
    return split_model_name_tag(name)[0]


def name_of(model: nn.Module) -> str | None:
    """The timm architecture `model` was created as (its ``pretrained_cfg``), or None for a hand-built one."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    architecture = cfg.get("architecture") if isinstance(cfg, dict) else None
    return architecture if isinstance(architecture, str) and architecture else None


def resolve_name(model: nn.Module, name: str | None = None, model_kwargs: dict | None = None) -> str:
    """The architecture name to record for `model`: `name` if given and it fits, else the model's own.

    A wrong name is refused here, not trusted: a plan records it, and ``load``
    rebuilds *that* architecture, cut to the plan's widths.  Cut to the same
    widths, DeiT-S's weights would even load into a DeiT-T plan (6 heads instead
    of 3, same shapes).  A timm model knows its architecture (``pretrained_cfg``),
    and the name must be that one, tag aside.  A model that does not (built by
    hand) is compared parameter by parameter with the named architecture built
    with `model_kwargs` on the meta device (no memory, ~0.1 s).
    """
    own = name_of(model)
    if name is None:
        if own is None:
            raise PlanError(f"cannot tell which timm model this {type(model).__name__} is (it has no "
                            "pretrained_cfg): pass its timm name, e.g. model_name='deit_tiny_patch16_224'")
        return own
    if not timm.is_model(name):
        create(name)  # raises the UnknownModelError with its suggestions
    if own is not None:
        if base_name(own) != base_name(name):
            raise PlanError(f"model name {name!r} does not match the model, a {own!r}: pass {own!r} or leave the "
                            "name out")
        return name
    with torch.device("meta"):
        reference = timm.create_model(name, pretrained=False, **(model_kwargs or {}))
    theirs = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if theirs != ours:
        key = next((k for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k)))
        kwargs = f" with model_kwargs {model_kwargs}" if model_kwargs else ""
        raise PlanError(f"model name {name!r}{kwargs} does not match the model: {key} is "
                        f"{list(ours[key]) if key in ours else 'missing'} in the model but "
                        f"{list(theirs[key]) if key in theirs else 'missing'} in {name!r}; pass the model's own "
                        "name and the model_kwargs it was created with")
    return name


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
