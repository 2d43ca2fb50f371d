//! Text ↔ token ids, and chat templates.
//!
//! Tokenisation is the `tokenizers` crate, built either from a Hugging Face
//! `tokenizer.json` or from GGUF metadata (`tokenizer.ggml.*`), where the
//! pre-tokenizer regexes are the ones llama.cpp uses for the named `pre`.
//! Chat templates are Jinja, rendered by `minijinja` configured like
//! transformers' own environment (trim_blocks, lstrip_blocks, Python methods).

use crate::error::{Error, Result};
use crate::format::MetaValue;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Prepend, Replace};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

/// One chat message.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Message { role: role.into(), content: content.into() }
    }
}

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// Tokens that end a reply: eos plus end-of-turn tokens (`<|im_end|>`, `<|eot_id|>`, …).
    pub stop_ids: Vec<u32>,
    /// Prepend `bos` when encoding a plain prompt (GGUF `add_bos_token`; for
    /// tokenizer.json the post-processor decides).
    add_bos: bool,
    chat_template: Option<String>,
    /// Named special tokens passed to the template (`bos_token`, `eos_token`, …).
    template_tokens: BTreeMap<String, String>,
}

fn tok_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

/// A chat template's extra variables, by name.
pub type TemplateArgs = BTreeMap<String, serde_json::Value>;

/// `KEY=VALUE` as a template variable: VALUE as JSON where it parses
/// (`false`, `3`, `"x"`, `[…]`), else as a string.
pub fn template_arg(kv: &str) -> Result<(String, serde_json::Value)> {
    let (k, v) = kv.split_once('=').ok_or_else(|| Error::Input(format!("template argument {kv:?} is not KEY=VALUE")))?;
    let k = k.trim();
    if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || k.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(Error::Input(format!("template argument name {k:?} is not an identifier (letters, digits, _)")));
    }
    if matches!(k, "messages" | "add_generation_prompt") {
        return Err(Error::Input(format!("template argument {k:?} is set by baleen itself")));
    }
    let v = serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.to_string()));
    Ok((k.to_string(), v))
}

/// Texts that end a turn in the chat formats in use.
const END_OF_TURN: &[&str] = &[
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<|endoftext|>",
    "<|end|>",
    "<end_of_turn>",
    "<｜end▁of▁sentence｜>",
    "</s>",
];

impl Tokenizer {
    // ---------------------------------------------------------------- loading

