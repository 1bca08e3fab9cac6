//! BEIR-layout loading (DESIGN §5), streaming line by line, with errors that name file, line and
//! field. Nothing is dropped silently: malformed input is an error; optional fields that are
//! absent are recorded as such.
//!
//! ```text
//! DATASET/
//!   corpus.jsonl          {"_id": "d1", "title": "...", "text": "..."}
//!   queries.jsonl         {"_id": "q1", "text": "...", "reasoning": "...", "excluded_ids": ["d9"]}
//!   qrels/<split>.tsv     query-id<TAB>corpus-id<TAB>score (header line first)
//!   hard_negatives.jsonl  optional {"query_id": "q1", "doc_ids": ["d7", "d9"]}
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};

/// The document collection, in file order.
#[derive(Debug, Clone, Default)]
pub struct Corpus {
    pub ids: Vec<String>,
    pub titles: Vec<String>,
    pub texts: Vec<String>,
    index: HashMap<String, usize>,
}

impl Corpus {
    /// A corpus from `(id, title, text)` rows (ids assumed unique; later rows win the index).
    pub fn from_rows(rows: &[(&str, &str, &str)]) -> Self {
        let mut c = Corpus::default();
        for (id, title, text) in rows {
            c.index.insert(id.to_string(), c.ids.len());
            c.ids.push(id.to_string());
            c.titles.push(title.to_string());
            c.texts.push(text.to_string());
        }
        c
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
    /// Row of a document id.
    pub fn position(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }
    /// Title and text joined the way BEIR's dense retrievers do (`title text`).
    pub fn full_text(&self, i: usize) -> String {
        if self.titles[i].is_empty() {
            self.texts[i].clone()
        } else {
            format!("{} {}", self.titles[i], self.texts[i])
        }
    }
}

/// One query with its optional gold reasoning and BRIGHT-style excluded documents.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub id: String,
    pub text: String,
    pub reasoning: Option<String>,
    /// Documents removed from this query's ranking before evaluation.
    pub excluded_ids: Vec<String>,
}

/// Judgments of one split: query id → (doc id → graded relevance; ≤ 0 = judged non-relevant).
pub type Qrels = BTreeMap<String, BTreeMap<String, i32>>;

/// A whole dataset folder.
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    pub root: PathBuf,
    pub corpus: Corpus,
    pub queries: Vec<Query>,
    query_index: HashMap<String, usize>,
    /// Split name (file stem under `qrels/`) → judgments.
    pub qrels: BTreeMap<String, Qrels>,
    /// Query id → mined/hard negative doc ids, when `hard_negatives.jsonl` exists.
    pub hard_negatives: Option<HashMap<String, Vec<String>>>,
}

impl Dataset {
    /// Loads and cross-checks every file of a dataset folder.
    pub fn load(root: &Path) -> Result<Self> {
        let corpus = load_corpus(&root.join("corpus.jsonl"))?;
        let queries = load_queries(&root.join("queries.jsonl"), &corpus)?;
        let query_index: HashMap<String, usize> = queries
            .iter()
            .enumerate()
            .map(|(i, q)| (q.id.clone(), i))
            .collect();
        let qrels_dir = root.join("qrels");
        let mut qrels = BTreeMap::new();
        let entries = std::fs::read_dir(&qrels_dir).map_err(|e| Error::io(&qrels_dir, e))?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "tsv"))
            .collect();
        files.sort();
        for f in files {
            let split = f
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let q = load_qrels(&f, &corpus, &query_index)?;
            qrels.insert(split, q);
        }
        if qrels.is_empty() {
            return Err(Error::data(
                &qrels_dir,
                0,
                None,
                "no qrels: expected at least one <split>.tsv (e.g. train.tsv, test.tsv)",
            ));
        }
        let hn_path = root.join("hard_negatives.jsonl");
        let hard_negatives = if hn_path.exists() {
            Some(load_hard_negatives(&hn_path, &corpus, &query_index)?)
        } else {
            None
        };
        Ok(Dataset {
            root: root.to_path_buf(),
            corpus,
            queries,
            query_index,
            qrels,
            hard_negatives,
        })
    }

    /// Corpus indices of the documents judged relevant (grade > 0) for `query_id` in `qrels`,
    /// with their grades.
    pub fn relevant(&self, qrels: &Qrels, query_id: &str) -> Vec<(usize, i32)> {
        qrels
            .get(query_id)
            .into_iter()
            .flatten()
            .filter(|(_, g)| **g > 0)
            .filter_map(|(d, g)| self.corpus.position(d).map(|i| (i, *g)))
            .collect()
    }

    /// Corpus indices of a query's `excluded_ids`.
    pub fn excluded(&self, q: &Query) -> std::collections::HashSet<usize> {
        q.excluded_ids
            .iter()
            .filter_map(|d| self.corpus.position(d))
            .collect()
    }

    /// Reads another hard-negatives file (e.g. mined negatives) against this dataset's ids.
    pub fn read_hard_negatives(&self, path: &Path) -> Result<HashMap<String, Vec<String>>> {
        load_hard_negatives(path, &self.corpus, &self.query_index)
    }

    pub fn query(&self, id: &str) -> Option<&Query> {
        self.query_index.get(id).map(|&i| &self.queries[i])
    }

    /// Judgments of a split, or a clear error listing the splits that exist.
    pub fn split(&self, name: &str) -> Result<&Qrels> {
        self.qrels.get(name).ok_or_else(|| {
            Error::data(
                self.root.join("qrels").join(format!("{name}.tsv")),
                0,
                None,
                format!(
                    "no such split; this dataset has: {}",
                    self.qrels.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )
        })
    }

    /// The queries judged in a split, in `queries.jsonl` order.
    pub fn split_queries(&self, name: &str) -> Result<Vec<&Query>> {
        let qrels = self.split(name)?;
        Ok(self
            .queries
            .iter()
            .filter(|q| qrels.contains_key(&q.id))
            .collect())
    }
}

