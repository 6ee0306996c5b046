//! The network task against a scripted, in-process fake daemon (a test double speaking the
//! real framing through the protocol crate; the end-to-end test in `tests/tests/tui_e2e.rs`
//! uses the real daemon). Checks the handshake, typed replies, errors with their codes,
//! notifications, request timeouts, and reconnecting after the daemon drops the connection.
use std::time::Duration;

mod common;

use common::counts_of;

use futures::{SinkExt, StreamExt};
use sotalign_protocol::jsonrpc::{Message, Notification, Request, Response};
use sotalign_protocol::types::*;
use sotalign_protocol::{ErrorObject, FrameCodec, ServerNotification, codes, names};
use sotalign_tui::net::{self, Endpoint, NetConfig};
use sotalign_tui::rpc::{Call, NetEvent, Reply};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio::time::timeout;
use tokio_util::codec::{FramedRead, FramedWrite};

type Rd = FramedRead<tokio::net::tcp::OwnedReadHalf, FrameCodec>;
type Wr = FramedWrite<tokio::net::tcp::OwnedWriteHalf, FrameCodec>;

fn split(s: TcpStream) -> (Rd, Wr) {
    let (r, w) = s.into_split();
    (
        FramedRead::new(r, FrameCodec::default()),
        FramedWrite::new(w, FrameCodec::default()),
    )
}

async fn next_request(rd: &mut Rd) -> Option<Request> {
    loop {
        match rd.next().await? {
            Ok(Ok(Message::Request(r))) => return Some(r),
            Ok(Ok(_)) => continue,
            other => panic!("fake daemon got a bad frame: {other:?}"),
        }
    }
}

/// Accept one connection and answer `initialize`; returns the framed halves and the
/// `initialize` params the client sent.
async fn accept_and_initialize(l: &TcpListener) -> (Rd, Wr, InitializeParams) {
    let (s, _) = l.accept().await.unwrap();
    let (mut rd, mut wr) = split(s);
    let req = next_request(&mut rd).await.unwrap();
    assert_eq!(req.method, names::INITIALIZE);
    let params: InitializeParams = req.parse_params().unwrap();
    let result = serde_json::json!({
        "capabilities": {},
        "serverInfo": {"name": "fake-sotalign", "version": "9.9"}
    });
    wr.send(Message::Response(Response::ok(req.id, &result).unwrap()))
        .await
        .unwrap();
    // `initialized` follows.
    match rd.next().await {
        Some(Ok(Ok(Message::Notification(n)))) => assert_eq!(n.method, names::INITIALIZED),
        other => panic!("expected initialized, got {other:?}"),
    }
    (rd, wr, params)
}

async fn recv(rx: &mut UnboundedReceiver<NetEvent>) -> NetEvent {
    timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("net event within 10 s")
        .expect("net task alive")
}

