//! A small blocking, typed client over any `Read` + `Write` pair (a child's stdio, a
//! `TcpStream` and its clone), for tests, scripts and the TUI's network task.
//!
//! One call at a time: [`Client::call`] sends a request and reads frames until the matching
//! response arrives; notifications seen meanwhile are queued ([`Client::take_notifications`]),
//! and server -> client requests are answered on the spot (`window/workDoneProgress/create`
//! with `null`, anything else with `MethodNotFound`) so the server never waits on us.
//! Timeouts belong to the transport (e.g. `TcpStream::set_read_timeout`).
use std::collections::VecDeque;
use std::io::{Read, Write};

use crate::framing::{CodecError, FrameError, FrameReader, FrameWriter};
use crate::jsonrpc::{ErrorObject, Id, Message, Notification, Request, Response};
use crate::methods::{self, Method, NotificationMethod, ServerNotification};
use crate::types::{
    ClientInfo, InitializationOptions, InitializeParams, InitializeResult, InitializedParams,
};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// The server answered with an error object.
    #[error("server error: {0}")]
    Server(ErrorObject),
    /// A message could not be serialised, or was over the body cap.
    #[error(transparent)]
    Codec(CodecError),
    #[error("transport I/O error: {0}")]
    Io(std::io::Error),
    /// The server sent a frame we could not read; the connection is still usable.
    #[error("unreadable frame from server: {0}")]
    Frame(FrameError),
    /// The peer closed the connection (EOF, broken pipe, reset): reconnect.
    #[error("server closed the connection")]
    Closed,
    /// The result did not match the method's result type: a version mismatch or a bug.
    #[error("unexpected result for {method}: {source}")]
    Decode {
        method: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl From<std::io::Error> for RpcError {
    fn from(e: std::io::Error) -> Self {
        use std::io::ErrorKind::*;
        match e.kind() {
            BrokenPipe | ConnectionReset | ConnectionAborted | UnexpectedEof => RpcError::Closed,
            _ => RpcError::Io(e),
        }
    }
}

impl From<CodecError> for RpcError {
    fn from(e: CodecError) -> Self {
        match e {
            CodecError::Io(io) => io.into(),
            other => RpcError::Codec(other),
        }
    }
}

impl RpcError {
    /// The JSON-RPC error code when the server answered with an error.
    pub fn code(&self) -> Option<i64> {
        match self {
            RpcError::Server(e) => Some(e.code),
            _ => None,
        }
    }
}

pub struct Client<R, W> {
    reader: FrameReader<R>,
    writer: FrameWriter<W>,
    next_id: i64,
    notifications: VecDeque<Notification>,
}

impl<R: Read, W: Write> Client<R, W> {
    pub fn new(reader: R, writer: W) -> Self {
        Self {
            reader: FrameReader::new(reader),
            writer: FrameWriter::new(writer),
            next_id: 1,
            notifications: VecDeque::new(),
        }
    }

    /// Call `M` and wait for its typed result.
    pub fn call<M: Method>(&mut self, params: M::Params) -> Result<M::Result, RpcError> {
        let value = self.call_raw(M::NAME, &params)?;
        serde_json::from_value(value).map_err(|source| RpcError::Decode {
            method: M::NAME,
            source,
        })
    }

    /// Call any method by name with any params (for probing errors in tests).
    pub fn call_raw(
        &mut self,
        method: &str,
        params: &impl serde::Serialize,
    ) -> Result<serde_json::Value, RpcError> {
        let id = Id::Number(self.next_id);
        self.next_id += 1;
        let req = Request::new(id.clone(), method, params).map_err(CodecError::from)?;
        self.writer.write_message(&req.into())?;
        loop {
            match self.read_message()? {
                Message::Response(Response { id: rid, outcome }) => {
                    // A null id answers a request the server could not parse: ours.
                    if rid.is_none() || rid.as_ref() == Some(&id) {
                        return outcome.map_err(RpcError::Server);
                    }
                    // A stale response to an earlier, abandoned call: drop it.
                }
                Message::Notification(n) => self.notifications.push_back(n),
                Message::Request(r) => self.answer_server_request(r)?,
            }
        }
    }

    /// Send a notification.
    pub fn notify<N: NotificationMethod>(&mut self, params: N::Params) -> Result<(), RpcError> {
        let n = Notification::new(N::NAME, &params).map_err(CodecError::from)?;
        self.writer.write_message(&n.into())?;
        Ok(())
    }

    /// Write an arbitrary message (tests use it to send invalid requests).
    pub fn send(&mut self, msg: &Message) -> Result<(), RpcError> {
        self.writer.write_message(msg)?;
        Ok(())
    }

    /// `initialize` + `initialized`, with an optional auth token.
    pub fn initialize(
        &mut self,
        client_name: &str,
        token: Option<String>,
    ) -> Result<InitializeResult, RpcError> {
        let result = self.call::<methods::Initialize>(InitializeParams {
            process_id: Some(std::process::id()),
            client_info: Some(ClientInfo {
                name: client_name.to_owned(),
                version: None,
            }),
            capabilities: serde_json::json!({}),
            initialization_options: Some(InitializationOptions { token }),
        })?;
        self.notify::<methods::Initialized>(InitializedParams {})?;
        Ok(result)
    }

    /// `shutdown` then `exit`.
    pub fn shutdown(&mut self) -> Result<(), RpcError> {
        self.call::<methods::Shutdown>(())?;
        self.notify::<methods::Exit>(())
    }

    /// Notifications received so far, oldest first, typed.
    pub fn take_notifications(&mut self) -> Vec<Result<ServerNotification, ErrorObject>> {
        self.notifications
            .drain(..)
            .map(ServerNotification::parse)
            .collect()
    }

    /// Read until a notification satisfying `pred` arrives (queued ones first); every other
    /// notification stays queued. Blocks; bound it with a transport timeout.
    pub fn wait_for(
        &mut self,
        mut pred: impl FnMut(&ServerNotification) -> bool,
    ) -> Result<ServerNotification, RpcError> {
        let mut skipped = VecDeque::new();
        let found = loop {
            let n = match self.notifications.pop_front() {
                Some(n) => n,
                None => match self.read_message()? {
                    Message::Notification(n) => n,
                    Message::Request(r) => {
                        self.answer_server_request(r)?;
                        continue;
                    }
                    Message::Response(_) => continue,
                },
            };
            match ServerNotification::parse(n.clone()) {
                Ok(typed) if pred(&typed) => break Ok(typed),
                Ok(_) => skipped.push_back(n),
                Err(e) => break Err(RpcError::Server(e)),
            }
        };
        skipped.extend(self.notifications.drain(..));
        self.notifications = skipped;
        found
    }

    fn read_message(&mut self) -> Result<Message, RpcError> {
        match self.reader.read_frame()? {
            None => Err(RpcError::Closed),
            Some(Err(e)) => Err(RpcError::Frame(e)),
            Some(Ok(m)) => Ok(m),
        }
    }

    fn answer_server_request(&mut self, r: Request) -> Result<(), RpcError> {
        let resp = if r.method == "window/workDoneProgress/create" {
            Response::ok(r.id, &()).map_err(CodecError::from)?
        } else {
            Response::error(Some(r.id), ErrorObject::method_not_found(&r.method))
        };
        self.writer.write_message(&resp.into())?;
        Ok(())
    }
}
