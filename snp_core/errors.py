"""Errors the user can act on.

Every error raised for bad input is a `SNPError` whose message is one line that
names the bad value and says what is accepted. The command line prints that line
and exits with status 2; library users can catch `SNPError`.
"""


class SNPError(ValueError):
    """Base class: bad input to snp_core (model, ratios, calibration, plan)."""


class UnknownModelError(SNPError):
    """The model name is not a timm model."""


class UnsupportedModelError(SNPError):
    """The model exists but no adapter knows how to prune its family."""


class RatioError(SNPError):
    """A ratio is out of range, removes a whole layer, or names an unknown layer."""


class CalibrationError(SNPError):
    """Calibration images could not be found or read."""


class PlanError(SNPError):
    """A pruning plan (or its weights) is missing, corrupt or does not fit the model."""
