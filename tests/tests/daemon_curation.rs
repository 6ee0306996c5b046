//! The annotator's loop on the real daemon (reference Tux Paint embeddings): identical
//! captions listed once with their count and rejected as a group, search by words, the
//! labelling queue (`sotalign/nextToLabel`) from cold start to a model, and a re-align that
//! serves a closed-form model first and trains the heads after.
mod common;

use std::io::{Read, Write};

use common::*;
use serde_json::json;
use sotalign_protocol::types::*;
use sotalign_protocol::{Client, methods};

const N_TRAIN: usize = 40;
const N_TEST: usize = 20;
const N_UNPAIRED: usize = 60;

/// The fixture plus one twin: a second text with the caption (and vector) of the first
/// unpaired row's text. Returns that row.
fn fixture_with_twin(dir: &std::path::Path) -> (Fixture, usize) {
    let fx = fixture(dir, N_TRAIN, N_TEST, N_UNPAIRED);
    let r = fx.unpaired[0];
    let mut m = std::fs::read_to_string(&fx.manifest).unwrap();
    m.push_str(
        &json!({"key": "twin", "caption": fx.captions[r], "textRow": r, "split": "unpaired"})
            .to_string(),
    );
    m.push('\n');
    std::fs::write(&fx.manifest, m).unwrap();
    (fx, r)
}

fn sample_by_key<R: Read, W: Write>(c: &mut Client<R, W>, m: Modality, key: &str) -> Sample {
    c.call::<methods::ListSamples>(ListSamplesParams {
        modality: m,
        state: None,
        filter: Some(key.into()),
        offset: 0,
        limit: 1000,
    })
    .unwrap()
    .items
    .into_iter()
    .find(|s| s.key == key)
    .unwrap_or_else(|| panic!("no sample {key}"))
}

fn suggest<R: Read, W: Write>(c: &mut Client<R, W>, id: SampleId) -> Vec<Candidate> {
    c.call::<methods::SuggestForSample>(SuggestForSampleParams {
        sample: id,
        k: 100,
        include_rejected: false,
    })
    .unwrap()
    .candidates
}

fn queue<R: Read, W: Write>(c: &mut Client<R, W>, limit: u32) -> NextToLabelResult {
    c.call::<methods::NextToLabel>(NextToLabelParams { limit })
        .unwrap()
}

fn align<R: Read, W: Write>(
    c: &mut Client<R, W>,
    p: AlignParams,
) -> (AlignResult, JobFinishedParams) {
    let a = c.call::<methods::Align>(p).unwrap();
    let f = wait_finished(c, a.job);
    assert_eq!(f.state, JobState::Succeeded, "{f:?}");
    (a, f)
}