/// Reads a JSONL file line by line; `f` gets (1-based line number, parsed object).
/// Blank lines are allowed (and skipped); anything else that is not a JSON object is an error.
fn for_each_json_line(
    path: &Path,
    mut f: impl FnMut(usize, &serde_json::Map<String, Value>) -> Result<()>,
) -> Result<()> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let n = i + 1;
        let line =
            line.map_err(|e| Error::data(path, n, None, format!("cannot read line: {e}")))?;
        let line = clean_line(path, n, &line)?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&line)
            .map_err(|e| Error::data(path, n, None, format!("malformed JSON: {e}")))?;
        let Value::Object(obj) = v else {
            return Err(Error::data(path, n, None, "expected a JSON object"));
        };
        f(n, &obj)?;
    }
    Ok(())
}

/// One text line of a dataset file as read: a UTF-8 byte-order mark at the start of the file is
/// skipped (Windows tools write one; it is not data), a CRLF ending is trimmed, and a CR inside
/// the line is an error — the file has classic-Mac CR-only line ends, which would otherwise read
/// as one long line and lose every record after the first.
fn clean_line<'a>(path: &Path, n: usize, line: &'a str) -> Result<&'a str> {
    let line = if n == 1 {
        line.strip_prefix('\u{feff}').unwrap_or(line)
    } else {
        line
    };
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.contains('\r') {
        return Err(Error::data(
            path,
            n,
            None,
            "a carriage return (CR) inside the line: the file seems to use CR-only line ends; \
             convert them to LF (or CRLF), e.g. `tr '\\r' '\\n'`",
        ));
    }
    Ok(line)
}

/// An id field: a non-empty string (integers are accepted and kept as their decimal text).
fn id_field(
    path: &Path,
    line: usize,
    obj: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<String> {
    match obj.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => Err(Error::data(path, line, Some(key), "empty id")),
        Some(Value::Number(n)) if n.is_u64() || n.is_i64() => Ok(n.to_string()),
        Some(other) => Err(Error::data(
            path,
            line,
            Some(key),
            format!("expected a string id, got {other}"),
        )),
        None => Err(Error::data(path, line, Some(key), "missing")),
    }
}

/// An optional string field (absent or null → empty).
fn text_field(
    path: &Path,
    line: usize,
    obj: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<Option<String>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(Error::data(
            path,
            line,
            Some(key),
            format!("expected a string, got {other}"),
        )),
    }
}

fn string_list(
    path: &Path,
    line: usize,
    obj: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<Vec<String>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                other => Err(Error::data(
                    path,
                    line,
                    Some(key),
                    format!("expected a list of ids, found {other}"),
                )),
            })
            .collect(),
        Some(other) => Err(Error::data(
            path,
            line,
            Some(key),
            format!("expected a list of ids, got {other}"),
        )),
    }
}

/// `corpus.jsonl`: unique ids; a document needs a non-empty title or text.
pub fn load_corpus(path: &Path) -> Result<Corpus> {
    let mut c = Corpus::default();
    let mut first_line: HashMap<String, usize> = HashMap::new();
    for_each_json_line(path, |n, obj| {
        let id = id_field(path, n, obj, "_id")?;
        let title = text_field(path, n, obj, "title")?.unwrap_or_default();
        let text = text_field(path, n, obj, "text")?
            .ok_or_else(|| Error::data(path, n, Some("text"), "missing"))?;
        if title.trim().is_empty() && text.trim().is_empty() {
            return Err(Error::data(
                path,
                n,
                Some("text"),
                format!("document '{id}' has an empty title and text"),
            ));
        }
        if let Some(prev) = first_line.insert(id.clone(), n) {
            return Err(Error::data(
                path,
                n,
                Some("_id"),
                format!("duplicate document id '{id}' (first on line {prev})"),
            ));
        }
        c.index.insert(id.clone(), c.ids.len());
        c.ids.push(id);
        c.titles.push(title);
        c.texts.push(text);
        Ok(())
    })?;
    if c.is_empty() {
        return Err(Error::data(path, 0, None, "the corpus has no documents"));
    }
    Ok(c)
}

