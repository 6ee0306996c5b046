//! One connection's bytes: frames in, decoded once, handed to the [`Connection`] service;
//! responses and notifications out through one writer.
//!
//! ```text
//!  peer bytes ─> FrameCodec (body cap, resync) ─> Message ─> Connection (dispatch.rs)
//!                   │ bad frame: error response          │ Outcome::Respond
//!                   ▼                                     ▼
//!  peer <─ writer task (owns the socket) <─ outgoing queue <─ + this connection's notifications
//!                   ^
//!                   └─ job notifications (broadcast), once the connection is initialized
//! ```
//!
//! Bad frames (malformed header, oversized body, invalid JSON, not JSON-RPC) are answered
//! with a JSON-RPC error and reading goes on. Requests run concurrently (at most
//! [`MAX_IN_FLIGHT`] per connection: reading pauses while that many are running, which bounds
//! a client's memory and CPU); notifications are handled in order before the next frame is
//! read. A slow peer only fills its own queues: its writer blocks on the socket, its broadcast
//! receiver lags (the oldest notifications are dropped for it alone), and no other connection
//! or job waits on it.
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::{SinkExt, StreamExt};
use sotalign_protocol::{CodecError, ErrorObject, FrameCodec, Message, Response, codes};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, broadcast, mpsc};
use tokio_util::codec::{FramedRead, FramedWrite};
use tower_service::Service;

use super::backend::{Backend, ConnState};
use super::dispatch::{Connection, Outcome, Router};
use super::state::Shared;

/// Requests one connection may have running at once.
pub const MAX_IN_FLIGHT: usize = 32;
/// Outgoing messages queued per connection before handlers wait for the writer.
const OUT_QUEUE: usize = 256;
/// How long a closing connection gives its writer to flush what is queued.
const FLUSH_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Serve one client until it disconnects, sends `exit`, fails authentication, or the daemon
/// shuts down.
pub async fn serve_connection<R, W>(
    reader: R,
    writer: W,
    shared: Arc<Shared>,
    router: Arc<Router>,
    conn: Arc<ConnState>,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let max_body = shared.opts.max_body;
    let (out_tx, out_rx) = mpsc::channel::<Outgoing>(OUT_QUEUE);
    conn.set_outgoing(NoteSender(out_tx.clone()));
    let backend = Arc::new(Backend::new(shared.clone(), conn.clone()));
    let mut service = Connection::new(router, backend);

    let notifications = shared.notify.subscribe();
    let mut writer_task = tokio::spawn(write_loop(
        writer,
        out_rx,
        notifications,
        conn.clone(),
        max_body,
    ));
    let mut writer_done = false;

    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut frames = FramedRead::new(reader, crate::limits::current().frame_codec(max_body));
    let mut shutdown = shared.shutdown_signal();
    loop {
        let item = tokio::select! {
            item = frames.next() => item,
            _ = &mut writer_task => { writer_done = true; break; }
            _ = shutdown.changed() => break,
        };
        let msg = match item {
            None => break,
            Some(Err(e)) => {
                tracing::debug!("connection {}: read failed: {e}", conn.id);
                break;
            }
            Some(Ok(Err(bad))) => {
                tracing::debug!("connection {}: bad frame: {bad}", conn.id);
                if out_tx
                    .send(Outgoing::Response(bad.to_response()))
                    .await
                    .is_err()
                {
                    break;
                }
                continue;
            }
            Some(Ok(Ok(msg))) => msg,
        };
        if matches!(msg, Message::Request(_)) {
            // Bound the requests running at once: reading waits for a free slot.
            let permit = tokio::select! {
                p = in_flight.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                _ = &mut writer_task => { writer_done = true; break; }
                _ = shutdown.changed() => break,
            };
            let fut = service.call(msg);
            let out = out_tx.clone();
            tokio::spawn(async move {
                let Ok(outcome) = fut.await;
                drop(permit);
                deliver(&out, outcome).await;
            });
        } else {
            let Ok(outcome) = service.call(msg).await;
            if matches!(outcome, Outcome::Exit) {
                break;
            }
            if !deliver(&out_tx, outcome).await {
                break;
            }
        }
    }

    // Closing: stop what is still running for this client, let the writer send what is queued
    // (the answer to `shutdown`, say), then close the socket.
    service.close();
    drop(out_tx);
    if !writer_done {
        // Finished requests' answers may still be on their way through the queue; the writer
        // ends once every sender is gone (aborted tasks drop theirs) or after the grace time.
        match tokio::time::timeout(FLUSH_GRACE, &mut writer_task).await {
            Ok(_) => {}
            Err(_) => writer_task.abort(),
        }
    }
}

/// Hand an outcome to the writer; false once the writer is gone.
async fn deliver(out: &mpsc::Sender<Outgoing>, outcome: Outcome) -> bool {
    match outcome {
        Outcome::None | Outcome::Exit => true,
        Outcome::Respond(r) => out.send(Outgoing::Response(r)).await.is_ok(),
        Outcome::RespondAndClose(r) => {
            let _ = out.send(Outgoing::Close(r)).await;
            false
        }
    }
}

/// What the writer sends.
#[derive(Debug)]
pub enum Outgoing {
    Response(Response),
    /// A message for this connection only (e.g. diagnostics for a document it opened).
    Notification(Message),
    /// Send this response, then close (failed authentication).
    Close(Response),
}

/// A handle to one connection's writer, for messages meant for that connection alone.
#[derive(Clone, Debug)]
pub struct NoteSender(mpsc::Sender<Outgoing>);

impl NoteSender {
    /// Queue a message; false if the connection is gone.
    pub async fn send(&self, msg: Message) -> bool {
        self.0.send(Outgoing::Notification(msg)).await.is_ok()
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    writer: W,
    mut out: mpsc::Receiver<Outgoing>,
    mut notes: broadcast::Receiver<Message>,
    conn: Arc<ConnState>,
    max_body: usize,
) {
    let mut sink = FramedWrite::new(writer, FrameCodec::new(max_body));
    let mut broadcast_open = true;
    loop {
        let (msg, close_after) = tokio::select! {
            biased;
            m = out.recv() => match m {
                Some(Outgoing::Response(r)) => (Message::Response(r), false),
                Some(Outgoing::Notification(n)) => (n, false),
                Some(Outgoing::Close(r)) => (Message::Response(r), true),
                None => break,
            },
            n = notes.recv(), if broadcast_open => match n {
                Ok(n) if conn.initialized.load(Ordering::SeqCst) => (n, false),
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(k)) => {
                    tracing::warn!("connection {}: too slow, {k} notifications dropped", conn.id);
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => { broadcast_open = false; continue; }
            },
        };
        match sink.send(&msg).await {
            Ok(()) => {}
            Err(CodecError::OutgoingTooLarge { length, max }) => {
                // Answer the request with an error instead of a frame the peer would refuse.
                if let Message::Response(r) = &msg {
                    let e = ErrorObject::new(
                        codes::INTERNAL_ERROR,
                        format!(
                            "the result is {length} bytes, over the {max}-byte body cap; ask for less"
                        ),
                    );
                    if sink
                        .send(Message::Response(Response::error(r.id.clone(), e)))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
            Err(e) => {
                tracing::debug!("connection {}: write failed: {e}", conn.id);
                break;
            }
        }
        if close_after {
            // The protocol closes the connection after a failed authentication.
            break;
        }
    }
    let _ = SinkExt::<Message>::flush(&mut sink).await;
    let _ = sink.get_mut().shutdown().await;
}
