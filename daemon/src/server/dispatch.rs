//! The one request path: a typed method table and the LSP lifecycle, written once.
//!
//! ```text
//!  transport (frames, decoded once)
//!      │ Message
//!      ▼
//!  Connection::call  ── lifecycle gate: initialize once, -32002 before it, refuse after shutdown
//!      │                 $/cancelRequest -> abort the pending handler, answer -32800
//!      ▼
//!  Router  ── M::NAME -> parse M::Params -> Backend::do_x(params) -> M::Result -> JSON
//! ```
//!
//! [`Router`] maps each protocol marker type ([`Method`] / [`NotificationMethod`]) to a handler
//! on [`Backend`]; `Backend::router` registers every method with one `on!` line. A
//! [`Connection`] is one client's view of it, and is a tower [`Service`] from an incoming
//! [`Message`] to the response it needs (if any): the transport calls it for every decoded
//! frame and writes what comes back.
//!
//! Why not tower-lsp-server's `LspService`: it takes its own `jsonrpc::Request` (a second decode
//! of every message), registers custom methods by string with params it extracts itself (absent
//! `params` is an error for it, while the protocol lets `sotalign/*` calls omit them), keeps the
//! lifecycle state private (no place for the token check that must close the connection, nor
//! for gating job notifications on initialization), and speaks to the client through its own
//! socket stream, which needed a second framing layer and a pump. The crate still provides the
//! LSP types (`ls_types`) the editor-facing methods use.
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use serde_json::Value;
use sotalign_protocol::methods::{Method, NotificationMethod, names};
use sotalign_protocol::{ErrorObject, Id, Message, Notification, Request, Response, codes};
use tower_service::Service;

use super::backend::Backend;
use super::errors::{HResult, internal};

/// A boxed, sendable future: what every handler becomes in the table.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

type RequestHandler =
    Box<dyn Fn(Arc<Backend>, Option<Value>) -> BoxFuture<HResult<Value>> + Send + Sync>;
type NoteHandler = Box<dyn Fn(Arc<Backend>, Option<Value>) -> BoxFuture<HResult<()>> + Send + Sync>;

/// The typed method table. Built once per daemon, shared by every connection.
#[derive(Default)]
pub struct Router {
    requests: HashMap<&'static str, RequestHandler>,
    notes: HashMap<&'static str, NoteHandler>,
}

impl Router {
    /// Serve requests of method `M` with `f`: params are parsed as `M::Params` (absent params
    /// read as `{}`, or `null` for `()`), the result serialised from `M::Result`.
    pub fn on<M, F, Fut>(&mut self, f: F) -> &mut Self
    where
        M: Method,
        M::Params: Send + 'static,
        F: Fn(Arc<Backend>, M::Params) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HResult<M::Result>> + Send + 'static,
    {
        let previous = self.requests.insert(
            M::NAME,
            Box::new(move |backend, params| {
                match sotalign_protocol::jsonrpc::parse_params::<M::Params>(
                    M::NAME,
                    params.as_ref(),
                ) {
                    Err(e) => Box::pin(std::future::ready(Err(e))),
                    Ok(p) => {
                        let fut = f(backend, p);
                        Box::pin(async move {
                            let result = fut.await?;
                            serde_json::to_value(result)
                                .map_err(|e| internal(format!("unserialisable result: {e}")))
                        })
                    }
                }
            }),
        );
        assert!(previous.is_none(), "{} registered twice", M::NAME);
        self
    }

    /// Handle client -> server notifications of method `N` with `f` (errors are logged: a
    /// notification is never answered).
    pub fn on_notification<N, F, Fut>(&mut self, f: F) -> &mut Self
    where
        N: NotificationMethod,
        N::Params: Send + 'static,
        F: Fn(Arc<Backend>, N::Params) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HResult<()>> + Send + 'static,
    {
        let previous = self.notes.insert(
            N::NAME,
            Box::new(move |backend, params| {
                match sotalign_protocol::jsonrpc::parse_params::<N::Params>(
                    N::NAME,
                    params.as_ref(),
                ) {
                    Err(e) => Box::pin(std::future::ready(Err(e))),
                    Ok(p) => Box::pin(f(backend, p)),
                }
            }),
        );
        assert!(previous.is_none(), "{} registered twice", N::NAME);
        self
    }

    /// Every request method in the table (for `initialize`'s capabilities).
    pub fn methods(&self) -> Vec<&'static str> {
        let mut m: Vec<_> = self.requests.keys().copied().collect();
        m.sort_unstable();
        m
    }
}