#[test]
fn twins_once_group_rejects_word_search_and_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let (fx, r) = fixture_with_twin(dir.path());
    let (_d, mut c, _) = spawn_stdio(&dir.path().join("data"), &[]);
    c.initialize("curation-test", None).unwrap();
    ingest(&mut c, &fx.manifest);

    // Cold start: typical images of uncovered clusters in the image encoder's space.
    let q = queue(&mut c, 8);
    assert_eq!(q.mode, QueueMode::ColdStart);
    assert_eq!(q.run, None);
    assert_eq!(q.items.len(), 8);
    let mut seen = std::collections::HashSet::new();
    for it in &q.items {
        assert_eq!(it.reason, QueueReason::UncoveredCluster);
        assert_eq!(it.image.state, SampleState::Unpaired, "{it:?}");
        assert!(!it.why.is_empty());
        assert!(seen.insert(it.image.id), "queued twice");
    }

    let (a, _) = align(
        &mut c,
        AlignParams {
            method: AlignMethod::Cca,
            ..AlignParams::default()
        },
    );
    let st = c.call::<methods::Status>(Empty {}).unwrap();
    let model = st.model.unwrap();
    assert_eq!(
        (model.run, model.stage),
        (a.run, Some(ModelStage::ClosedForm))
    );

    // Identical captions: listed once, with the number of other texts that carry it.
    let image = sample_by_key(&mut c, Modality::Image, &format!("row-{r}"));
    let text = sample_by_key(&mut c, Modality::Text, &format!("row-{r}"));
    let twin = sample_by_key(&mut c, Modality::Text, "twin");
    let cands = suggest(&mut c, image.id);
    let caps: Vec<&str> = cands
        .iter()
        .map(|c| c.sample.text.as_deref().unwrap())
        .collect();
    let distinct: std::collections::HashSet<&str> = caps.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        caps.len(),
        "a caption listed twice: {caps:?}"
    );
    let mine = cands
        .iter()
        .find(|c| c.sample.text.as_deref() == Some(fx.captions[r].as_str()))
        .expect("the true caption is among the candidates");
    assert_eq!(mine.duplicates, 1);
    assert!(
        cands
            .iter()
            .enumerate()
            .all(|(i, c)| c.rank == i as u32 + 1)
    );

    // A reject of one text applies to its twin too; undo brings both back.
    let d = c
        .call::<methods::Reject>(DecideParams {
            image: image.id,
            text: twin.id,
            source: None,
            annotator: None,
            shown_revision: None,
        })
        .unwrap();
    let after = suggest(&mut c, image.id);
    assert!(
        after
            .iter()
            .all(|c| c.sample.id != text.id && c.sample.id != twin.id),
        "a rejected caption came back"
    );
    c.call::<methods::Undo>(UndoParams {
        decision: Some(d.decision.id),
    })
    .unwrap();
    assert!(
        suggest(&mut c, image.id)
            .iter()
            .any(|c| c.sample.id == text.id || c.sample.id == twin.id)
    );

    // Words: every hit says the word (captions), twins once, ranked by the model's score when
    // the text encoder is there, in store order otherwise.
    let word = fx.captions[r]
        .split(|ch: char| !ch.is_alphanumeric())
        .max_by_key(|w| w.len())
        .unwrap()
        .to_lowercase();
    let hits = c
        .call::<methods::Search>(SearchParams {
            query: SearchQuery::Text(word.clone()),
            target: Some(Modality::Text),
            k: 100,
        })
        .unwrap()
        .hits;
    assert!(!hits.is_empty());
    let words_hits: Vec<&Candidate> = hits
        .iter()
        .take_while(|h| {
            h.sample
                .text
                .as_deref()
                .unwrap()
                .to_lowercase()
                .contains(&word)
        })
        .collect();
    assert!(
        words_hits
            .iter()
            .any(|h| h.sample.id == text.id || h.sample.id == twin.id)
    );
    let caps: Vec<&str> = hits
        .iter()
        .map(|h| h.sample.text.as_deref().unwrap())
        .collect();
    let distinct: std::collections::HashSet<&str> = caps.iter().copied().collect();
    assert_eq!(distinct.len(), caps.len());

    // With a model: the queue's hybrid rule starts by captioning.
    let q = queue(&mut c, 5);
    assert_eq!((q.mode, q.run), (QueueMode::Caption, Some(a.run)));
    assert_eq!(q.items.len(), 5);
    assert!(q.items.iter().all(|i| i.reason == QueueReason::FindCaption));
    // A decision on an image with a mutual proposal feeds the estimate.
    let before = q.observations;
    let mut fed = false;
    for it in &q.items {
        let top = suggest(&mut c, it.image.id);
        if let Some(t) = top.first().filter(|t| t.mutual_nn) {
            c.call::<methods::Confirm>(DecideParams {
                image: it.image.id,
                text: t.sample.id,
                source: None,
                annotator: None,
                shown_revision: None,
            })
            .unwrap();
            fed = true;
            break;
        }
    }
    if fed {
        let q2 = queue(&mut c, 5);
        assert_eq!(q2.observations, before + 1);
        assert!(q2.precision > q.precision, "a confirmed proposal is a hit");
    }
}

#[test]
fn a_trained_realign_serves_closed_form_first() {
    let dir = tempfile::tempdir().unwrap();
    let fx = fixture(dir.path(), N_TRAIN, N_TEST, N_UNPAIRED);
    let (_d, mut c, _) = spawn_stdio(&dir.path().join("data"), &[]);
    c.initialize("curation-test", None).unwrap();
    ingest(&mut c, &fx.manifest);
    let a = c.call::<methods::Align>(align_params(20)).unwrap();
    let f = wait_finished(&mut c, a.job);
    assert_eq!(f.state, JobState::Succeeded, "{f:?}");
    let p = progress_of(&mut c, a.job);
    // Closed-form reports (validation by auto, its fit, the index) come before the trained ones.
    let first_trained = p
        .iter()
        .position(|v| v.model_stage == Some(ModelStage::Trained))
        .expect("no trained stage reported");
    assert!(
        p[..first_trained]
            .iter()
            .all(|v| v.model_stage == Some(ModelStage::ClosedForm))
    );
    for s in [JobStage::Validate, JobStage::Teacher, JobStage::Index] {
        assert!(p[..first_trained].iter().any(|v| v.stage == s), "{s:?}");
    }
    assert!(
        p[first_trained..]
            .iter()
            .any(|v| v.stage == JobStage::Validate)
    );
    assert!(
        p[first_trained..]
            .iter()
            .any(|v| v.stage == JobStage::Refine)
    );
    // Percentages never go back.
    let pct: Vec<u32> = p.iter().filter_map(|v| v.percentage).collect();
    assert!(pct.windows(2).all(|w| w[0] <= w[1]), "{pct:?}");
    // Whichever model won the validation serves, under the run's method and with its stage.
    let st = wait_for_model(&mut c);
    let m = st.model.unwrap();
    assert_eq!((m.run, m.method), (a.run, AlignMethod::Siglip));
    let fitted = m.fitted.unwrap();
    match m.stage {
        Some(ModelStage::ClosedForm) => assert!(fitted.starts_with("auto"), "{fitted}"),
        Some(ModelStage::Trained) => assert!(!fitted.starts_with("auto"), "{fitted}"),
        None => panic!("no stage"),
    }
    // The job says which model serves at the end, and why.
    let said = |w: &str| {
        p.iter()
            .any(|v| v.message.as_deref().unwrap_or("").contains(w))
    };
    assert!(said("stays") || said("trained heads serve") || said("too few pairs"));
}