    /// From a Hugging Face folder: `tokenizer.json`, `tokenizer_config.json`,
    /// optional `chat_template.jinja`, `generation_config.json`, `config.json`.
    pub fn from_hf_folder(dir: &Path) -> Result<Self> {
        let tj = dir.join("tokenizer.json");
        if !tj.is_file() {
            return Err(Error::Tokenizer(format!(
                "{} has no tokenizer.json (baleen needs the fast-tokenizer file saved by transformers)",
                dir.display()
            )));
        }
        let inner = tokenizers::Tokenizer::from_file(&tj).map_err(|e| tok_err(format!("{}: {e}", tj.display())))?;
        let read_json = |name: &str| -> Result<Option<serde_json::Value>> {
            let p = dir.join(name);
            if !p.is_file() {
                return Ok(None);
            }
            let text = std::fs::read_to_string(&p).map_err(|e| Error::io(format!("cannot read {}", p.display()), e))?;
            serde_json::from_str(&text).map(Some).map_err(|e| tok_err(format!("{}: {e}", p.display())))
        };
        let tc = read_json("tokenizer_config.json")?.unwrap_or_default();
        let token_str = |v: Option<&serde_json::Value>| -> Option<String> {
            match v? {
                serde_json::Value::String(s) => Some(s.clone()),
                o => o.get("content").and_then(|c| c.as_str()).map(String::from),
            }
        };
        let mut template_tokens = BTreeMap::new();
        for k in ["bos_token", "eos_token", "unk_token", "pad_token"] {
            if let Some(s) = token_str(tc.get(k)) {
                template_tokens.insert(k.to_string(), s);
            }
        }
        let chat_template = match tc.get("chat_template") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            // A list of named templates: take "default".
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .or(a.first())
                .and_then(|t| t.get("template")?.as_str().map(String::from)),
            _ => None,
        };
        let chat_template = match chat_template {
            Some(t) => Some(t),
            None => {
                let p = dir.join("chat_template.jinja");
                if p.is_file() {
                    Some(std::fs::read_to_string(&p).map_err(|e| Error::io(format!("cannot read {}", p.display()), e))?)
                } else {
                    None
                }
            }
        };
        let id = |s: &String| inner.token_to_id(s);
        let bos = template_tokens.get("bos_token").and_then(id);
        let eos = template_tokens.get("eos_token").and_then(id);
        let mut stop_ids: Vec<u32> = eos.into_iter().collect();
        // generation_config.json / config.json may list several eos ids (Llama 3).
        for file in ["generation_config.json", "config.json"] {
            if let Some(v) = read_json(file)?.and_then(|j| j.get("eos_token_id").cloned()) {
                match v {
                    serde_json::Value::Number(n) => stop_ids.extend(n.as_u64().map(|x| x as u32)),
                    serde_json::Value::Array(a) => stop_ids.extend(a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32)),
                    _ => {}
                }
            }
        }
        let mut t = Tokenizer { inner, bos, eos, stop_ids, add_bos: false, chat_template, template_tokens };
        t.add_end_of_turn_tokens();
        Ok(t)
    }

    /// From GGUF metadata (`tokenizer.ggml.*`).
    pub fn from_gguf(meta: &BTreeMap<String, MetaValue>) -> Result<Self> {
        let get = |k: &str| meta.get(k);
        let model = get("tokenizer.ggml.model")
            .and_then(|v| v.as_str())
            .ok_or_else(|| tok_err("the GGUF has no tokenizer (tokenizer.ggml.model is missing)"))?;
        let strings = |k: &str| -> Result<Vec<String>> {
            let a = get(k).and_then(|v| v.as_array()).ok_or_else(|| tok_err(format!("GGUF has no {k} array")))?;
            a.iter()
                .map(|v| v.as_str().map(String::from).ok_or_else(|| tok_err(format!("{k} holds a non-string"))))
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let n = tokens.len();
        let types: Vec<u64> = match get("tokenizer.ggml.token_type").and_then(|v| v.as_array()) {
            Some(a) if a.len() == n => a.iter().map(|v| v.as_u64().unwrap_or(1)).collect(),
            Some(a) => return Err(tok_err(format!("{} token types for {n} tokens", a.len()))),
            None => vec![1; n],
        };
        let id_of = |k: &str| -> Result<Option<u32>> {
            match get(k).map(|v| v.as_u64()) {
                None => Ok(None),
                Some(Some(id)) if (id as usize) < n => Ok(Some(id as u32)),
                Some(_) => Err(tok_err(format!("{k} is not a token id below {n}"))),
            }
        };
        let bos = id_of("tokenizer.ggml.bos_token_id")?;
        let eos = id_of("tokenizer.ggml.eos_token_id")?;
        let eot = id_of("tokenizer.ggml.eot_token_id")?;
        let flag = |k: &str| get(k).and_then(|v| v.as_bool());

        let mut vocab = tokenizers::models::bpe::Vocab::with_capacity(n);
        for (i, t) in tokens.iter().enumerate() {
            // Duplicate strings happen in a few vocabularies; the first id wins.
            vocab.entry(t.clone()).or_insert(i as u32);
        }
        let (mut inner, add_bos_default) = match model {
            "gpt2" => {
                let merges = strings("tokenizer.ggml.merges")?
                    .iter()
                    .map(|m| split_merge(m).ok_or_else(|| tok_err(format!("merge {m:?} is not two tokens separated by a space"))))
                    .collect::<Result<Vec<_>>>()?;
                let pre_name = get("tokenizer.ggml.pre").and_then(|v| v.as_str()).unwrap_or("default");
                let pre = pre_tokenizer(pre_name)?;
                let bpe = BPE::builder()
                    .vocab_and_merges(vocab, merges)
                    .ignore_merges(pre.ignore_merges)
                    .build()
                    .map_err(|e| tok_err(format!("cannot build the BPE vocabulary: {e}")))?;
                let mut tk = tokenizers::Tokenizer::new(bpe);
                let mut parts: Vec<PreTokenizerWrapper> = Vec::new();
                for re in pre.regexes {
                    let split = Split::new(SplitPattern::Regex(re.to_string()), SplitDelimiterBehavior::Isolated, false)
                        .map_err(|e| tok_err(format!("pre-tokenizer {pre_name:?}: {e}")))?;
                    parts.push(split.into());
                }
                parts.push(ByteLevel::new(false, false, false).into());
                tk.with_pre_tokenizer(Some(Sequence::new(parts)));
                tk.with_decoder(Some(ByteLevelDecoder::new(false, false, false)));
                (tk, pre.add_bos)
            }
            "llama" => (spm_tokenizer(meta, &tokens, vocab)?, true),
            other => {
                return Err(Error::Unsupported(format!(
                    "tokenizer model {other:?}; baleen reads \"gpt2\" (byte-level BPE) and \"llama\" (SentencePiece BPE)"
                )))
            }
        };
        // Control (3) and user-defined (4) tokens are matched whole in text.
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, &t)| t == 3 || t == 4)
            .map(|(s, &t)| AddedToken::from(s.clone(), t == 3).normalized(false))
            .collect();
        inner.add_special_tokens(&specials);

        let mut template_tokens = BTreeMap::new();
        for (k, id) in [("bos_token", bos), ("eos_token", eos)] {
            if let Some(id) = id {
                template_tokens.insert(k.to_string(), tokens[id as usize].clone());
            }
        }
        let chat_template = get("tokenizer.chat_template").and_then(|v| v.as_str()).map(String::from);
        let mut t = Tokenizer {
            inner,
            bos,
            eos,
            stop_ids: eos.into_iter().chain(eot).collect(),
            add_bos: flag("tokenizer.ggml.add_bos_token").unwrap_or(add_bos_default) && bos.is_some(),
            chat_template,
            template_tokens,
        };
        t.add_end_of_turn_tokens();
        Ok(t)
    }

    fn add_end_of_turn_tokens(&mut self) {
        for s in END_OF_TURN {
            if let Some(id) = self.inner.token_to_id(s) {
                if !self.stop_ids.contains(&id) {
                    self.stop_ids.push(id);
                }
            }
        }
        self.stop_ids.sort_unstable();
        self.stop_ids.dedup();
    }

    // ---------------------------------------------------------------- use

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Encode text. Special-token text (`<|im_start|>`) becomes its token.
    /// `add_special` adds BOS (and whatever the tokenizer.json post-processor adds).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, add_special).map_err(tok_err)?;
        let mut ids = enc.get_ids().to_vec();
        if add_special && self.add_bos {
            if let Some(b) = self.bos {
                if ids.first() != Some(&b) {
                    ids.insert(0, b);
                }
            }
        }
        Ok(ids)
    }

    /// Decode ids to text, leaving out special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(tok_err)
    }

    pub fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn has_chat_template(&self) -> bool {
        self.chat_template.is_some()
    }

    /// Render the chat template (as transformers' `apply_chat_template(tokenize=False)`).
    pub fn apply_chat_template(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.apply_chat_template_with(messages, add_generation_prompt, &TemplateArgs::new())
    }

    /// As [`Tokenizer::apply_chat_template`], with `args` as the template's
    /// extra variables (transformers' `apply_chat_template(**kwargs)`, e.g.
    /// Qwen3's `enable_thinking`).
    pub fn apply_chat_template_with(&self, messages: &[Message], add_generation_prompt: bool, args: &TemplateArgs) -> Result<String> {
        let template = self.chat_template.as_deref().ok_or_else(|| {
            Error::Template("this model has no chat template; run without --chat and format the prompt yourself".into())
        })?;
        render_template(template, messages, add_generation_prompt, &self.template_tokens, args)
    }

    /// Template, then tokens (the template writes BOS itself if the model wants it).
    pub fn encode_chat(&self, messages: &[Message], add_generation_prompt: bool) -> Result<Vec<u32>> {
        self.encode_chat_with(messages, add_generation_prompt, &TemplateArgs::new())
    }

    /// [`Tokenizer::encode_chat`] with the template's extra variables.
    pub fn encode_chat_with(&self, messages: &[Message], add_generation_prompt: bool, args: &TemplateArgs) -> Result<Vec<u32>> {
        let text = self.apply_chat_template_with(messages, add_generation_prompt, args)?;
        self.encode(&text, false)
    }

    /// A streaming detokeniser over this tokenizer.
    pub fn stream(&self) -> TextStream<'_> {
        TextStream { tok: self, ids: Vec::new(), prefix: 0, read: 0 }
    }
}

