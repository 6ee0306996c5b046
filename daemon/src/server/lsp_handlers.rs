//! The standard LSP methods that make the daemon a language server for JSONL manifests:
//! `textDocument/didOpen|didChange|didClose` (full sync), `textDocument/publishDiagnostics`,
//! `textDocument/hover` and `textDocument/codeAction`. What they show is computed by
//! [`super::lsp_manifest`]; this module keeps the open documents and does the IO.
//!
//! Open documents live per connection in [`Docs`] (at most [`MAX_DOCS`] per connection; the
//! oldest is dropped beyond that). An edit stores the new text at once; the analysis runs
//! [`DEBOUNCE`] later on a blocking thread, only if no newer edit came meanwhile, and its
//! diagnostics are published with the document version they describe. Hover and code actions
//! use the analysis of the current version, computing it if the debounce has not yet.
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tower_lsp_server::ls_types as lsp;

use sotalign_protocol::methods::{Method, NotificationMethod};
use sotalign_protocol::{Message, Notification};

use super::backend::{Backend, ConnState};
use super::errors::{HResult, internal};
use super::lsp_doc::parse;
use super::lsp_manifest::{Analysis, Embeddings, analyse};

/// Open documents one connection may hold.
pub const MAX_DOCS: usize = 32;
/// Quiet time after an edit before the document is re-analysed.
pub const DEBOUNCE: Duration = Duration::from_millis(300);

struct OpenDoc {
    version: i32,
    text: Arc<String>,
    analysis: Option<(i32, Arc<Analysis>)>,
    opened: u64,
}

/// The open documents of every connection, keyed by (connection id, uri).
#[derive(Default)]
pub struct Docs {
    map: Mutex<HashMap<(u64, String), OpenDoc>>,
    counter: std::sync::atomic::AtomicU64,
}

static DOCS: std::sync::LazyLock<Docs> = std::sync::LazyLock::new(Docs::default);

fn key(conn: &ConnState, uri: &lsp::Uri) -> (u64, String) {
    (conn.id, uri.as_str().to_string())
}

impl Docs {
    fn put(&self, k: (u64, String), version: i32, text: String) {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let opened = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let prev = m.remove(&k);
        let mine = m.keys().filter(|(c, _)| *c == k.0).count();
        if prev.is_none() && mine >= MAX_DOCS {
            let oldest = m
                .iter()
                .filter(|((c, _), _)| *c == k.0)
                .min_by_key(|(_, d)| d.opened)
                .map(|(k, _)| k.clone());
            if let Some(o) = oldest {
                m.remove(&o);
            }
        }
        m.insert(
            k,
            OpenDoc {
                version,
                text: Arc::new(text),
                analysis: None,
                opened: prev.map(|p| p.opened).unwrap_or(opened),
            },
        );
    }

    fn current(&self, k: &(u64, String)) -> Option<(i32, Arc<String>, Option<Arc<Analysis>>)> {
        let m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let d = m.get(k)?;
        let a = d
            .analysis
            .as_ref()
            .filter(|(v, _)| *v == d.version)
            .map(|(_, a)| a.clone());
        Some((d.version, d.text.clone(), a))
    }

    /// Store an analysis if the document is still at that version; false when it moved on.
    fn set_analysis(&self, k: &(u64, String), version: i32, a: Arc<Analysis>) -> bool {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match m.get_mut(k) {
            Some(d) if d.version == version => {
                d.analysis = Some((version, a));
                true
            }
            _ => false,
        }
    }

    fn remove(&self, k: &(u64, String)) {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).remove(k);
    }

    /// Forget a closed connection's documents.
    pub fn drop_connection(conn: u64) {
        DOCS.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(c, _), _| *c != conn);
    }
}

/// Read the header's embedding files, relative to the document's directory.
fn load_embeddings(uri: &lsp::Uri, a: &super::lsp_doc::Doc) -> Embeddings {
    let base = uri
        .to_file_path()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| Path::new(".").to_path_buf());
    let files = a
        .header
        .as_ref()
        .and_then(|h| h.embeddings.clone())
        .unwrap_or_default();
    // An editor's buffer names these files: read like any client-named file (the daemon's
    // read scope, a regular file, `--max-array-file-bytes`).
    let load = |f: Option<String>| {
        f.map(|f| {
            let path = base.join(f);
            let cap = crate::limits::current().max_array_file_bytes;
            crate::limits::read_file(&path, cap, "max-array-file-bytes")
                .map_err(|e| e.to_string())
                .and_then(|b| {
                    crate::io::npy::parse_npy(&b)
                        .map_err(|e| format!("{}: not a supported .npy file: {e}", path.display()))
                })
        })
    };
    Embeddings {
        image: load(files.image),
        text: load(files.text),
    }
}

/// Parse, load and analyse (blocking: reads files, fits models).
fn analyse_text(uri: &lsp::Uri, text: &str) -> Analysis {
    let doc = parse(text);
    let emb = load_embeddings(uri, &doc);
    analyse(doc, &emb)
}

impl Backend {
    fn doc_key(&self, uri: &lsp::Uri) -> (u64, String) {
        key(&self.conn, uri)
    }

    pub(crate) async fn on_did_open(&self, p: lsp::DidOpenTextDocumentParams) -> HResult<()> {
        let d = p.text_document;
        self.edit(d.uri, d.version, d.text);
        Ok(())
    }

