//! The KV-cache decode loop: cached steps equal the uncached full forward (logits per step, for
//! left-padded rows of different lengths), sampling is seeded and reproducible, rollouts carry
//! the right log-probs, stop reasons, forced closing tokens and `<emb_token>` states.

mod support;

use std::path::Path;

use burn::backend::Flex;
use burn::tensor::{Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use support::{fixture_path, max_abs, to_vec};
use t1_train::model::{
    Decoder, Embed, GenerateOptions, KvCache, Sampler, StopReason, generate, load_hf,
};

type B = Flex;

fn model(name: &str) -> Decoder<B> {
    load_hf::<B>(
        &fixture_path(&format!("backbone/{name}")),
        &Default::default(),
    )
    .unwrap()
}

fn int2(v: Vec<i64>, b: usize, s: usize) -> Tensor<B, 2, Int> {
    Tensor::from_data(TensorData::new(v, [b, s]), &Default::default())
}

/// Random token sequences of the given lengths.
fn sequences(lens: &[usize], vocab: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    lens.iter()
        .map(|&l| (0..l).map(|_| rng.random_range(0..vocab as u32)).collect())
        .collect()
}

/// Uncached HF-style forward of left-padded rows: (logits `[n, s, V]` flat, hidden flat, s).
fn full_forward(m: &Decoder<B>, rows: &[Vec<u32>]) -> (Vec<f32>, Vec<f32>, usize) {
    let n = rows.len();
    let s = rows.iter().map(Vec::len).max().unwrap();
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    for r in rows {
        let lead = s - r.len();
        ids.extend(std::iter::repeat_n(0i64, lead));
        ids.extend(r.iter().map(|&t| t as i64));
        mask.extend(std::iter::repeat_n(0i64, lead));
        mask.extend(std::iter::repeat_n(1i64, r.len()));
    }
    let (logits, hidden) = m.forward(int2(ids, n, s), Some(int2(mask, n, s)));
    (to_vec(logits), to_vec(hidden), s)
}

/// Prefill left-padded prompts, then feed `chunk` tokens per call; every cached step's logits
/// must equal the full forward's logits at the same positions.
fn check_cached_equals_full(name: &str, chunk: usize) {
    let m = model(name);
    let vocab = m.config().vocab_size;
    let d = m.config().hidden_size;
    let prompt_lens = [5usize, 9, 2];
    let extra = 6usize;
    let full: Vec<Vec<u32>> = sequences(&[5 + extra, 9 + extra, 2 + extra], vocab, 7);
    let n = full.len();
    let p = *prompt_lens.iter().max().unwrap();
    let mut cache = KvCache::new(&m, n, p + extra);

    // prefill
    let mut ids = Vec::new();
    let mut pos = Vec::new();
    let mut pad = Vec::new();
    for (r, &l) in full.iter().zip(&prompt_lens) {
        ids.extend(std::iter::repeat_n(0i64, p - l));
        ids.extend(r[..l].iter().map(|&t| t as i64));
        pos.extend(std::iter::repeat_n(0i64, p - l));
        pos.extend(0..l as i64);
        pad.extend(std::iter::repeat_n(true, p - l));
        pad.extend(std::iter::repeat_n(false, l));
    }
    let h = m
        .forward_cached(int2(ids, n, p), int2(pos, n, p), &pad, &mut cache)
        .unwrap();
    let mut cached_logits: Vec<Vec<Vec<f32>>> = vec![Vec::new(); n]; // row → step → [V]
    let l0 = to_vec(m.logits(h.slice([0..n, p - 1..p, 0..d])));
    for row in 0..n {
        cached_logits[row].push(l0[row * vocab..(row + 1) * vocab].to_vec());
    }
    let mut done = 0;
    while done < extra {
        let s = chunk.min(extra - done);
        let mut ids = Vec::new();
        let mut pos = Vec::new();
        for (r, &l) in full.iter().zip(&prompt_lens) {
            ids.extend(r[l + done..l + done + s].iter().map(|&t| t as i64));
            pos.extend((l + done) as i64..(l + done + s) as i64);
        }
        let h = m
            .forward_cached(
                int2(ids, n, s),
                int2(pos, n, s),
                &vec![false; n * s],
                &mut cache,
            )
            .unwrap();
        let lg = to_vec(m.logits(h));
        for row in 0..n {
            for i in 0..s {
                let o = (row * s + i) * vocab;
                cached_logits[row].push(lg[o..o + vocab].to_vec());
            }
        }
        done += s;
    }
    assert_eq!(cache.len(), p + extra);

    let (logits, _, s_full) = full_forward(&m, &full);
    let mut worst = 0.0f32;
    for (row, &l) in prompt_lens.iter().enumerate() {
        let lead = s_full - full[row].len();
        // cached step j predicts token l + j: full position lead + l - 1 + j
        for (j, step) in cached_logits[row].iter().enumerate() {
            let at = lead + l - 1 + j;
            let o = (row * s_full + at) * vocab;
            worst = worst.max(max_abs(step, &logits[o..o + vocab]));
        }
    }
    println!("{name} chunk {chunk}: max |cached - full| = {worst:.3e}");
    assert!(worst <= 1e-4, "{name}: cached logits differ by {worst}");
}

#[test]
fn cached_steps_equal_the_full_forward() {
    for name in ["qwen3_tied", "qwen2_untied", "llama_tied_rope_llama3"] {
        check_cached_equals_full(name, 1);
    }
    // several tokens per call against a partly filled cache
    check_cached_equals_full("llama_untied_bias", 4);
}

#[test]
fn cache_overflow_is_an_error() {
    let m = model("qwen3_tied");
    let mut cache = KvCache::new(&m, 1, 3);
    let err = m
        .forward_cached(
            int2(vec![1, 2, 3, 4], 1, 4),
            int2(vec![0, 1, 2, 3], 1, 4),
            &[false; 4],
            &mut cache,
        )
        .unwrap_err();
    assert!(err.to_string().contains("capacity 3"), "{err}");
}

fn opts(sampler: Sampler, seed: u64, stop: Vec<u32>, embed: Option<Embed>) -> GenerateOptions {
    GenerateOptions {
        sampler,
        max_new_tokens: 12,
        stop,
        embed,
        pad: 0,
        seed,
        first_stream: 0,
        repetition_penalty: 1.0,
    }
}

fn hot() -> Sampler {
    Sampler::Random {
        temperature: 1.5,
        top_k: None,
        top_p: 1.0,
    }
}

#[test]
fn rollouts_match_the_uncached_forward() {
    let m = model("qwen2_untied");
    let prompts = sequences(&[4, 7, 3, 7, 1, 5, 2, 6], m.config().vocab_size, 11);
    check_rollouts_against_full(&m, &prompts);
}

/// Rows with the same prompt (a query's G rollouts) share one prefill: each row still samples
/// from its own stream and equals the uncached forward of its own sequence.
#[test]
fn shared_prompts_are_prefilled_once_and_match_the_uncached_forward() {
    let m = model("qwen2_untied");
    let distinct = sequences(&[4, 7, 2], m.config().vocab_size, 12);
    let prompts: Vec<Vec<u32>> = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
        .iter()
        .map(|&i| distinct[i].clone())
        .collect();
    let rollouts = check_rollouts_against_full(&m, &prompts);
    assert_ne!(
        rollouts[0].tokens, rollouts[1].tokens,
        "a group's rows differ"
    );
}

fn check_rollouts_against_full(
    m: &Decoder<B>,
    prompts: &[Vec<u32>],
) -> Vec<t1_train::model::Rollout> {
    let vocab = m.config().vocab_size;
    let d = m.config().hidden_size;
    let embed = Embed {
        end_think: (vocab - 2) as u32,
        emb: (vocab - 1) as u32,
    };
    // a sixteenth of the vocabulary stops sampling, so rows end at different steps and by both reasons
    let mut stop: Vec<u32> = (0..vocab as u32 / 16).collect();
    stop.push(embed.end_think);
    let o = opts(hot(), 3, stop.clone(), Some(embed));
    let rollouts = generate(m, prompts, &o, |_| {}).unwrap();
    let reasons: Vec<StopReason> = rollouts.iter().map(|r| r.stop).collect();
    assert!(
        reasons.iter().any(|r| matches!(r, StopReason::Token(_))),
        "{reasons:?}"
    );
    assert!(reasons.contains(&StopReason::Length), "{reasons:?}");

    let full: Vec<Vec<u32>> = prompts
        .iter()
        .zip(&rollouts)
        .map(|(p, r)| [p.clone(), r.tokens.clone(), r.forced.clone()].concat())
        .collect();
    let (logits, hidden, s) = full_forward(m, &full);
    let t = 1.5f64;
    let mut worst_lp = 0.0f32;
    let mut worst_h = 0.0f32;
    for (row, r) in rollouts.iter().enumerate() {
        assert_eq!(r.tokens.len(), r.logprobs.len());
        match r.stop {
            StopReason::Token(tok) => {
                assert_eq!(Some(&tok), r.tokens.last());
                assert!(stop.contains(&tok));
                assert!(!r.truncated());
            }
            StopReason::Length => {
                assert_eq!(r.tokens.len(), o.max_new_tokens);
                assert!(r.truncated());
            }
        }
        // </think> is fed unless the row drew it itself; <emb_token> always closes the row
        if r.tokens.last() == Some(&embed.end_think) {
            assert_eq!(r.forced, vec![embed.emb]);
        } else {
            assert_eq!(r.forced, vec![embed.end_think, embed.emb]);
        }
        let lead = s - full[row].len();
        let pl = prompts[row].len();
        for (j, (&tok, &lp)) in r.tokens.iter().zip(&r.logprobs).enumerate() {
            let o = (row * s + lead + pl - 1 + j) * vocab;
            let row_logits = &logits[o..o + vocab];
            let m = row_logits
                .iter()
                .fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64 / t));
            let lse = row_logits
                .iter()
                .map(|&x| (x as f64 / t - m).exp())
                .sum::<f64>()
                .ln()
                + m;
            let want = (row_logits[tok as usize] as f64 / t - lse) as f32;
            worst_lp = worst_lp.max((want - lp).abs());
        }
        let at = (row * s + s - 1) * d; // <emb_token> is each row's last token
        let emb = r.embedding.as_ref().expect("embedding");
        worst_h = worst_h.max(max_abs(emb, &hidden[at..at + d]));
    }
    println!("max |logprob - full| = {worst_lp:.3e}, max |emb - full| = {worst_h:.3e}");
    assert!(worst_lp <= 1e-4 && worst_h <= 1e-4, "{worst_lp} {worst_h}");
    rollouts
}

