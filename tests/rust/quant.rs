//! CPU dequantisation against the `gguf` Python package (tests/fixtures/quant.json,
//! made by tests/scripts/make_quant_fixture.py).

mod common;
use base64::Engine;
use baleen::quant::{dequantize, DType};

#[test]
fn dequantize_matches_gguf_py_for_every_type() {
    let fx = common::json("quant.json");
    let mut seen = Vec::new();
    for t in fx["types"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap();
        let dtype = DType::from_ggml(t["ggml_type"].as_u64().unwrap() as u32).unwrap();
        assert_eq!(dtype.name(), name);
        let data = base64::engine::general_purpose::STANDARD.decode(t["data_b64"].as_str().unwrap()).unwrap();
        let expect = common::f32s(&t["values"]);
        let mut got = vec![0f32; t["n"].as_u64().unwrap() as usize];
        dequantize(dtype, &data, &mut got).unwrap();
        for (i, (g, e)) in got.iter().zip(&expect).enumerate() {
            // Same formula, possibly another order of f32 products: a few ulps.
            let tol = 1e-6 * e.abs().max(1.0);
            assert!((g - e).abs() <= tol, "{name}[{i}]: {g} vs gguf-py {e}");
        }
        seen.push(name.to_string());
    }
    for want in DType::ALL.iter().filter(|d| d.is_supported()).map(|d| d.name()) {
        assert!(seen.iter().any(|s| s == want), "fixture lacks {want}");
    }
}
