#!/usr/bin/env python3
"""Premise selection from Metamath's set.mm, in the BEIR layout t1-train reads.

    python3 scripts/make_metamath_premises.py [--out assets/metamath-premises] [--mm FILE]
                                              [--start LABEL] [--count N]
                                              [--max-dev N] [--max-test N]

A second real reasoning-intensive set beside the Coq one (issue 27): a theorem of set.mm — its
English description and its statement — is the query; the earlier theorems, axioms and
definitions its proof uses are the relevant documents. Relevance comes from the proofs, which
Metamath checks mechanically, not from annotators. It ships as a registry package: Debian's
`metamath-databases` (set.mm as of 2021-01-01, CC0), fetched with `apt-get download` and
unpacked with `dpkg-deb -x` (the only network access; the .deb's SHA-256 goes to SOURCE.json).

1. set.mm is read token by token: comments, `${ $}` scopes, `$f $e $a $p` statements, normal and
   compressed proofs (`( label … ) LETTERS`: the labels in parentheses are the ones the proof
   refers to beyond the theorem's own hypotheses).
2. Every `|-` assertion (`$a` axiom or definition, `$p` theorem) is a document: `_id` = its
   label, `title` = the label, `text` = its description (the comment just before it, with the
   "(Contributed by …)"-style credits removed) followed by its hypotheses and its statement in
   set.mm's ASCII notation. Labels ending in `OLD` or `ALT` (obsolete or alternative proofs kept
   for reference) are left out, as are the syntax axioms (`wff`, `class`, `setvar` typecodes).
3. The window: `--count` assertions from `--start` on are the set's own (default: 2,000 from
   the real and complex numbers' first theorem about addition, `addcl` — arithmetic, not just
   logic). Each window theorem whose proof uses at least one document is a query: `text` = its
   description and statement; relevant = the documents its proof refers to (in proof order,
   each once); `excluded_ids` = itself. The corpus is the window plus every earlier assertion a
   window proof uses, so a query's gold is always retrievable (references only point back).
4. Split by neighbourhood: runs of 25 consecutive queries within a section (set.mm's `=-=-` /
   `-.-.` headings), in SHA-256 order of their name, fill test until it holds 10 % of the
   queries, then dev, the rest train — test theorems come from stretches of the library never
   seen in training (whole sections are too few here: 26 in the default window). `--max-dev/--max-test` keep a deterministic sample.
5. Gold `reasoning` = "It follows from L1 (its description); L2 (…); …", the proof's references
   with the first words of their descriptions, capped at 8 references and ~60 words.
6. `hard_negatives.jsonl`: for train queries, up to 4 assertions of the same section, declared
   earlier, that the proof does not use.

Deterministic: the same package gives byte-identical files. Needs only Python 3 (stdlib).
"""

import argparse
import hashlib
import os
import re
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import beir_out  # noqa: E402
from debian_source import fetch, sha256  # noqa: E402

DEB = "metamath-databases"
CREDIT = re.compile(
    r"\((?:Contributed|Revised|Proof shortened|Proof modification|New usage|Modified|Assertion|"
    r"Shortened|Proof modified|Mathbox|Inferred|Moved|Recommended)[^()]*(?:\([^()]*\)[^()]*)*\)")
CHUNK = 25
SECTION = re.compile(r"^\s*(?:#\*#\*|=-=-|-\.-\.|\.-\.-)")


def clean_comment(c):
    c = CREDIT.sub("", c)
    c = re.sub(r"`\s*([^`]*?)\s*`", r"\1", c)  # `math` spans
    c = re.sub(r"\[[^\]]*\]", "", c)  # bibliography tags [Mendelson] p. 35
    c = re.sub(r"\s+", " ", c).strip()
    return c


def section_title(c):
    """A heading comment: the separator line, then the title; returns the title or None."""
    lines = [l.strip() for l in c.split("\n")]
    if not lines or not any(SECTION.match(l) for l in lines[:2]):
        return None
    for l in lines:
        if l and not SECTION.match(l):
            return re.sub(r"\s+", " ", l)
    return None


