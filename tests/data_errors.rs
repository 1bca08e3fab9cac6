//! Bad input gets a clear error naming file, line and field — never a panic, never silently dropped.

use std::path::Path;

use t1_train::Error;
use t1_train::data::Dataset;

/// A valid three-document dataset; `edit(file, contents)` overrides one file.
fn dataset(edit: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut files = vec![
        (
            "corpus.jsonl",
            "{\"_id\": \"d1\", \"title\": \"A\", \"text\": \"alpha\"}\n{\"_id\": \"d2\", \"title\": \"\", \"text\": \"beta\"}\n{\"_id\": \"d3\", \"text\": \"gamma\"}\n",
        ),
        (
            "queries.jsonl",
            "{\"_id\": \"q1\", \"text\": \"first?\", \"reasoning\": \"because\"}\n\n{\"_id\": \"q2\", \"text\": \"second?\", \"excluded_ids\": [\"d3\"]}\n",
        ),
        (
            "qrels/test.tsv",
            "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t2\n",
        ),
    ];
    for (f, c) in edit {
        match files.iter_mut().find(|(name, _)| name == f) {
            Some(slot) => slot.1 = c,
            None => files.push((f, c)),
        }
    }
    std::fs::create_dir_all(dir.path().join("qrels")).unwrap();
    for (f, c) in files {
        std::fs::write(dir.path().join(f), c).unwrap();
    }
    dir
}

/// Loads and returns (file name, line, field, message) of the data error.
fn data_error(edit: &[(&str, &str)]) -> (String, usize, Option<String>, String) {
    let dir = dataset(edit);
    match Dataset::load(dir.path()) {
        Err(Error::Data {
            file,
            line,
            field,
            message,
        }) => {
            let name = file
                .strip_prefix(dir.path())
                .unwrap_or(&file)
                .display()
                .to_string();
            (name, line, field, message)
        }
        Err(other) => panic!("expected a data error, got {other}"),
        Ok(_) => panic!("expected a data error, loading succeeded"),
    }
}

#[test]
fn valid_dataset_loads_everything() {
    let dir = dataset(&[]);
    let ds = Dataset::load(dir.path()).unwrap();
    assert_eq!(ds.corpus.len(), 3);
    assert_eq!(ds.queries.len(), 2);
    assert_eq!(
        ds.query("q1").unwrap().reasoning.as_deref(),
        Some("because")
    );
    assert_eq!(ds.query("q2").unwrap().excluded_ids, vec!["d3".to_string()]);
    assert_eq!(ds.split("test").unwrap()["q2"]["d2"], 2);
    assert!(ds.hard_negatives.is_none());
    assert!(ds.split("dev").is_err());
}

#[test]
fn malformed_json_names_file_and_line() {
    let (f, line, _, msg) = data_error(&[(
        "corpus.jsonl",
        "{\"_id\": \"d1\", \"text\": \"a\"}\n{\"_id\": \"d2\", \"text\": \n",
    )]);
    assert_eq!((f.as_str(), line), ("corpus.jsonl", 2));
    assert!(msg.contains("malformed JSON"), "{msg}");
}

#[test]
fn missing_and_empty_fields_are_named() {
    let (f, line, field, _) = data_error(&[(
        "corpus.jsonl",
        "{\"_id\": \"d1\", \"text\": \"a\"}\n{\"title\": \"x\", \"text\": \"b\"}\n",
    )]);
    assert_eq!(
        (f.as_str(), line, field.as_deref()),
        ("corpus.jsonl", 2, Some("_id"))
    );
    let (f, line, field, _) =
        data_error(&[("queries.jsonl", "{\"_id\": \"q1\", \"text\": \"  \"}\n")]);
    assert_eq!(
        (f.as_str(), line, field.as_deref()),
        ("queries.jsonl", 1, Some("text"))
    );
    let (_, _, field, msg) = data_error(&[(
        "corpus.jsonl",
        "{\"_id\": \"d1\", \"title\": \"\", \"text\": \"\"}\n",
    )]);
    assert_eq!(field.as_deref(), Some("text"));
    assert!(msg.contains("empty"), "{msg}");
    let (_, _, field, _) = data_error(&[("corpus.jsonl", "{\"_id\": [1], \"text\": \"a\"}\n")]);
    assert_eq!(field.as_deref(), Some("_id"));
}

