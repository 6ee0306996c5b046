//! Several annotators on one daemon: two clients see each other's decisions as
//! `sotalign/decisionsChanged` notifications without restarting, a decision on a pair that
//! changed since it was shown is refused as `STALE_DECISION` (nothing written), each decision
//! records its annotator and `status` counts them per annotator; undo is broadcast too.
mod common;

use common::*;
use sotalign_protocol::types::*;
use sotalign_protocol::{ServerNotification, codes, methods};

fn unpaired(c: &mut TcpClient, m: Modality) -> Vec<SampleId> {
    c.call::<methods::ListSamples>(ListSamplesParams {
        modality: m,
        state: Some(SampleState::Unpaired),
        filter: None,
        offset: 0,
        limit: 10,
    })
    .unwrap()
    .items
    .into_iter()
    .map(|s| s.id)
    .collect()
}

fn decide(
    c: &mut TcpClient,
    image: SampleId,
    text: SampleId,
    who: &str,
    shown: Option<u64>,
) -> Result<DecisionResult, sotalign_protocol::client::RpcError> {
    c.call::<methods::Confirm>(DecideParams {
        image,
        text,
        source: None,
        annotator: Some(who.into()),
        shown_revision: shown,
    })
}

fn changed(c: &mut TcpClient) -> DecisionsChangedParams {
    match c
        .wait_for(|n| matches!(n, ServerNotification::DecisionsChanged(_)))
        .unwrap()
    {
        ServerNotification::DecisionsChanged(p) => p,
        _ => unreachable!(),
    }
}

#[test]
fn two_annotators_see_each_other_and_stale_decisions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fx = fixture(dir.path(), 5, 0, 8);
    let d = spawn_tcp(&dir.path().join("data"), &[]);
    let addr = d.addr.clone().unwrap();
    let (mut ann, mut bob) = (connect(&addr), connect(&addr));
    ann.initialize("tui-ann", None).unwrap();
    bob.initialize("tui-bob", None).unwrap();
    ingest(&mut ann, &fx.manifest);
    let (img, txt) = (
        unpaired(&mut ann, Modality::Image),
        unpaired(&mut ann, Modality::Text),
    );
    // Both show pair (img0, txt0) at the same revision.
    let shown = ann.call::<methods::Status>(Empty {}).unwrap().revision;
    assert_eq!(
        bob.call::<methods::Status>(Empty {}).unwrap().revision,
        shown
    );

    // Bob decides first; Ann hears of it without asking.
    let r = decide(&mut bob, img[0], txt[0], "bob", Some(shown)).unwrap();
    assert_eq!(r.decision.annotator.as_deref(), Some("bob"));
    let n = changed(&mut ann);
    assert_eq!((n.decision.image, n.decision.text), (img[0], txt[0]));
    assert_eq!(n.decision.annotator.as_deref(), Some("bob"));
    assert!(!n.undone);
    assert!(n.revision > shown);
    assert_eq!(n.counts, r.counts);
    // Bob hears his own decision too (every connection gets every change).
    assert_eq!(changed(&mut bob).revision, n.revision);

    // Ann's decision on the same image, shown before Bob's: stale, nothing written.
    let before = ann.call::<methods::Status>(Empty {}).unwrap().counts;
    let e = decide(&mut ann, img[0], txt[1], "ann", Some(shown)).unwrap_err();
    assert_eq!(e.code(), Some(codes::STALE_DECISION), "{e}");
    assert_eq!(
        ann.call::<methods::Status>(Empty {}).unwrap().counts,
        before
    );
    // The queue moves on: a pair nobody touched since is accepted at the old revision.
    let r = decide(&mut ann, img[1], txt[1], "ann", Some(shown)).unwrap();
    assert_eq!(changed(&mut bob).decision.id, r.decision.id);
    changed(&mut ann);
    // And at the current revision, anything goes.
    let now = bob.call::<methods::Status>(Empty {}).unwrap().revision;
    decide(&mut bob, img[2], txt[2], "bob", Some(now)).unwrap();
    changed(&mut ann);
    changed(&mut bob);

    let st = ann.call::<methods::Status>(Empty {}).unwrap();
    assert_eq!(
        st.annotators,
        vec![
            AnnotatorCount {
                annotator: "bob".into(),
                confirmed: 2,
                rejected: 0
            },
            AnnotatorCount {
                annotator: "ann".into(),
                confirmed: 1,
                rejected: 0
            },
        ]
    );

    // Undo is broadcast, and an undone decision no longer counts.
    let u = bob
        .call::<methods::Undo>(UndoParams { decision: None })
        .unwrap();
    let n = changed(&mut ann);
    assert!(n.undone);
    assert_eq!(n.decision.id, u.undone.id);
    assert!(n.decision.undone_at_ms.is_some());
    let st = ann.call::<methods::Status>(Empty {}).unwrap();
    assert_eq!(st.revision, n.revision);
    assert_eq!(st.annotators[0].confirmed + st.annotators[1].confirmed, 2);
    // The pair Bob undid changed after `now`: a decision shown at `now` on it is stale.
    let e = decide(&mut ann, img[2], txt[3], "ann", Some(now)).unwrap_err();
    assert_eq!(e.code(), Some(codes::STALE_DECISION), "{e}");
}