/// How llama.cpp pre-tokenizes a byte-level BPE vocabulary, by `tokenizer.ggml.pre`.
struct PreTokenizer {
    /// Applied in order, each splitting the pieces of the one before (matches
    /// and gaps both kept).
    regexes: &'static [&'static str],
    /// A piece that is itself a token is taken whole, without merges (Llama 3).
    ignore_merges: bool,
    /// BOS is added by default (the GGUF's `add_bos_token` overrides).
    add_bos: bool,
}

fn pre_tokenizer(pre: &str) -> Result<PreTokenizer> {
    const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
    const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const PORO: &str = r" ?[^(\s|.,!?…。，、।۔،)]+";
    // The letter class is written with escapes: several of its code points
    // (Ohm, Kelvin, some Greek) are changed by Unicode normalisation if pasted.
    const DEEPSEEK_LETTERS: &str = r"\s?[A-Za-z\x{B5}\x{C0}-\x{D6}\x{D8}-\x{F6}\x{F8}-\x{1BA}\x{1BC}-\x{1BF}\x{1C4}-\x{293}\x{295}-\x{2AF}\x{370}-\x{373}\x{376}\x{377}\x{37B}-\x{37D}\x{37F}\x{386}\x{388}-\x{38A}\x{38C}\x{38E}-\x{3A1}\x{3A3}-\x{3F5}\x{3F7}-\x{481}\x{48A}-\x{52F}\x{531}-\x{556}\x{10A0}-\x{10C5}\x{13A0}-\x{13F5}\x{13F8}-\x{13FD}\x{1C90}-\x{1CBA}\x{1CBD}-\x{1CBF}\x{1D00}-\x{1D2B}\x{1D6B}-\x{1D77}\x{1D79}-\x{1D9A}\x{1E00}-\x{1F15}\x{1F18}-\x{1F1D}\x{1F20}-\x{1F45}\x{1F48}-\x{1F4D}\x{1F50}-\x{1F57}\x{1F59}\x{1F5B}\x{1F5D}\x{1F5F}-\x{1F7D}\x{1F80}-\x{1FB4}\x{1FB6}-\x{1FBC}\x{1FBE}\x{1FC2}-\x{1FC4}\x{1FC6}-\x{1FCC}\x{1FD0}-\x{1FD3}\x{1FD6}-\x{1FDB}\x{1FE0}-\x{1FEC}\x{1FF2}-\x{1FF4}\x{1FF6}-\x{1FFC}\x{2102}\x{2107}\x{210A}-\x{2113}\x{2115}\x{2119}-\x{211D}\x{2124}\x{2126}\x{2128}\x{212A}-\x{212D}\x{212F}-\x{2134}\x{2139}\x{213C}-\x{213F}\x{2145}-\x{2149}\x{214E}\x{2183}\x{2184}\x{2C00}-\x{2C7B}\x{2C7E}-\x{2CE4}\x{2CEB}-\x{2CEE}\x{2CF2}\x{2CF3}\x{A640}-\x{A66D}\x{A680}-\x{A69B}\x{A722}-\x{A76F}\x{A771}-\x{A787}\x{A78B}-\x{A78E}\x{AB70}-\x{ABBF}\x{FB00}-\x{FB06}\x{FB13}-\x{FB17}\x{FF21}-\x{FF3A}\x{FF41}-\x{FF5A}\x{10400}-\x{1044F}\x{104B0}-\x{104D3}\x{104D8}-\x{104FB}\x{10C80}-\x{10CB2}\x{10CC0}-\x{10CF2}\x{118A0}-\x{118DF}\x{1E900}-\x{1E943}]+";
    const CJK: &str = r"[一-龥ࠀ-一가-퟿]+";
    let plain = |regexes| PreTokenizer { regexes, ignore_merges: false, add_bos: false };
    Ok(match pre {
        // No `pre` key: llama.cpp's fallback set.
        "default" => plain(&[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"]),
        "gpt-2" | "gpt2" | "mpt" | "olmo" | "jais" | "phi-2" | "jina-es" | "jina-de" | "jina-v2-es" | "jina-v2-de"
        | "jina-v1-en" | "jina-v2-code" | "roberta-bpe" | "gigachat" | "trillion" | "exaone4" | "mellum"
        | "modern-bert" | "granite-docling" | "a.x-4.0" => plain(&[GPT2]),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2" => {
            PreTokenizer { regexes: &[LLAMA3], ignore_merges: true, add_bos: true }
        }
        "dbrx" | "smaug-bpe" | "chatglm-bpe" | "glm4" => plain(&[LLAMA3]),
        "qwen2" | "deepseek-r1-qwen" | "megrez" | "stablelm2" | "hunyuan" | "kormo" | "solar-open" => plain(&[QWEN2]),
        // Digits one by one, then GPT-2's regex.
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" | "mellum2" => {
            plain(&[r"\p{N}", GPT2])
        }
        "falcon" => plain(&[r"[\p{P}\$\+<=>\^~\|`]+", GPT2, r"[0-9][0-9][0-9]"]),
        "poro-chat" | "bloom" | "gpt3-finnish" => plain(&[PORO]),
        "viking" => plain(&[PORO, r"\p{N}"]),
        "deepseek-llm" => plain(&[r"[\r\n]", DEEPSEEK_LETTERS, r"\s?[!-/:-~！-／：-～‘-‟　-。]+", r"\s+$", CJK, r"\p{N}+"]),
        "deepseek-coder" => plain(&[r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", CJK, r"\p{N}"]),
        "deepseek-v3" => plain(&[
            r"\p{N}{1,3}",
            r"[一-龥぀-ゟ゠-ヿ]+",
            r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##,
        ]),
        other => {
            return Err(Error::Unsupported(format!(
                "GGUF pre-tokenizer {other:?} (tokenizer.ggml.pre); known: gpt-2, llama-bpe, qwen2, smollm, starcoder, \
                 deepseek-llm, deepseek-coder, deepseek-v3, falcon, bloom and their aliases"
            )))
        }
    })
}

/// Split a GGUF merge `"left right"` at the first space after its first byte
/// (a token may itself be a space).
fn split_merge(m: &str) -> Option<(String, String)> {
    let i = m.as_bytes().iter().skip(1).position(|&b| b == b' ')? + 1;
    Some((m[..i].to_string(), m[i + 1..].to_string()))
}

/// SentencePiece-style BPE (`tokenizer.ggml.model = "llama"`): merges follow
/// the scores of the merged pieces; spaces are `▁`; unknown bytes fall back to
/// `<0xXX>` tokens.
fn spm_tokenizer(
    meta: &BTreeMap<String, MetaValue>,
    tokens: &[String],
    vocab: tokenizers::models::bpe::Vocab,
) -> Result<tokenizers::Tokenizer> {
    let scores: Vec<f64> = match meta.get("tokenizer.ggml.scores").and_then(|v| v.as_array()) {
        Some(a) if a.len() == tokens.len() => a.iter().map(|v| v.as_f64().unwrap_or(0.0)).collect(),
        _ => return Err(tok_err("a \"llama\" tokenizer needs tokenizer.ggml.scores, one per token")),
    };
    // No merges are stored: every split of a token into two known tokens is a
    // merge, ranked by the merged token's score (then by the parts' scores),
    // as transformers derives them.
    let mut merges: Vec<(f64, String, String)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        // SentencePiece pieces are short; a huge one (a hostile file) would
        // make this quadratic, and can only be matched whole anyway.
        if piece.len() > 256 {
            continue;
        }
        let mut local: Vec<(f64, f64, String, String)> = Vec::new();
        for (i, _) in piece.char_indices().skip(1) {
            let (a, b) = piece.split_at(i);
            if let (Some(&ia), Some(&ib)) = (vocab.get(a), vocab.get(b)) {
                local.push((scores[ia as usize], scores[ib as usize], a.to_string(), b.to_string()));
            }
        }
        local.sort_by(|x, y| y.0.total_cmp(&x.0).then(y.1.total_cmp(&x.1)));
        merges.extend(local.into_iter().map(|(_, _, a, b)| (scores[id], a, b)));
    }
    merges.sort_by(|x, y| y.0.total_cmp(&x.0)); // stable: ties keep vocabulary order
    let merges = merges.into_iter().map(|(_, a, b)| (a, b)).collect();
    let unk = meta.get("tokenizer.ggml.unknown_token_id").and_then(|v| v.as_u64()).unwrap_or(0) as usize;
    let mut builder = BPE::builder().vocab_and_merges(vocab, merges).byte_fallback(true).fuse_unk(true);
    if let Some(u) = tokens.get(unk) {
        builder = builder.unk_token(u.clone());
    }
    let bpe = builder.build().map_err(tok_err)?;
    let mut tk = tokenizers::Tokenizer::new(bpe);
    let add_space_prefix = meta.get("tokenizer.ggml.add_space_prefix").and_then(|v| v.as_bool()).unwrap_or(true);
    let mut norms: Vec<NormalizerWrapper> = Vec::new();
    if add_space_prefix {
        norms.push(Prepend::new("▁".into()).into());
    }
    norms.push(Replace::new(" ", "▁").map_err(tok_err)?.into());
    tk.with_normalizer(Some(tokenizers::normalizers::Sequence::new(norms)));
    let mut decs: Vec<DecoderWrapper> = vec![
        ByteFallback::new().into(),
        Fuse::new().into(),
        Replace::new("▁", " ").map_err(tok_err)?.into(),
    ];
    if add_space_prefix {
        decs.push(Strip::new(' ', 1, 0).into());
    }
    tk.with_decoder(Some(DecoderSequence::new(decs)));
    Ok(tk)
}

/// Render a chat template as transformers does: `tokens` the special
/// tokens' texts (`bos_token`, …), `args` the caller's variables.
pub fn render_template(
    template: &str,
    messages: &[Message],
    add_generation_prompt: bool,
    tokens: &BTreeMap<String, String>,
    args: &TemplateArgs,
) -> Result<String> {
    use minijinja::value::Serde;
    use minijinja::{context, Environment, ErrorKind, Value};
    let mut env = Environment::new();
    // transformers renders with trim_blocks and lstrip_blocks.
    env.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .expect("default delimiters"),
    );
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> Result<Value, minijinja::Error> {
        Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
    });
    env.add_function("strftime_now", |fmt: String| -> String { strftime_now(&fmt) });
    env.add_template("chat", template).map_err(|e| Error::Template(format!("cannot parse the template: {e:#}")))?;
    let tmpl = env.get_template("chat").expect("just added");
    // The special tokens' texts (bos_token, …), then the caller's
    // variables, then the messages: later ones win.
    let mut vars: BTreeMap<String, Value> = tokens.iter().map(|(k, v)| (k.clone(), Value::from(v.as_str()))).collect();
    vars.extend(args.iter().map(|(k, v)| (k.clone(), Value::from(Serde(v)))));
    let ctx = context! {
        messages => Value::from(Serde(messages)),
        add_generation_prompt => add_generation_prompt,
        ..Value::from(vars)
    };
    tmpl.render(ctx).map_err(|e| Error::Template(format!("rendering failed: {e:#}")))
}

