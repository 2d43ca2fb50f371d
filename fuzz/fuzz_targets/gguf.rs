#![no_main]
//! Any bytes: the GGUF parser returns Ok or Err, never panics or over-allocates.
use baleen::source::PrefixSource;
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    let src = Arc::new(PrefixSource::whole("fuzz.gguf", data.to_vec()));
    if let Ok(index) = baleen::format::gguf::parse(src) {
        // Whatever parsed must be readable within the file and describable.
        for t in &index.tensors {
            let _ = index.read(t);
        }
        let _ = baleen::config::ModelConfig::from_gguf(&index);
        let _ = baleen::tokenizer::Tokenizer::from_gguf(&index.metadata);
    }
});