/// `queries.jsonl`: unique ids, non-empty text; `excluded_ids` must name corpus documents
/// (BRIGHT's placeholder `"N/A"` means none).
pub fn load_queries(path: &Path, corpus: &Corpus) -> Result<Vec<Query>> {
    let mut out = Vec::new();
    let mut first_line: HashMap<String, usize> = HashMap::new();
    for_each_json_line(path, |n, obj| {
        let id = id_field(path, n, obj, "_id")?;
        let text = text_field(path, n, obj, "text")?.unwrap_or_default();
        if text.trim().is_empty() {
            return Err(Error::data(
                path,
                n,
                Some("text"),
                format!("query '{id}' has an empty text"),
            ));
        }
        let reasoning = text_field(path, n, obj, "reasoning")?;
        if reasoning.as_deref().is_some_and(|r| r.trim().is_empty()) {
            return Err(Error::data(
                path,
                n,
                Some("reasoning"),
                format!("query '{id}' has an empty reasoning (omit the field instead)"),
            ));
        }
        let mut excluded_ids = string_list(path, n, obj, "excluded_ids")?;
        excluded_ids.retain(|d| d != "N/A");
        for d in &excluded_ids {
            if corpus.position(d).is_none() {
                return Err(Error::data(
                    path,
                    n,
                    Some("excluded_ids"),
                    format!("unknown document id '{d}'"),
                ));
            }
        }
        if let Some(prev) = first_line.insert(id.clone(), n) {
            return Err(Error::data(
                path,
                n,
                Some("_id"),
                format!("duplicate query id '{id}' (first on line {prev})"),
            ));
        }
        out.push(Query {
            id,
            text,
            reasoning,
            excluded_ids,
        });
        Ok(())
    })?;
    if out.is_empty() {
        return Err(Error::data(path, 0, None, "no queries"));
    }
    Ok(out)
}

/// `qrels/<split>.tsv`: a `query-id corpus-id score` header, then one judgment per line.
/// Unknown ids, duplicate pairs, bad scores and wrong column counts are errors.
pub fn load_qrels(path: &Path, corpus: &Corpus, queries: &HashMap<String, usize>) -> Result<Qrels> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut qrels: Qrels = BTreeMap::new();
    let mut header_seen = false;
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let n = i + 1;
        let line =
            line.map_err(|e| Error::data(path, n, None, format!("cannot read line: {e}")))?;
        let line = clean_line(path, n, &line)?;
        if line.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        if !header_seen {
            header_seen = true;
            if cols.first().is_some_and(|c| c.trim() == "query-id") {
                continue;
            }
            return Err(Error::data(
                path,
                n,
                None,
                "expected the header 'query-id<TAB>corpus-id<TAB>score'",
            ));
        }
        if cols.len() != 3 {
            return Err(Error::data(
                path,
                n,
                None,
                format!(
                    "expected 3 tab-separated columns (query-id, corpus-id, score), found {}",
                    cols.len()
                ),
            ));
        }
        let (qid, did) = (cols[0].trim(), cols[1].trim());
        if !queries.contains_key(qid) {
            return Err(Error::data(
                path,
                n,
                Some("query-id"),
                format!("unknown query id '{qid}' (not in queries.jsonl)"),
            ));
        }
        if corpus.position(did).is_none() {
            return Err(Error::data(
                path,
                n,
                Some("corpus-id"),
                format!("unknown document id '{did}' (not in corpus.jsonl)"),
            ));
        }
        let score: i32 = cols[2].trim().parse().map_err(|_| {
            Error::data(
                path,
                n,
                Some("score"),
                format!("expected an integer, got '{}'", cols[2]),
            )
        })?;
        if qrels
            .entry(qid.to_string())
            .or_default()
            .insert(did.to_string(), score)
            .is_some()
        {
            return Err(Error::data(
                path,
                n,
                None,
                format!("duplicate judgment for ({qid}, {did})"),
            ));
        }
    }
    if qrels.is_empty() {
        return Err(Error::data(
            path,
            0,
            None,
            if header_seen {
                "no judgments after the header: a split needs at least one (delete the file if the split is not used)"
            } else {
                "the file is empty: a split needs the header 'query-id<TAB>corpus-id<TAB>score' and at least one judgment"
            },
        ));
    }
    Ok(qrels)
}

pub fn load_hard_negatives(
    path: &Path,
    corpus: &Corpus,
    queries: &HashMap<String, usize>,
) -> Result<HashMap<String, Vec<String>>> {
    let mut out = HashMap::new();
    for_each_json_line(path, |n, obj| {
        let qid = id_field(path, n, obj, "query_id")?;
        if !queries.contains_key(&qid) {
            return Err(Error::data(
                path,
                n,
                Some("query_id"),
                format!("unknown query id '{qid}'"),
            ));
        }
        let docs = string_list(path, n, obj, "doc_ids")?;
        for d in &docs {
            if corpus.position(d).is_none() {
                return Err(Error::data(
                    path,
                    n,
                    Some("doc_ids"),
                    format!("unknown document id '{d}'"),
                ));
            }
        }
        if out.insert(qid.clone(), docs).is_some() {
            return Err(Error::data(
                path,
                n,
                Some("query_id"),
                format!("duplicate entry for query '{qid}'"),
            ));
        }
        Ok(())
    })?;
    Ok(out)
}
