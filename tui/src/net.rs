//! The network task: owns the connection to the daemon, so the UI never waits on a socket.
//!
//! The UI sends [`Call`]s down a channel and gets [`NetEvent`]s back. This task connects (TCP,
//! or spawning `sotalign serve --stdio` as editors spawn language servers), does the
//! `initialize` handshake, matches responses to calls by id, times out calls the daemon never
//! answers, and when the connection drops (daemon killed, network gone) fails every call in
//! flight, tells the UI, and reconnects with exponential backoff. A spawned daemon is
//! respawned; its last stderr lines become the reason shown in the banner.
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use sotalign_protocol::jsonrpc::{Id, Message, Notification, Request, Response};
use sotalign_protocol::methods::{self, Method, NotificationMethod};
use sotalign_protocol::types::{
    ClientInfo, InitializationOptions, InitializeParams, InitializeResult, InitializedParams,
};
use sotalign_protocol::{ErrorObject, FrameCodec, ServerNotification, names};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::time::{Instant, sleep, timeout};
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::rpc::{Call, CallError, NetEvent};

/// Where the daemon is.
#[derive(Debug, Clone, PartialEq)]
pub enum Endpoint {
    /// `host:port` of a running `sotalign serve --listen`.
    Tcp(String),
    /// A daemon to spawn and talk to over its stdin/stdout.
    Spawn { program: PathBuf, args: Vec<String> },
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(addr) => write!(f, "{addr}"),
            Endpoint::Spawn { program, .. } => write!(f, "{} (stdio)", program.display()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct NetConfig {
    pub endpoint: Endpoint,
    pub token: Option<String>,
    /// Sent as `clientInfo.name`; the daemon records it as the decisions' default source.
    pub client_name: String,
    /// Recorded with every confirm / reject as `annotator` (the TUI's `--annotator`).
    pub annotator: Option<String>,
    /// A call with no answer after this long fails (its frame may have been lost).
    pub request_timeout: Duration,
    /// First reconnect delay; doubles per failed attempt up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl NetConfig {
    pub fn new(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            token: None,
            client_name: "sotalign-tui".to_owned(),
            annotator: None,
            request_timeout: Duration::from_secs(30),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(10),
        }
    }

    /// Delay before attempt `attempt + 1` after `attempt` consecutive failures (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        self.backoff_initial
            .saturating_mul(factor)
            .min(self.backoff_max)
    }
}

type Reader = Pin<Box<dyn AsyncRead + Send>>;
type Writer = Pin<Box<dyn AsyncWrite + Send>>;

struct Connection {
    reader: Reader,
    writer: Writer,
    /// The spawned daemon; killed when dropped.
    child: Option<Child>,
    /// Its last stderr lines, for the disconnect reason.
    stderr_tail: Option<Arc<Mutex<VecDeque<String>>>>,
}

const STDERR_LINES: usize = 4;

async fn connect(endpoint: &Endpoint) -> Result<Connection, String> {
    match endpoint {
        Endpoint::Tcp(addr) => {
            let stream = timeout(
                Duration::from_secs(5),
                tokio::net::TcpStream::connect(addr.as_str()),
            )
            .await
            .map_err(|_| format!("connecting to {addr} timed out"))?
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
            stream.set_nodelay(true).ok();
            let (r, w) = stream.into_split();
            Ok(Connection {
                reader: Box::pin(r),
                writer: Box::pin(w),
                child: None,
                stderr_tail: None,
            })
        }
        Endpoint::Spawn { program, args } => {
            let mut child = Command::new(program)
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("cannot start daemon {}: {e}", program.display()))?;
            let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                return Err("daemon started without piped stdio".to_owned());
            };
            let tail = Arc::new(Mutex::new(VecDeque::new()));
            if let Some(stderr) = child.stderr.take() {
                // Drain stderr so the daemon never blocks on a full pipe; it must not reach
                // our terminal, which the UI owns.
                let tail = tail.clone();
                tokio::spawn(async move {
                    let mut lines = BufReader::new(stderr).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        if let Ok(mut t) = tail.lock() {
                            if t.len() == STDERR_LINES {
                                t.pop_front();
                            }
                            t.push_back(line);
                        }
                    }
                });
            }
            Ok(Connection {
                reader: Box::pin(stdout),
                writer: Box::pin(stdin),
                child: Some(child),
                stderr_tail: Some(tail),
            })
        }
    }
}

