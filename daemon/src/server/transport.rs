//! One connection: the protocol crate's framing in front of tower-lsp-server.
//!
//! ```text
//!  peer bytes ──> reader task: FrameCodec (body cap, resync) ──good frames──> duplex ──> tower-lsp Server
//!                      │ bad frame                                                          │
//!                      └──> error response ─┐                                               │
//!  peer <── writer task <── outgoing queue <─┴── pump task: FrameCodec <── duplex <──────────┘
//!                 ^
//!                 └── job notifications (broadcast), once the connection is initialized
//! ```
//!
//! Why a front codec: tower-lsp-server's own codec has no body cap, and after a framing or JSON
//! error it ends the stream. Ours answers every bad frame with a JSON-RPC error (`PARSE_ERROR`,
//! `INVALID_REQUEST`, `BODY_TOO_LARGE`) and keeps reading, so only clean frames ever reach
//! tower-lsp. Its output is decoded again so that the writer task owns the socket alone and
//! frames from the three sources (tower-lsp, error answers, notifications) never interleave.
//!
//! A slow peer only fills its own queues: its writer blocks on the socket, its broadcast
//! receiver lags (the oldest notifications are dropped for it alone), and no other connection
//! or job waits on it.
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use sotalign_protocol::{FrameCodec, Message, codes};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{broadcast, mpsc};
use tokio_util::codec::{FramedRead, FramedWrite};
use tower_lsp_server::{LspService, Server};

use super::backend::{Backend, ConnState};
use super::state::Shared;

/// Requests tower-lsp may run at once per connection. Handlers never block (store work runs
/// on blocking threads, long work in jobs), so this only bounds memory.
const CONCURRENCY: usize = 32;
/// Bytes buffered in each in-memory pipe between our codec and tower-lsp.
const PIPE_BYTES: usize = 256 * 1024;

/// Serve one client until it disconnects, sends `exit`, fails authentication, or the daemon
/// shuts down.
pub async fn serve_connection<R, W>(reader: R, writer: W, shared: Arc<Shared>, conn: Arc<ConnState>)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let max_body = shared.opts.max_body;
    let (ours, theirs) = tokio::io::duplex(PIPE_BYTES);
    let (ours_read, ours_write) = tokio::io::split(ours);
    let (theirs_read, theirs_write) = tokio::io::split(theirs);
    let (out_tx, out_rx) = mpsc::channel::<Message>(256);

    // tower-lsp: one service instance per connection, shared state behind an Arc.
    let (service, socket) = super::backend::build_service(shared.clone(), conn.clone());
    let server = tokio::spawn(serve_lsp(theirs_read, theirs_write, service, socket));

    // Reader: peer -> codec -> (good) pipe / (bad) error response.
    let reader_task = {
        let out_tx = out_tx.clone();
        tokio::spawn(async move {
            let mut frames = FramedRead::new(reader, FrameCodec::new(max_body));
            // The pipe carries frames we re-encode ourselves; its cap is ours plus headroom.
            let mut to_lsp =
                FramedWrite::new(ours_write, FrameCodec::new(max_body.saturating_mul(2)));
            while let Some(item) = frames.next().await {
                match item {
                    Ok(Ok(msg)) => {
                        if to_lsp.send(normalize(msg)).await.is_err() {
                            break; // tower-lsp stopped (exit)
                        }
                    }
                    Ok(Err(bad)) => {
                        tracing::debug!("bad frame: {bad}");
                        if out_tx
                            .send(Message::Response(bad.to_response()))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::debug!("connection read failed: {e}");
                        break;
                    }
                }
            }
            // Dropping `to_lsp` closes the pipe: tower-lsp sees end of input and stops.
        })
    };

    // Pump: tower-lsp output -> outgoing queue.
    let pump_task = {
        let out_tx = out_tx.clone();
        tokio::spawn(async move {
            let mut from_lsp = FramedRead::new(ours_read, FrameCodec::new(usize::MAX / 2));
            while let Some(Ok(item)) = from_lsp.next().await {
                match item {
                    Ok(msg) => {
                        if out_tx.send(msg).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => tracing::error!("unreadable frame from the LSP layer: {e}"),
                }
            }
        })
    };
    drop(out_tx);

    let notifications = shared.notify.subscribe();
    let writer_task = tokio::spawn(write_loop(
        writer,
        out_rx,
        notifications,
        conn.clone(),
        max_body,
    ));

    // The connection ends when tower-lsp stops (exit, or end of input) or the writer stops
    // (peer gone, unauthorized); the daemon's shutdown aborts everything.
    let mut shutdown = shared.shutdown_signal();
    let mut server = server;
    let mut writer_task = writer_task;
    tokio::select! {
        _ = &mut server => {}
        _ = &mut writer_task => {}
        _ = shutdown.changed() => {}
    }
    reader_task.abort();
    server.abort();
    // Let the pump hand over what tower-lsp already wrote (the answer to `shutdown`, say),
    // then give the writer a moment to flush it.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), pump_task).await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), &mut writer_task).await;
    writer_task.abort();
    conn.closed.store(true, Ordering::SeqCst);
}

