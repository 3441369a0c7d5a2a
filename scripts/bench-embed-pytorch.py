#!/usr/bin/env python3
"""The reference side of issue 5's throughput goal: sentence-transformers on
PyTorch, on this machine, over the same 50 fixture sentences and the same model
folder as `uat bench embed`.

Run through scripts/bench-embed.sh, which runs this and `uat bench embed` back
to back (same machine, same minutes) and prints the ratio. By hand:

    python3 -m venv /work/pt-venv
    /work/pt-venv/bin/pip install torch sentence-transformers   # several GB (CUDA wheels)
    /work/pt-venv/bin/python scripts/bench-embed-pytorch.py \
        --model-dir ~/.cache/uat/models/all-MiniLM-L6-v2 --threads 1

Measures, with `threads` intra-op threads (default 1, as the issue states the
goal per CPU-second on one thread):
- batch 32 of mixed lengths: `encode(sentences, batch_size=32)` (which sorts
  the sentences by length before batching, as users call it), sentences per
  CPU-second of this process;
- one at a time: `encode([s])` for each sentence;
- load time and resident memory with the model loaded.
"""

import argparse
import json
import os
import resource
import sys
import time


def rss_mb():
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", required=True)
    ap.add_argument(
        "--sentences",
        default=os.path.join(
            os.path.dirname(__file__), "..", "..", "shared", "fixtures", "embeddings", "sentences.json"
        ),
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    rss0 = rss_mb()
    t0 = time.perf_counter()
    import torch

    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(1)
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(os.path.expanduser(a.model_dir), device="cpu")
    load = time.perf_counter() - t0
    rss_loaded = rss_mb()
    with open(a.sentences) as f:
        texts = json.load(f)["sentences"]

    def measure(fn):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        return time.process_time() - c0, time.perf_counter() - w0

    def batched():
        model.encode(texts, batch_size=a.batch_size, convert_to_numpy=True)

    def single():
        for t in texts:
            model.encode([t], batch_size=1, convert_to_numpy=True)

    with torch.inference_mode():
        batched()  # warm-up
        single()
        b_cpu = b_wall = s_cpu = s_wall = 0.0
        for _ in range(a.rounds):
            c, w = measure(batched)
            b_cpu, b_wall = b_cpu + c, b_wall + w
            c, w = measure(single)
            s_cpu, s_wall = s_cpu + c, s_wall + w
    n = len(texts) * a.rounds
    out = {
        "torch": torch.__version__,
        "threads": a.threads,
        "load_ms": load * 1e3,
        "rss_before_mb": rss0,
        "rss_loaded_mb": rss_loaded,
        "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "batched_per_cpu_s": n / b_cpu,
        "batched_per_s": n / b_wall,
        "single_per_cpu_s": n / s_cpu,
        "single_per_s": n / s_wall,
    }
    if a.json:
        json.dump(out, sys.stdout)
        print()
    else:
        print(f"sentence-transformers on PyTorch {out['torch']} ({a.threads} thread(s))")
        print(f"load time (import + model)  {out['load_ms']:9.1f} ms")
        print(
            f"RSS                         {rss0:9.1f} MB before import, {rss_loaded:.1f} MB loaded, "
            f"{out['rss_peak_mb']:.1f} MB peak"
        )
        print(
            f"batch {a.batch_size:<3} mixed lengths    {out['batched_per_cpu_s']:9.1f} sentences/CPU-s "
            f"({out['batched_per_s']:.1f}/s wall)"
        )
        print(
            f"one at a time               {out['single_per_cpu_s']:9.1f} sentences/CPU-s "
            f"({out['single_per_s']:.1f}/s wall)"
        )


if __name__ == "__main__":
    main()
