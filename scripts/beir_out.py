"""Writing a converted real-data set in the BEIR layout t1-train reads (make_coq_premises.py,
make_metamath_premises.py): corpus, queries, hard negatives, one qrels file per non-empty split
(t1-train refuses a split file without judgments), SOURCE.json. Python 3 standard library only."""

import json
import os
import sys


def _dump(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def write(out, corpus, kept, negatives, source, describe):
    """`kept`: (split, query row, relevant doc ids) in output order; `describe(rows)`: a split's
    extra counts for SOURCE.json. Fills `source["splits"]`, writes SOURCE.json and prints it."""
    os.makedirs(os.path.join(out, "qrels"), exist_ok=True)
    _dump(os.path.join(out, "corpus.jsonl"), corpus)
    _dump(os.path.join(out, "queries.jsonl"), [q for _, q, _ in kept])
    _dump(os.path.join(out, "hard_negatives.jsonl"), negatives)
    counts = {}
    for split in ("train", "dev", "test"):
        rows = [k for k in kept if k[0] == split]
        path = os.path.join(out, "qrels", f"{split}.tsv")
        if not rows:
            if os.path.exists(path):
                os.remove(path)
            counts[split] = {"queries": 0}
            continue
        with open(path, "w") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            for _, q, used in rows:
                for doc in used:
                    f.write(f"{q['_id']}\t{doc}\t1\n")
        counts[split] = {"queries": len(rows), "judgments": sum(len(u) for *_, u in rows),
                         **describe(rows)}
    source["splits"] = counts
    with open(os.path.join(out, "SOURCE.json"), "w") as f:
        json.dump(source, f, indent=2)
        f.write("\n")
    json.dump(source, sys.stdout, indent=2)
    print()
