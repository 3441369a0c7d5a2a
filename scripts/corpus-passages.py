#!/usr/bin/env python3
"""Real English passages for the benchmarks' real-embedding runs.

The passages are the doc comments (`///`, `//!`) of the Rust crates in the local
cargo registry (~/.cargo/registry/src): plain technical prose, one passage per
comment paragraph (20-600 characters), deduplicated, in a fixed order, one per
line. Embed them with the local model, row for row:

  scripts/corpus-passages.py 51000 > /tmp/docs.txt
  cargo run --release -p uat-embed --example embed_corpus -- /tmp/docs.txt /tmp/docs.f32
  uat bench vector --data-file /tmp/docs.f32                      # 50k points + 1k queries
  CORPUS=/tmp/docs cargo run --release -p uat-memory --example bench_memory

Stdlib only, so it runs without a virtualenv.
"""
import glob, os, re, sys

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
                # Unique ignoring case, as embed_corpus dedupes: one vector per line.
                if 20 <= len(text) <= 600 and text.lower() not in seen and re.search(r"[a-z]{3,} [a-z]{3,}", text):
                    seen.add(text.lower())
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
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 51000
    texts = passages(count)
    if len(texts) < count:
        sys.exit(f"only {len(texts)} passages found, {count} wanted")
    sys.stdout.write("\n".join(texts) + "\n")

if __name__ == "__main__":
    main()
