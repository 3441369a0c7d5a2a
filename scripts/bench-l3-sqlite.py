#!/usr/bin/env python3
"""Write cost per row of L3 table layouts on SQLite (WAL, synchronous=NORMAL,
as uat opens it), the figures behind L3's schema and batch size.

Rows like a chat completion's (random 64-hex-digit keys, VALUE_BYTES of
value) are upserted in transactions of BATCH rows into a fresh file; the
script prints the bytes written (WAL and checkpoints), the process CPU and
the wall time per row of each layout:
  v1_text_key:    schema 1, rows found through a unique index on the text key;
  v2_int_id:      schema 2, rows found through a unique index on a 64-bit id;
  v3_no_id_index: schema 3, no index on the id (uat finds rows through a map
                  in memory), plain inserts here;
  no_index:       the floor, a plain append without the other two indexes.
Python's own sqlite3 (the system SQLite), not the one uat bundles; compare
layouts within one run.
  python3 scripts/bench-l3-sqlite.py [ROWS=100000] [VALUE_BYTES=600] [BATCH=256]
"""
import hashlib
import os
import struct
import sys
import tempfile
import time

LAYOUTS = {
    "v1_text_key": (
        """CREATE TABLE e (key TEXT PRIMARY KEY NOT NULL, namespace TEXT NOT NULL,
             model TEXT NOT NULL, value BLOB NOT NULL, expires_at BIGINT NOT NULL);
           CREATE INDEX e_x ON e (expires_at); CREATE INDEX e_nm ON e (namespace, model);""",
        "INSERT INTO e VALUES (?,?,?,?,?) ON CONFLICT(key) DO UPDATE SET"
        " value=excluded.value, expires_at=excluded.expires_at",
        lambda k, h, v, x: (k, "default", "mock-model", v, x),
    ),
    "v2_int_id": (
        """CREATE TABLE e (h INTEGER NOT NULL, key TEXT NOT NULL, namespace TEXT NOT NULL,
             model TEXT NOT NULL, value BLOB NOT NULL, expires_at BIGINT NOT NULL);
           CREATE UNIQUE INDEX e_h ON e (h);
           CREATE INDEX e_x ON e (expires_at); CREATE INDEX e_nm ON e (namespace, model);""",
        "INSERT INTO e VALUES (?,?,?,?,?,?) ON CONFLICT(h) DO UPDATE SET key=excluded.key,"
        " value=excluded.value, expires_at=excluded.expires_at",
        lambda k, h, v, x: (h, k, "default", "mock-model", v, x),
    ),
    "v3_no_id_index": (
        """CREATE TABLE e (h INTEGER NOT NULL, key TEXT NOT NULL, namespace TEXT NOT NULL,
             model TEXT NOT NULL, value BLOB NOT NULL, expires_at BIGINT NOT NULL);
           CREATE INDEX e_x ON e (expires_at); CREATE INDEX e_nm ON e (namespace, model);""",
        "INSERT INTO e VALUES (?,?,?,?,?,?)",
        lambda k, h, v, x: (h, k, "default", "mock-model", v, x),
    ),
    "no_index": (
        """CREATE TABLE e (key TEXT NOT NULL, namespace TEXT NOT NULL, model TEXT NOT NULL,
             value BLOB NOT NULL, expires_at BIGINT NOT NULL);""",
        "INSERT INTO e VALUES (?,?,?,?,?)",
        lambda k, h, v, x: (k, "default", "mock-model", v, x),
    ),
}


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    value_bytes = int(sys.argv[2]) if len(sys.argv) > 2 else 600
    batch = int(sys.argv[3]) if len(sys.argv) > 3 else 256
    value = os.urandom(value_bytes)
    with tempfile.TemporaryDirectory() as d:
        for rnd in range(2):
            for name, (ddl, insert, row) in LAYOUTS.items():
                path = os.path.join(d, f"{name}-{rnd}.db")
                c = sqlite3_connect(path)
                c.executescript(ddl)
                rows = []
                for i in range(n):
                    digest = hashlib.sha256(str(i).encode()).digest()
                    h = struct.unpack(">q", digest[:8])[0]
                    rows.append(row("default|mock-model|" + digest.hex(), h, value, 1_700_000_000_000 + i))
                w0 = wchar()
                cpu, wall = time.process_time(), time.perf_counter()
                for i in range(0, n, batch):
                    c.execute("BEGIN")
                    c.executemany(insert, rows[i : i + batch])
                    c.execute("COMMIT")
                cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                wb = (wchar() - w0) / n
                print(f"round {rnd + 1} {name:<12} batch {batch}: written {wb:7.0f} B/row, CPU {cpu / n * 1e6:5.1f} us/row, "
                      f"wall {wall / n * 1e6:5.1f} us/row, file {os.path.getsize(path) // 1024} KiB")
                c.close()


def wchar():
    for line in open("/proc/self/io"):
        if line.startswith("wchar:"):
            return int(line.split()[1])


def sqlite3_connect(path):
    import sqlite3

    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA synchronous=NORMAL")
    c.execute("PRAGMA wal_autocheckpoint=8192")
    return c


if __name__ == "__main__":
    main()
