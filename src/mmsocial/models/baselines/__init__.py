"""Baselines shared by several systems' tables."""

from mmsocial.models.baselines.averaging import average_by_user
from mmsocial.models.baselines.cca import CCA, DCCA, KCCA, MultiViewCCA, cca_correlation
from mmsocial.models.baselines.dual_encoder import DualEncoder
from mmsocial.models.baselines.semantic_matching import DeepSemanticMatching, SemanticMatching

__all__ = ["CCA", "KCCA", "DCCA", "MultiViewCCA", "cca_correlation", "average_by_user", "SemanticMatching",
           "DeepSemanticMatching", "DualEncoder"]
