//! The embedded default dataset: a small, deterministic, reasoning-intensive retrieval task.
//!
//! A made-up world: people belong to guilds, guilds keep their halls in towns, artifacts were made
//! by people. The corpus describes each town, guild, person and artifact in its own document.
//! Queries ask for the document at the end of a chain of facts, and that document shares (almost)
//! no words with the query — only reasoning that names the intermediate entities reaches it:
//!
//! | kind | query asks | chain | relevant document |
//! |---|---|---|---|
//! | `guild_of_person` | which guild P belongs to | P → G | guild G |
//! | `town_of_person` | where the hall of P's guild is | P → G → T | town T |
//! | `guild_of_maker` | the guild of the maker of artifact A | A → P → G | guild G |
//! | `town_of_maker` | where the guild of A's maker keeps its hall | A → P → G → T | town T |
//!
//! Every query carries a gold reasoning trace that states its chain, one fact per sentence.
//! **Splits test composition**: every single fact (P→G, G→T, A→P) is stated in some training
//! trace, but the dev/test chains (`town_of_person` for held-out people, `town_of_maker` for
//! held-out artifacts) never appear whole in training. Each town query in every split also has
//! its intermediate guild document as a hard negative (`hard_negatives.jsonl`). For
//! `guild_of_person` queries the person's own document, which states the answer verbatim, is
//! listed in `excluded_ids` (BRIGHT's convention for the document a question was written from).
//!
//! Deterministic: the same seed gives byte-identical files (ChaCha8, fixed iteration orders).
//! `cargo run --bin make-default-data` rewrites `curricula/default/data/`; a test checks that the
//! committed files are exactly what the generator produces.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use crate::error::{Error, Result};

/// Seed of the shipped dataset.
pub const DEFAULT_SEED: u64 = 20261121;
/// Vocabulary size of the shipped tokenizer (special tokens included).
pub const DEFAULT_VOCAB: usize = 1024;

/// Sizes of the generated world.
#[derive(Debug, Clone)]
pub struct WorldSize {
    pub towns: usize,
    pub guilds: usize,
    pub people: usize,
    pub artifacts: usize,
    /// Fraction of people whose `town_of_person` query is held out for dev/test.
    pub held_out_people: f64,
    /// Fraction of artifacts whose `town_of_maker` query is held out for dev/test.
    pub held_out_artifacts: f64,
}

impl Default for WorldSize {
    fn default() -> Self {
        Self {
            towns: 16,
            guilds: 32,
            people: 240,
            artifacts: 90,
            held_out_people: 0.3,
            held_out_artifacts: 0.4,
        }
    }
}

/// The generated files, as text.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    pub corpus_jsonl: String,
    pub queries_jsonl: String,
    /// split → TSV with header
    pub qrels: BTreeMap<String, String>,
    pub hard_negatives_jsonl: String,
}

const ONSETS: &[&str] = &[
    "b", "br", "d", "dr", "f", "g", "gr", "h", "k", "l", "m", "n", "p", "r", "s", "st", "t", "th",
    "v", "z",
];
const VOWELS: &[&str] = &["a", "e", "i", "o", "u", "ae", "ou", "y"];
const CODAS: &[&str] = &["", "", "n", "r", "l", "s", "th", "m", "k", "nd"];
const GUILD_A: &[&str] = &[
    "Copper", "Silver", "Amber", "Iron", "Ivory", "Scarlet", "Quiet", "Hollow", "Gilded", "Ashen",
    "Velvet", "Crimson", "Salt", "Granite", "Lantern", "Ember",
];
const GUILD_B: &[&str] = &[
    "Lantern", "Thread", "Anvil", "Quill", "Compass", "Loom", "Kettle", "Chisel", "Bellows",
    "Spindle", "Ledger", "Tongs", "Sextant", "Hammer", "Needle", "Crucible",
];
const GEOGRAPHY: &[&str] = &[
    "on the northern cliffs above a cold sea",
    "in a marshy delta crossed by reed bridges",
    "high in a pine valley under two glaciers",
    "beside a wide brown river with slow barges",
    "on a chalk plateau swept by dry winds",
    "at the mouth of a deep fjord",
    "among terraced vineyards on volcanic slopes",
    "in a sandy bay sheltered by dunes",
];
const PRODUCTS: &[&str] = &[
    "smoked eel",
    "blue glassware",
    "saffron cloth",
    "cedar barrels",
    "bitter honey",
    "copper pots",
    "dyed wool",
    "rock salt",
    "pickled plums",
    "carved bone combs",
    "black tea",
    "lamp oil",
];
const LANDMARKS: &[&str] = &[
    "a leaning bell tower",
    "a stone bridge of nine arches",
    "a lighthouse painted in stripes",
    "a sunken amphitheatre",
    "a clock that runs backwards",
    "a garden of white roses",
    "an old observatory",
    "a covered market roofed with slate",
];
const CRAFTS: &[&str] = &[
    "lens grinding",
    "bookbinding",
    "clockwork",
    "rope making",
    "bell casting",
    "glass blowing",
    "map drawing",
    "instrument making",
];
const OCCUPATIONS: &[&str] = &[
    "apprentice",
    "journeyman",
    "master",
    "tutor",
    "treasurer",
    "archivist",
];
const ARTIFACT_A: &[&str] = &[
    "Ember", "Silent", "Winter", "Morning", "Drowned", "Seventh", "Broken", "Starlit", "Amber",
    "Hollow",
];
const ARTIFACT_B: &[&str] = &[
    "Chalice",
    "Astrolabe",
    "Harp",
    "Lantern",
    "Mirror",
    "Compass",
    "Crown",
    "Tapestry",
    "Hourglass",
    "Flute",
    "Atlas",
    "Reliquary",
];

