"""A synthetic social corpus of any size from a seed (DESIGN.md, data model).

Each post's image holds 1-4 objects at known boxes. Every object class has its own shape,
texture and two-colour palette, so a CNN can tell classes apart and tests can check that
attention looks at the right regions. Tags and a caption are derived from the objects, users
have Dirichlet interest profiles over the classes (a post's objects are drawn from its
author's profile), and popularity log2(views/days + 1) is a known function of the user, the
content and the text plus noise (the model is stored in ``meta["synthetic"]["popularity"]``).
Links follow DMAN's label rule (:func:`mmsocial.data.graph.label_link_pairs`).
With ``captions_per_post = N > 0`` a ``captions`` list column holds N different sentences per post
describing its objects (image-text matching with several captions per image, as Flickr30K/COCO have);
they are drawn from a random generator of their own, so every other column is the same with or without them.

Metadata is generated with vectorised NumPy, so a million posts need no image in memory:
with ``write_images=False`` a post's image is ``synth:<post_id>`` and
:func:`render_post_image` draws it on demand from the stored ``objects`` column, which is a
JSON string ``[{"label": "cat", "box": [x0, y0, x1, y1], "color": "orange"}, ...]`` (pixel
coordinates at ``image_size``, x1/y1 exclusive; boxes never overlap).
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mmsocial.data.corpus import Corpus, save_new_corpus
from mmsocial.data.graph import label_link_pairs
from mmsocial.io import atomic_open
from mmsocial.data.splits import random_split

# name, superclass, shape, texture, palette, related tags, content popularity
CLASSES = (
    ("cat", "animal", "disc", "hstripes", ("orange", "grey"), ("kitten", "pet", "whiskers"), 1.0),
    ("dog", "animal", "square", "checker", ("brown", "black"), ("puppy", "pet", "walk"), 0.9),
    ("car", "vehicle", "square", "solid", ("red", "blue"), ("road", "drive", "wheels"), 0.4),
    ("tree", "nature", "triangle", "hstripes", ("green", "brown"), ("forest", "leaves", "park"), -0.2),
    ("bird", "animal", "triangle", "solid", ("blue", "yellow"), ("wings", "sky", "feathers"), 0.2),
    ("flower", "nature", "disc", "solid", ("pink", "purple"), ("garden", "bloom", "spring"), 0.5),
    ("boat", "vehicle", "triangle", "vstripes", ("navy", "red"), ("sea", "sailing", "harbor"), 0.1),
    ("sun", "nature", "disc", "checker", ("yellow", "orange"), ("sunny", "summer", "sky"), 0.6),
    ("fish", "animal", "diamond", "vstripes", ("teal", "orange"), ("ocean", "aquarium", "swim"), -0.2),
    ("cake", "food", "diamond", "hstripes", ("pink", "yellow"), ("birthday", "dessert", "sweet"), 0.4),
    ("horse", "animal", "cross", "solid", ("brown", "black"), ("riding", "farm", "stable"), 0.3),
    ("plane", "vehicle", "diamond", "checker", ("grey", "blue"), ("flight", "airport", "travel"), 0.3),
    ("pizza", "food", "disc", "vstripes", ("orange", "red"), ("dinner", "cheese", "yummy"), 0.6),
    ("bicycle", "vehicle", "cross", "hstripes", ("green", "black"), ("cycling", "ride", "bike"), -0.1),
    ("mountain", "nature", "triangle", "checker", ("grey", "brown"), ("hiking", "landscape", "snow"), 0.7),
    ("cup", "home", "square", "hstripes", ("blue", "teal"), ("coffee", "tea", "morning"), -0.4),
    ("book", "home", "diamond", "solid", ("red", "purple"), ("reading", "library", "story"), -0.3),
    ("train", "vehicle", "square", "vstripes", ("red", "black"), ("railway", "station", "travel"), -0.3),
    ("chair", "home", "cross", "checker", ("brown", "green"), ("furniture", "room", "wood"), -0.6),
    ("clock", "home", "cross", "vstripes", ("black", "grey"), ("time", "watch", "hour"), -0.5),
)
COLORS = {
    "red": (220, 40, 40), "orange": (245, 140, 20), "yellow": (240, 210, 30), "green": (40, 160, 60),
    "teal": (20, 150, 150), "blue": (40, 80, 220), "navy": (20, 30, 110), "purple": (130, 50, 170),
    "pink": (240, 110, 170), "brown": (130, 80, 40), "black": (25, 25, 25), "grey": (120, 120, 120),
}
SHAPES = ("disc", "square", "triangle", "diamond", "cross")
TEXTURES = ("solid", "hstripes", "vstripes", "checker")
NOISE_TAGS = ("photo", "nikon", "canon", "love", "instagood", "travel", "art", "friends", "fun",
              "bw", "2016", "happy", "weekend", "me", "family", "color", "light", "day", "life", "cool")
HOT_WORDS = ("amazing", "cute", "beautiful")
PREFIXES = ("", "", "look at ", "my photo of ", "just saw ", "here is ", "spotted ")
PLACES = ("", "", " today", " in the park", " at sunset", " this morning", " on my way home",
          " in the city", " by the lake")
CAPTION_PREFIXES = ("", "a photo of ", "a picture of ", "an image with ", "there is ", "we can see ",
                    "look at ", "here is ", "this shows ", "a drawing of ")
CAPTION_PLACES = ("", "", " today", " in the park", " at sunset", " this morning", " in the city",
                  " by the lake", " on a sunny day", " at home", " outside")
CAPTION_JOINERS = (" and ", " with ", " next to ", " beside ")
CAPTION_STREAM = 0xCA9  # the captions' random generator: np.random.default_rng([seed, CAPTION_STREAM])
HOT_SUFFIXES = tuple(f" so {w}!" if w == "cute" else f" {w}!" for w in HOT_WORDS)
START_TIME = 1451606400.0  # 2016-01-01 00:00 UTC

# popularity y = user base + CONTENT_WEIGHT * mean class popularity + text terms + noise
CONTENT_WEIGHT = 1.0
WORD_WEIGHT = 0.05
HOT_WORD_BONUS = 0.5
NOISE_STD = 0.4


@dataclass
class SyntheticConfig:
    posts: int = 2000
    seed: int = 0
    users: int | None = None              # default posts // 20, at least 2
    image_size: int = 224
    write_images: bool = True
    n_classes: int = 20                   # the first n of CLASSES
    min_objects: int = 1
    max_objects: int = 4
    interest_concentration: float = 0.3   # Dirichlet alpha of the user interest profiles
    missing_text: float = 0.05            # fraction of posts without text
    missing_user: float = 0.02            # fraction of posts without a recorded author
    max_links_per_node: int = 50          # DMAN §4.1
    split_fractions: dict = field(default_factory=lambda: {"train": 0.7, "val": 0.1, "test": 0.2})
    span_days: float = 365.0
    workers: int = 2                      # processes that write PNG files
    name: str = "synthetic"
    captions_per_post: int = 0            # > 0: a `captions` column with this many sentences per post

    def n_users(self) -> int:
        return self.users if self.users is not None else max(2, self.posts // 20)

    def check(self) -> None:
        def bad(msg):
            raise ValueError(f"SyntheticConfig: {msg}")
        if self.posts < 10:
            bad(f"posts must be at least 10 (a corpus needs train, val and test posts), got {self.posts}")
        if self.n_users() < 1:
            bad(f"users must be >= 1, got {self.users}")
        if self.image_size < 32:
            bad(f"image_size must be >= 32 pixels, got {self.image_size}")
        if not 2 <= self.n_classes <= len(CLASSES):
            bad(f"n_classes must be in [2, {len(CLASSES)}], got {self.n_classes}")
        if not 1 <= self.min_objects <= self.max_objects <= 4:
            bad(f"need 1 <= min_objects <= max_objects <= 4, got {self.min_objects}, {self.max_objects}")
        if self.interest_concentration <= 0:
            bad(f"interest_concentration must be > 0, got {self.interest_concentration}")
        for f in ("missing_text", "missing_user"):
            if not 0 <= getattr(self, f) < 1:
                bad(f"{f} must be in [0, 1), got {getattr(self, f)}")
        if self.max_links_per_node < 1:
            bad(f"max_links_per_node must be >= 1, got {self.max_links_per_node}")
        if self.span_days <= 0:
            bad(f"span_days must be > 0, got {self.span_days}")
        if self.workers < 1:
            bad(f"workers must be >= 1, got {self.workers}")
        if not 0 <= self.captions_per_post <= 20:
            bad(f"captions_per_post must be in [0, 20], got {self.captions_per_post}")


def make_synthetic_corpus(cfg: SyntheticConfig, out: str | os.PathLike | None = None) -> Corpus:
    """Generate the corpus; with ``out`` it is saved there (PNG files too when write_images)."""
    cfg.check()
    if cfg.write_images and out is None:
        raise ValueError("write_images=True needs an output folder (out=...); "
                         "or set write_images=False to render images on demand")
    rng = np.random.default_rng(cfg.seed)
    n, n_users, C = cfg.posts, cfg.n_users(), cfg.n_classes
    classes = CLASSES[:C]
    width = max(6, len(str(n - 1)))
    post_ids = np.array([f"s{i:0{width}d}" for i in range(n)], dtype=object)
    user_ids = np.array([f"u{j:0{max(5, len(str(n_users - 1)))}d}" for j in range(n_users)], dtype=object)

    # users: interest profiles, activity, base popularity
    interests = rng.dirichlet(np.full(C, cfg.interest_concentration), size=n_users)
    activity = rng.lognormal(0.0, 1.0, n_users)
    base_popularity = rng.normal(2.5, 0.8, n_users)
    author = rng.choice(n_users, size=n, p=activity / activity.sum())

    # objects: count, class from the author's profile, colour, box
    k_range = np.arange(cfg.min_objects, cfg.max_objects + 1)
    k_prob = 0.7 ** np.arange(len(k_range))
    n_obj = rng.choice(k_range, size=n, p=k_prob / k_prob.sum())
    off = np.r_[0, np.cumsum(n_obj)]
    obj_post = np.repeat(np.arange(n), n_obj)
    slot = np.arange(len(obj_post)) - off[obj_post]
    cum = np.cumsum(interests, axis=1)
    cum[:, -1] = 1.0
    cum_flat = (cum + np.arange(n_users)[:, None]).ravel()
    a = author[obj_post]
    obj_class = np.searchsorted(cum_flat, a + rng.random(len(obj_post)), side="right") - a * C
    obj_class = np.clip(obj_class, 0, C - 1)
    obj_color = rng.integers(0, 2, len(obj_post))
    boxes = _boxes(n_obj, obj_post, slot, cfg.image_size, rng)

    # text
    has_text = rng.random(n) >= cfg.missing_text
    prefix = rng.integers(0, len(PREFIXES), n)
    place = rng.integers(0, len(PLACES), n)
    hot = np.where(rng.random(n) < 0.3, rng.integers(0, len(HOT_WORDS), n), -1)
    names = [c[0] for c in classes]
    phrase = [[f"{'an' if col[0] in 'aeiou' else 'a'} {col} {c[0]}" for col in c[4]] for c in classes]
    head = [[f'{{"label": "{c[0]}", "box": [' for _ in c[4]] for c in classes]
    tail = [[f'], "color": "{col}"}}' for col in c[4]] for c in classes]
    texts, objects = [], []
    oc, ol, bx = obj_class.tolist(), obj_color.tolist(), boxes.tolist()
    bounds, keep_text = off.tolist(), has_text.tolist()
    prefix, place, hot_l = prefix.tolist(), place.tolist(), hot.tolist()
    for i in range(n):
        span = range(bounds[i], bounds[i + 1])
        objects.append("[" + ", ".join(head[oc[j]][ol[j]] + ", ".join(map(str, bx[j])) + tail[oc[j]][ol[j]]
                                       for j in span) + "]")
        if not keep_text[i]:
            texts.append(None)
            continue
        phrases = [phrase[oc[j]][ol[j]] for j in span]
        body = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
        texts.append(PREFIXES[prefix[i]] + body + PLACES[place[i]]
                     + (HOT_SUFFIXES[hot_l[i]] if hot_l[i] >= 0 else ""))
    n_words = np.array([len(t.split()) if t else 0 for t in texts], dtype=float)

    # tags and labels
    tag_lists, label_lists, super_lists, pc = _tags_and_labels(
        classes, obj_post, obj_class, obj_color, n, rng)

    # popularity: y = log2(views / days + 1)
    class_pop = np.array([c[6] for c in classes])
    content = np.bincount(obj_post, weights=class_pop[obj_class], minlength=n) / n_obj
    text_term = np.where(has_text, WORD_WEIGHT * n_words + HOT_WORD_BONUS * (hot >= 0), 0.0)
    y = base_popularity[author] + CONTENT_WEIGHT * content + text_term + rng.normal(0, NOISE_STD, n)
    y = np.maximum(y, 0.0)
    ts = START_TIME + np.sort(rng.random(n)) * cfg.span_days * 86400.0
    days = (START_TIME + (cfg.span_days + 30) * 86400.0 - ts) / 86400.0
    views = np.round(days * (np.exp2(y) - 1.0))

    has_user = rng.random(n) >= cfg.missing_user
    if cfg.write_images:
        images = np.array([f"images/{i // 1000:04d}/{p}.png" for i, p in enumerate(post_ids)], dtype=object)
    else:
        images = np.array([f"synth:{p}" for p in post_ids], dtype=object)
    columns = {
        "post_id": post_ids, "user_id": np.where(has_user, user_ids[author], None),
        "image": images, "text": texts, "tags": tag_lists, "labels": label_lists,
        "timestamp": ts, "views": views, "days": days, "split": None,
        "objects": objects, "superclasses": super_lists,
    }
    if cfg.captions_per_post:
        columns["captions"] = _captions([c[0] for c in classes], [c[4] for c in classes], oc, ol, bounds,
                                        cfg.captions_per_post, np.random.default_rng([cfg.seed, CAPTION_STREAM]))
    # object columns stay object (pandas would infer Arrow strings and iterate them slowly)
    posts = pd.DataFrame({k: v if isinstance(v, np.ndarray) and v.dtype != object
                          else pd.Series(v if v is not None else [None] * n, dtype=object)
                          for k, v in columns.items()})
    users = pd.DataFrame({
        "user_id": user_ids, "name": [f"user{j}" for j in range(n_users)],
        "interests": list(interests), "base_popularity": base_popularity,
    })
    src, dst = label_link_pairs(pc // C, pc % C, n, cfg.max_links_per_node, cfg.seed)
    links = _links_frame(post_ids, src, dst)
    meta = {
        "name": cfg.name,
        "provenance": f"mmsocial.data.synthetic seed={cfg.seed}",
        "vocabularies": {"labels": names},
        "synthetic": {
            "config": asdict(cfg), "image_size": cfg.image_size, "seed": cfg.seed,
            "classes": [{"name": c[0], "superclass": c[1], "shape": c[2], "texture": c[3],
                         "colors": list(c[4]), "related_tags": list(c[5]), "popularity": c[6]}
                        for c in classes],
            "colors": {k: list(v) for k, v in COLORS.items()},
            "popularity": {
                "target": "log2(views / days + 1)",
                "formula": "users.base_popularity + content_weight * mean class popularity of the "
                           "objects + word_weight * words + hot_word_bonus * [a hot word] + N(0, noise_std), "
                           "clipped at 0; text terms are 0 for posts without text",
                "content_weight": CONTENT_WEIGHT, "word_weight": WORD_WEIGHT,
                "hot_words": list(HOT_WORDS), "hot_word_bonus": HOT_WORD_BONUS, "noise_std": NOISE_STD,
            },
        },
    }
    corpus = Corpus(posts, users, links, meta)
    corpus.posts["split"] = pd.Series(random_split(corpus, cfg.split_fractions, cfg.seed), dtype=object)
    if out is not None:  # a new or empty folder only; built beside it and renamed when complete
        fill = (lambda tmp: write_images(corpus, tmp, workers=cfg.workers)) if cfg.write_images else None
        save_new_corpus(corpus, out, fill)
    return corpus


def _captions(names, palettes, obj_class: list, obj_color: list, bounds: list, k: int, rng) -> list[list[str]]:
    """``k`` different sentences per post naming each of its objects with its colour: a random order of
    the objects, one of four phrasings, a prefix, a joiner and a place. Drawn in bulk (``2k`` candidates a
    post), then one at a time for the rare post whose candidates repeat."""
    def article(word):
        return "an" if word[0] in "aeiou" else "a"

    def phrase(style, c, col):
        name, colour = names[c], palettes[c][col]
        return (f"{article(colour)} {colour} {name}", f"{article(name)} {name} in {colour}",
                f"one {colour} {name}", f"the {colour} {name}")[style]

    def sentence(objs, style, prefix, joiner, place, keys):
        parts = [phrase(style, c, col) for _, c, col in sorted(zip(keys, *zip(*objs)))]
        if len(parts) == 1:
            body = parts[0]
        elif joiner == 0:
            body = ", ".join(parts[:-1]) + " and " + parts[-1]
        else:
            body = parts[0] + CAPTION_JOINERS[joiner] + (parts[1] if len(parts) == 2 else
                                                         ", ".join(parts[1:-1]) + " and " + parts[-1])
        return CAPTION_PREFIXES[prefix] + body + CAPTION_PLACES[place]

    n, m = len(bounds) - 1, 2 * k
    style, prefix = rng.integers(0, 4, (n, m)).tolist(), rng.integers(0, len(CAPTION_PREFIXES), (n, m)).tolist()
    joiner, place = (rng.integers(0, len(CAPTION_JOINERS), (n, m)).tolist(),
                     rng.integers(0, len(CAPTION_PLACES), (n, m)).tolist())
    order = rng.random((n, m, 4)).tolist()
    out = []
    for i in range(n):
        objs = [(obj_class[j], obj_color[j]) for j in range(bounds[i], bounds[i + 1])]
        caps: dict[str, None] = {}
        for t in range(m):
            if len(caps) == k:
                break
            caps.setdefault(sentence(objs, style[i][t], prefix[i][t], joiner[i][t], place[i][t], order[i][t]))
        while len(caps) < k:
            caps.setdefault(sentence(objs, int(rng.integers(0, 4)), int(rng.integers(0, len(CAPTION_PREFIXES))),
                                     int(rng.integers(0, len(CAPTION_JOINERS))),
                                     int(rng.integers(0, len(CAPTION_PLACES))), rng.random(4).tolist()))
        out.append(list(caps))
    return out


def _links_frame(post_ids, src, dst) -> pd.DataFrame:
    """Links as Arrow-backed string columns, gathered in C++ (20M links for 1M posts)."""
    import pyarrow as pa

    ids = pa.array(post_ids, type=pa.string())
    dtype = pd.StringDtype("pyarrow", na_value=np.nan)
    kind = pa.DictionaryArray.from_arrays(pa.array(np.zeros(len(src), dtype=np.int32)),
                                          pa.array(["label"])).cast(pa.string())
    return pd.DataFrame({"src": pd.Series(ids.take(pa.array(src)), dtype=dtype),
                         "dst": pd.Series(ids.take(pa.array(dst)), dtype=dtype),
                         "kind": pd.Series(kind, dtype=dtype)})


def _boxes(n_obj, obj_post, slot, size, rng) -> np.ndarray:
    """Non-overlapping boxes: 1 object anywhere, 2 in two halves, 3-4 in distinct quadrants."""
    cells = np.array([  # layout -> up to 4 cells (x0, y0, x1, y1) in unit coordinates
        [[0, 0, 1, 1]] * 4,
        [[0, 0, .5, 1], [.5, 0, 1, 1]] * 2,
        [[0, 0, 1, .5], [0, .5, 1, 1]] * 2,
        [[0, 0, .5, .5], [.5, 0, 1, .5], [0, .5, .5, 1], [.5, .5, 1, 1]],
    ])
    n = len(n_obj)
    layout = np.where(n_obj == 1, 0, np.where(n_obj == 2, 1 + rng.integers(0, 2, n), 3))
    order = np.argsort(rng.random((n, 4)), axis=1)
    order2 = np.argsort(rng.random((n, 2)), axis=1)
    lay = layout[obj_post]
    cell_idx = np.where(lay == 3, order[obj_post, slot], order2[obj_post, np.minimum(slot, 1)])
    cell_idx = np.where(lay == 0, 0, cell_idx)
    c = cells[lay, cell_idx] * size
    cw, ch = c[:, 2] - c[:, 0], c[:, 3] - c[:, 1]
    m = len(obj_post)
    frac = np.where(lay == 0, rng.uniform(0.4, 0.8, m), rng.uniform(0.55, 0.95, m))
    side = frac * np.minimum(cw, ch)
    aspect = np.exp(rng.uniform(-0.25, 0.25, m))
    w, h = np.minimum(side * aspect, cw), np.minimum(side / aspect, ch)
    x0 = c[:, 0] + rng.random(m) * (cw - w)
    y0 = c[:, 1] + rng.random(m) * (ch - h)
    x0, y0 = np.floor(x0), np.floor(y0)
    x1 = np.minimum(np.maximum(x0 + np.round(w), x0 + 2), np.floor(c[:, 2]))
    y1 = np.minimum(np.maximum(y0 + np.round(h), y0 + 2), np.floor(c[:, 3]))
    return np.stack([x0, y0, x1, y1], axis=1).astype(np.int64)


def _tags_and_labels(classes, obj_post, obj_class, obj_color, n, rng):
    """Tags: object names (each kept with p 0.9), related words (p 0.25 each), the superclass
    (p 0.3), colour words (p 0.2 per object) and Poisson(0.7) random noise tags."""
    C = len(classes)
    supers = sorted({c[1] for c in classes})
    words: dict[str, int] = {}
    def tok(w):
        return words.setdefault(w, len(words))
    name_tok = np.array([tok(c[0]) for c in classes])
    related_tok = np.array([[tok(r) for r in c[5]] for c in classes])
    super_of = np.array([supers.index(c[1]) for c in classes])
    super_tok = np.array([tok(s) for s in supers])
    color_tok = np.array([[tok(p) for p in c[4]] for c in classes])
    noise_tok = np.array([tok(w) for w in NOISE_TAGS])
    vocab = np.array(list(words), dtype=object)
    V = len(vocab)

    pc = _unique(obj_post * C + obj_class)               # (post, class) pairs
    p_post, p_class = pc // C, pc % C
    ps = _unique(p_post * len(supers) + super_of[p_class])  # (post, superclass) pairs
    parts = []
    keep = rng.random(len(pc)) < 0.9
    parts.append(p_post[keep] * V + name_tok[p_class[keep]])
    r_keep = rng.random((len(pc), related_tok.shape[1])) < 0.25
    rp, rr = np.nonzero(r_keep)
    parts.append(p_post[rp] * V + related_tok[p_class[rp], rr])
    keep = rng.random(len(ps)) < 0.3
    parts.append((ps // len(supers))[keep] * V + super_tok[(ps % len(supers))[keep]])
    keep = rng.random(len(obj_post)) < 0.2
    parts.append(obj_post[keep] * V + color_tok[obj_class[keep], obj_color[keep]])
    n_noise = rng.poisson(0.7, n)
    parts.append(np.repeat(np.arange(n), n_noise) * V + noise_tok[rng.integers(0, len(noise_tok), n_noise.sum())])
    tags = _unique(np.concatenate(parts))

    names = np.array([c[0] for c in classes], dtype=object)
    tag_lists = _group(tags // V, vocab[tags % V], n)
    label_lists = _group(p_post, names[p_class], n)
    super_lists = _group(ps // len(supers), np.array(supers, dtype=object)[ps % len(supers)], n)
    return tag_lists, label_lists, super_lists, pc


def _unique(a: np.ndarray) -> np.ndarray:
    a = np.sort(a)
    return a[np.r_[True, a[1:] != a[:-1]]] if len(a) else a


def _group(owner: np.ndarray, values: np.ndarray, n: int) -> list[list]:
    """Lists of ``values`` per owner 0..n-1 (``owner`` sorted)."""
    bounds = np.searchsorted(owner, np.arange(n + 1)).tolist()
    values = values.tolist()
    return [values[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


# ---------------------------------------------------------------------------- images
def _spec(meta: dict) -> dict:
    spec = (meta or {}).get("synthetic")
    if not spec or "classes" not in spec:
        raise ValueError("this corpus has no synthetic generator spec in meta.json (key 'synthetic'); "
                         "synth: images can only be rendered for corpora made by `mmsocial data synthetic`")
    return spec


def render_post_image(row, meta: dict):
    """The post's image (RGB PIL, image_size square) drawn from its ``objects``, deterministically."""
    from PIL import Image

    return Image.fromarray(render_array(row["post_id"], row["objects"], _spec(meta)))