def parse(path):
    """Yields assertions in file order: dict(label, kind, typecode, hyps, statement, comment,
    section, refs)."""
    if not os.path.isfile(path):
        sys.exit(f"{path}: no such file (--mm)")
    text = open(path, encoding="utf-8", errors="replace").read()
    toks = re.finditer(r"\S+", text)
    scopes = [[]]  # active $e hypotheses per scope: (label, statement)
    comment, section, out = "", "", []
    pending = None  # label waiting for its keyword
    for m in toks:
        t = m.group(0)
        if t == "$(":
            end = text.find("$)", m.end())
            if end < 0:
                sys.exit(f"{path}: unterminated comment at offset {m.start()}")
            c = text[m.end():end]
            title = section_title(c)
            if title is not None:
                section, comment = title, ""
            else:
                comment = c
            # skip the comment's tokens
            while True:
                n = next(toks)
                if n.group(0) == "$)":
                    break
            continue
        if t == "${":
            scopes.append([])
            continue
        if t == "$}":
            scopes.pop()
            continue
        if t in ("$c", "$v", "$d"):
            for n in toks:
                if n.group(0) == "$.":
                    break
            continue
        if t in ("$f", "$e", "$a", "$p"):
            body, proof = [], None
            for n in toks:
                x = n.group(0)
                if x == "$.":
                    break
                if x == "$=":
                    proof = []
                    continue
                (body if proof is None else proof).append(x)
            label = pending
            pending = None
            if t == "$e":
                scopes[-1].append((label, " ".join(body[1:])))
            elif t in ("$a", "$p"):
                refs = []
                if proof:
                    if proof[0] == "(":
                        refs = proof[1:proof.index(")")]
                    else:
                        refs = proof
                out.append({
                    "label": label, "kind": t, "typecode": body[0],
                    "hyps": [s for sc in scopes for _, s in sc],
                    "hyp_labels": {l for sc in scopes for l, _ in sc},
                    "statement": " ".join(body[1:]), "comment": clean_comment(comment),
                    "section": section, "refs": refs,
                })
            comment = ""
            continue
        if t.startswith("$"):
            continue  # $[ include $] and the like: none in set.mm
        pending = t
    return out


def describe(comment, query=False):
    """A description as text: `~ label` cross-references become plain labels, or go entirely in
    a query's text, where they often name the very theorems its proof uses ("Alias for
    ax-addcl")."""
    c = re.sub(r"~\s+\S+", "", comment) if query else re.sub(r"~\s+(\S+)", r"\1", comment)
    return re.sub(r"\s+([,.;:])", r"\1", re.sub(r"\s+", " ", c)).strip()


def doc_text(a, query=False):
    """Statement first (it survives truncation), then the description."""
    hyps = " & ".join(a["hyps"])
    stmt = f"{hyps} => {a['statement']}" if hyps else a["statement"]
    return f"{stmt} {describe(a['comment'], query)}".strip()


def short(a, words=8):
    w = describe(a["comment"]).split()
    return " ".join(w[:words]) + (" …" if len(w) > words else "")


def reasoning(used, by_label):
    parts = []
    for l in used[:8]:
        d = short(by_label[l])
        parts.append(f"{l} ({d})" if d else l)
    more = f"; and {len(used) - 8} more" if len(used) > 8 else ""
    return "It follows from " + "; ".join(parts) + more + "."


