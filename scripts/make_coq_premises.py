#!/usr/bin/env python3
"""Premise selection from the Coq standard library, in the BEIR layout t1-train reads.

    python3 scripts/make_coq_premises.py [--out assets/coq-premises] [--theories DIR]
                                         [--dirs Arith,Lists,...] [--max-dev N] [--max-test N]

Why this source: it is real, reasoning-intensive retrieval (which earlier lemmas does a proof
of this statement use?), the relevance judgments come from the proofs themselves rather than
from annotators, and it ships as a registry package: Debian's `libcoq-stdlib` (8.16.1, LGPL-2.1),
~580 `.v` files, ~11.7k lemma/theorem statements. Only the standard library's sources are read;
Coq itself is not needed.

1. Without `--theories`, `apt-get download libcoq-stdlib` into `assets/.coq-deb/` and unpack it
   with `dpkg-deb -x` (the only network access; the .deb's SHA-256 is written to SOURCE.json).
2. Every `.v` file: comments removed, split into sentences, `Module`/`Section` nesting tracked.
   Each `Lemma | Theorem | Corollary | Fact | Remark | Proposition` becomes a document:
   `_id` = `<Dir>.<File>[.<Module>…].<name>`, `title` = that qualified name, `text` = the
   statement (binders and type, whitespace collapsed).
3. Each such lemma with a proof script (`Proof. … Qed./Defined.`) is a query: `text` = its
   statement; relevant documents = the library lemmas its proof script names, resolved as Coq
   would find them (same file and declared earlier, then the files it `Require`s, then a name
   unique in the library; ambiguous names are dropped, never guessed); `excluded_ids` = the lemma
   itself (its own statement is in the corpus); gold `reasoning` = a short derivation: the proof
   script, shortened, and the lemmas it relies on. Queries whose proof names no library lemma
   (pure automation) are left out, and counted.
4. Split by file: files in SHA-256 order of their path go to test until it holds 10% of the
   queries, then to dev (10%), the rest to train — so test lemmas come from files never seen in
   training. `--max-dev/--max-test` keep a deterministic sample of those
   splits (for CPU-sized evaluation; 0 = all).
5. `hard_negatives.jsonl`: for train queries, up to 4 lemmas declared earlier in the same file
   that the proof does not use.

Deterministic: the same package gives byte-identical files. Needs only Python 3 (stdlib).
"""

import argparse
import glob
import hashlib
import os
import re
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import beir_out  # noqa: E402
from debian_source import fetch, sha256  # noqa: E402

KINDS = ("Lemma", "Theorem", "Corollary", "Fact", "Remark", "Proposition")
ENDS = ("Qed", "Defined", "Admitted", "Abort", "Save")
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_']*(?:\.[A-Za-z_][A-Za-z0-9_']*)*")
DEB = "libcoq-stdlib"
# tactics whose names are also lemma names (`induction`, `f_equal`, `absurd`…): such a word counts
# as a lemma only where a term is expected (after apply/rewrite/exact…, or inside parentheses)
TACTICS = set("""
intro intros induction destruct case elim apply eapply rewrite erewrite exact eexact auto eauto
trivial reflexivity symmetry transitivity simpl unfold fold split left right exists constructor
econstructor assumption inversion inversion_clear subst clear revert generalize specialize pose set
assert cut intuition tauto firstorder omega lia nia lra ring field f_equal congruence discriminate
injection contradiction exfalso now easy order rename remember replace change pattern compute
vm_compute cbn red hnf try repeat do solve first progress idtac fail absurd decide case_eq
contradict lazy cbv refine exact_no_check nra psatz setoid_rewrite rewrite_all functional
""".split())
TERM_BEFORE = {"apply", "eapply", "rewrite", "erewrite", "exact", "eexact", "pose", "specialize",
               "generalize", "using", "with", "refine", "setoid_rewrite", "exploit", "by", "(", ",",
               "<-", "->", "!", "?", "@"}


def strip_comments(src):
    """Removes (nested) `(* … *)` comments, leaving string literals alone."""
    out, depth, i, n, in_str = [], 0, 0, len(src), False
    while i < n:
        c = src[i]
        if in_str:
            if depth == 0:
                out.append(c)
            if c == '"':
                in_str = False
            i += 1
        elif src.startswith("(*", i):
            depth += 1
            i += 2
        elif depth and src.startswith("*)", i):
            depth -= 1
            i += 2
            if depth == 0:
                out.append(" ")
        elif depth:
            i += 1
        else:
            if c == '"':
                in_str = True
            out.append(c)
            i += 1
    return "".join(out)


def sentences(src):
    """Splits at a `.` followed by whitespace or the end (not inside `..` or qualified names)."""
    parts = re.split(r"(?<!\.)\.(?=\s|$)", src)
    return [" ".join(p.split()) for p in parts if p.strip()]


