#!/usr/bin/env python3
"""The tables and the diagnosis behind scripts/measure_real_seeds.sh (issue 27).

    python3 scripts/real_seeds_table.py runs/real-seeds/<set> 42 7 1234

Reads each run's `eval/test.json` (trec_eval-exact per-query metrics) and, for the generated
view, `eval/test.reasoning.jsonl`; writes `table.md`, `diagnosis.md` and `summary.json` into the
folder and prints table.md. Python 3 standard library only.

METRIC=recall_at_100 (or recall_at_10, mrr_at_10) makes the same tables on that per-query metric
instead of nDCG@10, into `table-<metric>.md` and `summary-<metric>.json` (no diagnosis).
"""

import json
import os
import random
import re
import statistics as st
import sys

DRAWS = 100_000
METRIC = os.environ.get("METRIC", "ndcg_at_10")
SHOW = {"ndcg_at_10": "nDCG@10", "recall_at_10": "Recall@10", "recall_at_100": "Recall@100",
        "mrr_at_10": "MRR@10"}
if METRIC not in SHOW:
    sys.exit(f"METRIC={METRIC}: one of {', '.join(SHOW)}")
M = SHOW[METRIC]


def report(r, name):
    """`eval-bm25-*` → a plain eval's test.json; `eval-<stage>-seed<s>-<view>` → that `eval
    --views` run's test-<view>.json."""
    m = re.fullmatch(r"(eval-.+-seed\d+)-(bare|generated|mixed)", name)
    if m:
        return os.path.join(r, m.group(1), "eval", f"test-{m.group(2)}")
    return os.path.join(r, name, "eval", "test")


def per_query(r, name):
    j = json.load(open(report(r, name) + ".json"))
    return {q: m[METRIC] for q, m in j["per_query"].items()}


def mean(x):
    return sum(x.values()) / len(x)


def paired(a, b, seed=0):
    """a − b on the same queries: mean Δ, wins, losses, ties, two-sided randomisation p."""
    if sorted(a) != sorted(b):
        sys.exit("paired comparison over different query sets")
    d = [a[q] - b[q] for q in sorted(a)]
    obs = abs(sum(d))
    rng = random.Random(seed)
    hits = sum(abs(sum(x if rng.random() < 0.5 else -x for x in d)) >= obs - 1e-12 for _ in range(DRAWS))
    w = sum(x > 0 for x in d)
    l = sum(x < 0 for x in d)
    m = sum(d) / len(d)
    # queries a paired test would need to detect this mean Δ at α = 0.05 with 80 % power
    # (normal approximation: n = ((1.96 + 0.84) · sd / Δ)²)
    need = ((1.96 + 0.84) * st.stdev(d) / abs(m)) ** 2 if m and len(d) > 1 else float("inf")
    return {"delta": m, "wins": w, "losses": l, "ties": len(d) - w - l,
            "p": (hits + 1) / (DRAWS + 1), "queries_for_80pct_power": need}


def fmt_p(c):
    need = c["queries_for_80pct_power"]
    need = f"{need:,.0f}" if need < 1e7 else "∞"
    return f"{c['delta']:+.4f} | {c['wins']} / {c['losses']} / {c['ties']} | {c['p']:.3g} | {need}"


def sd(xs):
    return st.stdev(xs) if len(xs) > 1 else 0.0


WORD = re.compile(r"[A-Za-z_][\w.'-]*[\w']|[A-Za-z_]")


def names(text):
    return {w.rstrip(".") for w in WORD.findall(text) if len(w) > 2}


def loops(text):
    """Whether a reasoning says one sentence 3 or more times."""
    sents = [x.strip() for x in re.split(r"[.;]", text) if x.strip()]
    return int(max((sents.count(x) for x in set(sents)), default=0) >= 3)


