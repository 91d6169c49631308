#!/usr/bin/env python3
"""Give every line of the gold files a fixed split (run once, when a file is added).

Within each file, turns are ranked by a hash of their id and about 35 % go to ``test``: a
stable, content-independent split that nobody chose line by line. Lines that already carry a
split keep it, so adding turns never moves old ones between splits.

    .venv/bin/python scripts/gold_split.py agents/gold/*.jsonl
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

TEST_SHARE = 0.35


def main(paths: list[str]) -> int:
    for path in map(Path, paths):
        rows = [
            json.loads(line)
            for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
        fresh = [r for r in rows if "split" not in r]
        ranked = sorted(fresh, key=lambda r: hashlib.sha256(r["id"].encode()).hexdigest())
        n_test = round(len(rows) * TEST_SHARE) - sum(r.get("split") == "test" for r in rows)
        for i, row in enumerate(ranked):
            row["split"] = "test" if i < n_test else "dev"
        path.write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
        )
        print(f"{path}: {sum(r['split'] == 'test' for r in rows)} test / {len(rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