/// With a repetition penalty each greedy step takes the first maximum of Hugging Face's
/// penalised logits of the uncached forward (the row's prompt and its tokens so far divided by r,
/// or multiplied when negative); the log-probs returned stay the model's own log-softmax.
#[test]
fn greedy_with_a_repetition_penalty_follows_the_penalised_uncached_logits() {
    let m = model("qwen2_untied");
    let vocab = m.config().vocab_size;
    let prompts = sequences(&[5, 3, 8], vocab, 21);
    let r = 1.8f32;
    let mut o = opts(Sampler::Greedy, 0, vec![], None);
    let plain = generate(&m, &prompts, &o, |_| {}).unwrap();
    o.repetition_penalty = r;
    let pen = generate(&m, &prompts, &o, |_| {}).unwrap();
    assert!(
        plain.iter().zip(&pen).any(|(a, b)| a.tokens != b.tokens),
        "the penalty changed nothing"
    );
    let (mut worst_lp, mut margin) = (0f64, f32::MAX);
    for (row, ro) in pen.iter().enumerate() {
        assert_eq!(ro.tokens.len(), o.max_new_tokens);
        let mut seq = prompts[row].clone();
        for (j, (&tok, &lp)) in ro.tokens.iter().zip(&ro.logprobs).enumerate() {
            let (logits, _, s) = full_forward(&m, std::slice::from_ref(&seq));
            let last = &logits[(s - 1) * vocab..s * vocab];
            let z: Vec<f32> = last
                .iter()
                .enumerate()
                .map(|(t, &x)| match seq.contains(&(t as u32)) {
                    true if x < 0.0 => x * r,
                    true => x / r,
                    false => x,
                })
                .collect();
            let best = (0..vocab).fold(0, |b, t| if z[t] > z[b] { t } else { b });
            assert_eq!(tok as usize, best, "row {row}, step {j}");
            let second = (0..vocab)
                .filter(|&t| t != best)
                .map(|t| z[t])
                .fold(f32::MIN, f32::max);
            margin = margin.min(z[best] - second);
            let mx = last.iter().fold(f64::MIN, |a, &x| a.max(x as f64));
            let lse = last
                .iter()
                .map(|&x| (x as f64 - mx).exp())
                .sum::<f64>()
                .ln()
                + mx;
            worst_lp = worst_lp.max((lp as f64 - (last[tok as usize] as f64 - lse)).abs());
            seq.push(tok);
        }
    }
    println!("max |logprob - full| = {worst_lp:.3e}; smallest penalised top-2 gap {margin:.3e}");
    assert!(worst_lp <= 1e-4, "{worst_lp}");
    // a penalty must be finite and positive
    for bad in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        o.repetition_penalty = bad;
        let e = generate(&m, &prompts, &o, |_| {}).unwrap_err().to_string();
        assert!(e.contains("repetition penalty"), "{e}");
    }
}

