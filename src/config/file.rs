//! Reading a config file: TOML text → a table with `--set` overrides applied → serde, with
//! errors that name the file, line, `[section]` and key (or the override that caused them).

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// `p` against `base`, with `.` and `..` folded lexically (`configs/../runs` → `runs`).
pub fn resolve(base: &Path, p: &Path) -> PathBuf {
    use std::path::Component;
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        out
    }
}

/// A config file's text; a missing, unreadable or non-UTF-8 file is a config error (exit 2).
pub fn read_config(path: &Path) -> Result<String> {
    let bytes = std::fs::metadata(path)
        .and_then(|m| {
            if m.is_file() {
                std::fs::read(path)
            } else {
                Err(std::io::Error::other("not a regular file"))
            }
        })
        .map_err(|e| Error::Config {
            location: path.display().to_string(),
            message: format!("cannot read the config file: {e}"),
        })?;
    String::from_utf8(bytes).map_err(|e| Error::Config {
        location: path.display().to_string(),
        message: format!("not UTF-8 text: {e}"),
    })
}

/// Reads a TOML file into `T`, applying `key.path=value` overrides.
///
/// Errors from the file name `file:line:col`, the enclosing `[section]` and the key on that line;
/// errors that only appear after overrides name the overrides.
pub fn load_toml<T: DeserializeOwned>(path: &Path, overrides: &[String]) -> Result<T> {
    let src = read_config(path)?;
    let parsed: std::result::Result<T, toml::de::Error> = toml::from_str(&src);
    let value = match parsed {
        Ok(v) => v,
        Err(e) => return Err(located_error(path, &src, &e)),
    };
    if overrides.is_empty() {
        return Ok(value);
    }
    let mut table: toml::Table = toml::from_str(&src).map_err(|e| located_error(path, &src, &e))?;
    for ov in overrides {
        apply_override(&mut table, ov)?;
    }
    T::deserialize(toml::Value::Table(table)).map_err(|e| Error::Config {
        location: format!(
            "{} with --set {}",
            path.display(),
            overrides.join(" --set ")
        ),
        message: tidy(e.message()),
    })
}

/// `a.b.c=value`: the value is parsed as a TOML value (`3`, `1e-4`, `true`, `"x"`, `[1,2]`),
/// falling back to a bare string.
pub(super) fn apply_override(table: &mut toml::Table, ov: &str) -> Result<()> {
    let bad = |m: &str| Error::Config {
        location: format!("--set {ov}"),
        message: m.to_string(),
    };
    let (key, val) = ov
        .split_once('=')
        .ok_or_else(|| bad("expected key=value, e.g. --set run.seed=7"))?;
    let key = key.trim();
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(bad("empty key segment"));
    }
    let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {}", val.trim()))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(val.trim().to_string()));
    let mut cur = table;
    for p in &parts[..parts.len() - 1] {
        let entry = cur
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = match entry {
            toml::Value::Table(t) => t,
            _ => return Err(bad(&format!("'{p}' is not a table"))),
        };
    }
    cur.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

/// Turns a toml error into `file:line:col: message (in [section], key 'k')`.
pub(super) fn located_error(path: &Path, src: &str, e: &toml::de::Error) -> Error {
    let Some(span) = e.span() else {
        return Error::Config {
            location: path.display().to_string(),
            message: tidy(e.message()),
        };
    };
    let (line, col) = line_col(src, span.start);
    let line_text = src.lines().nth(line - 1).unwrap_or("");
    let section = src
        .lines()
        .take(line)
        .filter_map(|l| {
            let t = l.trim();
            (t.starts_with('[') && t.ends_with(']')).then(|| t.to_string())
        })
        .last();
    let mut message = tidy(e.message());
    let key = line_text
        .split_once('=')
        .map(|(k, _)| k.trim().to_string())
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    let mut ctx = Vec::new();
    if let Some(s) = section {
        ctx.push(format!("in {s}"));
    }
    if let Some(k) = key
        && !message.contains(&format!("'{k}'"))
    {
        ctx.push(format!("key '{k}'"));
    }
    if !ctx.is_empty() {
        message = format!("{message} ({})", ctx.join(", "));
    }
    Error::Config {
        location: format!("{}:{line}:{col}", path.display()),
        message,
    }
}

/// 1-based line and column of a byte offset.
fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let before = &src[..offset.min(src.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, col)
}

/// serde quotes names with backticks; we print them with single quotes.
pub(super) fn tidy(m: &str) -> String {
    m.trim().replace('`', "'")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_resolve_against_the_config_folder() {
        for (base, p, want) in [
            ("configs", "../runs", "runs"),
            ("/a/b", "./c/../d", "/a/b/d"),
            ("x", "/abs", "/abs"),
            ("", "../up", "../up"),
        ] {
            assert_eq!(
                resolve(Path::new(base), Path::new(p)),
                PathBuf::from(want),
                "{base} + {p}"
            );
        }
    }

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("a\nbc\n", 0), (1, 1));
        assert_eq!(line_col("a\nbc\n", 3), (2, 2));
    }

    #[test]
    fn override_parses_toml_values_and_falls_back_to_strings() {
        let mut t = toml::Table::new();
        apply_override(&mut t, "run.seed=7").unwrap();
        apply_override(&mut t, "run.name=abc").unwrap();
        apply_override(&mut t, "eval.bm25_b=0.5").unwrap();
        assert_eq!(t["run"]["seed"].as_integer(), Some(7));
        assert_eq!(t["run"]["name"].as_str(), Some("abc"));
        assert_eq!(t["eval"]["bm25_b"].as_float(), Some(0.5));
        assert!(apply_override(&mut t, "noequals").is_err());
        assert!(apply_override(&mut t, "run..x=1").is_err());
    }
}
