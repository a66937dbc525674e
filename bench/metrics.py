"""Time and peak memory of chunked vs dense retrieval metrics (mmsocial.eval.metrics).

    python bench/metrics.py [--n 20000] [--dim 128] [--labels 20] [--chunk-size 512]

Problem: n queries x n gallery items, random float32 embeddings of --dim dimensions (each
gallery item is its query plus noise, so ranks are not trivial), multi-hot labels over --labels
labels (1 to 3 per item). Metrics: mAP over the whole ranked list with multi-label relevance
(cosine), and R@1/5/10 + median rank with one ground-truth item per query.

chunked: metrics computed from the embeddings, one block of --chunk-size query rows at a time.
dense:   the full (n, n) score matrix is built first (similarity_scores), then the same metrics
         run over it (their sort temporaries still come in blocks of --chunk-size rows).

Times are wall-clock and process CPU seconds (all threads; the CPU time is the steadier figure
on a shared machine). Peak memory is tracemalloc's peak of traced allocations during each run, above what was
allocated before it (NumPy reports its array buffers to tracemalloc; BLAS work buffers and
the interpreter are not counted). Process peak RSS (resource.getrusage) is printed at the end.
"""

from __future__ import annotations

import argparse
import resource
import time
import tracemalloc

import numpy as np

from mmsocial.eval import metrics as M


def make_problem(n: int, dim: int, n_labels: int, seed: int):
    rng = np.random.default_rng(seed)
    query = rng.normal(size=(n, dim)).astype(np.float32)
    gallery = (query + rng.normal(scale=3.0, size=(n, dim))).astype(np.float32)
    labels = np.zeros((n, n_labels), dtype=np.float32)
    for row, count in enumerate(rng.integers(1, 4, n)):
        labels[row, rng.choice(n_labels, size=count, replace=False)] = 1
    return query, gallery, labels, labels.copy()


def measure(fn):
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    t0, cpu0 = time.perf_counter(), time.process_time()
    result = fn()
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
    peak = tracemalloc.get_traced_memory()[1] - base
    return result, (seconds, cpu_seconds), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--labels", type=int, default=20)
    parser.add_argument("--chunk-size", type=int, default=M.DEFAULT_CHUNK_SIZE)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    query, gallery, q_labels, g_labels = make_problem(args.n, args.dim, args.labels, args.seed)
    gt = np.arange(args.n)
    mib = 2 ** 20
    print(f"problem: {args.n} x {args.n}, dim {args.dim}, {args.labels} labels, "
          f"chunk_size {args.chunk_size}; dense score matrix = {args.n * args.n * 4 / mib:.0f} MiB "
          f"(float32)")

    def chunked_map():
        return M.mean_average_precision(query=query, gallery=gallery, query_labels=q_labels,
                                        gallery_labels=g_labels, chunk_size=args.chunk_size, progress=True)

    def dense_map():
        scores = M.similarity_scores(query, gallery)
        return M.mean_average_precision(scores, query_labels=q_labels, gallery_labels=g_labels,
                                        chunk_size=args.chunk_size, progress=True)

    def chunked_recall():
        return M.retrieval_metrics(query=query, gallery=gallery, ground_truth=gt,
                                   chunk_size=args.chunk_size, progress=True)

    def dense_recall():
        scores = M.similarity_scores(query, gallery)
        return M.retrieval_metrics(scores, ground_truth=gt, chunk_size=args.chunk_size, progress=True)

    tracemalloc.start()
    rows = []
    for name, chunked, dense in (("mAP (multi-label)", chunked_map, dense_map),
                                 ("R@K + ranks", chunked_recall, dense_recall)):
        value_c, sec_c, mem_c = measure(chunked)
        value_d, sec_d, mem_d = measure(dense)
        rows.append((name, sec_c, sec_d, mem_c, mem_d, value_c == value_d))
        shown = f"{value_c:.4f}" if isinstance(value_c, float) else \
            ", ".join(f"{k} {v:.4g}" for k, v in value_c.items())
        print(f"{name}: {shown}")
    tracemalloc.stop()

    print()
    print("| metric | chunked wall s (cpu s) | dense wall s (cpu s) | wall dense/chunked | "
          "cpu dense/chunked | chunked peak MiB | dense peak MiB | memory dense/chunked | same result |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, (sec_c, cpu_c), (sec_d, cpu_d), mem_c, mem_d, same in rows:
        print(f"| {name} | {sec_c:.1f} ({cpu_c:.1f}) | {sec_d:.1f} ({cpu_d:.1f}) | {sec_d / sec_c:.2f} | "
              f"{cpu_d / cpu_c:.2f} | {mem_c / mib:.0f} | {mem_d / mib:.0f} | {mem_d / mem_c:.2f} | {same} |")
    print(f"\nprocess peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