/// Register `Backend::$handler` for the request marker `$method`: `on!(r, methods::Status => do_status)`.
macro_rules! on {
    ($router:expr, $method:ty => $handler:ident) => {
        $router.on::<$method, _, _>(|b: std::sync::Arc<$crate::server::backend::Backend>, p| async move {
            b.$handler(p).await
        })
    };
}

/// Register `Backend::$handler` for the client -> server notification marker `$method`.
#[allow(unused_macros)] // no client -> server notification is registered yet
macro_rules! on_note {
    ($router:expr, $method:ty => $handler:ident) => {
        $router.on_notification::<$method, _, _>(
            |b: std::sync::Arc<$crate::server::backend::Backend>, p| async move { b.$handler(p).await },
        )
    };
}

pub(crate) use {on, on_note};

/// Where a connection is in the LSP lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Only `initialize` (and `exit`) are served.
    Uninitialized,
    /// `initialize` is running: further requests wait their turn as if uninitialized.
    Initializing,
    Running,
    /// After `shutdown`: only `exit` is accepted.
    ShutDown,
}

/// What the transport must do after a message.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Nothing to send.
    None,
    /// Send this response.
    Respond(Response),
    /// Send this response, then close the connection (failed authentication).
    RespondAndClose(Response),
    /// `exit`: close the connection.
    Exit,
}

/// One client's side of the router: lifecycle state and the requests in flight.
#[derive(Clone)]
pub struct Connection {
    router: Arc<Router>,
    backend: Arc<Backend>,
    phase: Arc<Mutex<Phase>>,
    /// Requests in flight, by id, for `$/cancelRequest`.
    pending: Arc<Mutex<HashMap<Id, tokio::task::AbortHandle>>>,
}

