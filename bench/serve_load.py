"""Load test of the search service: text -> image search over N synthetic 256-d embeddings, served by
uvicorn on 127.0.0.1, exact (FAISS IndexFlatL2) against approximate (IVF-PQ, exact re-ranking of the
candidates), at concurrency 1, 8 and 32. Prints requests/s, p50/p99 latency, errors, and the recall@10
of the approximate index against exact search.

    python bench/serve_load.py                     # 1M x 256, 10 s per (index, concurrency) level
    python bench/serve_load.py --n 100000 --seconds 5

The embeddings are clustered like learned ones (2,000 Gaussian clusters on a 64-d subspace + small
isotropic noise); queries are fresh draws from the same mixture (a text embedding is never a stored
vector). Both indexes run inside one app (`system=exact` / `system=approx`), through the same endpoint
(`GET /api/search/images?q=...`) as a trained run: the query string names a precomputed query vector
(the bench's stand-in for a system's ``embed_text``). FAISS runs one thread per search (the server
parallelises requests); the load generator is a separate process (httpx, asyncio).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np


def make_data(n: int, d: int, n_queries: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(d, 64)))[0].T.astype(np.float32)  # (64, d)
    centres = (rng.normal(size=(2000, 64)) * 3).astype(np.float32)

    def draw(m):
        z = centres[rng.integers(0, len(centres), m)] + rng.normal(size=(m, 64)).astype(np.float32)
        return (z @ basis + 0.1 * rng.normal(size=(m, d)).astype(np.float32)).astype(np.float32)

    return draw, draw(n_queries)


def build(n: int, d: int, queries: np.ndarray, draw, nlist: int, nprobe: int):
    import faiss

    t = time.perf_counter()
    flat = faiss.IndexFlatL2(d)
    train = draw(min(n, 40 * nlist))
    quantizer = faiss.IndexFlatL2(d)
    ivf = faiss.IndexIVFPQ(quantizer, d, nlist, 32, 8)
    ivf.train(train)
    t_train = time.perf_counter() - t
    for a in range(0, n, 100_000):
        x = draw(min(100_000, n - a))
        flat.add(x)
        ivf.add(x)
    ivf.nprobe = nprobe
    approx = faiss.IndexRefine(ivf, flat)  # PQ candidates re-ranked with the exact vectors (shared storage)
    approx.k_factor = 4
    build_s = time.perf_counter() - t
    # recall@10 of approx vs exact on the queries
    faiss.omp_set_num_threads(2)
    _, exact_i = flat.search(queries, 10)
    _, approx_i = approx.search(queries, 10)
    recall = float(np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx_i, exact_i)]))
    faiss.omp_set_num_threads(1)
    return flat, ivf, approx, {"build_s": round(build_s, 1), "train_s": round(t_train, 1), "recall_at_10": recall}


def make_app(flat, approx, queries: np.ndarray, n: int):
    import pandas as pd

    from mmsocial.data.corpus import Corpus
    from mmsocial.index import VectorIndex
    from mmsocial.serve.app import LoadedRun, build_app
    from mmsocial.systems import Served

    ids = np.array([f"p{i}" for i in range(n)])
    posts = pd.DataFrame({"post_id": ids, "user_id": None, "image": None, "text": None, "tags": [()] * n})
    posts = posts.set_index("post_id", drop=False)
    corpus = Corpus(pd.DataFrame({"post_id": ["p0"]}))

    def embed_text(q: str):
        if not q.startswith("q") or not q[1:].isdigit() or int(q[1:]) >= len(queries):
            raise ValueError(f"unknown bench query {q!r}")
        return queries[int(q[1:])], {}

    runs = []
    for name, index in (("exact", flat), ("approx", approx)):
        served = Served(name, Path("."), corpus, "l2", {}, embed_text=embed_text)
        vi = VectorIndex(index, ids, "l2", "flat" if name == "exact" else "ivfpq")
        runs.append(LoadedRun(name, served, {"posts": vi}, {"posts": "post"}, {}, posts, {}))
    return build_app(runs)


async def _load(url: str, system: str, concurrency: int, seconds: float, n_queries: int, warmup: int,
                min_requests: int = 50):
    import httpx

    latencies, errors = [], 0
    stop = time.perf_counter() + seconds
    counter = iter(range(10**9))

    async def worker(client):
        nonlocal errors
        while time.perf_counter() < stop or len(latencies) < min_requests:
            i = next(counter)
            t = time.perf_counter()
            try:
                r = await client.get(f"{url}/api/search/images", params={"q": f"q{i % n_queries}", "k": 10,
                                                                          "system": system})
                ok = r.status_code == 200 and len(r.json()["results"]) == 10
            except httpx.HTTPError:
                ok = False
            if i >= warmup:
                latencies.append(time.perf_counter() - t)
                errors += not ok

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    return {"system": system, "concurrency": concurrency, "requests": len(lat), "errors": errors,
            "rps": round(len(lat) / wall, 1), "p50_ms": round(float(np.percentile(lat, 50)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2)}


def client_main(args) -> None:
    out = asyncio.run(_load(args.url, args.system, args.concurrency[0], args.seconds, args.queries, args.warmup))
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--nlist", type=int, default=1024)
    ap.add_argument("--nprobe", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=10.0, help="per (index, concurrency) level")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--system", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client:
        client_main(args)
        return

    import faiss
    import uvicorn

    faiss.omp_set_num_threads(1)
    draw, queries = make_data(args.n, args.dim, args.queries)
    print(f"building exact and IVF-PQ (nlist={args.nlist}, nprobe={args.nprobe}, PQ 32x8, re-rank 4x10) "
          f"over {args.n:,} x {args.dim} ...", flush=True)
    flat, ivf, approx, built = build(args.n, args.dim, queries, draw, args.nlist, args.nprobe)
    print(f"built in {built['build_s']} s (k-means {built['train_s']} s); recall@10 approx vs exact over "
          f"{args.queries} queries: {built['recall_at_10']:.4f}", flush=True)
    app = make_app(flat, approx, queries, args.n)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    rows = []
    for system in ("exact", "approx"):
        for c in args.concurrency:
            out = subprocess.run([sys.executable, __file__, "--client", "--url", f"http://127.0.0.1:{port}",
                                  "--system", system, "--concurrency", str(c), "--seconds", str(args.seconds),
                                  "--queries", str(args.queries), "--warmup", str(args.warmup)],
                                 capture_output=True, text=True, env={**os.environ})
            if out.returncode != 0:
                raise SystemExit(out.stderr)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"{system:>6} c={c:>2}: {r['rps']:>7.1f} req/s  p50 {r['p50_ms']:>7.2f} ms  p99 {r['p99_ms']:>7.2f} ms  "
                  f"{r['requests']} requests, {r['errors']} errors", flush=True)
    server.should_exit = True
    print("\n| index | concurrency | requests/s | p50 ms | p99 ms | requests | errors |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['system']} | {r['concurrency']} | {r['rps']} | {r['p50_ms']} | {r['p99_ms']} | {r['requests']} | "
              f"{r['errors']} |")
    a8 = next((r for r in rows if r["system"] == "approx" and r["concurrency"] == 8), None)
    e8 = next((r for r in rows if r["system"] == "exact" and r["concurrency"] == 8), None)
    if a8 and e8:
        print(f"\napprox vs exact at concurrency 8: {e8['p99_ms'] / a8['p99_ms']:.1f}x lower p99, "
              f"{a8['rps'] / e8['rps']:.1f}x the throughput; recall@10 {built['recall_at_10']:.4f}; "
              f"target p99 < 20 ms: {'met' if a8['p99_ms'] < 20 else 'NOT met'}, recall >= 0.95: "
              f"{'met' if built['recall_at_10'] >= 0.95 else 'NOT met'}; "
              f"errors {sum(r['errors'] for r in rows)} in {sum(r['requests'] for r in rows)} requests")
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
