"""Privacy analyses on top of certify/predict: Robust Attribute Privacy (compatible sets) and bounds."""

from rpdist.privacy.adversary import restricted_mean
from rpdist.privacy.rap import attribute_grid, compatible_set, containment, rap_analysis, resolve_attribute, summarize
from rpdist.privacy.runner import RapSpec, run_rap

__all__ = ["restricted_mean", "attribute_grid", "compatible_set", "containment", "rap_analysis",
           "resolve_attribute", "summarize", "RapSpec", "run_rap"]
