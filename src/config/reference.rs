//! The key table of docs/configuration.md, generated from the sections themselves: their field
//! docs, defaults and types, read off the JSON schema `schemars` derives from the same structs
//! serde reads (so a default or doc changed in `src/config/` changes the table, and a test fails
//! until the doc is regenerated with `t1-train config-reference --write docs/configuration.md`).

use std::fmt::Write as _;

use serde_json::Value;

use super::RawConfig;

/// The line before the generated table in docs/configuration.md.
pub const BEGIN: &str = "<!-- config-reference:begin: generated from src/config/ by \
                         `t1-train config-reference --write docs/configuration.md`; edit the \
                         field docs there, not here -->";
/// The line after it.
pub const END: &str = "<!-- config-reference:end -->";

/// One markdown table: a row per section, then a row per key (`section.key`, its type or
/// values, its default, its doc), in the order the structs declare them.
pub fn reference_table() -> String {
    let schema = serde_json::to_value(schemars::schema_for!(RawConfig))
        .expect("a JSON schema is plain JSON");
    let defs = &schema["$defs"];
    let top_required = names(&schema["required"]);
    let mut out = String::from("| key | type | default | meaning |\n|---|---|---|---|\n");
    for (section, prop) in object(&schema["properties"]) {
        let Some(def) = section_def(prop, defs) else {
            continue;
        };
        let presence = if top_required.contains(&section.as_str()) {
            "required"
        } else if prop.get("anyOf").is_some() {
            "optional"
        } else {
            "defaults"
        };
        writeln!(
            out,
            "| **`[{section}]`** | table | {presence} | {} |",
            cell(&doc(prop))
        )
        .unwrap();
        let required = names(&def["required"]);
        for (key, p) in object(&def["properties"]) {
            let default = if required.contains(&key.as_str()) {
                "required".to_string()
            } else {
                match p.get("default") {
                    None | Some(Value::Null) => "unset".to_string(),
                    Some(v) => show(v),
                }
            };
            writeln!(
                out,
                "| `{section}.{key}` | {} | {} | {} |",
                cell(&type_of(p, defs)),
                cell(&default),
                cell(&doc(p))
            )
            .unwrap();
        }
    }
    out
}

/// `doc` with the text between [`BEGIN`] and [`END`] replaced by [`reference_table`].
pub fn splice_reference(doc: &str) -> Result<String, String> {
    let (Some(b), Some(e)) = (doc.find(BEGIN), doc.find(END)) else {
        return Err(format!(
            "no generated-table markers: the file needs the lines\n{BEGIN}\n{END}"
        ));
    };
    if e < b {
        return Err(format!("{END} comes before {BEGIN}"));
    }
    let head = &doc[..b + BEGIN.len()];
    let tail = &doc[e..];
    Ok(format!("{head}\n{}{tail}", reference_table()))
}

fn object(v: &Value) -> impl Iterator<Item = (&String, &Value)> {
    v.as_object().into_iter().flatten()
}

fn names(v: &Value) -> Vec<&str> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// The definition a `$ref` names (`#/$defs/TrainSection`).
fn deref<'a>(v: &Value, defs: &'a Value) -> Option<&'a Value> {
    let name = v.get("$ref")?.as_str()?.strip_prefix("#/$defs/")?;
    defs.get(name)
}

/// A section's struct: a `$ref`, or one inside `anyOf` for an optional section.
fn section_def<'a>(prop: &Value, defs: &'a Value) -> Option<&'a Value> {
    deref(prop, defs).or_else(|| {
        prop.get("anyOf")?
            .as_array()?
            .iter()
            .find_map(|alt| deref(alt, defs))
    })
}