def diagnose(r, seeds, runs, corpus_ids, gold_of, query_text):
    """Own reasoning vs bare after stage 3 (and 2), per query, against features of the reasoning;
    `runs`: the per-query nDCG@10 already read, by (seed, stage, view)."""
    rows = []
    for s in seeds:
        for st_ in ("s2", "s3"):
            gen, bare = runs[(s, st_, "generated")], runs[(s, st_, "bare")]
            path = report(r, f"eval-{st_}-seed{s}-generated") + ".reasoning.jsonl"
            for line in open(path):
                x = json.loads(line)
                qid, text = x["query_id"], x["reasoning"]
                ns = names(text)
                qn = names(query_text[qid])
                # a Coq id is qualified (Arith.PeanoNat.Nat.sub_0_r), reasoning says sub_0_r
                gold = {g.split(".")[-1] for g in gold_of.get(qid, set())}
                rows.append({
                    "seed": s, "stage": st_, "qid": qid, "reasoning": text, "gold_reasoning": x.get("gold_reasoning", ""),
                    "delta": gen[qid] - bare[qid], "gen": gen[qid], "bare": bare[qid],
                    "words": len(text.split()),
                    "gold_named": len(ns & gold), "gold": len(gold),
                    "corpus_named": len((ns & corpus_ids) - gold),
                    "loops": loops(text),
                    "invented": len({n for n in ns - corpus_ids - qn
                                     if re.search(r"[0-9_]|[a-z][A-Z]|^[a-z]+$", n) and len(n) > 3}),
                    "query_overlap": len(ns & qn) / max(1, len(ns)),
                })
    return rows


def bucket_table(rows, key, edges, label):
    out = [f"| {label} | (query, seed) pairs | mean Δ nDCG@10 (own − bare) | own wins | own loses |",
           "|---|---|---|---|---|"]
    for lo, hi in zip(edges, edges[1:]):
        b = [x for x in rows if lo <= x[key] < hi]
        if not b:
            continue
        out.append(f"| [{lo:g}, {hi:g}) | {len(b)} | {st.mean(x['delta'] for x in b):+.4f} | "
                   f"{sum(x['delta'] > 0 for x in b)} | {sum(x['delta'] < 0 for x in b)} |")
    return "\n".join(out)