impl Connection {
    pub fn new(router: Arc<Router>, backend: Arc<Backend>) -> Self {
        Self {
            router,
            backend,
            phase: Arc::new(Mutex::new(Phase::Uninitialized)),
            pending: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn phase(&self) -> Phase {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_phase(&self, p: Phase) {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner()) = p;
    }

    /// The connection is closing: abort every request in flight (their futures answer
    /// `REQUEST_CANCELLED`), stop its notifications and forget its open documents.
    pub fn close(&self) {
        self.abort_pending();
        let conn = &self.backend.conn;
        conn.closed.store(true, Ordering::SeqCst);
        conn.clear_outgoing();
        super::lsp_handlers::Docs::drop_connection(conn.id);
    }

    /// Abort every request in flight.
    fn abort_pending(&self) {
        for (_, h) in self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
        {
            h.abort();
        }
    }

    /// Decide about a request now (lifecycle, and the handler task is started here, so a
    /// `$/cancelRequest` read right after it finds it), and finish it in the returned future.
    fn request(self, req: Request) -> BoxFuture<Outcome> {
        let Request { id, method, params } = req;
        let ready = |o: Outcome| -> BoxFuture<Outcome> { Box::pin(std::future::ready(o)) };
        match (method.as_str(), self.phase()) {
            (names::INITIALIZE, Phase::Uninitialized) => {
                self.set_phase(Phase::Initializing);
                Box::pin(self.initialize(id, method, params))
            }
            (names::INITIALIZE, _) => ready(Outcome::Respond(Response::error(
                Some(id),
                ErrorObject::new(codes::INVALID_REQUEST, "initialize was already received"),
            ))),
            (_, Phase::Uninitialized | Phase::Initializing) => {
                ready(Outcome::Respond(Response::error(
                    Some(id),
                    ErrorObject::new(
                        codes::SERVER_NOT_INITIALIZED,
                        format!("{method}: send initialize first"),
                    ),
                )))
            }
            (_, Phase::ShutDown) => ready(Outcome::Respond(Response::error(
                Some(id),
                ErrorObject::new(
                    codes::INVALID_REQUEST,
                    format!("{method}: the connection is shutting down; send exit"),
                ),
            ))),
            (names::SHUTDOWN, Phase::Running) => {
                // Every acknowledged write is already committed (synchronous=FULL); shutting
                // down a connection only stops it from taking more work.
                tracing::info!("connection {}: shutdown", self.backend.conn.id);
                self.set_phase(Phase::ShutDown);
                ready(Outcome::Respond(ok_response(id, &())))
            }
            (_, Phase::Running) => self.dispatch(id, method, params),
        }
    }

    async fn initialize(self, id: Id, method: String, params: Option<Value>) -> Outcome {
        let parsed = sotalign_protocol::jsonrpc::parse_params(&method, params.as_ref());
        let result = match parsed {
            Ok(p) => self.backend.do_initialize(p, &self.router.methods()).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(r) => {
                self.set_phase(Phase::Running);
                self.backend.conn.initialized.store(true, Ordering::SeqCst);
                Outcome::Respond(ok_response(id, &r))
            }
            Err(e) if e.code == codes::UNAUTHORIZED => {
                Outcome::RespondAndClose(Response::error(Some(id), e))
            }
            Err(e) => {
                self.set_phase(Phase::Uninitialized);
                Outcome::Respond(Response::error(Some(id), e))
            }
        }
    }

    /// Start a handler as its own task, so `$/cancelRequest` can abort it and a panic in it is
    /// an internal error for this request alone.
    fn dispatch(self, id: Id, method: String, params: Option<Value>) -> BoxFuture<Outcome> {
        let Some(handler) = self.router.requests.get(method.as_str()) else {
            return Box::pin(std::future::ready(Outcome::Respond(Response::error(
                Some(id),
                ErrorObject::method_not_found(&method),
            ))));
        };
        let task = tokio::spawn(handler(self.backend.clone(), params));
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if pending.insert(id.clone(), task.abort_handle()).is_some() {
                tracing::debug!(
                    "connection {}: request id {id} reused while in flight",
                    self.backend.conn.id
                );
            }
        }
        Box::pin(async move {
            let joined = task.await;
            self.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            Outcome::Respond(match joined {
                Ok(Ok(value)) => Response {
                    id: Some(id),
                    outcome: Ok(value),
                },
                Ok(Err(e)) => Response::error(Some(id), e),
                Err(e) if e.is_cancelled() => Response::error(
                    Some(id),
                    ErrorObject::new(codes::REQUEST_CANCELLED, format!("{method}: cancelled")),
                ),
                Err(e) => {
                    tracing::error!("{method}: handler panicked: {e}");
                    Response::error(
                        Some(id),
                        internal(format!("{method}: the handler failed unexpectedly")),
                    )
                }
            })
        })
    }

    async fn notification(self, n: Notification) -> Outcome {
        let Notification { method, params } = n;
        match (method.as_str(), self.phase()) {
            (names::EXIT, _) => Outcome::Exit,
            (names::CANCEL_REQUEST, _) => {
                let id = params.as_ref().and_then(|p| p.get("id")).cloned();
                match id.map(serde_json::from_value::<Id>) {
                    Some(Ok(id)) => {
                        if let Some(h) = self
                            .pending
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get(&id)
                        {
                            h.abort();
                        }
                    }
                    _ => tracing::debug!("$/cancelRequest without a usable id"),
                }
                Outcome::None
            }
            // Before initialize, LSP drops every notification but exit.
            (_, Phase::Uninitialized | Phase::Initializing) => Outcome::None,
            (m, _) => {
                if let Some(handler) = self.router.notes.get(m) {
                    if let Err(e) = handler(self.backend.clone(), params).await {
                        tracing::warn!("{method}: {}", e.message);
                    }
                } else if !m.starts_with("$/") && m != names::INITIALIZED {
                    tracing::debug!("ignored notification {m}");
                }
                Outcome::None
            }
        }
    }
}

fn ok_response(id: Id, result: &impl serde::Serialize) -> Response {
    match Response::ok(id.clone(), result) {
        Ok(r) => r,
        Err(e) => Response::error(Some(id), internal(format!("unserialisable result: {e}"))),
    }
}

/// The connection as a tower service: one incoming message in, what to do about it out.
impl Service<Message> for Connection {
    type Response = Outcome;
    type Error = Infallible;
    type Future = BoxFuture<Result<Outcome, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    /// Requests are decided and their handler started before this returns (the transport may
    /// then run many at once); notifications are handled inside the future, which the
    /// transport awaits before reading on, so they keep their order.
    fn call(&mut self, msg: Message) -> Self::Future {
        let this = self.clone();
        match msg {
            Message::Request(r) => {
                let fut = this.request(r);
                Box::pin(async move { Ok(fut.await) })
            }
            Message::Notification(n) => Box::pin(async move { Ok(this.notification(n).await) }),
            // The daemon sends no requests, so a response from the client answers nothing.
            Message::Response(r) => {
                tracing::debug!("ignored a response from the client (id {:?})", r.id);
                Box::pin(std::future::ready(Ok(Outcome::None)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;
    use sotalign_protocol::methods::{Method, names};
    use sotalign_protocol::{Id, Message, Notification, Request, codes};
    use tower_service::Service;

    use super::{Connection, Outcome};
    use crate::server::backend::{Backend, ConnState};
    use crate::server::state::{Options, Shared};

    /// A request that waits until cancelled.
    enum Sleep {}
    impl Method for Sleep {
        const NAME: &'static str = "test/sleep";
        type Params = ();
        type Result = ();
    }

    /// A request whose handler panics.
    enum Boom {}
    impl Method for Boom {
        const NAME: &'static str = "test/boom";
        type Params = ();
        type Result = ();
    }

    fn connection(dir: &std::path::Path) -> Connection {
        let store = crate::store::Store::open(dir).expect("store");
        let shared = Shared::new(
            Options {
                data_dir: dir.to_path_buf(),
                device: "cpu".into(),
                token: None,
                max_body: 1 << 20,
                assets_dir: dir.join("assets"),
                index: Default::default(),
            },
            store,
        );
        let mut router = Backend::router();
        router.on::<Sleep, _, _>(|_, ()| async {
            tokio::time::sleep(std::time::Duration::from_secs(600)).await;
            Ok(())
        });
        router.on::<Boom, _, _>(|_, ()| async { panic!("boom") });
        let conn = Arc::new(ConnState::new(1, false));
        Connection::new(Arc::new(router), Arc::new(Backend::new(shared, conn)))
    }

    fn request(id: i64, method: &str, params: serde_json::Value) -> Message {
        Message::Request(Request {
            id: Id::Number(id),
            method: method.into(),
            params: Some(params),
        })
    }

    fn note(method: &str, params: serde_json::Value) -> Message {
        Message::Notification(Notification {
            method: method.into(),
            params: Some(params),
        })
    }

    async fn call(c: &mut Connection, m: Message) -> Outcome {
        let Ok(o) = c.call(m).await;
        o
    }

    fn error_code(o: &Outcome) -> Option<i64> {
        match o {
            Outcome::Respond(r) | Outcome::RespondAndClose(r) => {
                r.outcome.as_ref().err().map(|e| e.code)
            }
            _ => None,
        }
    }

    #[tokio::test]
    async fn lifecycle_gate_cancel_panic_shutdown_exit() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = connection(dir.path());
        // Before initialize: -32002; notifications other than exit are dropped.
        let o = call(&mut c, request(1, names::STATUS, json!({}))).await;
        assert_eq!(error_code(&o), Some(codes::SERVER_NOT_INITIALIZED));
        assert_eq!(
            call(&mut c, note("$/progress", json!({}))).await,
            Outcome::None
        );
        // initialize once; its result lists the methods of the table.
        let o = call(
            &mut c,
            request(2, names::INITIALIZE, json!({"capabilities": {}})),
        )
        .await;
        let Outcome::Respond(r) = o else {
            panic!("{o:?}")
        };
        let caps = r.outcome.expect("initialize works");
        let methods = &caps["capabilities"]["experimental"]["sotalign"]["methods"];
        assert!(
            methods
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m == names::STATUS),
            "{caps}"
        );
        let o = call(&mut c, request(3, names::INITIALIZE, json!({}))).await;
        assert_eq!(error_code(&o), Some(codes::INVALID_REQUEST));
        // Absent params read as {}.
        let o = call(
            &mut c,
            Message::Request(Request {
                id: Id::Number(4),
                method: names::STATUS.into(),
                params: None,
            }),
        )
        .await;
        assert_eq!(error_code(&o), None, "{o:?}");
        // Unknown method, bad params.
        let o = call(&mut c, request(5, "sotalign/nope", json!({}))).await;
        assert_eq!(error_code(&o), Some(codes::METHOD_NOT_FOUND));
        let o = call(&mut c, request(6, names::GET_SAMPLE, json!({"id": "x"}))).await;
        assert_eq!(error_code(&o), Some(codes::INVALID_PARAMS));
        // $/cancelRequest aborts a running handler: -32800.
        let pending = c.call(request(7, Sleep::NAME, json!(null)));
        assert_eq!(
            call(&mut c, note(names::CANCEL_REQUEST, json!({"id": 7}))).await,
            Outcome::None
        );
        let Ok(o) = tokio::time::timeout(std::time::Duration::from_secs(10), pending)
            .await
            .expect("cancelled within 10 s");
        assert_eq!(error_code(&o), Some(codes::REQUEST_CANCELLED));
        // A panicking handler is an internal error for that request; the connection goes on.
        let o = call(&mut c, request(8, Boom::NAME, json!(null))).await;
        assert_eq!(error_code(&o), Some(codes::INTERNAL_ERROR));
        let o = call(&mut c, request(9, names::STATUS, json!({}))).await;
        assert_eq!(error_code(&o), None);
        // shutdown, then only exit.
        let o = call(&mut c, request(10, names::SHUTDOWN, json!(null))).await;
        assert_eq!(error_code(&o), None);
        let o = call(&mut c, request(11, names::STATUS, json!({}))).await;
        assert_eq!(error_code(&o), Some(codes::INVALID_REQUEST));
        assert_eq!(
            call(&mut c, note(names::EXIT, json!(null))).await,
            Outcome::Exit
        );
    }
}
