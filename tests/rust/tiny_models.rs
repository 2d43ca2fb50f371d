//! Tiny random-weight llama and qwen2 (tests/fixtures/tiny-*, made by
//! tests/scripts/make_tiny_models.py with a pinned transformers) through the
//! reference: logits at every position within 1e-4 of transformers' float32,
//! identical greedy tokens, and the tokenizer and chat template as transformers has them.

mod common;
use baleen::engine::{generate, Backend, GenerateParams};
use baleen::model::ModelFiles;
use baleen::reference::Reference;
use baleen::sample::SamplingParams;
use baleen::tokenizer::Message;

const MODELS: [&str; 2] = ["tiny-llama", "tiny-qwen2"];
/// transformers float32 vs our float32: different summation orders only.
const LOGIT_TOL: f32 = 1e-4;

fn open(name: &str) -> ModelFiles {
    ModelFiles::open(&common::fixture(name)).unwrap()
}

fn check_logits(name: &str, dir: &std::path::Path) {
    let fx = common::json(&format!("{name}/expected.json"));
    let m = ModelFiles::open(dir).unwrap();
    let mut r = Reference::load(&m).unwrap();
    let ids = common::u32s(&fx["prompt_ids"]);
    let logits = r.forward_tokens(&ids, true).unwrap();
    let worst = common::check_positions(&logits, m.config.vocab, &fx, LOGIT_TOL, name);
    eprintln!("{name}: max |Δlogit| over {} positions = {worst:e}", ids.len());
}

#[test]
fn logits_match_transformers_at_every_position() {
    for name in MODELS {
        check_logits(name, &common::fixture(name));
    }
}

#[test]
fn hub_style_rope_scaling_config_gives_the_same_model() {
    // transformers ≥ 5 writes `rope_parameters`; hub configs have
    // `rope_theta` + `rope_scaling`. Both spellings must load the same model.
    let src = common::fixture("tiny-llama");
    let dir = common::TempDir::new("hub-style");
    for f in ["model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), dir.0.join(f)).unwrap();
    }
    std::fs::copy(src.join("config.hub-style.json"), dir.0.join("config.json")).unwrap();
    let hub = common::json("tiny-llama/config.hub-style.json");
    assert!(hub.get("rope_scaling").is_some() && hub.get("rope_parameters").is_none());
    let a = open("tiny-llama");
    let b = ModelFiles::open(&dir.0).unwrap();
    assert_eq!(a.config.rope_scaling, b.config.rope_scaling);
    assert_eq!(a.config.rope_theta, b.config.rope_theta);
    check_logits("tiny-llama", &dir.0);
}

#[test]
fn greedy_tokens_match_transformers() {
    for name in MODELS {
        let fx = common::json(&format!("{name}/expected.json"));
        let m = open(name);
        let mut r = Reference::load(&m).unwrap();
        let want = common::u32s(&fx["greedy_ids"]);
        let params = GenerateParams { max_tokens: want.len(), sampling: SamplingParams::default(), stop_ids: vec![], ..Default::default() };
        let g = generate(&mut r, &common::u32s(&fx["prompt_ids"]), &params, |_| true).unwrap();
        assert_eq!(g.tokens, want, "{name}");
    }
}

#[test]
fn kv_cache_decode_equals_one_pass() {
    // Feeding the prompt in pieces through the cache gives the logits of one pass.
    for name in MODELS {
        let fx = common::json(&format!("{name}/expected.json"));
        let ids = common::u32s(&fx["prompt_ids"]);
        let m = open(name);
        let mut whole = Reference::load(&m).unwrap();
        let all = whole.forward_tokens(&ids, true).unwrap();
        let mut pieces = Reference::load(&m).unwrap();
        let vocab = m.config.vocab;
        let mut pos = 0;
        for chunk in [&ids[..5], &ids[5..6], &ids[6..]] {
            let got = pieces.forward_tokens(chunk, true).unwrap();
            let want = &all[pos * vocab..(pos + chunk.len()) * vocab];
            assert!(common::max_abs_diff(&got, want) < 1e-5, "{name} chunk at {pos}");
            pos += chunk.len();
        }
        // Truncating the cache and re-running a suffix reproduces it too.
        pieces.truncate(5);
        let again = pieces.forward_tokens(&ids[5..], false).unwrap();
        assert!(common::max_abs_diff(&again, &all[(ids.len() - 1) * vocab..]) < 1e-5);
    }
}

#[test]
fn tokenizer_matches_transformers() {
    for name in MODELS {
        let fx = common::json(&format!("{name}/expected.json"));
        let m = open(name);
        for case in fx["text_cases"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let ids = m.tokenizer.encode(text, false).unwrap();
            assert_eq!(ids, common::u32s(&case["ids"]), "{name}: {text:?}");
            // Decoding leaves special tokens out of the text.
            let plain = text.replace("<|im_start|>", "");
            assert_eq!(m.tokenizer.decode(&ids).unwrap(), plain, "{name}: decode");
            // Streaming pieces add up to the whole text.
            let mut s = m.tokenizer.stream();
            let mut streamed: String = ids.iter().map(|&i| s.push(i).unwrap()).collect();
            streamed += &s.finish().unwrap();
            assert_eq!(streamed, plain);
        }
        for case in fx["chat_cases"].as_array().unwrap() {
            let msgs: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
            let text = m.tokenizer.apply_chat_template(&msgs, true).unwrap();
            assert_eq!(text, case["text"].as_str().unwrap(), "{name}: template");
            assert_eq!(m.tokenizer.encode_chat(&msgs, true).unwrap(), common::u32s(&case["ids"]), "{name}: chat ids");
        }
    }
}