struct World {
    towns: Vec<Town>,
    guilds: Vec<Guild>,
    people: Vec<Person>,
    artifacts: Vec<Artifact>,
}
struct Town {
    name: String,
    geography: &'static str,
    product: &'static str,
    landmark: &'static str,
}
struct Guild {
    name: String,
    town: usize,
    craft: &'static str,
}
struct Person {
    name: String,
    guild: usize,
    occupation: &'static str,
}
struct Artifact {
    name: String,
    maker: usize,
}

fn syllable(rng: &mut ChaCha8Rng) -> String {
    format!(
        "{}{}{}",
        ONSETS.choose(rng).copied().unwrap_or("b"),
        VOWELS.choose(rng).copied().unwrap_or("a"),
        CODAS.choose(rng).copied().unwrap_or("")
    )
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

/// Draws names until `n` distinct ones exist (`make` builds one candidate).
fn distinct(
    n: usize,
    rng: &mut ChaCha8Rng,
    taken: &mut BTreeSet<String>,
    mut make: impl FnMut(&mut ChaCha8Rng) -> String,
) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let name = make(rng);
        if taken.insert(name.to_lowercase()) {
            out.push(name);
        }
    }
    out
}

fn build_world(size: &WorldSize, rng: &mut ChaCha8Rng) -> World {
    let mut taken = BTreeSet::new();
    let town_names = distinct(size.towns, rng, &mut taken, |r| {
        let suffix = [
            "gate", "mere", "holm", "wick", "ford", "stead", "moor", "by",
        ]
        .choose(r)
        .copied()
        .unwrap_or("by");
        capitalise(&format!("{}{}{}", syllable(r), syllable(r), suffix))
    });
    let towns = town_names
        .into_iter()
        .enumerate()
        .map(|(i, name)| Town {
            name,
            geography: GEOGRAPHY[i % GEOGRAPHY.len()],
            product: PRODUCTS[(i * 5 + 3) % PRODUCTS.len()],
            landmark: LANDMARKS[(i * 3 + i / LANDMARKS.len()) % LANDMARKS.len()],
        })
        .collect::<Vec<_>>();
    let guild_names = distinct(size.guilds, rng, &mut taken, |r| {
        let a = GUILD_A.choose(r).copied().unwrap_or("Copper");
        let b = GUILD_B.choose(r).copied().unwrap_or("Lantern");
        if a == b {
            format!("{a} {a}")
        } else {
            format!("{a} {b}")
        }
    });
    // Every town hosts at least one guild hall.
    let guilds = guild_names
        .into_iter()
        .enumerate()
        .map(|(i, name)| Guild {
            name,
            town: if i < size.towns {
                i
            } else {
                rng.random_range(0..size.towns)
            },
            craft: CRAFTS.choose(rng).copied().unwrap_or("bookbinding"),
        })
        .collect::<Vec<_>>();
    let person_names = distinct(size.people, rng, &mut taken, |r| {
        let first = capitalise(&format!("{}{}", syllable(r), syllable(r)));
        let last = capitalise(&format!("{}{}", syllable(r), syllable(r)));
        format!("{first} {last}")
    });
    // Every guild has at least six members, so its town fact is taught by several training traces.
    let people = person_names
        .into_iter()
        .enumerate()
        .map(|(i, name)| Person {
            name,
            guild: if i < size.guilds * 6 {
                i % size.guilds
            } else {
                rng.random_range(0..size.guilds)
            },
            occupation: OCCUPATIONS.choose(rng).copied().unwrap_or("master"),
        })
        .collect::<Vec<_>>();
    let artifact_names = distinct(size.artifacts, rng, &mut taken, |r| {
        format!(
            "{} {}",
            ARTIFACT_A.choose(r).copied().unwrap_or("Ember"),
            ARTIFACT_B.choose(r).copied().unwrap_or("Chalice")
        )
    });
    let mut makers: Vec<usize> = (0..size.people).collect();
    makers.shuffle(rng);
    let artifacts = artifact_names
        .into_iter()
        .zip(makers)
        .map(|(name, maker)| Artifact { name, maker })
        .collect();
    World {
        towns,
        guilds,
        people,
        artifacts,
    }
}

