#!/usr/bin/env python3
"""Real sentence embeddings for the benchmarks (`uat bench vector --data-file`,
`bench_memory` with VECTORS=...), made by a running `uat` from real English text.

The passages are the doc comments (`///`, `//!`) of the Rust crates in the local
cargo registry (~/.cargo/registry/src): plain technical prose, one passage per
comment paragraph (20-600 characters), deduplicated, in a fixed order. They go in
batches to `POST /v1/embeddings` of a `uat serve` that has the local model
configured; the output is raw little-endian f32 rows (dimension x 4 bytes each),
plus the passages themselves, one per line.

  scripts/embed-corpus.py --url http://127.0.0.1:3033 --model all-MiniLM-L6-v2 \\
      --count 51000 --out /tmp/corpus   # writes /tmp/corpus.f32 and /tmp/corpus.txt

Stdlib only (urllib), so it runs without a virtualenv.
"""
import argparse, glob, json, os, re, struct, sys, time, urllib.request

def passages(limit):
    roots = sorted(glob.glob(os.path.expanduser("~/.cargo/registry/src/*/*")))
    seen, out = set(), []
    for root in roots:
        for path in sorted(glob.glob(os.path.join(root, "**", "*.rs"), recursive=True)):
            try:
                lines = open(path, encoding="utf-8", errors="ignore").read().splitlines()
            except OSError:
                continue
            para = []
            def flush():
                text = " ".join(para).strip()
                para.clear()
                text = re.sub(r"\s+", " ", text)
                if 20 <= len(text) <= 600 and text not in seen and re.search(r"[a-z]{3,} [a-z]{3,}", text):
                    seen.add(text)
                    out.append(text)
            in_code = False
            for line in lines:
                m = re.match(r"\s*//[/!]\s?(.*)$", line)
                if not m:
                    flush()
                    continue
                body = m.group(1)
                if body.strip().startswith("```"):
                    in_code = not in_code
                    flush()
                    continue
                if in_code or body.strip().startswith("#") or not body.strip():
                    flush()
                    continue
                para.append(body.strip())
            flush()
            if len(out) >= limit:
                return out[:limit]
    return out

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:3033")
    ap.add_argument("--model", default="all-MiniLM-L6-v2")
    ap.add_argument("--count", type=int, default=51000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    texts = passages(a.count)
    if len(texts) < a.count:
        sys.exit(f"only {len(texts)} passages found, {a.count} wanted")
    with open(a.out + ".txt", "w") as f:
        f.write("\n".join(texts) + "\n")
    start = time.time()
    with open(a.out + ".f32", "wb") as f:
        for i in range(0, len(texts), a.batch):
            body = json.dumps({"model": a.model, "input": texts[i:i + a.batch]}).encode()
            req = urllib.request.Request(a.url + "/v1/embeddings", body, {"content-type": "application/json"})
            with urllib.request.urlopen(req, timeout=600) as r:
                data = json.load(r)["data"]
            for row in sorted(data, key=lambda d: d["index"]):
                f.write(struct.pack(f"<{len(row['embedding'])}f", *row["embedding"]))
            done = min(i + a.batch, len(texts))
            if (i // a.batch) % 50 == 0:
                print(f"{done}/{len(texts)} in {time.time() - start:.0f} s", file=sys.stderr)
    print(f"{len(texts)} embeddings in {time.time() - start:.0f} s -> {a.out}.f32", file=sys.stderr)

if __name__ == "__main__":
    main()