#[test]
fn bad_token_ids_and_context_overflow_are_errors() {
    let m = open("tiny-llama");
    let mut r = Reference::load(&m).unwrap();
    let e = r.forward_tokens(&[m.config.vocab as u32], false).unwrap_err().to_string();
    assert!(e.contains("outside the vocabulary"), "{e}");
    let e = r.forward_tokens(&[], false).unwrap_err().to_string();
    assert!(e.contains("no tokens"), "{e}");
    let too_long = vec![1u32; m.config.context_length + 1];
    let params = GenerateParams { max_tokens: 1, sampling: SamplingParams::default(), stop_ids: vec![], ..Default::default() };
    let e = generate(&mut r, &too_long, &params, |_| true).unwrap_err().to_string();
    assert!(e.contains("does not fit the model's context"), "{e}");
    assert_eq!(r.len(), 0, "a refused prompt leaves the cache untouched");
}

#[test]
fn generation_stops_at_context_end_and_on_cancel() {
    let m = open("tiny-qwen2");
    let mut r = Reference::load(&m).unwrap();
    let ctx = m.config.context_length;
    let prompt = vec![5u32; ctx - 3];
    let params = GenerateParams { max_tokens: 100, sampling: SamplingParams::default(), stop_ids: vec![], ..Default::default() };
    let g = generate(&mut r, &prompt, &params, |_| true).unwrap();
    assert_eq!(g.stop, baleen::engine::StopReason::ContextFull);
    assert_eq!(r.len(), ctx);
    r.truncate(0);
    let mut n = 0;
    let g = generate(&mut r, &[5, 6, 7], &params, |_| {
        n += 1;
        n < 3
    })
    .unwrap();
    assert_eq!((g.stop, g.tokens.len()), (baleen::engine::StopReason::Cancelled, 3));
}

#[test]
fn session_reuses_the_cache_and_matches_a_fresh_run() {
    let m = open("tiny-llama");
    let params = GenerateParams { max_tokens: 4, sampling: SamplingParams::default(), stop_ids: vec![], ..Default::default() };
    let turn1 = vec![Message::new("user", "hello there")];
    let p1 = m.tokenizer.encode_chat(&turn1, true).unwrap();
    let mut r = Reference::load(&m).unwrap();
    let mut session = baleen::engine::Session::new();
    let (g1, reused) = session.generate(&mut r, &p1, &params, |_| true).unwrap();
    assert_eq!(reused, 0);
    let mut turn2 = turn1.clone();
    turn2.push(Message::new("assistant", &m.tokenizer.decode(&g1.tokens).unwrap()));
    turn2.push(Message::new("user", "and again"));
    let p2 = m.tokenizer.encode_chat(&turn2, true).unwrap();
    let (g2, reused) = session.generate(&mut r, &p2, &params, |_| true).unwrap();
    assert!(reused >= p1.len(), "only {reused} of the first turn's {} tokens reused", p1.len());
    // An empty prompt is refused and leaves the conversation's cache alone.
    let before = r.len();
    assert!(session.generate(&mut r, &[], &params, |_| true).is_err());
    assert_eq!(r.len(), before);
    let mut fresh = Reference::load(&m).unwrap();
    let g = generate(&mut fresh, &p2, &params, |_| true).unwrap();
    assert_eq!(g.tokens, g2.tokens);
    assert!(common::max_abs_diff(&g.prompt_logits, &g2.prompt_logits) < 1e-5);
}

#[test]
fn real_chat_templates_render_as_transformers_renders_them() {
    // Qwen3-0.6B's template (the thinking switch; earlier turns' <think>
    // blocks dropped through Python string methods) and Gemma's
    // <start_of_turn> format (a system role refused by raise_exception),
    // rendered by transformers (tests/scripts/make_template_cases.py).
    let fx = common::json("templates.json");
    let tokens: std::collections::BTreeMap<String, String> = serde_json::from_value(fx["special_tokens"].clone()).unwrap();
    for (name, t) in fx["templates"].as_object().unwrap() {
        let template = t["template"].as_str().unwrap();
        for case in t["cases"].as_array().unwrap() {
            let msgs: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
            let args: baleen::tokenizer::TemplateArgs = serde_json::from_value(case["kwargs"].clone()).unwrap();
            let gen = case["add_generation_prompt"].as_bool().unwrap();
            let got = baleen::tokenizer::render_template(template, &msgs, gen, &tokens, &args);
            match (case["text"].as_str(), case["error"].as_str()) {
                (Some(want), _) => assert_eq!(got.unwrap(), want, "{name} {args:?} generation prompt {gen}"),
                (None, Some(why)) => {
                    let e = got.unwrap_err().to_string();
                    assert!(e.contains(why), "{name}: {e} (transformers: {why})");
                }
                _ => panic!("{name}: a case with neither text nor error"),
            }
        }
    }
}
