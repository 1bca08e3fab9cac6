//! T1 tokens are added when missing, the embedding grows with mean-initialised rows, and the
//! query/document views have the layout DESIGN §1 describes.

mod support;

use std::path::PathBuf;

use burn::backend::Flex;
use burn::tensor::{Int, Tensor, TensorData};
use t1_train::model::{Decoder, DecoderConfig, T1Tokenizer, load_hf};

type B = Flex;

fn shipped() -> PathBuf {
    support::root().join("curricula/default/tokenizer.json")
}

#[test]
fn shipped_tokenizer_has_t1_tokens_as_single_ids() {
    let t = T1Tokenizer::load(&shipped()).unwrap();
    assert!(t.added.is_empty());
    assert_eq!(t.encode("<think>").unwrap(), vec![t.think]);
    assert_eq!(
        t.encode("a</think><emb_token>").unwrap()[1..],
        [t.end_think, t.emb]
    );
    assert_eq!(Some(t.pad), t.eos);
    let text = "Volo Gryndfol belongs to the Hollow Loom guild.";
    assert_eq!(t.decode(&t.encode(text).unwrap(), false).unwrap(), text);
}

#[test]
fn missing_t1_tokens_are_added_and_saved() {
    // strip the T1 tokens from the shipped tokenizer's added_tokens
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(shipped()).unwrap()).unwrap();
    let keep: Vec<serde_json::Value> = json["added_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["content"] == "<|endoftext|>")
        .cloned()
        .collect();
    json["added_tokens"] = keep.into();
    for t in ["<think>", "</think>", "<emb_token>"] {
        json["model"]["vocab"].as_object_mut().unwrap().remove(t);
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tokenizer.json");
    std::fs::write(&p, json.to_string()).unwrap();
    let t = T1Tokenizer::load(&p).unwrap();
    assert_eq!(t.added, vec!["<think>", "</think>", "<emb_token>"]);
    assert_eq!(t.encode("x<emb_token>").unwrap().last(), Some(&t.emb));
    let saved = dir.path().join("saved.json");
    t.save(&saved).unwrap();
    let again = T1Tokenizer::load(&saved).unwrap();
    assert!(again.added.is_empty());
    assert_eq!(
        (again.think, again.end_think, again.emb),
        (t.think, t.end_think, t.emb)
    );
}

#[test]
fn views_have_the_design_layout() {
    let t = T1Tokenizer::load(&shipped()).unwrap();
    let p = t.query_prompt("Where is X?", 64).unwrap();
    assert_eq!(*p.last().unwrap(), t.think);
    let (full, plen) = t
        .query_with_reasoning("Where is X?", "X is in Y.", 64, 64)
        .unwrap();
    assert_eq!(&full[..plen], &p[..]);
    assert_eq!(full[full.len() - 2..], [t.end_think, t.emb]);
    let (short, _) = t
        .query_with_reasoning("Where is X?", "X is in Y.", 64, 2)
        .unwrap();
    assert_eq!(short.len(), plen + 2 + 2);
    let (d, cut) = t.doc_view("Title", "some text here", 128).unwrap();
    assert!(!cut);
    assert_eq!(*d.last().unwrap(), t.emb);
    let (d2, cut) = t.doc_view("Title", "some text here", 2).unwrap();
    assert!(cut);
    assert_eq!(d2.len(), t.encode("Document: ").unwrap().len() + 3);
}

#[test]
fn resize_vocab_appends_mean_rows_and_keeps_old_logits() {
    let device = Default::default();
    let dir = support::fixture_path("backbone/qwen2_untied");
    let model: Decoder<B> = load_hf(&dir, &device).unwrap();
    let ids: Tensor<B, 2, Int> =
        Tensor::from_data(TensorData::new(vec![5i64, 17, 33, 2], [1, 4]), &device);
    let (before, _) = model.forward(ids.clone(), None);
    let emb_mean: Vec<f32> = model
        .model
        .embed_tokens
        .weight
        .val()
        .mean_dim(0)
        .into_data()
        .to_vec()
        .unwrap();
    let grown = model.resize_vocab(99).unwrap();
    assert_eq!(grown.config().vocab_size, 99);
    let w = grown.model.embed_tokens.weight.val();
    assert_eq!(w.dims(), [99, 32]);
    let new_row: Vec<f32> = w.slice([98..99, 0..32]).into_data().to_vec().unwrap();
    for (a, b) in new_row.iter().zip(&emb_mean) {
        assert!((a - b).abs() < 1e-6);
    }
    assert_eq!(
        grown.lm_head.as_ref().unwrap().weight.val().dims(),
        [32, 99]
    );
    let (after, _) = grown.forward(ids, None);
    let diff = (after.slice([0..1, 0..4, 0..96]) - before)
        .abs()
        .max()
        .into_scalar();
    assert!(diff < 1e-6, "old logits changed by {diff}");
    assert!(grown.resize_vocab(10).is_err());
    // a fresh tiny preset grows too (tied head)
    let tiny: Decoder<B> = DecoderConfig::tiny(1020).init(&device);
    assert_eq!(
        tiny.resize_vocab(1024)
            .unwrap()
            .model
            .embed_tokens
            .weight
            .val()
            .dims(),
        [1024, 128]
    );
}

#[test]
fn chat_template_renders_the_query_turn_and_query_is_cut_by_tokens() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(shipped(), dir.path().join("tokenizer.json")).unwrap();
    // A Qwen-like template using Python string methods (pycompat) and raise_exception.
    let template = "{%- for m in messages -%}{%- if m.role not in ['user', 'system'] -%}\
        {{ raise_exception('bad role') }}{%- endif -%}\
        <{{ m.role }}>{{ m.content.strip() }}{{ eos_token }}\n{%- endfor -%}\
        {%- if add_generation_prompt %}<assistant>{% endif -%}";
    let cfg =
        serde_json::json!({"chat_template": template, "eos_token": {"content": "<|endoftext|>"}});
    std::fs::write(dir.path().join("tokenizer_config.json"), cfg.to_string()).unwrap();
    let t = T1Tokenizer::load(&dir.path().join("tokenizer.json")).unwrap();
    assert!(t.has_chat_template());
    let p = t.query_prompt("  Where is X?  ", 64).unwrap();
    let text = t.decode(&p, true).unwrap();
    let want = format!(
        "<user>{}Where is X?<|endoftext|><assistant><think>",
        t1_train::model::tokenizer::QUERY_INSTRUCTION
    );
    assert_eq!(text.replace(' ', ""), want.replace(' ', ""), "{text}");
    // the template travels with a saved tokenizer
    let out = tempfile::tempdir().unwrap();
    t.save(&out.path().join("tokenizer.json")).unwrap();
    assert!(
        T1Tokenizer::load(&out.path().join("tokenizer.json"))
            .unwrap()
            .has_chat_template()
    );

    // without a template: instruction + query cut to 3 tokens + <think>
    let plain = T1Tokenizer::load(&shipped()).unwrap();
    let full = plain
        .query_prompt("Volo Gryndfol belongs to the Hollow Loom guild", 64)
        .unwrap();
    let cut = plain
        .query_prompt("Volo Gryndfol belongs to the Hollow Loom guild", 3)
        .unwrap();
    let instr = plain
        .encode(t1_train::model::tokenizer::QUERY_INSTRUCTION)
        .unwrap()
        .len();
    assert!(cut.len() < full.len());
    // the query text is cut after its 3rd token, then the whole prompt is tokenised at once
    // (so a token may merge across the instruction/query boundary: allow one token of slack)
    assert!(
        cut.len() <= instr + 3 + 1 + 1,
        "{:?}",
        plain.decode(&cut, true)
    );
    let cut_text = plain.decode(&cut[..cut.len() - 1], true).unwrap();
    let full_text = plain.decode(&full[..full.len() - 1], true).unwrap();
    assert!(full_text.starts_with(&cut_text) && cut_text.len() < full_text.len());
    assert_eq!(cut.last(), Some(&plain.think));

    // a template that does not compile is an error naming the file and field
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"chat_template": "{% for %}"}"#,
    )
    .unwrap();
    let e = T1Tokenizer::load(&dir.path().join("tokenizer.json"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("tokenizer_config.json") && e.contains("chat_template"),
        "{e}"
    );
}

