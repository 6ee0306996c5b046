//! The blocking typed client against a scripted server on a real socket pair, and the async
//! codec under tokio's `FramedRead` (the path the daemon and the TUI use).
use std::os::unix::net::UnixStream;
use std::thread;

use futures::StreamExt;
use serde_json::json;
use sotalign_protocol::framing::{FrameCodec, FrameError, FrameReader, FrameWriter};
use sotalign_protocol::methods::{self, Method, ServerNotification};
use sotalign_protocol::types::*;
use sotalign_protocol::{
    Client, ErrorObject, Message, Notification, Request, Response, RpcError, codes,
};

fn progress(seq: u64) -> Message {
    let p = ProgressParams {
        token: ProgressToken::for_job(JobId(4)),
        value: JobProgress {
            kind: ProgressKind::Report,
            title: None,
            message: None,
            percentage: Some(50),
            job: JobId(4),
            seq,
            stage: JobStage::Refine,
            model_stage: None,
            step: seq,
            total: 10,
            loss: Some(0.5),
            eta_secs: Some(1.0),
            elapsed_secs: 1.0,
        },
    };
    Notification::new(methods::names::PROGRESS, &p)
        .unwrap()
        .into()
}

fn read_request(r: &mut FrameReader<UnixStream>) -> Request {
    match r.read_frame().unwrap().unwrap().unwrap() {
        Message::Request(req) => req,
        other => panic!("server expected a request, got {other:?}"),
    }
}

#[test]
fn typed_call_collects_notifications_and_answers_server_requests() {
    let (client_end, server_end) = UnixStream::pair().unwrap();
    let server = thread::spawn(move || {
        let mut r = FrameReader::new(server_end.try_clone().unwrap());
        let mut w = FrameWriter::new(server_end);

        // 1. align: progress, a server request, a stale response, then the answer.
        let req = read_request(&mut r);
        assert_eq!(req.method, "sotalign/align");
        let params: AlignParams = req.parse_params().unwrap();
        assert_eq!(params.method, AlignMethod::Cca);
        w.write_message(&progress(1)).unwrap();
        let create = Request::new(
            "srv-1",
            "window/workDoneProgress/create",
            &json!({"token": "job-4"}),
        )
        .unwrap();
        w.write_message(&create.into()).unwrap();
        match r.read_frame().unwrap().unwrap().unwrap() {
            Message::Response(Response {
                id: Some(id),
                outcome: Ok(serde_json::Value::Null),
            }) => {
                assert_eq!(id, "srv-1".into())
            }
            other => panic!("client did not answer the server request: {other:?}"),
        }
        w.write_message(&Response::ok(12345.into(), &"stale").unwrap().into())
            .unwrap();
        w.write_message(
            &Response::ok(
                req.id,
                &AlignResult {
                    job: JobId(4),
                    run: RunId(4),
                },
            )
            .unwrap()
            .into(),
        )
        .unwrap();

        // 2. a call that fails with a typed error.
        let req = read_request(&mut r);
        let err =
            ErrorObject::new(codes::UNKNOWN_JOB, "unknown job 44").with_data(json!({"job": 44}));
        w.write_message(&Response::error(Some(req.id), err).into())
            .unwrap();

        // 3. progress 3 overtakes 2, then the job ends.
        w.write_message(&progress(3)).unwrap();
        w.write_message(&progress(2)).unwrap();
        let done = JobFinishedParams {
            job: JobId(4),
            kind: JobKind::Align,
            state: JobState::Succeeded,
            last_seq: 3,
            elapsed_secs: 2.0,
            run: Some(RunId(4)),
            metrics: None,
            ingested: None,
            error: None,
        };
        w.write_message(
            &Notification::new(methods::names::JOB_FINISHED, &done)
                .unwrap()
                .into(),
        )
        .unwrap();
    });

    let mut client = Client::new(client_end.try_clone().unwrap(), client_end);
    let res = client
        .call::<methods::Align>(AlignParams {
            method: AlignMethod::Cca,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        res,
        AlignResult {
            job: JobId(4),
            run: RunId(4)
        }
    );
    let seen = client.take_notifications();
    assert!(
        matches!(&seen[..], [Ok(ServerNotification::Progress(p))] if p.value.seq == 1),
        "{seen:?}"
    );

    let err = client
        .call::<methods::Cancel>(CancelParams { job: JobId(44) })
        .unwrap_err();
    assert_eq!(err.code(), Some(codes::UNKNOWN_JOB));

    let finished = client
        .wait_for(|n| matches!(n, ServerNotification::JobFinished(_)))
        .unwrap();
    let ServerNotification::JobFinished(f) = finished else {
        unreachable!()
    };
    assert_eq!(
        (f.job, f.state, f.last_seq),
        (JobId(4), JobState::Succeeded, 3)
    );
    // The progress notifications that arrived first stay queued, in arrival order.
    let seqs: Vec<u64> = client
        .take_notifications()
        .into_iter()
        .map(|n| match n {
            Ok(ServerNotification::Progress(p)) => p.value.seq,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(seqs, vec![3, 2]);
    server.join().unwrap();

    // The peer is gone: the next call reports it instead of hanging.
    let gone = client.call::<methods::Status>(Empty {});
    assert!(matches!(gone, Err(RpcError::Closed)), "{gone:?}");
}

#[test]
fn wrong_result_shape_is_a_decode_error_naming_the_method() {
    let (client_end, server_end) = UnixStream::pair().unwrap();
    let server = thread::spawn(move || {
        let mut r = FrameReader::new(server_end.try_clone().unwrap());
        let mut w = FrameWriter::new(server_end);
        let req = read_request(&mut r);
        w.write_message(
            &Response::ok(req.id, &json!({"jobs": "none"}))
                .unwrap()
                .into(),
        )
        .unwrap();
    });
    let mut client = Client::new(client_end.try_clone().unwrap(), client_end);
    match client.call::<methods::Jobs>(JobsParams::default()) {
        Err(RpcError::Decode { method, .. }) => assert_eq!(method, <methods::Jobs as Method>::NAME),
        other => panic!("{other:?}"),
    }
    server.join().unwrap();
}

#[tokio::test]
async fn framed_read_stream_survives_bad_frames() {
    let good = |id: i64| {
        let body = json!({"jsonrpc": "2.0", "id": id, "method": "sotalign/status"}).to_string();
        format!("Content-Length: {}\r\n\r\n{body}", body.len())
    };
    let input = format!(
        "{}Content-Length: 3\r\n\r\n{{x}}{}Content-Length: 99999999\r\n\r\n",
        good(1),
        good(2)
    );
    let mut input = input.into_bytes();
    input.extend(std::iter::repeat_n(b' ', 99_999_999 / 1000)); // body only partly sent
    let codec = FrameCodec::new(1 << 20);
    let mut stream = tokio_util::codec::FramedRead::new(&input[..], codec);
    let mut items = Vec::new();
    while let Some(item) = stream.next().await {
        items.push(item.expect("no fatal error"));
    }
    assert_eq!(items.len(), 4, "{items:?}");
    assert!(matches!(items[0], Ok(Message::Request(_))));
    assert!(matches!(items[1], Err(FrameError::InvalidJson(_))));
    assert!(matches!(items[2], Ok(Message::Request(_))));
    assert!(matches!(
        items[3],
        Err(FrameError::BodyTooLarge {
            length: 99_999_999,
            ..
        })
    ));
}
