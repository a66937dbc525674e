from mmsocial.data.corpus import Corpus, CorpusError, make_posts

__all__ = ["Corpus", "CorpusError", "make_posts"]