def render_array(post_id: str, objects, spec: dict) -> np.ndarray:
    """(S, S, 3) uint8: a light background with a gradient, each object as its class's textured shape."""
    if isinstance(objects, str):
        objects = json.loads(objects)
    size = int(spec["image_size"])
    by_name = {c["name"]: c for c in spec["classes"]}
    colors = spec["colors"]
    rs = np.random.default_rng([int(spec.get("seed", 0)), zlib.crc32(str(post_id).encode())])
    img = np.empty((size, size, 3), dtype=np.float32)
    img[:] = rs.integers(190, 246, 3)
    ramp = np.linspace(-10, 10, size, dtype=np.float32)
    img += ramp[:, None, None] * rs.uniform(-1, 1) + ramp[None, :, None] * rs.uniform(-1, 1)
    half = max(2, size // 56)  # stripe / checker half-period: 4 px at 224
    for obj in objects:
        cls = by_name.get(obj["label"])
        if cls is None:
            raise ValueError(f"post {post_id!r}: object label {obj['label']!r} is not a class of this "
                             f"corpus (field 'objects')")
        x0, y0, x1, y1 = (int(v) for v in obj["box"])
        if not (0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size):
            raise ValueError(f"post {post_id!r}: box {obj['box']} lies outside the {size}px image "
                             f"(field 'objects')")
        yy, xx = np.mgrid[y0:y1, x0:x1]
        u = (xx + 0.5 - x0) / (x1 - x0) - 0.5
        v = (yy + 0.5 - y0) / (y1 - y0) - 0.5
        mask = _shape_mask(cls["shape"], u, v)
        pattern = _texture(cls["texture"], xx, yy, half)
        rgb = np.asarray(colors[obj.get("color") or cls["colors"][0]], dtype=np.float32)
        dark = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32) < 80
        second = rgb + (255 - rgb) * 0.45 if dark else rgb * 0.45  # stripes stay visible on black
        patch = np.where(pattern[..., None], second, rgb)
        region = img[y0:y1, x0:x1]
        region[mask] = patch[mask]
    return np.clip(img, 0, 255).astype(np.uint8)


