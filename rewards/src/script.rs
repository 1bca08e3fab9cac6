//! Script rewards: `name = "script", path = "rewards/scripts/x.rhai"` — a reward written in Rhai
//! (an embedded scripting language) and swapped in from the config without recompiling.
//!
//! The script defines `fn reward(o)` and returns a number, or `()` to abstain. `o` is a map:
//! `gold` (array of `#{id, score, rank, grade}`), `top_k` (array of `#{id, score, rank}`),
//! `num_docs`, `text`, `num_tokens`, `truncated`, `format_ok`, and `bare_gold` (the same gold
//! documents as ranked by the model's bare query vector at this step, as `gold`; `()` outside
//! stage 3) — so a script can pay for the gain over the bare query. Sandboxed: Rhai has no file,
//! network or process access unless the host registers it (we register nothing); `eval` is
//! disabled; operations, call depth, string/array/map sizes are capped, so a runaway script
//! fails with a clear error instead of hanging training. Syntax errors surface at config load,
//! runtime errors at the first rollout, both naming the script file and line.

use std::path::{Path, PathBuf};

use rhai::{AST, Array, Dynamic, Engine, Map, Scope};

use crate::types::{Reward, RewardError, RolloutOutcome};

/// Default cap on Rhai operations per call.
pub const DEFAULT_MAX_OPERATIONS: u64 = 100_000;

pub struct ScriptReward {
    name: String,
    path: PathBuf,
    engine: Engine,
    ast: AST,
}

fn sandboxed(max_operations: u64) -> Engine {
    let mut e = Engine::new();
    e.set_max_operations(max_operations);
    e.set_max_call_levels(32);
    e.set_max_expr_depths(64, 32);
    e.set_max_string_size(1 << 20);
    e.set_max_array_size(100_000);
    e.set_max_map_size(10_000);
    e.disable_symbol("eval");
    // no `import`: the default resolver would read `.rhai` files from the file system
    e.set_module_resolver(rhai::module_resolvers::DummyModuleResolver::new());
    e.on_print(|_| {}); // no stdout noise in the middle of training
    e.on_debug(|_, _, _| {});
    e
}

impl ScriptReward {
    /// Compiles `path`; a syntax error or a missing `reward` function is an error naming the
    /// file and line.
    pub fn load(path: &Path, max_operations: u64) -> Result<Self, RewardError> {
        let src = std::fs::read_to_string(path)
            .map_err(|e| RewardError(format!("{}: cannot read script: {e}", path.display())))?;
        let engine = sandboxed(max_operations.max(1));
        let ast = engine.compile(&src).map_err(|e| {
            RewardError(format!(
                "{}: syntax error: {}",
                located(path, e.position()),
                e.err_type()
            ))
        })?;
        if !ast
            .iter_functions()
            .any(|f| f.name == "reward" && f.params.len() == 1)
        {
            return Err(RewardError(format!(
                "{}: defines no `fn reward(o)` (it must return a number, or () to abstain)",
                path.display()
            )));
        }
        let name = path
            .file_stem()
            .map(|s| format!("script:{}", s.to_string_lossy()))
            .unwrap_or_else(|| "script".into());
        Ok(ScriptReward {
            name,
            path: path.to_path_buf(),
            engine,
            ast,
        })
    }
}

fn outcome_map(o: &RolloutOutcome) -> Map {
    let mut m = Map::new();
    let judged = |gold: &[(crate::ScoredDoc, i32)]| -> Array {
        gold.iter()
            .map(|(d, g)| {
                let mut x = Map::new();
                x.insert("id".into(), d.id.clone().into());
                x.insert("score".into(), (d.score as f64).into());
                x.insert("rank".into(), (d.rank as i64).into());
                x.insert("grade".into(), (*g as i64).into());
                Dynamic::from_map(x)
            })
            .collect()
    };
    let gold = judged(&o.gold);
    let top: Array = o
        .top_k
        .iter()
        .map(|d| {
            let mut x = Map::new();
            x.insert("id".into(), d.id.clone().into());
            x.insert("score".into(), (d.score as f64).into());
            x.insert("rank".into(), (d.rank as i64).into());
            Dynamic::from_map(x)
        })
        .collect();
    m.insert("gold".into(), gold.into());
    // the bare query's ranks of the same gold documents, `()` where not computed
    let bare: Dynamic = match &o.bare_gold {
        Some(b) => judged(b).into(),
        None => Dynamic::UNIT,
    };
    m.insert("bare_gold".into(), bare);
    m.insert("top_k".into(), top.into());
    m.insert("num_docs".into(), (o.num_docs as i64).into());
    m.insert("text".into(), o.text.clone().into());
    m.insert("num_tokens".into(), (o.num_tokens as i64).into());
    m.insert("truncated".into(), o.truncated.into());
    m.insert("format_ok".into(), o.format_ok.into());
    m
}

impl Reward for ScriptReward {
    fn name(&self) -> &str {
        &self.name
    }

    /// Infallible view: a failing script abstains here; the trainer calls [`Self::try_score`].
    fn score(&self, o: &RolloutOutcome) -> Option<f32> {
        self.try_score(o).ok().flatten()
    }

    fn try_score(&self, o: &RolloutOutcome) -> Result<Option<f32>, RewardError> {
        let out: Dynamic = self
            .engine
            .call_fn(
                &mut Scope::new(),
                &self.ast,
                "reward",
                (Dynamic::from_map(outcome_map(o)),),
            )
            .map_err(|e| {
                let what = e.to_string();
                let what = what.split(" (line").next().unwrap_or_default();
                if e.position().is_none() {
                    // limits (operations, call depth, sizes) hold for the whole call: no line
                    RewardError(format!(
                        "{}: {what} (a limit of the whole `reward` call, not of one line)",
                        self.path.display()
                    ))
                } else {
                    RewardError(format!("{}: {what}", located(&self.path, e.position())))
                }
            })?;
        if out.is_unit() {
            return Ok(None);
        }
        if let Ok(f) = out.as_float() {
            return Ok(Some(f as f32));
        }
        if let Ok(i) = out.as_int() {
            return Ok(Some(i as f32));
        }
        Err(RewardError(format!(
            "{}: `reward` returned a {}, expected a number or () to abstain",
            self.path.display(),
            out.type_name()
        )))
    }
}

/// `file:line` where Rhai knows the line, else `file`.
fn located(path: &Path, pos: rhai::Position) -> String {
    match pos.line() {
        Some(line) => format!("{}:{line}", path.display()),
        None => path.display().to_string(),
    }
}