/// Run the network task until the UI drops its sender (then shut the daemon down cleanly).
pub async fn run(
    cfg: NetConfig,
    mut calls: UnboundedReceiver<Call>,
    events: UnboundedSender<NetEvent>,
) {
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        if events.send(NetEvent::Connecting { attempt }).is_err() {
            return;
        }
        let reason = match connect(&cfg.endpoint).await {
            Ok(conn) => match session(&cfg, conn, &mut calls, &events, &mut attempt).await {
                SessionEnd::Quit => return,
                SessionEnd::Lost(reason) => reason,
            },
            Err(reason) => reason,
        };
        let delay = cfg.backoff(attempt.max(1));
        let _ = events.send(NetEvent::Disconnected {
            reason,
            retry_in_ms: delay.as_millis() as u64,
            attempt,
        });
        // Calls made while disconnected fail at once instead of hanging.
        let deadline = Instant::now() + delay;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                call = calls.recv() => match call {
                    None => return,
                    Some(call) => {
                        let _ = events.send(NetEvent::Reply {
                            call,
                            outcome: Err(CallError::transport("not connected to the daemon")),
                        });
                    }
                },
            }
        }
    }
}

enum SessionEnd {
    Quit,
    Lost(String),
}

fn notification<N: NotificationMethod>(params: N::Params) -> Message {
    match Notification::new(N::NAME, &params) {
        Ok(n) => Message::Notification(n),
        // Our own notification params always serialise; keep the shape if not.
        Err(_) => Message::Notification(Notification {
            method: N::NAME.to_owned(),
            params: None,
        }),
    }
}

/// Answer a request the server sent us, so it never waits on us.
fn answer_server_request(r: Request) -> Message {
    let resp = if r.method == "window/workDoneProgress/create" {
        Response {
            id: Some(r.id),
            outcome: Ok(serde_json::Value::Null),
        }
    } else {
        Response::error(Some(r.id), ErrorObject::method_not_found(&r.method))
    };
    Message::Response(resp)
}

fn lost_reason(base: String, conn_tail: &Option<Arc<Mutex<VecDeque<String>>>>) -> String {
    let last = conn_tail
        .as_ref()
        .and_then(|t| t.lock().ok().and_then(|t| t.back().cloned()));
    match last {
        Some(line) if !line.trim().is_empty() => format!("{base} (daemon said: {})", line.trim()),
        _ => base,
    }
}

