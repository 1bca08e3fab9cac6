#!/usr/bin/env python3
"""Golden values for t1-train's evaluation (tests/eval_golden.rs), computed by pytrec_eval.

Writes tests/fixtures/eval/{qrels.tsv, run.trec, excluded.json, expected.json}.
The inputs are random but seeded, with scores rounded to one decimal so many documents tie,
graded relevance 0..3, queries with only non-relevant judgments, judged queries missing from the
run, and BRIGHT-style excluded ids (sometimes a relevant document, sometimes the top hit).

Semantics checked (trec_eval -c):
  * excluded ids are removed from the run before evaluation (BRIGHT);
  * ndcg_cut_10, recall_10, recall_100, recip_rank come from pytrec_eval itself;
  * MRR@10 = recip_rank when the first relevant document is within the top 10, else 0
    (exactly recip_rank on the run cut at 10, without assuming an order);
  * every judged query counts: a query pytrec_eval does not report scores 0.

Rerun:  pip install pytrec-eval-terrier==0.5.11 && python3 scripts/golden_eval.py
"""
import json
import os
import random
import sys

import pytrec_eval

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "eval")
rng = random.Random(20261121)

docs = [f"d{i:03d}" for i in range(160)]
qrels, run, excluded = {}, {}, {}
for qi in range(40):
    qid = f"q{qi:02d}"
    judged = rng.sample(docs, rng.randint(1, 8))
    if qi % 9 == 4:  # only non-relevant judgments
        qrels[qid] = {d: 0 for d in judged}
    else:
        qrels[qid] = {d: rng.choice([0, 1, 1, 2, 3]) for d in judged}
    if qi % 11 == 7:  # judged, but absent from the run
        continue
    depth = rng.choice([5, 20, 120, 150])
    pool = rng.sample(docs, depth)
    # favour judged documents so metrics are not all zero
    for d in judged:
        if rng.random() < 0.6 and d not in pool:
            pool[rng.randrange(len(pool))] = d
    run[qid] = {d: round(rng.uniform(0, 2), 1) for d in pool}
    if qi % 5 == 1:
        ranked = sorted(run[qid].items(), key=lambda x: -x[1])
        excluded[qid] = [ranked[0][0]] + [d for d in judged[:1]]

filtered = {q: {d: s for d, s in docs_.items() if d not in excluded.get(q, [])} for q, docs_ in run.items()}
evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.10,100", "recip_rank"})
res = evaluator.evaluate(filtered)

per_query = {}
for qid in sorted(qrels):
    r = res.get(qid)
    if r is None:
        per_query[qid] = {"ndcg_at_10": 0.0, "recall_at_10": 0.0, "recall_at_100": 0.0, "mrr_at_10": 0.0}
        continue
    rr = r["recip_rank"]
    per_query[qid] = {
        "ndcg_at_10": r["ndcg_cut_10"],
        "recall_at_10": r["recall_10"],
        "recall_at_100": r["recall_100"],
        "mrr_at_10": rr if rr >= 0.1 - 1e-12 else 0.0,
    }
n = len(per_query)
mean = {k: sum(m[k] for m in per_query.values()) / n for k in ["ndcg_at_10", "recall_at_10", "recall_at_100", "mrr_at_10"]}

os.makedirs(OUT, exist_ok=True)
with open(os.path.join(OUT, "qrels.tsv"), "w") as f:
    f.write("query-id\tcorpus-id\tscore\n")
    for q in sorted(qrels):
        for d, r in sorted(qrels[q].items()):
            f.write(f"{q}\t{d}\t{r}\n")
with open(os.path.join(OUT, "run.trec"), "w") as f:
    # rank column deliberately meaningless (file order): trec_eval ignores it
    for q in sorted(run):
        for i, (d, s) in enumerate(run[q].items()):
            f.write(f"{q} Q0 {d} {i + 1} {s} golden\n")
with open(os.path.join(OUT, "excluded.json"), "w") as f:
    json.dump(excluded, f, indent=1, sort_keys=True)
with open(os.path.join(OUT, "expected.json"), "w") as f:
    json.dump({
        "generator": "scripts/golden_eval.py",
        "pytrec_eval_terrier": "0.5.11",
        "python": sys.version.split()[0],
        "num_queries": n,
        "mean": mean,
        "per_query": per_query,
    }, f, indent=1, sort_keys=True)
print(f"wrote {OUT}: {n} queries, mean {mean}")
