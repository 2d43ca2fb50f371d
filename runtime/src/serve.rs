//! `baleen serve`: the chat page, the wasm package and a folder of models over
//! HTTP on 127.0.0.1. Static files come from tower-http's `ServeDir`, which
//! answers Range requests (the page streams weights by range), sets MIME types
//! (`application/wasm`) and refuses paths that leave its folder. Every response
//! carries COOP/COEP so the page is cross-origin isolated.

use crate::error::{Error, Result};
use axum::http::{header, HeaderName, HeaderValue};
use axum::routing::get;
use axum::Router;
use std::path::{Path, PathBuf};
use tower_http::services::ServeDir;
use tower_http::set_header::SetResponseHeaderLayer;

pub struct ServeOptions {
    pub port: u16,
    /// The page (`web/`), served at `/`.
    pub web: PathBuf,
    /// The wasm package (`pkg/`), served at `/pkg/`.
    pub pkg: PathBuf,
    /// Model files, served at `/models/` and listed at `/models.json`.
    pub models: PathBuf,
}

fn need_dir(what: &str, p: &Path, hint: &str) -> Result<()> {
    if p.is_dir() {
        Ok(())
    } else {
        Err(Error::Input(format!("{what} folder {} does not exist; {hint}", p.display())))
    }
}

/// The `.gguf` files of the models folder, by name, as JSON.
fn list_models(dir: &Path) -> String {
    let mut names: Vec<(String, u64)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "gguf"))
                // fs::metadata follows symbolic links (a models folder of links is common).
                .filter_map(|e| Some((e.file_name().into_string().ok()?, std::fs::metadata(e.path()).ok()?.len())))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let list: Vec<_> = names
        .into_iter()
        .map(|(name, bytes)| serde_json::json!({ "name": name, "url": format!("/models/{name}"), "bytes": bytes }))
        .collect();
    serde_json::Value::from(list).to_string()
}

pub fn router(o: &ServeOptions) -> Router {
    let models = o.models.clone();
    let header = |name: &'static str, value: &'static str| {
        SetResponseHeaderLayer::overriding(HeaderName::from_static(name), HeaderValue::from_static(value))
    };
    Router::new()
        .route(
            "/models.json",
            get(move || {
                let body = list_models(&models);
                async move { ([(header::CONTENT_TYPE, "application/json")], body) }
            }),
        )
        .nest_service("/pkg", ServeDir::new(&o.pkg))
        .nest_service("/models", ServeDir::new(&o.models))
        .fallback_service(ServeDir::new(&o.web))
        .layer(header("cross-origin-opener-policy", "same-origin"))
        .layer(header("cross-origin-embedder-policy", "require-corp"))
        .layer(header("cross-origin-resource-policy", "same-origin"))
        // Revalidate the page and package on every load (a rebuilt wasm takes
        // effect at once); model bytes are kept by the page's own cache.
        .layer(header("cache-control", "no-cache"))
}

/// Serve until the process is stopped. `on_ready` gets the URL once listening.
pub fn serve(o: ServeOptions, on_ready: impl FnOnce(&str)) -> Result<()> {
    need_dir("the page", &o.web, "run from the repository root or pass --web")?;
    need_dir("the wasm package", &o.pkg, "build it with `make wasm` or pass --pkg")?;
    need_dir("the models", &o.models, "fetch the default model with `make models` or pass --models")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| Error::io("cannot start the server's runtime", e))?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", o.port))
            .await
            .map_err(|e| Error::io(format!("cannot listen on 127.0.0.1:{} (is the port taken? pass --port)", o.port), e))?;
        let addr = listener.local_addr().map_err(|e| Error::io("the server's address", e))?;
        on_ready(&format!("http://{addr}/"));
        axum::serve(listener, router(&o)).await.map_err(|e| Error::io("serving", e))
    })
}