async fn session(
    cfg: &NetConfig,
    conn: Connection,
    calls: &mut UnboundedReceiver<Call>,
    events: &UnboundedSender<NetEvent>,
    attempt: &mut u32,
) -> SessionEnd {
    let Connection {
        reader,
        writer,
        mut child,
        stderr_tail,
    } = conn;
    let mut rd = FramedRead::new(reader, FrameCodec::default());
    let mut wr = FramedWrite::new(writer, FrameCodec::default());

    // Handshake.
    let init = InitializeParams {
        process_id: Some(std::process::id()),
        client_info: Some(ClientInfo {
            name: cfg.client_name.clone(),
            version: Some(env!("CARGO_PKG_VERSION").to_owned()),
        }),
        capabilities: serde_json::json!({}),
        initialization_options: Some(InitializationOptions {
            token: cfg.token.clone(),
        }),
    };
    let req = match Request::new(Id::Number(0), methods::Initialize::NAME, &init) {
        Ok(r) => r,
        Err(e) => return SessionEnd::Lost(format!("cannot encode initialize: {e}")),
    };
    if let Err(e) = wr.send(Message::Request(req)).await {
        return SessionEnd::Lost(lost_reason(
            format!("cannot send initialize: {e}"),
            &stderr_tail,
        ));
    }
    let mut early = Vec::new();
    let handshake = async {
        loop {
            let frame = tokio::select! {
                frame = rd.next() => frame,
                call = calls.recv() => match call {
                    // The UI quit while we were still connecting.
                    None => return Ok(None),
                    Some(call) => {
                        let _ = events.send(NetEvent::Reply {
                            call,
                            outcome: Err(CallError::transport("still connecting to the daemon")),
                        });
                        continue;
                    }
                },
            };
            match frame {
                None => return Err("the daemon closed the connection during initialize".into()),
                Some(Err(e)) => return Err(format!("transport error during initialize: {e}")),
                Some(Ok(Err(frame))) => {
                    let _ = events.send(NetEvent::ProtocolError(frame.to_string()));
                }
                Some(Ok(Ok(Message::Response(r))))
                    if r.id == Some(Id::Number(0)) || r.id.is_none() =>
                {
                    return match r.outcome {
                        Ok(v) => serde_json::from_value::<InitializeResult>(v)
                            .map(Some)
                            .map_err(|e| format!("unexpected initialize answer: {e}")),
                        Err(e) => Err(format!(
                            "the daemon refused initialize: error {}: {}",
                            e.code, e.message
                        )),
                    };
                }
                Some(Ok(Ok(Message::Response(_)))) => {}
                Some(Ok(Ok(Message::Notification(n)))) => early.push(n),
                Some(Ok(Ok(Message::Request(r)))) => {
                    if let Err(e) = wr.send(answer_server_request(r)).await {
                        return Err(format!("transport error during initialize: {e}"));
                    }
                }
            }
        }
    };
    let init_result = match timeout(Duration::from_secs(20), handshake).await {
        Err(_) => {
            return SessionEnd::Lost("the daemon did not answer initialize within 20 s".into());
        }
        Ok(Err(reason)) => return SessionEnd::Lost(lost_reason(reason, &stderr_tail)),
        Ok(Ok(None)) => return SessionEnd::Quit,
        Ok(Ok(Some(r))) => r,
    };
    if let Err(e) = wr
        .send(notification::<methods::Initialized>(InitializedParams {}))
        .await
    {
        return SessionEnd::Lost(format!("cannot send initialized: {e}"));
    }
    let server = match &init_result.server_info {
        Some(info) => match &info.version {
            Some(v) => format!("{} {v}", info.name),
            None => info.name.clone(),
        },
        None => "daemon".to_owned(),
    };
    *attempt = 0;
    if events.send(NetEvent::Connected { server }).is_err() {
        return SessionEnd::Quit;
    }
    for n in early {
        forward_notification(n, events);
    }

    let mut pending: HashMap<i64, (Call, Instant)> = HashMap::new();
    let mut next_id: i64 = 1;
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    let reason = loop {
        tokio::select! {
            call = calls.recv() => match call {
                None => {
                    graceful_shutdown(&mut rd, &mut wr, &mut child, next_id).await;
                    return SessionEnd::Quit;
                }
                Some(call) => {
                    let (method, mut params) = call.encode();
                    if let (Some(a), true, Some(obj)) = (
                        &cfg.annotator,
                        method == names::CONFIRM || method == names::REJECT,
                        params.as_object_mut(),
                    ) {
                        obj.insert("annotator".into(), serde_json::Value::String(a.clone()));
                    }
                    let id = next_id;
                    next_id += 1;
                    let msg = match Request::new(Id::Number(id), method, &params) {
                        Ok(r) => Message::Request(r),
                        Err(e) => {
                            let _ = events.send(NetEvent::Reply { call, outcome: Err(CallError::transport(format!("cannot encode {method}: {e}"))) });
                            continue;
                        }
                    };
                    if let Err(e) = wr.send(msg).await {
                        let _ = events.send(NetEvent::Reply { call, outcome: Err(CallError::transport("connection lost before the call was sent")) });
                        break format!("cannot write to the daemon: {e}");
                    }
                    pending.insert(id, (call, Instant::now() + cfg.request_timeout));
                }
            },
            frame = rd.next() => match frame {
                None => break "the daemon closed the connection".to_owned(),
                Some(Err(e)) => break format!("connection error: {e}"),
                Some(Ok(Err(frame))) => {
                    let _ = events.send(NetEvent::ProtocolError(frame.to_string()));
                }
                Some(Ok(Ok(Message::Response(r)))) => {
                    let Some(Id::Number(id)) = r.id else {
                        // A null id answers a frame the daemon could not parse: ours, but we
                        // cannot tell which call; the call times out.
                        if let Err(e) = r.outcome {
                            let _ = events.send(NetEvent::ProtocolError(format!("the daemon could not read one of our messages: error {}: {}", e.code, e.message)));
                        }
                        continue;
                    };
                    if let Some((call, _)) = pending.remove(&id) {
                        let outcome = match r.outcome {
                            Ok(v) => call.decode(v),
                            Err(e) => Err(CallError { code: Some(e.code), message: e.message }),
                        };
                        if events.send(NetEvent::Reply { call, outcome }).is_err() {
                            return SessionEnd::Quit;
                        }
                    }
                }
                Some(Ok(Ok(Message::Notification(n)))) => forward_notification(n, events),
                Some(Ok(Ok(Message::Request(r)))) => {
                    if let Err(e) = wr.send(answer_server_request(r)).await {
                        break format!("cannot write to the daemon: {e}");
                    }
                }
            },
            _ = ticker.tick() => {
                let now = Instant::now();
                let expired: Vec<i64> = pending.iter().filter(|(_, (_, d))| *d <= now).map(|(id, _)| *id).collect();
                for id in expired {
                    if let Some((call, _)) = pending.remove(&id) {
                        let secs = cfg.request_timeout.as_secs_f64();
                        let _ = events.send(NetEvent::Reply { call, outcome: Err(CallError::transport(format!("no answer from the daemon within {secs:.0} s"))) });
                    }
                }
            }
        }
    };
    for (_, (call, _)) in pending.drain() {
        let _ = events.send(NetEvent::Reply {
            call,
            outcome: Err(CallError::transport(
                "connection lost before the answer came",
            )),
        });
    }
    if let Some(mut c) = child {
        // Reap it so the exit status is known and no zombie stays.
        let _ = timeout(Duration::from_millis(500), c.wait()).await;
        let _ = c.start_kill();
    }
    SessionEnd::Lost(lost_reason(reason, &stderr_tail))
}

