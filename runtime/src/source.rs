//! Byte-range access to model files. Nothing here (or above it) needs a whole
//! file in memory: the parsers ask for the ranges they need, the loaders stream
//! tensor ranges. Native reads files; the browser answers from HTTP Range
//! requests and its cache through [`PrefixSource`] and the loader in `web/`.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// A random-access, read-only byte source of known length.
pub trait WeightSource: Send + Sync {
    /// Total length of the underlying file in bytes.
    fn len(&self) -> u64;
    /// Fill `buf` with the bytes at `offset..offset + buf.len()`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
    /// A name for error messages (a path or a URL).
    fn name(&self) -> &str;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Read `len` bytes at `offset` into a new vector, after checking the range
    /// lies inside the file (so a lying header can't make us allocate wildly).
    fn read_vec(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        let end = offset.checked_add(len).filter(|&e| e <= self.len()).ok_or_else(|| {
            Error::Input(format!(
                "{}: range {offset}+{len} lies outside the file ({} bytes)",
                self.name(),
                self.len()
            ))
        })?;
        let mut buf = vec![0u8; (end - offset) as usize];
        self.read_at(offset, &mut buf)?;
        Ok(buf)
    }
}

/// A local file.
pub struct FileSource {
    file: std::fs::File,
    len: u64,
    name: String,
}

impl FileSource {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path)
            .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
        let len = file
            .metadata()
            .map_err(|e| Error::io(format!("cannot stat {}", path.display()), e))?
            .len();
        Ok(FileSource { file, len, name: path.display().to_string() })
    }
}

impl WeightSource for FileSource {
    fn len(&self) -> u64 {
        self.len
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.len) {
            return Err(Error::Input(format!(
                "{}: read of {} bytes at {offset} is past the end ({} bytes)",
                self.name,
                buf.len(),
                self.len
            )));
        }
        read_exact_at(&self.file, buf, offset)
            .map_err(|e| Error::io(format!("reading {} at offset {offset}", self.name), e))
    }
}

#[cfg(unix)]
fn read_exact_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
fn read_exact_at(file: &std::fs::File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset)? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

#[cfg(not(any(unix, windows)))]
fn read_exact_at(_: &std::fs::File, _: &mut [u8], _: u64) -> std::io::Result<()> {
    Err(std::io::Error::other("file reads are not available on this platform"))
}

/// The first `data.len()` bytes of a file of `total_len` bytes. Reads inside the
/// prefix succeed; reads past it fail with [`Error::NeedBytes`], so a streaming
/// caller can fetch more and parse again. Also the in-memory source for tests.
pub struct PrefixSource {
    data: Vec<u8>,
    total_len: u64,
    name: String,
}

impl PrefixSource {
    pub fn new(name: impl Into<String>, data: Vec<u8>, total_len: u64) -> Self {
        assert!(data.len() as u64 <= total_len, "prefix longer than the file");
        PrefixSource { data, total_len, name: name.into() }
    }
    /// A whole file held in memory.
    pub fn whole(name: impl Into<String>, data: Vec<u8>) -> Self {
        let n = data.len() as u64;
        Self::new(name, data, n)
    }
}

impl WeightSource for PrefixSource {
    fn len(&self) -> u64 {
        self.total_len
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let end = offset.checked_add(buf.len() as u64).filter(|&e| e <= self.total_len).ok_or_else(
            || {
                Error::Input(format!(
                    "{}: read of {} bytes at {offset} is past the end ({} bytes)",
                    self.name,
                    buf.len(),
                    self.total_len
                ))
            },
        )?;
        if end > self.data.len() as u64 {
            return Err(Error::NeedBytes { needed: end, have: self.data.len() as u64 });
        }
        buf.copy_from_slice(&self.data[offset as usize..end as usize]);
        Ok(())
    }
}

/// Resolve a model path: a `.gguf` file, or a folder holding either one GGUF or
/// a Hugging Face checkpoint (config.json + *.safetensors).
/// The Hugging Face hub's download URL of `hf:owner/repo[@revision]/file.gguf`
/// (web/engine.js's `resolveModelUrl` is the page's).
pub fn hub_url(name: &str) -> Option<String> {
    let rest = name.strip_prefix("hf:")?;
    let (owner, rest) = rest.split_once('/')?;
    let (repo, file) = rest.split_once('/')?;
    let (repo, rev) = repo.split_once('@').unwrap_or((repo, "main"));
    let ok = |s: &str| !s.is_empty() && !s.contains(char::is_whitespace);
    (ok(owner) && ok(repo) && ok(rev) && file.ends_with(".gguf")).then(|| format!("https://huggingface.co/{owner}/{repo}/resolve/{rev}/{file}"))
}

pub fn model_files(path: &Path) -> Result<ModelPath> {
    if path.is_file() {
        return Ok(ModelPath::Gguf(path.to_path_buf()));
    }
    if !path.is_dir() {
        if let Some(url) = path.to_str().and_then(hub_url) {
            return Err(Error::Input(format!(
                "{}: baleen reads models from disk here; download {url} (e.g. curl -LO) and pass the file's path \
                 (the page fetches hf: names itself)",
                path.display()
            )));
        }
        return Err(Error::Input(format!(
            "{}: no such file or folder (pass a .gguf file or a Hugging Face model folder)",
            path.display()
        )));
    }
    if path.join("config.json").is_file() {
        return Ok(ModelPath::HfFolder(path.to_path_buf()));
    }
    let ggufs: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| Error::io(format!("cannot list {}", path.display()), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    match ggufs.as_slice() {
        [one] => Ok(ModelPath::Gguf(one.clone())),
        [] => Err(Error::Input(format!(
            "{}: folder has neither config.json (Hugging Face) nor a .gguf file",
            path.display()
        ))),
        _ => Err(Error::Input(format!(
            "{}: folder has several .gguf files; pass the one to load",
            path.display()
        ))),
    }
}

#[derive(Debug, Clone)]
pub enum ModelPath {
    Gguf(PathBuf),
    HfFolder(PathBuf),
}
