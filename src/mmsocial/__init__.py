"""mmsocial: learning from social multimedia (DMAN, DU2MCE, EISR, BSSAN, UHAN)."""

__version__ = "0.1.0"