#[test]
fn grown_and_cast_models_train_under_autodiff() {
    use burn::backend::Autodiff;
    type AD = Autodiff<Flex>;
    // vocabulary growth on a trainable model yields leaf parameters that get gradients
    let m: Decoder<AD> = DecoderConfig::tiny(1021).init(&Default::default());
    let m = m.resize_vocab(1024).unwrap();
    let ids = Tensor::<AD, 2, Int>::from_data(
        TensorData::new(vec![1i64, 1022, 5], [1, 3]),
        &Default::default(),
    );
    let (logits, _) = m.forward(ids.clone(), None);
    let grads = logits.sum().backward();
    let g = m
        .model
        .embed_tokens
        .weight
        .grad(&grads)
        .expect("embedding gradient");
    assert_eq!(g.dims(), [1024, 128]);
    // a bf16 checkpoint cast to f32 on load, under autodiff
    let dir = support::fixture_path("backbone/qwen3_tied_bf16");
    let m = load_hf::<AD>(&dir, &Default::default()).unwrap();
    let ids = Tensor::<AD, 2, Int>::from_data(
        TensorData::new(vec![1i64, 2, 3], [1, 3]),
        &Default::default(),
    );
    let grads = m.forward(ids, None).0.sum().backward();
    assert!(m.model.norm.gamma.grad(&grads).is_some());
}

/// LaSER's trajectory targets: a segment ends at a sentence end or blank line, and at the end
/// of the kept reasoning; token indices are relative to the first reasoning token.
#[test]
fn reasoning_segments_end_at_sentences_blank_lines_and_the_cut() {
    let t = T1Tokenizer::load(&shipped()).unwrap();
    let text = "Volo belongs to the guild. The guild keeps a loom\n\nso the loom is hollow";
    let ids = t.encode(text).unwrap();
    let ends = t.reasoning_segment_ends(text, 1000).unwrap();
    assert_eq!(ends.len(), 3, "{ends:?}");
    assert_eq!(*ends.last().unwrap(), ids.len() - 1);
    // each segment's last token decodes to the text up to that boundary
    let upto = |i: usize| t.decode(&ids[..=i], false).unwrap();
    assert!(upto(ends[0]).ends_with("guild."), "{}", upto(ends[0]));
    assert!(
        upto(ends[1]).trim_end().ends_with("loom"),
        "{}",
        upto(ends[1])
    );
    // a cut keeps only the segments inside it, and the cut is the last end
    let cut = t.reasoning_segment_ends(text, ends[0] + 2).unwrap();
    assert_eq!(cut, vec![ends[0], ends[0] + 1]);
    assert!(t.reasoning_segment_ends("", 10).unwrap().is_empty());
}