/// A field's title and description as one line.
fn doc(p: &Value) -> String {
    [p.get("title"), p.get("description")]
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `integer`, `float`, `bool`, `string`, `list of string`, or an enum's values.
fn type_of(p: &Value, defs: &Value) -> String {
    if let Some(def) = deref(p, defs) {
        let values: Vec<String> = def
            .get("oneOf")
            .and_then(Value::as_array)
            .map(|alts| {
                alts.iter()
                    .flat_map(|a| {
                        a.get("const").into_iter().chain(
                            a.get("enum")
                                .and_then(Value::as_array)
                                .into_iter()
                                .flatten(),
                        )
                    })
                    .map(show)
                    .collect()
            })
            .or_else(|| {
                def.get("enum")
                    .and_then(Value::as_array)
                    .map(|vs| vs.iter().map(show).collect())
            })
            .unwrap_or_default();
        if !values.is_empty() {
            return values.join(", ");
        }
        return type_of(def, defs);
    }
    if let Some(alts) = p.get("anyOf").and_then(Value::as_array) {
        return alts
            .iter()
            .filter(|a| a.get("type").and_then(Value::as_str) != Some("null"))
            .map(|a| type_of(a, defs))
            .collect::<Vec<_>>()
            .join(" or ");
    }
    let one = |t: &str| match t {
        "integer" => "integer".to_string(),
        "number" => "float".to_string(),
        "boolean" => "bool".to_string(),
        "array" => match p.get("items") {
            Some(items) if items.as_object().is_some_and(|o| !o.is_empty()) => {
                format!("list of {}", type_of(items, defs))
            }
            _ => "list of tables".to_string(),
        },
        other => other.to_string(),
    };
    match p.get("type") {
        Some(Value::String(t)) => one(t),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .map(one)
            .collect::<Vec<_>>()
            .join(" or "),
        _ => "any".to_string(),
    }
}

/// A value as the table shows it: strings and lists of strings in code spans, other lists and
/// tables as compact JSON.
fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("`{s}`"),
        Value::Array(items) if items.iter().all(Value::is_string) => {
            items.iter().map(show).collect::<Vec<_>>().join(", ")
        }
        Value::Array(_) | Value::Object(_) => format!("`{v}`"),
        // an f32 default reaches the schema widened (0.9 → 0.8999999761581421): print the
        // shortest text that reads back as the same f32 when there is one
        Value::Number(n) if n.is_f64() => {
            let x = n.as_f64().unwrap_or(f64::NAN);
            match x as f32 {
                f if f64::from(f) == x => {
                    serde_json::to_string(&f).unwrap_or_else(|_| n.to_string())
                }
                _ => n.to_string(),
            }
        }
        other => other.to_string(),
    }
}

/// One table cell: whitespace runs (line breaks included) become one space, `|` is escaped.
fn cell(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_appears_with_its_default_and_doc() {
        let t = reference_table();
        let row = |key: &str| {
            t.lines()
                .find(|l| l.starts_with(&format!("| `{key}` |")))
                .unwrap_or_else(|| panic!("no row for {key} in\n{t}"))
                .to_string()
        };
        for (key, cell) in [
            ("run.name", "| required |"),
            ("train.lr", "| float | 0.001 |"),
            // f32 defaults as written, not widened to f64
            ("train.beta2", "| float | 0.999 |"),
            ("train.eps", "| float | 1e-8 |"),
            (
                "train.schedule",
                "`cosine`, `linear`, `constant` | `cosine` |",
            ),
            ("stage3.loss_type", "| `dapo` |"),
            // left out of the resolved config at its default, still shown here
            ("train.max_nonfinite_steps", "| integer | 3 |"),
            ("train.eval_at_end", "| bool | true |"),
            ("lora.base_dtype", "| `f32` |"),
            ("lora.target_modules", "`q_proj`, `k_proj`"),
            ("model.path", "| unset |"),
            ("eval.bm25_k1", "Pyserini"),
            ("stage3.rewards", "ndcg"),
        ] {
            assert!(
                row(key).contains(cell),
                "{key}: no {cell:?} in {}",
                row(key)
            );
        }
        // the ten sections of RawConfig
        let sections = t.lines().filter(|l| l.starts_with("| **`[")).count();
        assert_eq!(sections, 10);
    }

    #[test]
    fn docs_configuration_md_holds_the_generated_table() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
        let doc = std::fs::read_to_string(&path).unwrap();
        let want = splice_reference(&doc).unwrap();
        assert!(
            doc == want,
            "docs/configuration.md's key table differs from the field docs in src/config/: \
             run `cargo run -- config-reference --write docs/configuration.md`"
        );
    }

    #[test]
    fn splice_needs_both_markers() {
        assert!(splice_reference("no markers").is_err());
        let doc = format!("a\n{BEGIN}\nSTALE ROW\n{END}\nb\n");
        let new = splice_reference(&doc).unwrap();
        assert!(new.starts_with(&format!("a\n{BEGIN}\n| key |")));
        assert!(new.ends_with(&format!("{END}\nb\n")));
        assert!(!new.contains("STALE ROW"));
    }
}
