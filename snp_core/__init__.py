"""snp_core: SNP (Structured Neuron-level Pruning, ECCV 2024) for timm Vision Transformers.

Typical use (docs/api.md has more, each example run by the tests)::

    import snp_core
    pruned, plan = snp_core.compress("deit_tiny_patch16_224", ratios="paper", calib="imagenet/train",
                                     weights="pretrained")
    snp_core.save("out", pruned, plan)
    again = snp_core.load("out")          # plan.json + model.safetensors, no pickles

Step by step (what `compress` does)::

    model = snp_core.create("deit_tiny_patch16_224", weights="pretrained")
    calib = snp_core.calibration.load("imagenet/train", model, num_images=64)
    plan = snp_core.make_plan(model, ratios="paper", criterion="snp", images=calib.images,
                              calibration_info=calib.info())
    pruned = snp_core.prune(model, plan)
"""

from . import calibration, models, ratios
from .adapters import ADAPTERS, ATTENTION_KERNELS, PrunedAttention, adapter_for, attention_kernel
from .compress import Compressed, compress
from .errors import (CalibrationError, PlanError, RatioError, SNPError, UnknownModelError,
                     UnsupportedModelError)
from .flops import count_macs, count_params
from .head_importance import HEAD_CRITERIA, HeadImportance, get_head_criterion
from .importance import CRITERIA, Importance, criterion_from_options, get_criterion
from .models import create
from .plan import Plan
from .pruner import kept_widths, load, make_plan, prune, save, score_groups, select, summary

__version__ = "0.1.0"

__all__ = [
    "ADAPTERS", "ATTENTION_KERNELS", "CRITERIA", "CalibrationError", "Compressed", "HEAD_CRITERIA", "HeadImportance", "Importance", "Plan", "PlanError",
    "PrunedAttention", "RatioError", "SNPError", "UnknownModelError", "UnsupportedModelError", "adapter_for",
    "attention_kernel",
    "calibration", "compress", "count_macs", "count_params", "create", "criterion_from_options", "get_criterion",
    "get_head_criterion", "kept_widths", "load", "make_plan", "models", "prune", "ratios", "save", "score_groups",
    "select", "summary",
]