    pub(crate) async fn on_did_change(&self, p: lsp::DidChangeTextDocumentParams) -> HResult<()> {
        // Full sync (the capability we announce): the last change holds the whole text.
        if let Some(c) = p.content_changes.into_iter().last() {
            self.edit(p.text_document.uri, p.text_document.version, c.text);
        }
        Ok(())
    }

    pub(crate) async fn on_did_close(&self, p: lsp::DidCloseTextDocumentParams) -> HResult<()> {
        let uri = p.text_document.uri;
        DOCS.remove(&self.doc_key(&uri));
        self.publish(lsp::PublishDiagnosticsParams {
            uri,
            diagnostics: Vec::new(),
            version: None,
        })
        .await;
        Ok(())
    }

    /// Store the new text and schedule its analysis.
    fn edit(&self, uri: lsp::Uri, version: i32, text: String) {
        let k = self.doc_key(&uri);
        DOCS.put(k.clone(), version, text);
        let this = self.clone_handles();
        tokio::spawn(async move {
            tokio::time::sleep(DEBOUNCE).await;
            match DOCS.current(&k) {
                Some((v, _, None)) if v == version => {}
                _ => return, // a newer edit, already analysed, or closed
            }
            if let Ok(a) = this.analysis(&uri).await {
                let diagnostics = a.diagnostics();
                if DOCS.current(&k).is_some_and(|(v, _, _)| v == version) {
                    this.publish(lsp::PublishDiagnosticsParams {
                        uri,
                        diagnostics,
                        version: Some(version),
                    })
                    .await;
                }
            }
        });
    }

    /// The analysis of the document's current version (computed now if missing).
    async fn analysis(&self, uri: &lsp::Uri) -> HResult<Arc<Analysis>> {
        let k = self.doc_key(uri);
        let Some((version, text, done)) = DOCS.current(&k) else {
            return Err(internal(format!("{} is not open", uri.as_str())));
        };
        if let Some(a) = done {
            return Ok(a);
        }
        let u = uri.clone();
        let a = tokio::task::spawn_blocking(move || analyse_text(&u, &text))
            .await
            .map_err(|e| internal(format!("manifest analysis failed: {e}")))?;
        let a = Arc::new(a);
        DOCS.set_analysis(&k, version, a.clone());
        Ok(a)
    }

    pub(crate) async fn do_hover(&self, p: lsp::HoverParams) -> HResult<Option<lsp::Hover>> {
        let uri = p.text_document_position_params.text_document.uri;
        let pos = p.text_document_position_params.position;
        let a = self.analysis(&uri).await?;
        Ok(tokio::task::spawn_blocking(move || a.hover(pos))
            .await
            .map_err(|e| internal(format!("hover failed: {e}")))?)
    }

    pub(crate) async fn do_code_action(
        &self,
        p: lsp::CodeActionParams,
    ) -> HResult<Option<lsp::CodeActionResponse>> {
        let a = self.analysis(&p.text_document.uri).await?;
        let acts = a.code_actions(&p.text_document.uri, p.range);
        Ok(Some(
            acts.into_iter()
                .map(lsp::CodeActionOrCommand::CodeAction)
                .collect(),
        ))
    }
}

/// The server capabilities the manifest features need, added to `initialize`'s answer.
pub fn add_capabilities(caps: &mut serde_json::Value) {
    if let Some(m) = caps.as_object_mut() {
        // 1 = full document sync.
        m.insert("textDocumentSync".into(), serde_json::json!(1));
        m.insert("hoverProvider".into(), serde_json::json!(true));
        m.insert("codeActionProvider".into(), serde_json::json!(true));
    }
}

/// Marker types of the standard LSP methods served (params and results from `ls_types`).
macro_rules! lsp_markers {
    ($($ty:ident = $name:literal: $params:ty $(=> $result:ty)?;)*) => {$(
        #[derive(Debug, Clone, Copy)]
        pub enum $ty {}
        lsp_markers!(@impl $ty, $name, $params $(, $result)?);
    )*};
    (@impl $ty:ident, $name:literal, $params:ty, $result:ty) => {
        impl Method for $ty {
            const NAME: &'static str = $name;
            type Params = $params;
            type Result = $result;
        }
    };
    (@impl $ty:ident, $name:literal, $params:ty) => {
        impl NotificationMethod for $ty {
            const NAME: &'static str = $name;
            type Params = $params;
        }
    };
}

lsp_markers! {
    DidOpen = "textDocument/didOpen": lsp::DidOpenTextDocumentParams;
    DidChange = "textDocument/didChange": lsp::DidChangeTextDocumentParams;
    DidClose = "textDocument/didClose": lsp::DidCloseTextDocumentParams;
    Hover = "textDocument/hover": lsp::HoverParams => Option<lsp::Hover>;
    CodeAction = "textDocument/codeAction": lsp::CodeActionParams => Option<lsp::CodeActionResponse>;
}

impl Backend {
    /// Handles the spawned analysis keeps (the backend's shared state and connection).
    fn clone_handles(&self) -> Backend {
        Backend::new(self.shared.clone(), self.conn.clone())
    }

    /// `textDocument/publishDiagnostics` to this connection alone.
    async fn publish(&self, p: lsp::PublishDiagnosticsParams) {
        let n = Notification {
            method: "textDocument/publishDiagnostics".into(),
            params: serde_json::to_value(p).ok(),
        };
        self.conn.send(Message::Notification(n)).await;
    }
}
