"""Does DMAN's visual-textual attention (Eq. 5-8) look at the object a tag names?

On a synthetic corpus (objects at known boxes), for every test post and every object whose class
name is in the tag vocabulary, take the attention map of that word over the region grid and check
whether the argmax region's centre lies inside the object's ground-truth box ("pointing accuracy").
Uniform attention would hit the box with probability = the fraction of region centres inside it;
an untrained DMAN (same architecture, random weights) is the second reference.

    .venv/bin/python bench/dman_attention.py --corpus runs/dman/synth2000 --epochs 10
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from mmsocial.data.corpus import Corpus
from mmsocial.experiment import load_corpus
from mmsocial.systems.dman import Config, prepare, train_model
from mmsocial.models.dman import dman


def pointing(model, data, corpus: Corpus, idx: np.ndarray, image_size: int) -> tuple[float, float, int]:
    """(pointing accuracy, uniform expectation, number of (post, object) pairs)."""
    word = {w: k for k, w in enumerate(data.tag_vocabulary)}
    d = data.regions.shape[1]
    g = int(round(np.sqrt(d)))
    if g * g != d:
        raise ValueError(f"regions must form a square grid, got {d}")
    j = np.arange(d)
    centres = np.stack([(j % g + 0.5) / g, (j // g + 0.5) / g], 1)  # row-major grid: (x, y) of region j
    objects = corpus.posts.set_index("post_id").loc[[data.post_ids[i] for i in idx], "objects"].tolist()
    hits, expected, pairs = 0, 0.0, 0
    model.eval()
    for a in range(0, len(idx), 128):
        block = torch.from_numpy(data.region_block(idx[a:a + 128]))
        with torch.no_grad():
            att = model.attention_maps(block).numpy()  # (B, L, D)
        for b, objs in enumerate(objects[a:a + 128]):
            for obj in json.loads(objs):
                k = word.get(obj["label"])
                if k is None:
                    continue
                x0, y0, x1, y1 = (v / image_size for v in obj["box"])
                inside = (centres[:, 0] >= x0) & (centres[:, 0] < x1) & (centres[:, 1] >= y0) & (centres[:, 1] < y1)
                hits += bool(inside[att[b, k].argmax()])
                expected += inside.mean()
                pairs += 1
    return hits / pairs, expected / pairs, pairs


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default="runs/dman/synth2000", help="a synthetic corpus folder")
    p.add_argument("--posts", type=int, default=2000, help="size of the corpus to build if --corpus is missing")
    p.add_argument("--preset", default="small")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default="runs/bench/dman_attention")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 on a busy machine)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = Config(corpus=args.corpus, synthetic={"posts": args.posts}, workdir=args.workdir,
                 preset=args.preset, model={"epochs": args.epochs}, train={"progress": False})
    corpus = load_corpus(cfg)
    if "objects" not in corpus.posts:
        raise SystemExit(f"{args.corpus}: not a synthetic corpus (no 'objects' column with ground-truth boxes)")
    image_size = int(corpus.meta["synthetic"]["image_size"])
    data = prepare(corpus, cfg)
    te = data.idx("test")

    torch.manual_seed(args.seed)
    untrained = dman(args.preset, num_words=data.tags.shape[1], region_dim=data.regions.shape[2])
    acc0, uniform, pairs = pointing(untrained, data, corpus, te, image_size)
    t = time.perf_counter()
    model, _ = train_model(data, "dman", cfg, Path(args.workdir) / "dman", args.seed)
    seconds = time.perf_counter() - t
    acc, _, _ = pointing(model, data, corpus, te, image_size)
    print(f"corpus {args.corpus}: {len(te)} test posts, {pairs} (post, object) pairs with the object's "
          f"name in the tag vocabulary, region grid {data.regions.shape[1]}x{data.regions.shape[2]}")
    print(f"DMAN training: {args.epochs} epochs, {seconds:.0f} s")
    print(f"pointing accuracy  uniform attention (expected) {100 * uniform:5.1f}%")
    print(f"                   untrained DMAN               {100 * acc0:5.1f}%  ({acc0 / uniform:.2f}x uniform)")
    print(f"                   trained DMAN                 {100 * acc:5.1f}%  ({acc / uniform:.2f}x uniform)")


if __name__ == "__main__":
    main()