#[tokio::test]
async fn handshake_calls_errors_notifications_timeouts_and_reconnect() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let mut cfg = NetConfig::new(Endpoint::Tcp(addr));
    cfg.token = Some("s3cret".into());
    cfg.client_name = "tui:test".into();
    cfg.request_timeout = Duration::from_millis(700);
    cfg.backoff_initial = Duration::from_millis(50);
    let (call_tx, call_rx) = unbounded_channel();
    let (ev_tx, mut ev_rx) = unbounded_channel();
    let task = tokio::spawn(net::run(cfg, call_rx, ev_tx));

    assert_eq!(recv(&mut ev_rx).await, NetEvent::Connecting { attempt: 1 });
    let (mut rd, mut wr, init) = accept_and_initialize(&listener).await;
    assert_eq!(init.client_info.unwrap().name, "tui:test");
    assert_eq!(
        init.initialization_options.unwrap().token.as_deref(),
        Some("s3cret")
    );
    assert_eq!(
        recv(&mut ev_rx).await,
        NetEvent::Connected {
            server: "fake-sotalign 9.9".into()
        }
    );

    // A typed call and its typed reply.
    let call = Call::Confirm {
        image: SampleId(1),
        text: SampleId(4),
        shown: None,
    };
    call_tx.send(call.clone()).unwrap();
    let req = next_request(&mut rd).await.unwrap();
    assert_eq!(req.method, names::CONFIRM);
    let p: DecideParams = req.parse_params().unwrap();
    assert_eq!((p.image, p.text), (SampleId(1), SampleId(4)));
    let result = DecisionResult {
        decision: Decision {
            id: DecisionId(5),
            kind: DecisionKind::Confirm,
            image: SampleId(1),
            text: SampleId(4),
            at_ms: 1,
            source: "tui:test".into(),
            annotator: None,
            undone_at_ms: None,
        },
        changed: true,
        counts: counts_of(3, 1, 0, 0, 0),
    };
    // A server -> client request first: the client must answer it, not choke on it.
    let create = Request::new(
        7_000i64,
        "window/workDoneProgress/create",
        &serde_json::json!({"token": "job-1"}),
    )
    .unwrap();
    wr.send(Message::Request(create)).await.unwrap();
    match rd.next().await {
        Some(Ok(Ok(Message::Response(r)))) => {
            assert_eq!(r.id, Some(7_000i64.into()));
            assert_eq!(r.outcome, Ok(serde_json::Value::Null));
        }
        other => panic!("expected the client's answer, got {other:?}"),
    }
    wr.send(Message::Response(Response::ok(req.id, &result).unwrap()))
        .await
        .unwrap();
    assert_eq!(
        recv(&mut ev_rx).await,
        NetEvent::Reply {
            call,
            outcome: Ok(Reply::Confirm(result))
        }
    );

    // An error answer keeps its code.
    call_tx
        .send(Call::Suggest {
            sample: SampleId(99),
        })
        .unwrap();
    let req = next_request(&mut rd).await.unwrap();
    wr.send(Message::Response(Response::error(
        Some(req.id),
        ErrorObject::new(codes::UNKNOWN_SAMPLE, "unknown sample 99"),
    )))
    .await
    .unwrap();
    match recv(&mut ev_rx).await {
        NetEvent::Reply {
            outcome: Err(e), ..
        } => {
            assert_eq!(e.code, Some(codes::UNKNOWN_SAMPLE));
            assert_eq!(e.message, "unknown sample 99");
        }
        other => panic!("{other:?}"),
    }

    // Notifications arrive typed.
    let progress = serde_json::json!({"token": "job-1", "value": {"kind": "report", "job": 1,
        "seq": 2, "stage": "refine", "step": 5, "total": 10, "elapsedSecs": 1.5}});
    wr.send(Message::Notification(
        Notification::new(names::PROGRESS, &progress).unwrap(),
    ))
    .await
    .unwrap();
    match recv(&mut ev_rx).await {
        NetEvent::Notification(ServerNotification::Progress(p)) => {
            assert_eq!((p.value.seq, p.value.step), (2, 5));
        }
        other => panic!("{other:?}"),
    }

    // A call the daemon never answers times out instead of hanging the UI.
    call_tx.send(Call::Runs).unwrap();
    let req = next_request(&mut rd).await.unwrap();
    assert_eq!(req.method, names::RUNS);
    match recv(&mut ev_rx).await {
        NetEvent::Reply {
            call: Call::Runs,
            outcome: Err(e),
        } => assert!(e.message.contains("no answer"), "{}", e.message),
        other => panic!("{other:?}"),
    }

    // The daemon dies with a call in flight: the call fails, the UI is told, and the task
    // reconnects by itself.
    call_tx.send(Call::Status).unwrap();
    let _ = next_request(&mut rd).await.unwrap();
    drop((rd, wr));
    let mut saw_failed_call = false;
    let mut saw_disconnect = false;
    while !(saw_failed_call && saw_disconnect) {
        match recv(&mut ev_rx).await {
            NetEvent::Reply {
                call: Call::Status,
                outcome: Err(e),
            } => {
                assert_eq!(e.code, None);
                saw_failed_call = true;
            }
            NetEvent::Disconnected { reason, .. } => {
                assert!(reason.contains("closed"), "{reason}");
                saw_disconnect = true;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(recv(&mut ev_rx).await, NetEvent::Connecting { attempt: 1 });
    let (mut rd, mut wr, _) = accept_and_initialize(&listener).await;
    assert!(matches!(recv(&mut ev_rx).await, NetEvent::Connected { .. }));

    // Quitting (dropping the sender) shuts the connection down politely.
    drop(call_tx);
    let req = next_request(&mut rd).await.unwrap();
    assert_eq!(req.method, names::SHUTDOWN);
    wr.send(Message::Response(Response::ok(req.id, &()).unwrap()))
        .await
        .unwrap();
    match rd.next().await {
        Some(Ok(Ok(Message::Notification(n)))) => assert_eq!(n.method, names::EXIT),
        other => panic!("expected exit, got {other:?}"),
    }
    timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_refused_initialize_and_a_missing_daemon_binary_are_reported() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let mut cfg = NetConfig::new(Endpoint::Tcp(addr));
    cfg.backoff_initial = Duration::from_millis(20);
    let (call_tx, call_rx) = unbounded_channel();
    let (ev_tx, mut ev_rx) = unbounded_channel();
    let task = tokio::spawn(net::run(cfg, call_rx, ev_tx));
    assert_eq!(recv(&mut ev_rx).await, NetEvent::Connecting { attempt: 1 });
    let (s, _) = listener.accept().await.unwrap();
    let (mut rd, mut wr) = split(s);
    let req = next_request(&mut rd).await.unwrap();
    wr.send(Message::Response(Response::error(
        Some(req.id),
        ErrorObject::new(codes::UNAUTHORIZED, "missing or wrong token"),
    )))
    .await
    .unwrap();
    match recv(&mut ev_rx).await {
        NetEvent::Disconnected {
            reason, attempt, ..
        } => {
            assert!(
                reason.contains("1040") && reason.contains("token"),
                "{reason}"
            );
            assert_eq!(attempt, 1);
        }
        other => panic!("{other:?}"),
    }
    // While disconnected, calls fail at once.
    call_tx.send(Call::Status).unwrap();
    loop {
        match recv(&mut ev_rx).await {
            NetEvent::Reply {
                outcome: Err(e), ..
            } => {
                assert!(e.message.contains("not connected"));
                break;
            }
            NetEvent::Connecting { .. } | NetEvent::Disconnected { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    drop(call_tx);
    drop(listener);
    timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();

    // Spawning a daemon that does not exist.
    let cfg = NetConfig::new(Endpoint::Spawn {
        program: "/nonexistent/sotalign".into(),
        args: vec!["serve".into(), "--stdio".into()],
    });
    let (call_tx, call_rx) = unbounded_channel::<Call>();
    let (ev_tx, mut ev_rx) = unbounded_channel();
    let task = tokio::spawn(net::run(cfg, call_rx, ev_tx));
    assert_eq!(recv(&mut ev_rx).await, NetEvent::Connecting { attempt: 1 });
    match recv(&mut ev_rx).await {
        NetEvent::Disconnected { reason, .. } => {
            assert!(
                reason.contains("cannot start daemon /nonexistent/sotalign"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
    drop(call_tx);
    timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}

#[test]
fn backoff_doubles_up_to_the_cap() {
    let cfg = NetConfig::new(Endpoint::Tcp("x".into()));
    let ms: Vec<u128> = (1..=7).map(|a| cfg.backoff(a).as_millis()).collect();
    assert_eq!(ms, vec![500, 1000, 2000, 4000, 8000, 10000, 10000]);
}