def main():
    r, seeds = sys.argv[1], sys.argv[2:]
    if not seeds:
        sys.exit("usage: real_seeds_table.py RUNS_DIR SEED...")
    cfg = open(os.path.join(r, "s1", "config.resolved.toml")).read()
    dataset = re.search(r'^dataset = "([^"]+)"', cfg, re.M).group(1)
    corpus_ids = {json.loads(l)["_id"].split(".")[-1] for l in open(os.path.join(dataset, "corpus.jsonl"))}
    query_text = {}
    for l in open(os.path.join(dataset, "queries.jsonl")):
        x = json.loads(l)
        query_text[x["_id"]] = x["text"]
    gold_of = {}
    for l in list(open(os.path.join(dataset, "qrels", "test.tsv")))[1:]:
        q, d, _ = l.rstrip("\n").split("\t")
        gold_of.setdefault(q, set()).add(d)

    bm_bare, bm_gold = per_query(r, "eval-bm25-bare"), per_query(r, "eval-bm25-gold")
    views = ["bare", "generated"]
    if all(os.path.exists(report(r, f"eval-{st_}-seed{s}-mixed") + ".json")
           for s in seeds for st_ in ("s2", "s3")):
        views.append("mixed")
    have = lambda name: os.path.exists(report(r, name) + ".json")
    cells = [(a, b) for a in ("s2", "s3") for b in views]
    bb = all(have(f"eval-s3bb-seed{s}-{v}") for s in seeds for v in ("bare", "generated"))
    if bb:  # BB=1: stage 3 with the beats_bare reward
        cells += [("s3bb", "bare"), ("s3bb", "generated")]
    long_ = all(have(f"eval-s3long-seed{s}-{v}") for s in seeds for v in ("bare", "generated", "mixed"))
    if long_:  # LONG=N: the stage-3 models with an N-token reasoning budget at evaluation
        tokens = lambda run: re.search(r"^max_reasoning_tokens = (\d+)", open(os.path.join(
            r, run, "config.resolved.toml")).read(), re.M).group(1)
        budget, base = tokens(f"eval-s3long-seed{seeds[0]}"), tokens(f"s3-seed{seeds[0]}")
        cells += [("s3long", "generated"), ("s3long", "mixed")]
    rp = all(have(f"eval-s3rp-seed{s}-{v}") for s in seeds for v in ("generated", "mixed"))
    if rp:  # RP=r: the stage-3 models' reasoning with a repetition penalty
        penalty = re.search(r"^repetition_penalty = ([\d.]+)", open(os.path.join(
            r, f"eval-s3rp-seed{seeds[0]}", "config.resolved.toml")).read(), re.M).group(1)
        cells += [("s3rp", "generated"), ("s3rp", "mixed")]
        # every run the penalty rows name used that one value (RP rerun with another keeps the
        # finished runs of the first)
        for run in [f"eval-{x}-seed{s}" for x in ("s3rp", "s2rp", "s3rpt") for s in seeds] + \
                [f"s3rpt-seed{s}" for s in seeds]:
            cfg_ = os.path.join(r, run, "config.resolved.toml")
            if os.path.exists(cfg_):
                got = re.search(r"^repetition_penalty = ([\d.]+)", open(cfg_).read(), re.M).group(1)
                if float(got) != float(penalty):
                    sys.exit(f"{run} used repetition_penalty {got}, eval-s3rp-seed{seeds[0]} {penalty}: "
                             "remove the runs of the other value and rerun")
    rp2 = rp and all(have(f"eval-s2rp-seed{s}-{v}") for s in seeds for v in ("generated", "mixed"))
    if rp2:  # RP=r: the stage-2 models' reasoning with the penalty too
        cells += [("s2rp", "generated"), ("s2rp", "mixed")]
    rpt = rp and all(have(f"eval-s3rpt-seed{s}-{v}") for s in seeds for v in ("bare", "generated", "mixed"))
    if rpt:  # RPT=1: stage 3 trained with the penalty, evaluated with it
        cells += [("s3rpt", "bare"), ("s3rpt", "generated"), ("s3rpt", "mixed")]
    runs = {(s,) + c: per_query(r, f"eval-{c[0]}-seed{s}-{c[1]}") for s in seeds for c in cells}
    n = len(bm_bare)
    label = {"bare": "bare", "generated": "own reasoning", "mixed": "mixed"}
    stage = {"s2": "after stage 2", "s3": "after stage 3", "s3bb": "after stage 3 + beats_bare"}
    if long_:
        stage["s3long"] = f"after stage 3, {budget}-token reasoning"
    if rp:
        stage["s3rp"] = f"after stage 3, repetition penalty {penalty}"
        stage["s2rp"] = f"after stage 2, repetition penalty {penalty}"
        stage["s3rpt"] = f"after stage 3 trained with repetition penalty {penalty} (and evaluated with it)"
    out = [f"Test split, {n} queries; {M} (trec_eval's); last checkpoints; seeds {', '.join(seeds)}.",
           f"BM25: bare {mean(bm_bare):.4f}, with the gold reasoning (oracle) {mean(bm_gold):.4f}.\n",
           "| model | query | " + " | ".join(f"seed {x}" for x in seeds) + " | mean ± sd |",
           "|---" * (len(seeds) + 3) + "|"]
    for a, b in cells:
        v = [mean(runs[(s, a, b)]) for s in seeds]
        out.append(f"| {stage[a]} | {label[b]} | " + " | ".join(f"{x:.4f}" for x in v)
                   + f" | {st.mean(v):.4f} ± {sd(v):.4f} |")
    out += ["", f"Paired, per query (Δ = first − second). Per seed: Δ {M} (two-sided paired "
            f"randomisation p, {DRAWS:,} sign flips). Seed mean: the same on each query's {M} "
            "averaged over the seeds, with wins / losses / ties and the test queries a paired "
            "test would need to detect that Δ at α = 0.05 with 80 % power (from the per-query "
            "spread).\n",
            "| comparison | " + " | ".join(f"seed {x}" for x in seeds)
            + " | seed mean: Δ | wins / losses / ties | p | queries for 80 % power |",
            "|---" * (len(seeds) + 5) + "|"]
    comps = [("own reasoning vs bare, after stage 2", ("s2", "generated"), ("s2", "bare")),
             ("own reasoning vs bare, after stage 3", ("s3", "generated"), ("s3", "bare")),
             ("stage 3 vs stage 2, own reasoning", ("s3", "generated"), ("s2", "generated")),
             ("stage 3 own reasoning vs stage 2 bare", ("s3", "generated"), ("s2", "bare"))]
    if "mixed" in views:
        comps += [("mixed vs bare, after stage 3", ("s3", "mixed"), ("s3", "bare")),
                  ("mixed vs own reasoning, after stage 3", ("s3", "mixed"), ("s3", "generated")),
                  ("mixed vs bare, after stage 2", ("s2", "mixed"), ("s2", "bare"))]
    if bb:
        comps += [("stage 3 + beats_bare vs stage 3, own reasoning", ("s3bb", "generated"), ("s3", "generated")),
                  ("stage 3 + beats_bare vs stage 2, own reasoning", ("s3bb", "generated"), ("s2", "generated")),
                  ("own reasoning vs bare, after stage 3 + beats_bare", ("s3bb", "generated"), ("s3bb", "bare"))]
    if long_:
        comps += [(f"{budget}-token vs {base}-token own reasoning, after stage 3", ("s3long", "generated"), ("s3", "generated")),
                  (f"{budget}-token own reasoning vs bare, after stage 3", ("s3long", "generated"), ("s3", "bare")),
                  (f"{budget}-token mixed vs bare, after stage 3", ("s3long", "mixed"), ("s3", "bare"))]
    if rp:
        comps += [(f"repetition penalty {penalty} vs none, own reasoning, after stage 3", ("s3rp", "generated"), ("s3", "generated")),
                  (f"repetition penalty {penalty}, own reasoning vs bare, after stage 3", ("s3rp", "generated"), ("s3", "bare")),
                  (f"repetition penalty {penalty}, mixed vs bare, after stage 3", ("s3rp", "mixed"), ("s3", "bare"))]
    if rp2:
        comps += [(f"stage 3 vs stage 2, own reasoning, both with repetition penalty {penalty}", ("s3rp", "generated"), ("s2rp", "generated")),
                  (f"repetition penalty {penalty}, own reasoning vs bare, after stage 2", ("s2rp", "generated"), ("s2", "bare"))]
    if rpt:
        comps += [(f"stage 3 trained with vs without repetition penalty {penalty}, own reasoning (evaluated with it)", ("s3rpt", "generated"), ("s3rp", "generated")),
                  (f"own reasoning vs bare, after stage 3 trained with repetition penalty {penalty}", ("s3rpt", "generated"), ("s3rpt", "bare")),
                  (f"mixed vs bare, after stage 3 trained with repetition penalty {penalty}", ("s3rpt", "mixed"), ("s3rpt", "bare"))]
    if rpt and rp2:
        comps += [(f"stage 3 trained with repetition penalty {penalty} vs stage 2, own reasoning (both evaluated with it)", ("s3rpt", "generated"), ("s2rp", "generated"))]
    summary = {"queries": n, "seeds": seeds, "bm25_bare": mean(bm_bare), "bm25_gold": mean(bm_gold),
               "per_seed": {s: {f"{a}_{b}": mean(runs[(s, a, b)]) for a, b in cells} for s in seeds},
               "paired": {}}
    avg = lambda k: {q: st.mean(runs[(s,) + k][q] for s in seeds) for q in bm_bare}
    for label_, x, y in comps:
        row = [label_]
        for s in seeds:
            c = paired(runs[(s,) + x], runs[(s,) + y])
            summary["paired"][f"{label_} / seed {s}"] = c
            row.append(f"{c['delta']:+.4f} ({c['p']:.2g})")
        c = paired(avg(x), avg(y))
        summary["paired"][f"{label_} / seed mean"] = c
        out.append("| " + " | ".join(row) + f" | {fmt_p(c)} |")
    table = "\n".join(out) + "\n"
    if METRIC != "ndcg_at_10":
        open(os.path.join(r, f"table-{METRIC}.md"), "w").write(table)
        json.dump(summary, open(os.path.join(r, f"summary-{METRIC}.json"), "w"), indent=2)
        print(table)
        return
    open(os.path.join(r, "table.md"), "w").write(table)

    rows = diagnose(r, seeds, runs, corpus_ids, gold_of, query_text)
    s3 = [x for x in rows if x["stage"] == "s3"]
    d = ["# Where own reasoning loses to the bare query (after stage 3, all seeds)\n",
         f"{len(s3)} (query, seed) pairs; Δ = own-reasoning nDCG@10 − bare nDCG@10 of the same model.\n",
         bucket_table(s3, "loops", [0, 1, 2], "loops (a sentence said 3 or more times)"), "",
         bucket_table(s3, "words", [0, 10, 20, 30, 40, 60, 1000], "reasoning words"), "",
         bucket_table(s3, "gold_named", [0, 1, 2, 3, 100], "gold labels named in the reasoning"), "",
         bucket_table(s3, "corpus_named", [0, 1, 2, 4, 100], "other (non-gold) corpus labels named"), "",
         bucket_table(s3, "invented", [0, 1, 2, 4, 100], "invented labels (in no document, not in the query)"), "",
         bucket_table(s3, "query_overlap", [0, 0.2, 0.4, 0.6, 1.01], "share of its names taken from the query"), ""]
    tot = lambda k: sum(x[k] for x in s3)
    d.append(f"Over all pairs: {sum(x['loops'] for x in s3)} of {len(s3)} reasonings loop; "
             f"{st.mean(x['words'] for x in s3):.1f} words a reasoning; it names "
             f"{tot('gold_named')} gold labels of {tot('gold')} ({tot('gold_named') / max(1, tot('gold')):.1%}), "
             f"{tot('corpus_named')} non-gold corpus labels and {tot('invented')} invented ones.\n")
    def loop_line(what, run):  # how often a run's reasonings loop, on the same (query, seed) pairs
        texts = [json.loads(l)["reasoning"] for s in seeds for l in open(
            report(r, f"eval-{run}-seed{s}-generated") + ".reasoning.jsonl")]
        return (f"{what}: {sum(map(loops, texts))} of {len(texts)} reasonings loop; "
                f"{st.mean(len(t.split()) for t in texts):.1f} words a reasoning.\n")
    if rp:
        d.append(loop_line(f"With repetition penalty {penalty}", "s3rp"))
    if rpt:
        d.append(loop_line(f"Stage 3 trained and evaluated with repetition penalty {penalty}", "s3rpt"))
    worst = sorted((x for x in s3 if x["delta"] < 0), key=lambda x: x["delta"])[:4]
    best = sorted((x for x in s3 if x["delta"] > 0), key=lambda x: -x["delta"])[:2]
    for title, xs in (("Largest losses", worst), ("Largest wins", best)):
        d.append(f"## {title}\n")
        for x in xs:
            d.append(f"- `{x['qid']}` seed {x['seed']}: bare {x['bare']:.3f} → own {x['gen']:.3f}. "
                     f"Query: {query_text[x['qid']][:160]!r}. Own reasoning: {x['reasoning'][:240]!r}. "
                     f"Gold: {sorted(gold_of.get(x['qid'], []))[:8]}.")
        d.append("")
    open(os.path.join(r, "diagnosis.md"), "w").write("\n".join(d))
    summary["diagnosis_rows"] = len(s3)
    json.dump(summary, open(os.path.join(r, "summary.json"), "w"), indent=2)
    print(table)
    print("\n".join(d))


if __name__ == "__main__":
    main()