#[test]
fn drawing_end_think_feeds_only_emb_token() {
    let m = model("qwen3_tied");
    let vocab = m.config().vocab_size as u32;
    let prompts = sequences(&[6], vocab as usize, 5);
    let greedy = generate(
        &m,
        &prompts,
        &opts(Sampler::Greedy, 0, vec![], None),
        |_| {},
    )
    .unwrap();
    let g = &greedy[0].tokens;
    assert_eq!(g.len(), 12);
    assert_eq!(greedy[0].stop, StopReason::Length);
    assert!(greedy[0].embedding.is_none());
    // Pretend the 3rd greedy token is </think>: the row stops there and feeds only <emb_token>.
    let end = g[2];
    let first = g.iter().position(|&t| t == end).unwrap();
    let embed = Embed {
        end_think: end,
        emb: vocab - 1,
    };
    let r = generate(
        &m,
        &prompts,
        &opts(Sampler::Greedy, 0, vec![end], Some(embed)),
        |_| {},
    )
    .unwrap();
    assert_eq!(r[0].tokens, g[..=first].to_vec());
    assert_eq!(r[0].stop, StopReason::Token(end));
    assert_eq!(r[0].forced, vec![vocab - 1]);
    assert!(r[0].embedding.is_some());
}

#[test]
fn sampling_is_seeded_and_rows_are_independent() {
    let m = model("llama_tied_rope_llama3");
    let vocab = m.config().vocab_size;
    let prompts = sequences(&[3, 8, 5], vocab, 1);
    let run = |seed: u64, p: &[Vec<u32>]| {
        generate(&m, p, &opts(hot(), seed, vec![], None), |_| {})
            .unwrap()
            .into_iter()
            .map(|r| r.tokens)
            .collect::<Vec<_>>()
    };
    let a = run(42, &prompts);
    assert_eq!(a, run(42, &prompts), "same seed, same rollouts");
    assert_ne!(a, run(43, &prompts), "another seed, other rollouts");
    assert_ne!(a[0], a[1]);
    // Row i uses stream i whatever else is in the batch: the first row alone draws the same tokens.
    assert_eq!(run(42, &prompts[..1])[0], a[0]);
}