def _shape_mask(shape, u, v):
    """Masks in box coordinates u, v in (-0.5, 0.5); every shape covers the box centre."""
    if shape == "disc":
        return u * u + v * v <= 0.25
    if shape == "square":
        return np.ones(u.shape, dtype=bool)
    if shape == "triangle":  # apex at the top middle, base at the bottom
        return np.abs(u) <= (v + 0.5) / 2
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 0.5
    if shape == "cross":
        return (np.abs(u) <= 1 / 6) | (np.abs(v) <= 1 / 6)
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def _texture(texture, xx, yy, half):
    if texture == "solid":
        return np.zeros(xx.shape, dtype=bool)
    if texture == "hstripes":
        return (yy // half) % 2 == 1
    if texture == "vstripes":
        return (xx // half) % 2 == 1
    if texture == "checker":
        return (xx // half + yy // half) % 2 == 1
    raise ValueError(f"unknown texture {texture!r}; known: {TEXTURES}")


def _write_one(job):
    post_id, objects, spec, path = job
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        Image.fromarray(render_array(post_id, objects, spec)).save(f, format="PNG")
    return post_id


def write_images(corpus: Corpus, out: str | os.PathLike, workers: int = 2) -> None:
    """Render every post's image to ``out/<posts.image>`` (PNG), with a progress bar."""
    from tqdm import tqdm

    out, spec = Path(out), _spec(corpus.meta)
    p = corpus.posts
    jobs = [(pid, obj, spec, out / img) for pid, obj, img in zip(p["post_id"], p["objects"], p["image"])]
    bar = dict(total=len(jobs), desc="rendering images", unit="img", disable=len(jobs) < 200)
    if workers <= 1 or len(jobs) < 200:
        for job in tqdm(jobs, **bar):
            _write_one(job)
        return
    import multiprocessing as mp

    with mp.get_context("fork").Pool(workers) as pool:
        for _ in tqdm(pool.imap_unordered(_write_one, jobs, chunksize=64), **bar):
            pass