def strip_attributes(s):
    s = re.sub(r"^#\[[^\]]*\]\s*", "", s)
    return re.sub(r"^(Local|Global|Polymorphic|Monomorphic|Program)\s+", "", s)


def parse_file(path, rel):
    """(decls, requires): decls in order, each {name, qual, statement, proof}."""
    src = strip_comments(open(path, encoding="utf-8", errors="replace").read())
    mod = rel[: -len(".v")].replace("/", ".")
    stack, decls, requires = [], [], set()
    sents = sentences(src)
    i = 0
    while i < len(sents):
        s = strip_attributes(sents[i])
        head = s.split(" ", 1)[0]
        m = re.match(r"(?:From \S+ )?Require (?:Import |Export )?(.*)$", s)
        if m:
            requires.update(x.split(".")[-1] for x in m.group(1).split())
        elif head in ("Module", "Section") and not re.match(r"Module (Type )?\w+\s*:=", s):
            words = s.split()
            name = words[2] if len(words) > 2 and words[1] in ("Type", "Import", "Export") else (
                words[1] if len(words) > 1 else "")
            # `Module M := X.` and `Module M (X : T) <: S := …` define no open scope
            if ":=" not in s:
                stack.append((head, re.sub(r"\W.*", "", name)))
        elif head == "End" and stack:
            stack.pop()
        elif head in KINDS:
            m = re.match(r"(\w+)\s+([A-Za-z_][A-Za-z0-9_']*)\s*(.*)$", s)
            if m:
                name, statement = m.group(2), m.group(3).strip()
                proof, j = [], i + 1
                while j < len(sents):
                    t = sents[j]
                    if t.split(" ", 1)[0] in ENDS:
                        break
                    if re.match(r"^(Lemma|Theorem|Definition|Fixpoint|Inductive|End|Module|Section)\b", t):
                        j -= 1  # no proof end seen: do not swallow the next declaration
                        break
                    proof.append(t)
                    j += 1
                closed = j < len(sents) and sents[j].split(" ", 1)[0] in ("Qed", "Defined")
                scope = [n for k, n in stack if k == "Module" and n]
                decls.append({
                    "name": name,
                    "qual": ".".join([mod] + scope + [name]),
                    "statement": statement.lstrip(":").strip() if statement.startswith(":") else statement,
                    "proof": proof if closed else None,
                })
                i = j
        i += 1
    return decls, requires


def resolve(token, here, file_of, by_name, requires, file_requires):
    """The one declaration a proof's identifier names, or None when unknown or ambiguous."""
    short = token.split(".")[-1]
    cands = by_name.get(short, [])
    if not cands:
        return None
    if "." in token:
        suffix = "." + token
        cands = [c for c in cands if c["qual"].endswith(suffix)] or cands
    same = [c for c in cands if file_of[c["qual"]] == here["file"] and c["pos"] < here["pos"]]
    if same:
        return same[-1] if len(same) == 1 or "." not in token else None
    req = [c for c in cands if file_of[c["qual"]].split("/")[-1][:-2] in file_requires[here["file"]]]
    if len(req) == 1:
        return req[0]
    # a name unique in the whole library, when it looks like a lemma's (add_comm, Rle_dec, …) or is
    # qualified: a bare generic word (`inv`, `compare`) is more likely a local function
    if len(cands) == 1 and ("." in token or re.search(r"[_0-9]", short)):
        return cands[0]
    return None


def file_splits(query_files):
    """File → split: files in SHA-256 order of their path fill test until it holds 10% of the
    queries, then dev to 10%, the rest is train — whole files, so test lemmas come from files
    never seen in training, and balanced whatever subset of the library is kept."""
    total = sum(query_files.values())
    out, filled = {}, {"test": 0, "dev": 0}
    for f in sorted(query_files, key=lambda f: hashlib.sha256(f.encode()).hexdigest()):
        split = next((s for s in ("test", "dev") if filled[s] < 0.1 * total), "train")
        out[f] = split
        if split != "train":
            filled[split] += query_files[f]
    return out