#[test]
fn duplicate_ids_name_both_lines() {
    let (f, line, _, msg) = data_error(&[(
        "corpus.jsonl",
        "{\"_id\": \"d1\", \"text\": \"a\"}\n{\"_id\": \"d2\", \"text\": \"b\"}\n{\"_id\": \"d1\", \"text\": \"c\"}\n",
    )]);
    assert_eq!((f.as_str(), line), ("corpus.jsonl", 3));
    assert!(msg.contains("first on line 1"), "{msg}");
}

#[test]
fn qrels_errors() {
    let (f, line, field, _) = data_error(&[(
        "qrels/test.tsv",
        "query-id\tcorpus-id\tscore\nq1\td1\t1\nq9\td1\t1\n",
    )]);
    assert_eq!(
        (f.as_str(), line, field.as_deref()),
        ("qrels/test.tsv", 3, Some("query-id"))
    );
    let (_, line, field, _) =
        data_error(&[("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td7\t1\n")]);
    assert_eq!((line, field.as_deref()), (2, Some("corpus-id")));
    let (_, _, field, _) = data_error(&[(
        "qrels/test.tsv",
        "query-id\tcorpus-id\tscore\nq1\td1\thigh\n",
    )]);
    assert_eq!(field.as_deref(), Some("score"));
    let (_, line, _, msg) = data_error(&[("qrels/test.tsv", "q1\td1\t1\n")]);
    assert_eq!(line, 1);
    assert!(msg.contains("header"), "{msg}");
    let (_, line, _, msg) = data_error(&[(
        "qrels/test.tsv",
        "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td1\t0\n",
    )]);
    assert_eq!(line, 3);
    assert!(msg.contains("duplicate"), "{msg}");
    let (_, _, _, msg) = data_error(&[("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1 d1 1\n")]);
    assert!(msg.contains("3 tab-separated columns"), "{msg}");
}

#[test]
fn excluded_and_hard_negative_ids_must_exist() {
    let (f, _, field, _) = data_error(&[(
        "queries.jsonl",
        "{\"_id\": \"q1\", \"text\": \"a\", \"excluded_ids\": [\"nope\"]}\n{\"_id\": \"q2\", \"text\": \"b\"}\n",
    )]);
    assert_eq!(
        (f.as_str(), field.as_deref()),
        ("queries.jsonl", Some("excluded_ids"))
    );
    let (f, line, field, _) = data_error(&[(
        "hard_negatives.jsonl",
        "{\"query_id\": \"q1\", \"doc_ids\": [\"d2\"]}\n{\"query_id\": \"q2\", \"doc_ids\": [\"d9\"]}\n",
    )]);
    assert_eq!(
        (f.as_str(), line, field.as_deref()),
        ("hard_negatives.jsonl", 2, Some("doc_ids"))
    );
}

#[test]
fn bright_na_placeholder_means_no_exclusions() {
    let dir = dataset(&[(
        "queries.jsonl",
        "{\"_id\": \"q1\", \"text\": \"a\", \"excluded_ids\": [\"N/A\"]}\n{\"_id\": \"q2\", \"text\": \"b\"}\n",
    )]);
    let ds = Dataset::load(dir.path()).unwrap();
    assert!(ds.query("q1").unwrap().excluded_ids.is_empty());
}

#[test]
fn error_message_reads_file_colon_line() {
    let dir = dataset(&[(
        "corpus.jsonl",
        "{\"_id\": \"d1\", \"text\": \"a\"}\nnot json\n",
    )]);
    let msg = Dataset::load(dir.path()).unwrap_err().to_string();
    let want = format!(
        "{}:2:",
        Path::new(dir.path()).join("corpus.jsonl").display()
    );
    assert!(msg.starts_with(&want), "{msg}");
}
