//! A raw connection for tests that send what a typed client never would: bytes out, frames in.
use std::io::{Read, Write};

use serde_json::{Value, json};
use sotalign_protocol::Message;
use sotalign_protocol::framing::FrameReader;

/// An error answer: (code, data or null, message).
pub type RawError = (i64, Value, String);

pub struct Raw<R: Read, W: Write> {
    pub r: FrameReader<R>,
    pub w: W,
    /// The id of the next `call`.
    pub next: i64,
}

impl<R: Read, W: Write> Raw<R, W> {
    pub fn new(r: R, w: W, first_id: i64) -> Self {
        Raw {
            r: FrameReader::new(r),
            w,
            next: first_id,
        }
    }

    pub fn bytes(&mut self, b: &[u8]) {
        self.w.write_all(b).unwrap();
        self.w.flush().unwrap();
    }

    pub fn frame(&mut self, body: &str) {
        self.bytes(format!("Content-Length: {}\r\n\r\n{body}", body.len()).as_bytes());
    }

    /// Send a request; returns its id.
    pub fn call(&mut self, method: &str, params: Value) -> i64 {
        let id = self.next;
        self.next += 1;
        self.frame(
            &json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string(),
        );
        id
    }

    /// The next response (notifications skipped): (id, Ok(result) | Err((code, data, message))).
    pub fn response(&mut self) -> (Option<i64>, Result<Value, RawError>) {
        loop {
            let m = self
                .r
                .read_frame()
                .expect("read (timed out: the daemon hangs?)")
                .expect("daemon closed the connection")
                .expect("a well-formed frame from the daemon");
            if let Message::Response(r) = m {
                let id = r.id.map(|i| match i {
                    sotalign_protocol::Id::Number(n) => n,
                    other => panic!("unexpected id {other:?}"),
                });
                return (
                    id,
                    r.outcome
                        .map_err(|e| (e.code, e.data.unwrap_or(Value::Null), e.message)),
                );
            }
        }
    }
}