fn town_doc(t: &Town) -> String {
    format!(
        "{} lies {}. Its markets are known for {}, and visitors come to see {}.",
        t.name, t.geography, t.product, t.landmark
    )
}
fn guild_doc(g: &Guild, towns: &[Town]) -> String {
    format!(
        "The {} guild keeps its hall in {}. Its members practise {} and meet on the first day of each month.",
        g.name, towns[g.town].name, g.craft
    )
}
fn person_doc(p: &Person, guilds: &[Guild]) -> String {
    format!(
        "{} is a {} who belongs to the {} guild.",
        p.name, p.occupation, guilds[p.guild].name
    )
}
fn artifact_doc(a: &Artifact, people: &[Person]) -> String {
    format!("The {} was made by {}.", a.name, people[a.maker].name)
}

/// Sentences of the reasoning chains (also the stage-1 targets).
fn fact_person_guild(w: &World, p: usize) -> String {
    format!(
        "{} belongs to the {} guild.",
        w.people[p].name, w.guilds[w.people[p].guild].name
    )
}
fn fact_guild_town(w: &World, g: usize) -> String {
    format!(
        "The {} guild keeps its hall in {}.",
        w.guilds[g].name, w.towns[w.guilds[g].town].name
    )
}
fn fact_artifact_maker(w: &World, a: usize) -> String {
    format!(
        "The {} was made by {}.",
        w.artifacts[a].name, w.people[w.artifacts[a].maker].name
    )
}

struct QueryRow {
    id: String,
    text: String,
    reasoning: String,
    relevant: String,
    hard_negatives: Vec<String>,
    excluded: Vec<String>,
    split: &'static str,
}