def splits(query_sections):
    total = sum(query_sections.values())
    out, filled = {}, {"test": 0, "dev": 0}
    for s in sorted(query_sections, key=lambda s: hashlib.sha256(s.encode()).hexdigest()):
        split = next((k for k in ("test", "dev") if filled[k] < 0.1 * total), "train")
        out[s] = split
        if split != "train":
            filled[split] += query_sections[s]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="assets/metamath-premises")
    ap.add_argument("--mm", help="a set.mm file (default: fetch metamath-databases)")
    ap.add_argument("--start", default="addcl", help="label of the window's first assertion")
    ap.add_argument("--count", type=int, default=2000, help="assertions in the window")
    ap.add_argument("--max-dev", type=int, default=0)
    ap.add_argument("--max-test", type=int, default=0)
    ap.add_argument("--max-gold", type=int, default=16, help="drop queries whose proof uses more")
    a = ap.parse_args()

    deb = None
    mm = a.mm
    if not mm:
        mm, deb = fetch(DEB, os.path.join(os.path.dirname(a.out) or ".", ".metamath-deb"),
                        "usr/share/metamath/databases/set.mm")
    asserts = [x for x in parse(mm)
               if x["typecode"] == "|-" and not re.search(r"(OLD|ALT)$", x["label"])]
    by_label = {x["label"]: x for x in asserts}
    pos = {x["label"]: i for i, x in enumerate(asserts)}
    if a.start not in pos:
        sys.exit(f"{mm}: no |- assertion labelled {a.start!r} (--start)")
    if a.count < 1:
        sys.exit("--count must be at least 1")
    window = asserts[pos[a.start]:pos[a.start] + a.count]

    queries, skipped, needed = [], defaultdict(int), set()
    for x in window:
        if x["kind"] != "$p":
            continue
        used = []
        for r in x["refs"]:
            if r in x["hyp_labels"] or r == x["label"] or r not in by_label or r in used:
                continue  # its own hypotheses, syntax ($f, wff constructors), obsolete labels
            used.append(r)
        if not used:
            skipped["proof uses no assertion"] += 1
            continue
        if len(used) > a.max_gold:
            skipped[f"more than {a.max_gold} assertions used"] += 1
            continue
        needed.update(used)
        queries.append((x["section"], {
            "_id": "q:" + x["label"],
            "text": doc_text(x, query=True),
            "reasoning": reasoning(used, by_label),
            "excluded_ids": [x["label"]],
        }, used))
    in_window = {x["label"] for x in window}
    corpus_labels = [x["label"] for x in asserts if x["label"] in in_window or x["label"] in needed]
    corpus = [{"_id": l, "title": l, "text": doc_text(by_label[l])} for l in corpus_labels]

    # split unit: a run of CHUNK consecutive queries of one section (set.mm's sections hold
    # hundreds of theorems, too few to split by); test neighbourhoods are never trained on
    chunk_of, run = [], defaultdict(int)
    for s, _, _ in queries:
        chunk_of.append(f"{s} #{run[s] // CHUNK}")
        run[s] += 1
    queries = [(c, q, used) for c, (_, q, used) in zip(chunk_of, queries)]
    per_section = defaultdict(int)
    for s, _, _ in queries:
        per_section[s] += 1
    split_of = splits(per_section)
    chunk_of = {q["_id"]: c for c, q, _ in queries}
    queries = [(split_of[s], q, used) for s, q, used in queries]
    kept = []
    for split, cap in (("train", 0), ("dev", a.max_dev), ("test", a.max_test)):
        rows = [q for q in queries if q[0] == split]
        if cap and len(rows) > cap:
            rows = sorted(rows, key=lambda q: hashlib.sha256(q[1]["_id"].encode()).hexdigest())[:cap]
            rows.sort(key=lambda q: pos[q[1]["excluded_ids"][0]])
        kept.extend(rows)

    negatives = []
    for split, q, used in kept:
        if split != "train":
            continue
        x = by_label[q["excluded_ids"][0]]
        i = pos[x["label"]]
        same = [y["label"] for y in asserts[max(0, i - 40):i]
                if y["section"] == x["section"] and y["label"] not in used and y["label"] in in_window]
        if same:
            negatives.append({"query_id": q["_id"], "doc_ids": same[-4:]})

    source = {
        "package": DEB,
        "deb": os.path.basename(deb) if deb else None,
        "deb_sha256": sha256(deb) if deb else None,
        "database": "usr/share/metamath/databases/set.mm (from the .deb)" if deb else mm,
        "window": {"start": a.start, "count": len(window), "last": window[-1]["label"]},
        "assertions": len(asserts),
        "documents": len(corpus),
        "splits": None,  # filled by beir_out.write
        "left_out": dict(sorted(skipped.items())),
        "written_by": "scripts/make_metamath_premises.py",
    }
    beir_out.write(a.out, corpus, kept, negatives, source, lambda rows: {
        "sections": len({by_label[q["excluded_ids"][0]]["section"] for _, q, _ in rows}),
        "neighbourhoods": len({chunk_of[q["_id"]] for _, q, _ in rows})})


if __name__ == "__main__":
    main()
