#![no_main]
//! Any bytes: the safetensors parser returns Ok or Err, never panics.
use baleen::source::PrefixSource;
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    let src = Arc::new(PrefixSource::whole("fuzz.safetensors", data.to_vec()));
    if let Ok(index) = baleen::format::safetensors::parse(src) {
        for t in &index.tensors {
            let _ = index.read(t);
        }
    }
});
