"""Load test of the search service: text -> image search over N synthetic 256-d embeddings, served by
uvicorn on 127.0.0.1, exact (FAISS ``IndexFlatL2``) against approximate (``mmsocial.index`` kind
``ivfflat``: nlist ≈ 2√n, nprobe 8 by default), at concurrency 1, 8 and 32. Prints requests/s, p50/p99
latency, errors, the server's CPU time per request, the load average during each level, and the
recall@10 of the approximate index against exact search.

    python bench/serve_load.py                     # 1M x 256, 8 s per (index, concurrency) level
    python bench/serve_load.py --n 100000 --seconds 5 --nprobe 16

The embeddings are clustered like learned ones (2,000 Gaussian clusters on a 64-d subspace + small
isotropic noise); queries are fresh draws from the same mixture (a text embedding is never a stored
vector). Both indexes run inside one app (`system=exact` / `system=approx`), through the same endpoint
(`GET /api/search/images?q=...`, the same app, middleware and response models as a trained run): the
query string names a precomputed query vector (the bench's stand-in for a system's ``embed_text``).
FAISS runs one thread per search; uvicorn runs one worker (one event loop), access log off. The load
generator is a separate process holding ``concurrency`` keep-alive connections, each sending its next
request when the previous answer has arrived (closed loop); it speaks HTTP/1.1 over asyncio streams
directly, so that the client's own CPU cost per request is small next to the server's. Every level is
bounded (``--seconds``, at least ``--min-requests``); every answer is checked (status 200, k results).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

# FAISS's OpenMP thread count is per thread: omp_set_num_threads in the main thread does not reach the
# server's thread, whose idle OpenMP workers then spin on this loaded machine. One thread everywhere.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def make_data(n: int, d: int, n_queries: int, centre_scale: float = 1.5, seed: int = 0):
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(d, 64)))[0].T.astype(np.float32)  # (64, d)
    centres = (rng.normal(size=(2000, 64)) * centre_scale).astype(np.float32)

    def draw(m):
        z = centres[rng.integers(0, len(centres), m)] + rng.normal(size=(m, 64)).astype(np.float32)
        return (z @ basis + 0.1 * rng.normal(size=(m, d)).astype(np.float32)).astype(np.float32)

    queries = draw(n_queries)
    x = np.empty((n, d), dtype=np.float32)
    for a in range(0, n, 100_000):
        x[a:a + 100_000] = draw(min(100_000, n - a))
    return x, queries


def build(x: np.ndarray, queries: np.ndarray, nprobes: list[int], exact_max: int):
    import faiss

    from mmsocial.index import VectorIndex, build_index

    ids = np.array([f"p{i}" for i in range(len(x))])
    t = time.perf_counter()
    approx = build_index(x, ids, "l2", "auto", exact_max=exact_max, nprobe=nprobes[0])
    approx_s = time.perf_counter() - t
    t = time.perf_counter()
    exact = build_index(x, ids, "l2", "flat")
    exact_s = time.perf_counter() - t
    found_exact = exact.search(queries, 10)[1]

    def recall_of(found):
        return float(np.mean([len(set(a) & set(e)) / 10 for a, e in zip(found, found_exact)]))

    sweep, approxes, per_query = {}, {}, {}
    for probe in sorted({1, 2, 4, 8, 16, 32, *nprobes}):
        approx.set_search_params(nprobe=probe)
        t = time.perf_counter()
        sweep[probe] = round(recall_of(approx.search(queries, 10)[1]), 4)
        per_query[probe] = round(1000 * (time.perf_counter() - t) / len(queries), 3)
    approx.set_search_params(nprobe=nprobes[0])  # the build's setting again (printed below)
    for probe in nprobes:  # one served copy per nprobe (the stored vectors are copied too)
        import faiss

        copy = VectorIndex(faiss.clone_index(approx.index), ids, "l2", approx.kind, dict(approx.params))
        copy.set_search_params(nprobe=probe)
        approxes[probe] = copy
    return exact, approxes, ids, {"approx_build_s": round(approx_s, 1), "exact_build_s": round(exact_s, 1),
                                  "recall_by_nprobe": sweep, "ms_per_query_by_nprobe": per_query,
                                  "kind": approx.kind, "params": approx.params}


def make_app(exact, approx, ids, queries: np.ndarray):
    import pandas as pd

    from mmsocial.data.corpus import Corpus
    from mmsocial.serve.app import LoadedRun, build_app
    from mmsocial.systems import Served

    n = len(ids)
    posts = pd.DataFrame({"post_id": ids, "user_id": None, "image": None, "text": None, "tags": [()] * n})
    posts = posts.set_index("post_id", drop=False)
    corpus = Corpus(pd.DataFrame({"post_id": ["p0"]}))

    def embed_text(q: str):
        if not q.startswith("q") or not q[1:].isdigit() or int(q[1:]) >= len(queries):
            raise ValueError(f"unknown bench query {q!r}")
        return queries[int(q[1:])], {}

    runs = []
    for name, index in (("exact", exact), *((f"approx-{p}", ix) for p, ix in approx.items())):
        served = Served(name, Path("."), corpus, "l2", {}, embed_text=embed_text)
        runs.append(LoadedRun(name, served, {"posts": index}, {"posts": "post"}, {}, posts, {}))
    return build_app(runs)


# ---------------------------------------------------------------------------- load generator (own process)
async def _request(reader, writer, path: str) -> tuple[int, bytes]:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next(int(h.split(":", 1)[1]) for h in lines[1:] if h.lower().startswith("content-length:"))
    return status, await reader.readexactly(length)


async def _load(port: int, system: str, concurrency: int, seconds: float, n_queries: int, warmup: int,
                min_requests: int):
    latencies, errors, counter = [], 0, iter(range(10**9))
    stop = time.perf_counter() + seconds

    async def worker():
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.perf_counter() < stop or len(latencies) < min_requests:
            i = next(counter)
            t = time.perf_counter()
            try:
                status, body = await _request(reader, writer, f"/api/search/images?q=q{i % n_queries}&k=10"
                                                               f"&system={system}")
                ok = status == 200 and len(json.loads(body)["results"]) == 10
            except (OSError, asyncio.IncompleteReadError, ValueError, StopIteration):
                ok = False
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            if i >= warmup:
                latencies.append(time.perf_counter() - t)
                errors += not ok
        writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    return {"system": system, "concurrency": concurrency, "requests": len(lat), "errors": errors,
            "rps": round(len(lat) / wall, 1), "p50_ms": round(float(np.percentile(lat, 50)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2), "max_ms": round(float(lat.max()), 2),
            "client_cpu_ms_per_request": round(1000 * (cpu.ru_utime + cpu.ru_stime) / max(len(lat), 1), 3)}


def client_main(args) -> None:
    out = asyncio.run(_load(args.port, args.system, args.concurrency[0], args.seconds, args.queries, args.warmup,
                            args.min_requests))
    print(json.dumps(out))


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--nprobe", type=int, nargs="+", default=[8], help="IVF lists scanned per query; each "
                    "value is served as its own index (approx-NPROBE)")
    ap.add_argument("--exact-max", type=int, default=100_000, help="auto: flat up to this size, ivfflat above")
    ap.add_argument("--seconds", type=float, default=8.0, help="per (index, concurrency) level")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--min-requests", type=int, default=100)
    ap.add_argument("--centre-scale", type=float, default=1.5, help="spread of the cluster centres (3: clusters "
                    "so far apart that one IVF list holds a query's neighbours; 1.5: nprobe matters)")
    ap.add_argument("--servers", nargs="+", default=["h11/asyncio", "httptools/uvloop"],
                    help="uvicorn HTTP parser/event loop pairs to measure, one after the other (exact search "
                         "is measured on the first only: its 0.3 s search dwarfs the server's own cost)")
    ap.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--system", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client:
        client_main(args)
        return

    import faiss
    import uvicorn

    faiss.omp_set_num_threads(1)
    print(f"machine: {os.cpu_count()} CPUs, load average at start {os.getloadavg()[0]:.2f}", flush=True)
    x, queries = make_data(args.n, args.dim, args.queries, args.centre_scale)
    exact, approx, ids, built = build(x, queries, args.nprobe, args.exact_max)
    del x
    print(f"data: {args.n:,} x {args.dim}, 2000 clusters, centre scale {args.centre_scale}", flush=True)
    print(f"approx: {built['kind']} {built['params']} built in {built['approx_build_s']} s; exact flat in "
          f"{built['exact_build_s']} s", flush=True)
    print(f"recall@10 against exact over {args.queries} fresh queries, by nprobe: {built['recall_by_nprobe']}",
          flush=True)
    print(f"ms per query (one thread, no server), by nprobe: {built['ms_per_query_by_nprobe']}", flush=True)
    app = make_app(exact, approx, ids, queries)
    rows = []
    for n_server, pair in enumerate(args.servers):
        http, loop = pair.split("/")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                               access_log=False, http=http, loop=loop))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        print(f"uvicorn: one worker, http {http}, loop {loop}", flush=True)
        approx_names = [f"approx-{p}" for p in args.nprobe]
        for system in ["exact", *approx_names] if n_server == 0 else approx_names:
            for c in args.concurrency:
                cpu0, load0 = _cpu_seconds(), os.getloadavg()[0]
                out = subprocess.run([sys.executable, __file__, "--client", "--port", str(port), "--system", system,
                                      "--concurrency", str(c), "--seconds", str(args.seconds), "--queries",
                                      str(args.queries), "--warmup", str(args.warmup), "--min-requests",
                                      str(args.min_requests)], capture_output=True, text=True, env={**os.environ})
                if out.returncode != 0:
                    raise SystemExit(out.stderr)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                # this process only serves while the client runs: its CPU time is the server's
                r["server_cpu_ms_per_request"] = round(1000 * (_cpu_seconds() - cpu0) / (r["requests"] + args.warmup),
                                                       3)
                r["load_avg"] = round((load0 + os.getloadavg()[0]) / 2, 2)
                r["server"] = pair
                rows.append(r)
                print(f"{system:>6} c={c:>2}: {r['rps']:>7.1f} req/s  p50 {r['p50_ms']:>7.2f} ms  p99 "
                      f"{r['p99_ms']:>7.2f} ms  server CPU {r['server_cpu_ms_per_request']:.2f} ms/req  client CPU "
                      f"{r['client_cpu_ms_per_request']:.2f} ms/req  load {r['load_avg']}  {r['requests']} requests, "
                      f"{r['errors']} errors", flush=True)
        server.should_exit = True
        thread.join(10)
    print("\n| index | server | concurrency | requests/s | p50 ms | p99 ms | server CPU ms/req | load avg | requests "
          "| errors |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['system']} | {r['server']} | {r['concurrency']} | {r['rps']} | {r['p50_ms']} | {r['p99_ms']} | "
              f"{r['server_cpu_ms_per_request']} | {r['load_avg']} | {r['requests']} | {r['errors']} |")
    e8 = next((r for r in rows if r["system"] == "exact" and r["concurrency"] == 8), None)
    for r in rows:
        if r["system"] == "exact" or r["concurrency"] != 8:
            continue
        recall = built["recall_by_nprobe"][int(r["system"].split("-")[1])]
        print(f"{r['system']} ({r['server']}) at concurrency 8: p99 {r['p99_ms']} ms "
              f"({'met' if r['p99_ms'] < 20 else 'NOT met'}: < 20 ms), recall@10 {recall:.4f} "
              f"({'met' if recall >= 0.95 else 'NOT met'}: >= 0.95)" +
              (f"; {e8['p99_ms'] / r['p99_ms']:.1f}x lower p99 and {r['rps'] / e8['rps']:.1f}x the throughput of "
               f"exact" if e8 else ""))
    print(f"errors {sum(r['errors'] for r in rows)} in {sum(r['requests'] for r in rows)} requests")
    print(f"machine: {os.cpu_count()} CPUs, load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