/// Today's date for templates that print it (Llama 3.x): `%d`, `%b`, `%B`, `%m`, `%Y`.
fn strftime_now(fmt: &str) -> String {
    let secs = {
        #[cfg(not(target_arch = "wasm32"))]
        {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
        }
        #[cfg(target_arch = "wasm32")]
        {
            (js_sys::Date::now() / 1000.0) as u64
        }
    };
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + (month <= 2) as i64;
    const MONTHS: [&str; 12] =
        ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
    let name = MONTHS[(month - 1) as usize];
    fmt.replace("%d", &format!("{day:02}"))
        .replace("%m", &format!("{month:02}"))
        .replace("%Y", &year.to_string())
        .replace("%B", name)
        .replace("%b", &name[..3])
}

/// Turns a stream of token ids into text pieces, holding back a token until it
/// completes a UTF-8 character (a byte-level token may carry half an emoji).
pub struct TextStream<'a> {
    tok: &'a Tokenizer,
    ids: Vec<u32>,
    /// Ids before `prefix` are done; `prefix..read` give context for decoding.
    prefix: usize,
    read: usize,
}

impl TextStream<'_> {
    /// Add a token; returns the new text it completes, if any.
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let before = self.tok.decode(&self.ids[self.prefix..self.read])?;
        let now = self.tok.decode(&self.ids[self.prefix..])?;
        // Hold a token back while it ends in an incomplete character; but a
        // real U+FFFD (or bytes that never complete) must not stall the stream.
        let held = self.ids.len() - self.read;
        let incomplete = now.ends_with('\u{FFFD}') && held < 4;
        if now.len() > before.len() && !incomplete && now.is_char_boundary(before.len()) {
            let delta = now[before.len()..].to_string();
            self.prefix = self.read;
            self.read = self.ids.len();
            Ok(delta)
        } else {
            Ok(String::new())
        }
    }

    /// Whatever is still held back (an incomplete character at the end).
    pub fn finish(&mut self) -> Result<String> {
        let before = self.tok.decode(&self.ids[self.prefix..self.read])?;
        let now = self.tok.decode(&self.ids[self.prefix..])?;
        self.prefix = self.ids.len();
        self.read = self.ids.len();
        Ok(now.get(before.len()..).unwrap_or_default().to_string())
    }
}
