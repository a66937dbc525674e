"""Does BSSAN's W2R attention (Eq. 1-3) look at the object a caption word names?

On a synthetic corpus (objects at known boxes, captions derived from the objects), for every test
image and every caption word that is the class name of one of its objects, take the attention of that
word over the region grid and check whether the argmax region's centre lies inside that object's
ground-truth box ("pointing accuracy"; a word naming two objects of the image counts a hit on either).
Uniform attention hits with probability = the fraction of region centres inside the box(es); an
untrained BSSAN (same architecture, random weights) is the second reference. (As bench/dman_attention.py.)

    PYTHONPATH=src python bench/bssan_attention.py --corpus /work/data/synthetic \\
        --objects /work/runs/s4-bssan/synthetic-objects --run RUN/BSSAN_w2r-seed0/bssan
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch

from mmsocial.data.corpus import Corpus
from mmsocial.models.bssan import BSSAN
from mmsocial.systems import bssan as S


def pointing(model, data, corpus: Corpus, imgs: np.ndarray, image_size: int) -> dict[str, float]:
    """Over every (test image, caption word naming one of its objects): how often the argmax (and the
    argmin) region lies inside the named object's box, the attention mass inside it, what uniform attention
    gives for both (the share of region centres inside), the mass on the image's other objects (and their
    share), how peaked the attention is (the largest weight and the entropy, averaged over every word of the
    captions) and how many of Eq. 2's logits lie where tanh is flat (|z| > 2, tanh' < 0.07). Two controls
    tell pointing at the named object from attention that goes to objects whatever the word: how often the
    argmax lies on another object of the image instead (images with several objects), and how often the
    argmax of a word that names no object lies on some object."""
    d = data.regions.shape[1]
    g = int(round(np.sqrt(d)))
    j = np.arange(d)
    centres = np.stack([(j % g + 0.5) / g, (j // g + 0.5) / g], 1)  # row-major grid: (x, y) of region j
    objects = corpus.posts.set_index("post_id").loc[[data.post_ids[i] for i in imgs], "objects"].tolist()
    words = data.vocabulary.words
    argmax_in, argmin_in, mass, share, peak, entropy = [], [], [], [], [], []
    other_mass, other_share, saturated = [], [], []
    other_argmax, other_argmax_share, any_argmax, any_share, multi_argmax, multi_share = [], [], [], [], [], []
    model.eval()
    for i, objs in zip(imgs, objects):
        cap = data.captions(np.array([i]))[:1]
        R, O = data.image_features(np.array([i]))
        T, lengths = data.words(cap)
        with torch.no_grad():
            alpha = model(R, O, T, lengths)["alpha"][0].double().numpy()  # (L, D)
            att = model.w2r.attention
            z = T[0, : int(lengths[0])] @ att.project_regions(model.standardize(R, O)[0])[0].T + att.b  # Eq. 2
        saturated.append((z.abs() > 2).double().mean().item())
        tokens = [words[t] for t in data.caption_ids[cap[0], : int(lengths[0])]]
        boxes: dict[str, list] = {}
        for obj in json.loads(objs):
            boxes.setdefault(obj["label"], []).append([v / image_size for v in obj["box"]])

        def inside_of(bs):
            inside = np.zeros(d, dtype=bool)
            for x0, y0, x1, y1 in bs:
                inside |= (centres[:, 0] >= x0) & (centres[:, 0] < x1) & (centres[:, 1] >= y0) & (centres[:, 1] < y1)
            return inside
        for k, w in enumerate(tokens):
            a = alpha[k]
            peak.append(a.max())
            entropy.append(-(a * np.log(np.clip(a, 1e-300, None))).sum())
            if w not in boxes:  # a word naming none of the objects: does its attention go to objects anyway?
                anywhere = inside_of([b for bs in boxes.values() for b in bs])
                any_argmax.append(anywhere[a.argmax()])
                any_share.append(anywhere.mean())
                continue
            inside = inside_of(boxes[w])
            others = inside_of([b for label, bs in boxes.items() if label != w for b in bs]) & ~inside
            other_mass.append(a[others].sum())
            other_share.append(others.mean())
            if others.any():  # the image has other objects: is the argmax on one of them instead?
                other_argmax.append(others[a.argmax()])
                other_argmax_share.append(others.mean())
                multi_argmax.append(inside[a.argmax()])
                multi_share.append(inside.mean())
            argmax_in.append(inside[a.argmax()])
            argmin_in.append(inside[a.argmin()])
            mass.append(a[inside].sum())
            share.append(inside.mean())
    mean = lambda x: float(np.mean(x)) if x else float("nan")  # noqa: E731
    return {"argmax": mean(argmax_in), "argmin": mean(argmin_in), "mass": mean(mass), "uniform": mean(share),
            "pairs": len(share), "peak": mean(peak), "entropy": mean(entropy), "max_entropy": float(np.log(d)),
            "other_mass": mean(other_mass), "other_share": mean(other_share), "saturated": mean(saturated),
            "other_argmax": mean(other_argmax), "other_argmax_uniform": mean(other_argmax_share),
            "other_pairs": len(other_argmax), "multi_argmax": mean(multi_argmax), "multi_uniform": mean(multi_share),
            "any_argmax": mean(any_argmax), "any_uniform": mean(any_share), "any_words": len(any_argmax)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default="data/synthetic")
    p.add_argument("--regions", default=None)
    p.add_argument("--objects", default=None)
    p.add_argument("--preset", default="small")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--run", default=None, help="a trained BSSAN run folder (load_trained) instead of training here")
    p.add_argument("--variant", default="w2r", help="bssan | w2r (the W2R network is the same in both)")
    p.add_argument("--workdir", default="runs/bench/bssan_attention")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--negative-attention", default="softmax", help="softmax | uniform (Eq. 8; see docs/bssan.md)")
    p.add_argument("--attention-init", default=None, help="xavier | bilinear | zero | cross_covariance (default: "
                   "the preset's, xavier)")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(a.threads)
    corpus = Corpus.load(a.corpus)
    cfg = S.Config(corpus=a.corpus, regions=a.regions, objects=a.objects, objects_from="regions", preset=a.preset,
                   workdir=a.workdir,
                   seeds=[0], threads=a.threads, val_images=100, model=S.ModelSettings(epochs=a.epochs, negative_attention=a.negative_attention,
                                         attention_init=a.attention_init),
                   train=S.TrainSettings(progress=False))
    data = S.prepare(corpus, cfg)
    size = int(corpus.meta.get("synthetic", {}).get("image_size", 224))
    test = data.images("test")
    if a.run:
        model, run = S.load_trained(Path(a.run))
        what = f"BSSAN {run['variant']} from {a.run}"
    else:
        model, result = S.train_bssan(data, cfg, a.variant, 0, Path(a.workdir))
        what = f"BSSAN {a.variant}, {a.epochs} epochs (best validation rsum {result.best_metric:.1f})"
    torch.manual_seed(0)
    untrained = BSSAN(model.cfg)
    untrained.load_state_dict({k: v for k, v in model.state_dict().items()
                               if k in ("region_mean", "region_std", "object_mean", "object_std")},
                              strict=False)  # the same input standardisation, random weights
    if model.cfg.attention_init == "cross_covariance":  # ... and the same init of the attention
        untrained.init_attention_from_pairs(S.matched_pairs(data, data.captions(data.images("train"))))
    before, after = pointing(untrained, data, corpus, test, size), pointing(model, data, corpus, test, size)
    g = int(np.sqrt(data.regions.shape[1]))
    print(f"{after['pairs']} (test image, object word) pairs on a {g}x{g} grid; {what}")
    print("| attention | argmax inside the named object's box | argmin inside | mass inside | mass on the other "
          "objects | largest weight | entropy | logits with |z| > 2 |\n|---|---|---|---|---|---|---|---|")
    u, o = after["uniform"], after["other_share"]
    print(f"| uniform (expected) | {u:.1%} | {u:.1%} | {u:.1%} | {o:.1%} | {1 / g ** 2:.3f} | "
          f"{after['max_entropy']:.2f} | |")
    for name, r in (("untrained BSSAN", before), ("trained BSSAN", after)):
        print(f"| {name} | {r['argmax']:.1%} | {r['argmin']:.1%} | {r['mass']:.1%} | {r['other_mass']:.1%} | "
              f"{r['peak']:.3f} | {r['entropy']:.2f} | {r['saturated']:.1%} |")
    print(f"trained argmax inside / uniform = {after['argmax'] / max(u, 1e-9):.2f}x")
    print(f"controls (trained; untrained; uniform): argmax on another object of the image, over the "
          f"{after['other_pairs']} pairs of images with several objects: {after['other_argmax']:.1%}; "
          f"{before['other_argmax']:.1%}; {after['other_argmax_uniform']:.1%} (on the named object for the same "
          f"pairs: {after['multi_argmax']:.1%}; {before['multi_argmax']:.1%}; {after['multi_uniform']:.1%}). "
          f"Argmax on any object for the {after['any_words']} words that name none: {after['any_argmax']:.1%}; {before['any_argmax']:.1%}; "
          f"{after['any_uniform']:.1%}")


if __name__ == "__main__":
    main()