def reasoning(proof, names):
    script = " ".join(p if p.endswith(".") else p + "." for p in proof if p != "Proof")
    script = re.sub(r"^Proof( (using|with) [^.]*)?\.\s*", "", script)
    if len(script) > 220:
        script = script[:220].rsplit(" ", 1)[0] + " …"
    return f"Proof idea: {script} It relies on {', '.join(names)}."


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="assets/coq-premises")
    ap.add_argument("--theories", help="an unpacked theories/ folder (default: fetch libcoq-stdlib)")
    ap.add_argument("--dirs", default="", help="comma-separated top-level theory folders to keep (default: all)")
    ap.add_argument("--max-dev", type=int, default=0)
    ap.add_argument("--max-test", type=int, default=0)
    ap.add_argument("--max-gold", type=int, default=16, help="drop queries whose proof uses more lemmas")
    a = ap.parse_args()

    deb = None
    theories = a.theories
    if not theories:
        theories, deb = fetch(DEB, os.path.join(os.path.dirname(a.out) or ".", ".coq-deb"),
                              "usr/lib/ocaml/coq/theories")
    keep = set(filter(None, a.dirs.split(",")))
    files = sorted(
        os.path.relpath(p, theories)
        for p in glob.glob(os.path.join(theories, "**/*.v"), recursive=True)
    )
    files = [f for f in files if not keep or f.split("/")[0] in keep]
    if not files:
        sys.exit(f"{theories}: no .v files{' under ' + a.dirs if keep else ''}")

    decls, file_requires, file_of, by_name = [], {}, {}, defaultdict(list)
    for rel in files:
        ds, req = parse_file(os.path.join(theories, rel), rel)
        file_requires[rel] = req
        for pos, d in enumerate(ds):
            if d["qual"] in file_of:
                continue  # a name redeclared in the same scope: keep the first
            d["file"], d["pos"] = rel, pos
            file_of[d["qual"]] = rel
            by_name[d["name"]].append(d)
            decls.append(d)

    corpus = [{"_id": d["qual"], "title": d["qual"], "text": d["statement"]} for d in decls if d["statement"]]
    in_corpus = {c["_id"] for c in corpus}
    queries, qrels, negatives = [], defaultdict(list), []
    skipped = defaultdict(int)
    for di, d in enumerate(decls):
        if d["proof"] is None or not d["statement"]:
            skipped["no closed proof"] += 1
            continue
        used, names = [], []
        local = set(IDENT.findall(d["statement"]))
        text = " ".join(d["proof"])
        for m in IDENT.finditer(text):
            t = m.group(0)
            short = t.split(".")[-1]
            if len(short) <= 2 or t in local:
                continue  # variables and hypotheses (x, H0, IHn) and names bound in the statement
            before = text[: m.start()].rstrip()
            prev = re.findall(r"[\w']+$|\S$", before)
            if short in TACTICS and "." not in t and not (prev and prev[-1] in TERM_BEFORE):
                continue  # used as a tactic
            c = resolve(t, d, file_of, by_name, None, file_requires)
            if c is None or c is d or c["qual"] not in in_corpus or c["qual"] in used:
                continue
            used.append(c["qual"])
            names.append(t)
        if not used:
            skipped["proof names no library lemma"] += 1
            continue
        if len(used) > a.max_gold:
            skipped[f"more than {a.max_gold} lemmas used"] += 1
            continue
        qid = "q:" + d["qual"]
        queries.append((d["file"], {
            "_id": qid,
            "text": d["statement"],
            "reasoning": reasoning(d["proof"], names),
            "excluded_ids": [d["qual"]],
        }, used))
        same_file = [c["qual"] for c in decls[max(0, di - 40):di]
                     if c["file"] == d["file"] and c["qual"] not in used and c["qual"] in in_corpus]
        if same_file:
            negatives.append({"query_id": qid, "doc_ids": same_file[-4:]})

    per_file = defaultdict(int)
    for f, _, _ in queries:
        per_file[f] += 1
    split_of = file_splits(per_file)
    queries = [(split_of[f], q, used) for f, q, used in queries]
    train_ids = {q["_id"] for s, q, _ in queries if s == "train"}
    negatives = [n for n in negatives if n["query_id"] in train_ids]

    # deterministic caps on dev/test
    kept = []
    for split, cap in (("train", 0), ("dev", a.max_dev), ("test", a.max_test)):
        rows = [q for q in queries if q[0] == split]
        if cap and len(rows) > cap:
            rows = sorted(rows, key=lambda q: hashlib.sha256(q[1]["_id"].encode()).hexdigest())[:cap]
            rows.sort(key=lambda q: q[1]["_id"])
        kept.extend(rows)
    kept_ids = {q[1]["_id"] for q in kept}
    negatives = [n for n in negatives if n["query_id"] in kept_ids]

    source = {
        "package": DEB,
        "deb": os.path.basename(deb) if deb else None,
        "deb_sha256": sha256(deb) if deb else None,
        "theories": theories if not deb else "usr/lib/ocaml/coq/theories (from the .deb)",
        "dirs": sorted(keep) or "all",
        "files": len(files),
        "declarations": len(decls),
        "documents": len(corpus),
        "splits": None,  # filled by beir_out.write
        "left_out": dict(sorted(skipped.items())),
        "written_by": "scripts/make_coq_premises.py",
    }
    beir_out.write(a.out, corpus, kept, negatives, source, lambda rows: {
        "files": len({file_of[q["excluded_ids"][0]] for _, q, _ in rows})})


if __name__ == "__main__":
    main()