#[test]
fn bad_generation_requests_are_errors() {
    let m = model("qwen3_tied");
    let vocab = m.config().vocab_size as u32;
    let e = generate(
        &m,
        &[vec![vocab + 5]],
        &opts(Sampler::Greedy, 0, vec![], None),
        |_| {},
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("outside the model's vocabulary"),
        "{e}"
    );
    let e = generate(
        &m,
        &[vec![]],
        &opts(Sampler::Greedy, 0, vec![], None),
        |_| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("empty"), "{e}");
    assert!(Sampler::from_args(1.0, None, 0.0).is_err());
    assert!(Sampler::from_args(1.0, Some(0), 1.0).is_err());
    assert_eq!(Sampler::from_args(0.0, None, 1.0).unwrap(), Sampler::Greedy);
}

#[test]
fn token_logprobs_and_hidden_at_match_the_full_logits() {
    let m = model("qwen3_untied");
    let vocab = m.config().vocab_size;
    let d = m.config().hidden_size;
    let rows = sequences(&[9, 9], vocab, 3);
    let (logits, hidden, s) = full_forward(&m, &rows);
    let ids: Vec<i64> = rows.iter().flatten().map(|&t| t as i64).collect();
    let targets: Vec<i64> = ids.iter().map(|&t| (t * 7 + 3) % vocab as i64).collect();
    let h = m.hidden(int2(ids, 2, s), None);
    let lp = to_vec(m.token_logprobs(h.clone(), int2(targets.clone(), 2, s), 4));
    let mut worst = 0.0f32;
    for (i, &tgt) in targets.iter().enumerate() {
        let row = &logits[i * vocab..(i + 1) * vocab];
        let mx = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let lse = row.iter().map(|&x| (x - mx).exp()).sum::<f32>().ln() + mx;
        worst = worst.max((row[tgt as usize] - lse - lp[i]).abs());
    }
    assert!(worst <= 1e-4, "{worst}");
    let pos =
        Tensor::<B, 1, Int>::from_data(TensorData::new(vec![3i64, 8], [2]), &Default::default());
    let at = to_vec(Decoder::hidden_at(h, pos));
    assert_eq!(at.len(), 2 * d);
    assert!(max_abs(&at[..d], &hidden[3 * d..4 * d]) <= 1e-5);
    assert!(max_abs(&at[d..], &hidden[(s + 8) * d..(s + 9) * d]) <= 1e-5);
}

