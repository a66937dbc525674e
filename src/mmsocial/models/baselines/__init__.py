"""Baselines shared by several systems' tables."""

from mmsocial.models.baselines.cca import CCA, DCCA, KCCA, cca_correlation
from mmsocial.models.baselines.dual_encoder import DualEncoder

__all__ = ["CCA", "KCCA", "DCCA", "cca_correlation", "DualEncoder"]
