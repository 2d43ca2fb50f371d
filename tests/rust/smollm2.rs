//! The real model: SmolLM2-135M-Instruct Q4_1 GGUF (fetched by
//! tests/scripts/fetch-models.sh) against transformers' float32 forward over
//! the dequantised GGUF (tests/fixtures/smollm2, made by
//! tests/scripts/make_smollm2_expected.py).

mod common;
use baleen::engine::{generate, Backend, GenerateParams};
use baleen::model::ModelFiles;
use baleen::reference::Reference;
use baleen::sample::SamplingParams;
use baleen::tokenizer::Message;

/// RMS of the last-position logit difference allowed (issue: ≤ 1e-3).
const RMS_TOL: f32 = 1e-3;

fn logits_file(name: &str) -> Vec<f32> {
    let b = std::fs::read(common::fixture(&format!("smollm2/{name}"))).unwrap();
    b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

#[test]
fn header_config_and_tokenizer() {
    let m = ModelFiles::open(&common::smollm2()).unwrap();
    let c = &m.config;
    assert_eq!((c.n_layers, c.hidden, c.n_heads, c.n_kv_heads, c.ffn, c.vocab), (30, 576, 9, 3, 1536, 49152));
    assert!(c.tie_embeddings);
    assert_eq!(m.index.tensors.len(), 272);
    let fx = common::json("smollm2/expected.json");
    assert_eq!(m.tokenizer.bos, Some(fx["bos_token_id"].as_u64().unwrap() as u32));
    assert_eq!(m.tokenizer.eos, Some(fx["eos_token_id"].as_u64().unwrap() as u32));
    for case in fx["text_cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        // llama.cpp's "smollm" pre-tokenizer splits digits one by one; the
        // fixture records ids with that split (equal to transformers' own
        // wherever transformers' GPT-2 regex gives the same pieces).
        let want = case.get("ids_split_digits").unwrap_or(&case["ids"]);
        assert_eq!(m.tokenizer.encode(text, false).unwrap(), common::u32s(want), "{text:?}");
    }
}

#[test]
fn chat_prompt_ids_match_transformers() {
    let m = ModelFiles::open(&common::smollm2()).unwrap();
    let fx = common::json("smollm2/expected.json");
    for p in fx["prompts"].as_array().unwrap() {
        let msgs: Vec<Message> = serde_json::from_value(p["messages"].clone()).unwrap();
        assert_eq!(m.tokenizer.apply_chat_template(&msgs, true).unwrap(), p["prompt_text"].as_str().unwrap());
        assert_eq!(m.tokenizer.encode_chat(&msgs, true).unwrap(), common::u32s(&p["prompt_ids"]), "{msgs:?}");
    }
}

#[test]
fn reference_logits_and_greedy_tokens_match_transformers() {
    let m = ModelFiles::open(&common::smollm2()).unwrap();
    let fx = common::json("smollm2/expected.json");
    let mut r = Reference::load(&m).unwrap();
    for p in fx["prompts"].as_array().unwrap() {
        r.truncate(0);
        let ids = common::u32s(&p["prompt_ids"]);
        let want_ids = common::u32s(&p["greedy_ids"]);
        let margins = common::f32s(&p["greedy_margins"]);
        // Greedy steps while transformers' top-2 margin is clear of float noise.
        let n = margins.iter().take(12).take_while(|&&m| m >= 0.01).count();
        let params = GenerateParams { max_tokens: n, sampling: SamplingParams::default(), stop_ids: vec![], ..Default::default() };
        let g = generate(&mut r, &ids, &params, |_| true).unwrap();
        let want = logits_file(p["logits_file"].as_str().unwrap());
        let rms = common::rms_diff(&g.prompt_logits, &want);
        let max = common::max_abs_diff(&g.prompt_logits, &want);
        eprintln!("{}: logits RMS {rms:e}, max {max:e}; {n} greedy tokens", p["logits_file"]);
        assert!(rms <= RMS_TOL, "RMS {rms} > {RMS_TOL}");
        assert_eq!(g.tokens, want_ids[..n], "greedy tokens");
    }
}
