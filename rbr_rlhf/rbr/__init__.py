"""The Rule-Based Reward: features, the linear model, weight fitting."""

from .features import FeatureSpec, GradedCompletion, feature_spec, features_from_probs, grade_completions
from .fit import Comparison, FitConfig, error_rate, fit_rbr
from .model import RBRWeights

__all__ = ["Comparison", "FeatureSpec", "FitConfig", "GradedCompletion", "RBRWeights", "error_rate",
           "feature_spec", "features_from_probs", "fit_rbr", "grade_completions"]
