#!/usr/bin/env python3
"""Which tables and indexes each commit writes: WAL frames per commit, by b-tree.

Copy a running server's database and WAL side by side first (the WAL restarts after
each checkpoint, so it holds the commits since the last one), then:

    cp DIR/writ.db-wal /tmp/snap/writ.db-wal && cp DIR/writ.db /tmp/snap/writ.db
    contrib/perf/wal_frames.py /tmp/snap

Pages are named after the b-tree that owns them in the copied database file (SQLite's
dbstat table); pages allocated since the last checkpoint show as "new". Reads the copies
only; needs Python's sqlite3 module built with SQLITE_ENABLE_DBSTAT_VTAB (Debian's is).
"""
import collections
import shutil
import sqlite3
import struct
import sys
import tempfile
from pathlib import Path

KINDS = {0x02: "interior", 0x05: "interior", 0x0A: "leaf", 0x0D: "leaf"}


def commits(wal: bytes):
    """Yield each committed transaction as a list of (page number, page kind)."""
    page_size = struct.unpack(">I", wal[8:12])[0]
    salt = wal[16:24]
    offset, frames = 32, []
    while offset + 24 + page_size <= len(wal):
        page, commit_size = struct.unpack(">II", wal[offset : offset + 8])
        if wal[offset + 8 : offset + 16] != salt:
            break  # frames of an earlier WAL generation
        body = offset + 24 + (100 if page == 1 else 0)
        frames.append((page, KINDS.get(wal[body], hex(wal[body]))))
        if commit_size:
            yield frames
            frames = []
        offset += 24 + page_size


def main(snapshot: Path) -> None:
    wal = (snapshot / "writ.db-wal").read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "writ.db"
        shutil.copy(snapshot / "writ.db", db)
        owner = dict((page, name) for name, page in
                     sqlite3.connect(db).execute("SELECT name, pageno FROM dbstat"))
    counts, total = collections.Counter(), list(commits(wal))
    if not total:
        sys.exit("no committed transaction in the WAL")
    for frames in total:
        for page, kind in frames:
            counts[(owner.get(page, "new"), kind)] += 1
    n = len(total)
    print(f"{n} commits, {sum(map(len, total)) / n:.1f} frames per commit")
    for (tree, kind), count in counts.most_common():
        print(f"{count / n:6.2f}  {tree} ({kind})")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "."))
