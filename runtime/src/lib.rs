//! baleen: LLM inference for the browser (WebGPU) and natively (wgpu).
//!
//! Data flows one way: **bytes → tensor index → GPU buffers → graph → tokens → text**.
//! - [`source`]: byte-range reads of model files.
//! - [`format`]: GGUF and safetensors headers → [`format::TensorIndex`].
//! - [`quant`]: block formats and CPU dequantisation.
//! - [`config`], [`tokenizer`], [`model`]: what the headers say.
//! - [`reference`]: the plain-Rust f32 forward pass, the oracle.
//! - [`engine`], [`sample`]: generation over any backend.
//! - [`inspect`]: what a model file holds, for `baleen inspect`.

/// `baleen compare`: both backends, every intermediate diffed.
#[cfg(all(feature = "gpu", not(target_arch = "wasm32")))]
pub mod compare;
pub mod config;
pub mod engine;
pub mod error;
pub mod format;
#[cfg(feature = "gpu")]
pub mod gpu;
pub mod inspect;
pub mod model;
pub mod quant;
pub mod reference;
pub mod sample;
#[cfg(all(feature = "serve", not(target_arch = "wasm32")))]
pub mod serve;
pub mod source;
pub mod support;
pub mod tokenizer;
/// The browser engine (wasm-bindgen exports for `web/`).
#[cfg(all(target_arch = "wasm32", feature = "gpu"))]
pub mod web;

pub use error::{Error, Result};