async fn serve_lsp<I, O>(
    input: I,
    output: O,
    service: LspService<Backend>,
    socket: tower_lsp_server::ClientSocket,
) where
    I: AsyncRead + Unpin,
    O: AsyncWrite,
{
    Server::new(input, output, socket)
        .concurrency_level(CONCURRENCY)
        .serve(service)
        .await;
}

/// Adjust a clean message before tower-lsp sees it: tower-lsp answers a request whose handler
/// takes params but whose `params` member is absent with "Missing params field", while the
/// protocol lets `sotalign/*` calls with all-default params omit it. Lifecycle methods are
/// passed through untouched (tower-lsp rejects `{}` where it expects no params).
fn normalize(msg: Message) -> Message {
    match msg {
        Message::Request(mut r) if r.params.is_none() && r.method.starts_with("sotalign/") => {
            r.params = Some(Value::Object(Default::default()));
            Message::Request(r)
        }
        other => other,
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    writer: W,
    mut out: mpsc::Receiver<Message>,
    mut notes: broadcast::Receiver<Message>,
    conn: Arc<ConnState>,
    max_body: usize,
) {
    let mut sink = FramedWrite::new(writer, FrameCodec::new(max_body));
    loop {
        let msg = tokio::select! {
            biased;
            m = out.recv() => match m {
                Some(m) => m,
                None => break,
            },
            n = notes.recv() => match n {
                Ok(n) if conn.initialized.load(Ordering::SeqCst) => n,
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(k)) => {
                    tracing::warn!("connection {}: too slow, {k} notifications dropped", conn.id);
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => continue,
            },
        };
        let unauthorized = matches!(&msg, Message::Response(r)
            if r.outcome.as_ref().err().is_some_and(|e| e.code == codes::UNAUTHORIZED));
        match sink.send(&msg).await {
            Ok(()) => {}
            Err(sotalign_protocol::CodecError::OutgoingTooLarge { length, max }) => {
                // Answer the request with an error instead of a frame the peer would refuse.
                if let Message::Response(r) = &msg {
                    let e = sotalign_protocol::ErrorObject::new(
                        codes::INTERNAL_ERROR,
                        format!(
                            "the result is {length} bytes, over the {max}-byte body cap; ask for less"
                        ),
                    );
                    let resp = sotalign_protocol::Response::error(r.id.clone(), e);
                    if sink.send(Message::Response(resp)).await.is_err() {
                        break;
                    }
                }
            }
            Err(e) => {
                tracing::debug!("connection {}: write failed: {e}", conn.id);
                break;
            }
        }
        if unauthorized {
            // The protocol closes the connection after a failed authentication.
            break;
        }
    }
    let _ = sink.get_mut().shutdown().await;
}
