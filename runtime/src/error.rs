//! One error type for the whole crate. Every message says what is wrong and,
//! where there is something to do about it, what to do.

use std::fmt;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the bytes failed (file missing, permission, network).
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a well-formed model file (bad magic, truncated, lies about sizes).
    #[error("malformed {kind} file: {msg}")]
    Format { kind: &'static str, msg: String },
    /// The file is well-formed but asks for something baleen does not implement.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A configuration or hyper-parameter is missing or inconsistent.
    #[error("bad model configuration: {0}")]
    Config(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    /// Bad arguments from the caller (CLI flags, API parameters, prompts).
    #[error("{0}")]
    Input(String),
    /// A parser needed bytes that a partial (prefix) source does not hold yet.
    /// Callers that stream the file (the browser) fetch up to `needed` and retry.
    #[error("need the file's first {needed} bytes; only {have} are loaded")]
    NeedBytes { needed: u64, have: u64 },
    #[error("GPU: {0}")]
    Gpu(String),
}

impl Error {
    pub fn format(kind: &'static str, msg: impl fmt::Display) -> Self {
        Error::Format { kind, msg: msg.to_string() }
    }
    pub fn io(context: impl fmt::Display, source: std::io::Error) -> Self {
        Error::Io { context: context.to_string(), source }
    }
}
