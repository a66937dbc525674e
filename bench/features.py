"""Feature-extraction speed: end to end vs the network alone, batched vs one at a time, store reads.

    python bench/features.py [--images 200] [--sizes 224 448] [--workers 2] [--batch-size 32]

Makes a folder of 500-pixel JPEGs (the fixture photos, cropped, flipped and recoloured) as a
corpus, then measures in one run, on one machine state:
  decode      images/s of decoding + resizing alone (one process)
  net         images/s of MobileNetV2 on pre-decoded tensors, batched, and one image at a time
  end to end  images/s of ``extract_features`` (DataLoader workers decode while the network runs)
  store       MB/s of reading random row batches from the feature store, memory-mapped vs loaded
Network and end-to-end runs are interleaved ``--rounds`` times and the best of each is kept, so
that a burst of other work on the machine does not land on one side of a ratio. It prints each as a ratio against its baseline measured in the same run. Numbers depend on
what else runs on the machine: compare ratios, not absolute speeds, between runs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

from mmsocial.data.corpus import Corpus, make_posts
from mmsocial.features.backbones import load_backbone
from mmsocial.features.extract import PostImages, extract_features
from mmsocial.features.store import FeatureSet, write_features

FIXTURES = Path(__file__).parents[1] / "tests" / "fixtures" / "images"


def make_corpus(root: Path, count: int, side: int = 500, seed: int = 0) -> Corpus:
    rng = np.random.default_rng(seed)
    photos = [Image.open(p).convert("RGB") for p in sorted(FIXTURES.glob("*.jpg"))]
    (root / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(count):
        im = photos[i % len(photos)]
        w, h = im.size
        x0, y0 = rng.integers(0, w // 4), rng.integers(0, h // 4)
        im = im.crop((x0, y0, x0 + 3 * w // 4, y0 + 3 * h // 4)).resize((side, int(side * 0.75)), Image.BICUBIC)
        if i % 2:
            im = ImageOps.mirror(im)
        im = ImageEnhance.Color(im).enhance(float(rng.uniform(0.5, 1.5)))
        name = f"images/{i:04d}.jpg"
        im.save(root / name, quality=90)
        records.append({"post_id": f"p{i:04d}", "image": name})
    Corpus(make_posts(records)).save(root)
    return Corpus.load(root)


def rate(fn, items: int, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return items / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 448])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--weights", default="imagenet", help="imagenet | random | PATH")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved repetitions; the best of each is kept")
    ap.add_argument("--store-rows", type=int, default=2000, help="rows of the store-read test (49x1280 f16 each)")
    args = ap.parse_args()

    torch.manual_seed(0)
    model = load_backbone("mobilenet_v2", args.weights, "cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, weights {model.weights_id}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        corpus = make_corpus(tmp / "corpus", args.images)
        print(f"made {args.images} JPEGs of 500x375 in {time.perf_counter() - t:.1f}s\n")
        rows = []
        for size in args.sizes:
            data = PostImages(corpus, corpus.posts["post_id"].tolist(), np.arange(len(corpus)), size)
            decoded: list[torch.Tensor] = []
            decode = rate(lambda: decoded.extend(data[i][1] for i in range(len(data))), len(data))
            batch = torch.stack(decoded)
            bs = args.batch_size

            def net_batched():
                with torch.no_grad():
                    for s in range(0, len(batch), bs):
                        model.region_grid(batch[s:s + bs])

            single_n = min(len(batch), 16)

            def net_single():
                with torch.no_grad():
                    for i in range(single_n):
                        model.region_grid(batch[i:i + 1])

            def end_to_end():
                extract_features(corpus, "regions", model, size, out=tmp / f"f{size}-{time.time_ns()}",
                                 batch_size=bs, workers=args.workers, progress=False)

            net_batched()  # warm-up
            batched = single = e2e = 0.0
            for _ in range(args.rounds):  # interleaved, best of each: other jobs on the machine come and go
                batched = max(batched, rate(net_batched, len(batch)))
                single = max(single, rate(net_single, single_n))
                e2e = max(e2e, rate(end_to_end, len(batch)))
            rows.append((size, decode, batched, single, e2e))
            print(f"size {size}: decode {decode:6.1f} img/s (1 process) | net batched {batched:6.1f} img/s | "
                  f"net one-at-a-time {single:6.1f} img/s | end to end ({args.workers} workers) {e2e:6.1f} img/s")
            print(f"  ratios: batched / one-at-a-time = {batched / single:.2f}x; "
                  f"end to end / net batched = {e2e / batched:.0%}; decode / net batched = {decode / batched:.1f}x")

        n = args.store_rows
        rng = np.random.default_rng(0)
        block = rng.normal(size=(256, 49, 1280)).astype(np.float32)
        ids = [f"s{i}" for i in range(n)]
        t = time.perf_counter()
        write_features(tmp / "store", ids, (49, 1280),
                       ((s, block[: min(256, n - s)]) for s in range(0, n, 256)), {"extractor": "bench"})
        mb = n * 49 * 1280 * 2 / 2**20
        print(f"\nstore: wrote {n} x 49 x 1280 float16 ({mb:.0f} MB) in {time.perf_counter() - t:.1f}s")
        mapped = FeatureSet.open(tmp / "store")
        loaded = FeatureSet.open(tmp / "store", mmap=False)
        order = rng.permutation(n)
        batches = [order[s:s + 128] for s in range(0, n, 128)]

        def read(fs):
            def go():
                for b in batches:
                    np.asarray(fs.data[np.sort(b)], dtype=np.float32)
            return go

        read(mapped)()  # page cache warm, as in an epoch after the first
        m = rate(read(mapped), n, repeat=3) * 49 * 1280 * 2 / 2**20
        ld = rate(read(loaded), n, repeat=3) * 49 * 1280 * 2 / 2**20
        print(f"store: random batches of 128 rows -> float32: memory-mapped {m:.0f} MB/s, loaded {ld:.0f} MB/s, "
              f"mapped / loaded = {m / ld:.0%}")


if __name__ == "__main__":
    main()