/// Generates the dataset for `seed`.
pub fn generate(seed: u64, size: &WorldSize) -> Generated {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let w = build_world(size, &mut rng);
    let town_id = |t: usize| format!("town-{t:03}");
    let guild_id = |g: usize| format!("guild-{g:03}");
    let person_id = |p: usize| format!("person-{p:03}");
    let artifact_id = |a: usize| format!("artifact-{a:03}");

    // Corpus: towns, guilds, people, artifacts; shuffled so ids do not give away the kind's order.
    let mut docs: Vec<(String, String, String)> = Vec::new();
    for (i, t) in w.towns.iter().enumerate() {
        docs.push((town_id(i), t.name.clone(), town_doc(t)));
    }
    for (i, g) in w.guilds.iter().enumerate() {
        docs.push((
            guild_id(i),
            format!("{} guild", g.name),
            guild_doc(g, &w.towns),
        ));
    }
    for (i, p) in w.people.iter().enumerate() {
        docs.push((person_id(i), p.name.clone(), person_doc(p, &w.guilds)));
    }
    for (i, a) in w.artifacts.iter().enumerate() {
        docs.push((artifact_id(i), a.name.clone(), artifact_doc(a, &w.people)));
    }
    docs.shuffle(&mut rng);

    // Held-out chains: people (resp. artifacts) whose full town chain is only asked in dev/test.
    // A guild's town fact must still be taught in training: never hold out a guild's last
    // training member.
    let mut order: Vec<usize> = (0..w.people.len()).collect();
    order.shuffle(&mut rng);
    let n_held = (w.people.len() as f64 * size.held_out_people).round() as usize;
    let mut train_members: Vec<usize> = vec![0; w.guilds.len()];
    for p in &w.people {
        train_members[p.guild] += 1;
    }
    let mut held_people = Vec::new();
    for &p in &order {
        if held_people.len() == n_held {
            break;
        }
        let g = w.people[p].guild;
        if train_members[g] > 2 {
            train_members[g] -= 1;
            held_people.push(p);
        }
    }
    let held_people: BTreeSet<usize> = held_people.into_iter().collect();
    let mut art_order: Vec<usize> = (0..w.artifacts.len()).collect();
    art_order.shuffle(&mut rng);
    let n_held_art = (w.artifacts.len() as f64 * size.held_out_artifacts).round() as usize;
    let held_artifacts: BTreeSet<usize> = art_order[..n_held_art].iter().copied().collect();

    let pick =
        |rng: &mut ChaCha8Rng, options: &[String]| options.choose(rng).cloned().unwrap_or_default();
    let mut rows: Vec<QueryRow> = Vec::new();
    let mut dev_test_toggle = 0usize;
    let mut next_split = |held: bool| -> &'static str {
        if !held {
            return "train";
        }
        dev_test_toggle += 1;
        if dev_test_toggle % 2 == 1 {
            "dev"
        } else {
            "test"
        }
    };
    for (p, person) in w.people.iter().enumerate() {
        let g = person.guild;
        let name = &person.name;
        rows.push(QueryRow {
            id: format!("q-guild-of-person-{p:03}"),
            text: pick(
                &mut rng,
                &[
                    format!("Which guild counts {name} among its members?"),
                    format!("What guild is {name} part of?"),
                    format!("Name the guild that {name} joined."),
                ],
            ),
            reasoning: format!(
                "{} So the answer is the {} guild.",
                fact_person_guild(&w, p),
                w.guilds[g].name
            ),
            relevant: guild_id(g),
            hard_negatives: vec![],
            excluded: vec![person_id(p)],
            split: "train",
        });
    }
    for (p, person) in w.people.iter().enumerate() {
        let g = person.guild;
        let t = w.guilds[g].town;
        let name = &person.name;
        rows.push(QueryRow {
            id: format!("q-town-of-person-{p:03}"),
            text: pick(
                &mut rng,
                &[
                    format!("Where does the guild of {name} hold its meetings?"),
                    format!("In which town would I find the meeting hall of {name}'s guild?"),
                    format!("Which town hosts the guild hall that {name} attends?"),
                ],
            ),
            reasoning: format!(
                "{} {} So the answer is {}.",
                fact_person_guild(&w, p),
                fact_guild_town(&w, g),
                w.towns[t].name
            ),
            relevant: town_id(t),
            hard_negatives: vec![guild_id(g)],
            excluded: vec![],
            split: next_split(held_people.contains(&p)),
        });
    }
    for (a, art) in w.artifacts.iter().enumerate() {
        let p = art.maker;
        let g = w.people[p].guild;
        let name = &art.name;
        rows.push(QueryRow {
            id: format!("q-guild-of-maker-{a:03}"),
            text: pick(
                &mut rng,
                &[
                    format!("Which guild did the maker of the {name} belong to?"),
                    format!("The {name}: what guild was its maker in?"),
                ],
            ),
            reasoning: format!(
                "{} {} So the answer is the {} guild.",
                fact_artifact_maker(&w, a),
                fact_person_guild(&w, p),
                w.guilds[g].name
            ),
            relevant: guild_id(g),
            hard_negatives: vec![person_id(p)],
            excluded: vec![],
            split: "train",
        });
    }
    for (a, art) in w.artifacts.iter().enumerate() {
        let p = art.maker;
        let g = w.people[p].guild;
        let t = w.guilds[g].town;
        let name = &art.name;
        rows.push(QueryRow {
            id: format!("q-town-of-maker-{a:03}"),
            text: pick(
                &mut rng,
                &[
                    format!("Where is the hall of the guild whose member crafted the {name}?"),
                    format!("In which town does the guild of the {name}'s creator meet?"),
                ],
            ),
            reasoning: format!(
                "{} {} {} So the answer is {}.",
                fact_artifact_maker(&w, a),
                fact_person_guild(&w, p),
                fact_guild_town(&w, g),
                w.towns[t].name
            ),
            relevant: town_id(t),
            hard_negatives: vec![guild_id(g), person_id(p)],
            excluded: vec![],
            split: next_split(held_artifacts.contains(&a)),
        });
    }
    rows.shuffle(&mut rng);

    let mut corpus_jsonl = String::new();
    for (id, title, text) in &docs {
        corpus_jsonl.push_str(&json!({"_id": id, "title": title, "text": text}).to_string());
        corpus_jsonl.push('\n');
    }
    let mut queries_jsonl = String::new();
    let mut hard_negatives_jsonl = String::new();
    let mut qrels: BTreeMap<String, String> = BTreeMap::new();
    for r in &rows {
        let mut q = json!({"_id": r.id, "text": r.text, "reasoning": r.reasoning});
        if !r.excluded.is_empty() {
            q["excluded_ids"] = json!(r.excluded);
        }
        queries_jsonl.push_str(&q.to_string());
        queries_jsonl.push('\n');
        if !r.hard_negatives.is_empty() {
            hard_negatives_jsonl
                .push_str(&json!({"query_id": r.id, "doc_ids": r.hard_negatives}).to_string());
            hard_negatives_jsonl.push('\n');
        }
        let tsv = qrels
            .entry(r.split.to_string())
            .or_insert_with(|| "query-id\tcorpus-id\tscore\n".to_string());
        tsv.push_str(&format!("{}\t{}\t1\n", r.id, r.relevant));
    }
    Generated {
        corpus_jsonl,
        queries_jsonl,
        qrels,
        hard_negatives_jsonl,
    }
}