fn forward_notification(n: Notification, events: &UnboundedSender<NetEvent>) {
    let ev = match ServerNotification::parse(n) {
        Ok(n) => NetEvent::Notification(n),
        Err(e) => NetEvent::ProtocolError(e.message),
    };
    let _ = events.send(ev);
}

/// `shutdown` then `exit`, waiting briefly for a spawned daemon to flush and exit.
async fn graceful_shutdown<R, W>(
    rd: &mut FramedRead<R, FrameCodec>,
    wr: &mut FramedWrite<W, FrameCodec>,
    child: &mut Option<Child>,
    id: i64,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let Ok(req) = Request::new(Id::Number(id), names::SHUTDOWN, &()) else {
        return;
    };
    if wr.send(Message::Request(req)).await.is_err() {
        return;
    }
    let _ = timeout(Duration::from_secs(3), async {
        while let Some(frame) = rd.next().await {
            if let Ok(Ok(Message::Response(r))) = frame
                && r.id == Some(Id::Number(id))
            {
                break;
            }
        }
    })
    .await;
    let _ = wr.send(notification::<methods::Exit>(())).await;
    if let Some(c) = child {
        if timeout(Duration::from_secs(3), c.wait()).await.is_err() {
            let _ = c.start_kill();
        }
    }
    // Give a TCP peer a moment to read `exit` before the socket closes.
    sleep(Duration::from_millis(10)).await;
}
