"""Evaluation protocols: one module per paper (``protocols/<system>.py``), one function per table.

Each module builds its paper's empty tables (``ResultTable`` with the paper's metric columns) and
the functions that fill one row of them from embeddings or predictions. Metrics come from
``mmsocial.eval.metrics`` (chunked, tested against independent implementations); evaluators that
train something (the FC classifier, the linear SVM) come from ``mmsocial.eval.probes``.
"""