impl Generated {
    /// Writes the BEIR layout into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let qdir = dir.join("qrels");
        std::fs::create_dir_all(&qdir).map_err(|e| Error::io(&qdir, e))?;
        let put =
            |p: std::path::PathBuf, s: &str| std::fs::write(&p, s).map_err(|e| Error::io(&p, e));
        put(dir.join("corpus.jsonl"), &self.corpus_jsonl)?;
        put(dir.join("queries.jsonl"), &self.queries_jsonl)?;
        put(dir.join("hard_negatives.jsonl"), &self.hard_negatives_jsonl)?;
        for (split, tsv) in &self.qrels {
            put(qdir.join(format!("{split}.tsv")), tsv)?;
        }
        Ok(())
    }

    /// Every text the tokenizer should see: documents, queries and reasoning.
    pub fn texts(&self) -> Vec<String> {
        let mut out = Vec::new();
        for line in self.corpus_jsonl.lines().chain(self.queries_jsonl.lines()) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                for key in ["title", "text", "reasoning"] {
                    if let Some(s) = v.get(key).and_then(|s| s.as_str()) {
                        out.push(s.to_string());
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_bytes_other_seed_other_world() {
        let s = WorldSize::default();
        assert_eq!(generate(7, &s), generate(7, &s));
        assert_ne!(generate(7, &s).corpus_jsonl, generate(8, &s).corpus_jsonl);
    }
}

/// Special tokens of the default tokenizer: end of text (also padding) and the T1 tokens.
pub const SPECIAL_TOKENS: [&str; 4] = ["<|endoftext|>", "<think>", "</think>", "<emb_token>"];

/// Trains a byte-level BPE tokenizer (GPT-2 style, no prefix space) on `texts` with the
/// [`SPECIAL_TOKENS`] first in the vocabulary; returns its `tokenizer.json`.
pub fn train_tokenizer(texts: &[String], vocab_size: usize) -> Result<String> {
    use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
    use tokenizers::normalizers::NormalizerWrapper;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::{AddedToken, Tokenizer, TokenizerBuilder};

    let err = |e: tokenizers::Error| Error::Runtime(format!("tokenizer training failed: {e}"));
    let byte_level = ByteLevel::new(false, true, true);
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(
            SPECIAL_TOKENS
                .iter()
                .map(|t| AddedToken::from(*t, true))
                .collect(),
        )
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut tok =
        TokenizerBuilder::<BPE, NormalizerWrapper, ByteLevel, ByteLevel, ByteLevel>::new()
            .with_model(BPE::default())
            .with_normalizer(None)
            .with_pre_tokenizer(Some(byte_level))
            .with_post_processor(Some(byte_level))
            .with_decoder(Some(byte_level))
            .build()
            .map_err(err)?;
    tok.train(&mut trainer, texts.iter()).map_err(err)?;
    let tok: Tokenizer = tok.into();
    tok.to_string(true).map_err(err)
}
