"""Corpora and the readers that build them. ``Corpus``, ``CorpusError`` and ``make_posts`` are
imported on first use, so light modules of this package (``layouts``) load without pandas."""

__all__ = ["Corpus", "CorpusError", "make_posts"]


def __getattr__(name: str):
    if name in __all__:
        from mmsocial.data import corpus

        return getattr(corpus, name)
    raise AttributeError(f"module 'mmsocial.data' has no attribute {name!r}")