#[test]
fn rollout_groups_share_prompts_differ_in_samples_and_carry_embeddings() {
    use t1_train::data::Dataset;
    use t1_train::model::{DecoderConfig, T1Tokenizer};
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tok = T1Tokenizer::load(&root.join("curricula/default/tokenizer.json")).unwrap();
    <B as burn::tensor::backend::Backend>::seed(&Default::default(), 11);
    let m: Decoder<B> = DecoderConfig::tiny(tok.vocab_size()).init(&Default::default());
    let ds = Dataset::load(&root.join("curricula/default/data")).unwrap();
    let qs: Vec<_> = ds.queries.iter().take(2).collect();
    let o = t1_train::rollout::RolloutOptions {
        group: 3,
        sampler: hot(),
        max_query_tokens: 32,
        max_new_tokens: 10,
        seed: 5,
        first_stream: 0,
        repetition_penalty: 1.0,
    };
    let batch = t1_train::rollout::sample(&m, &tok, &qs, &o).unwrap();
    assert_eq!(batch.rollouts.len(), 6);
    assert_eq!(batch.embeddings.dims(), [6, m.config().hidden_size]);
    assert_eq!(batch.prompts[0], batch.prompts[2]);
    assert_ne!(batch.prompts[2], batch.prompts[3]);
    assert_eq!(*batch.prompts[0].last().unwrap(), tok.think);
    assert_ne!(
        batch.rollouts[0].tokens, batch.rollouts[1].tokens,
        "each row has its own stream"
    );
    let emb = to_vec(batch.embeddings.clone());
    let d = m.config().hidden_size;
    for (i, r) in batch.rollouts.iter().enumerate() {
        assert_eq!(r.embedding.as_deref().unwrap(), &emb[i * d..(i + 1) * d]);
        assert_eq!(*r.forced.last().unwrap(), tok.emb);
        assert_eq!(
            batch.format_ok[i],
            r.stop == StopReason::Token(tok.end_think)
        );
    }
}

#[test]
fn a_sampled_emb_token_does_not_close_the_row() {
    // Pretend the 3rd greedy token is <emb_token>: the model "writes" it while reasoning. The row
    // must go on sampling to max_new_tokens, then be closed by the forced </think><emb_token>.
    let m = model("qwen3_tied");
    let vocab = m.config().vocab_size as u32;
    let prompts = sequences(&[6], vocab as usize, 5);
    let greedy = generate(
        &m,
        &prompts,
        &opts(Sampler::Greedy, 0, vec![], None),
        |_| {},
    )
    .unwrap();
    let g = &greedy[0].tokens;
    let emb = g[2];
    let end = (0..vocab).find(|t| !g.contains(t)).unwrap();
    let embed = Embed {
        end_think: end,
        emb,
    };
    let r = generate(
        &m,
        &prompts,
        &opts(Sampler::Greedy, 0, vec![end], Some(embed)),
        |_| {},
    )
    .unwrap();
    assert_eq!(
        r[0].tokens, *g,
        "sampling went on past the drawn <emb_token>"
    );
    assert_eq!(r[0].stop, StopReason::Length);
    assert_eq!(r[0].forced, vec![end, emb]);
    // its state is the one after the forced closing tokens, as a full forward of the row gives
    let full = [prompts[0].clone(), r[0].tokens.clone(), r[0].forced.clone()].concat();
    let (_, hidden, s) = full_forward(&m, &[full]);
    let d = m.config().hidden_size;
    let want = &hidden[(s - 1) * d..s * d];
    assert!(max_abs(r[0].embedding.as_ref().unwrap(), want) <= 1e-4);
}
