import os

os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def tiny_corpus(tmp_path):
    """A 6-post corpus with every modality present on some post and missing on another."""
    from mmsocial.data.corpus import Corpus, make_posts
    import pandas as pd

    posts = make_posts([
        {"post_id": f"p{i}", "user_id": f"u{i % 2}", "text": f"a photo of thing {i}",
         "tags": ["cat", "tree"][: 1 + i % 2], "labels": ["animal"] if i % 2 else ["plant"],
         "timestamp": 1000 + i, "views": 10.0 * i, "days": 1.0 + i}
        for i in range(6)
    ])
    users = pd.DataFrame({"user_id": ["u0", "u1"], "name": ["ann", "bob"]})
    links = pd.DataFrame({"src": ["p0", "p1"], "dst": ["p2", "p3"], "kind": ["label", "label"]})
    c = Corpus(posts, users, links, {"name": "tiny"})
    c.save(tmp_path / "tiny")
    return c
