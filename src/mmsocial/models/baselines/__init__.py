"""Baselines shared by several systems' tables."""

from mmsocial.models.baselines.averaging import average_by_user
from mmsocial.models.baselines.cca import CCA, DCCA, KCCA, cca_correlation

__all__ = ["CCA", "KCCA", "DCCA", "cca_correlation", "average_by_user"]
