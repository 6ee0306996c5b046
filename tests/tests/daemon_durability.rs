//! Kill -9 at random points while a client confirms pairs in a loop, 20 times over; after
//! every restart each acknowledged confirm is still there, and the store is sound: it opens,
//! its integrity check passes, and the counts agree with the pairs it lists.
mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use rand::{Rng, SeedableRng};
use sotalign_protocol::methods;
use sotalign_protocol::types::*;

const KILLS: usize = 20;

#[test]
fn acknowledged_confirms_survive_kill_minus_nine() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let fx = fixture(dir.path(), 10, 5, 40);
    let (images, texts) = {
        let (_d, mut c, _) = spawn_stdio(&data, &[]);
        c.initialize("durability", None).unwrap();
        ingest(&mut c, &fx.manifest);
        let list = |c: &mut StdioClient, m| {
            c.call::<methods::ListSamples>(ListSamplesParams {
                modality: m,
                state: Some(SampleState::Unpaired),
                filter: None,
                offset: 0,
                limit: 1000,
            })
            .unwrap()
            .items
            .into_iter()
            .map(|s| s.id)
            .collect::<Vec<_>>()
        };
        (list(&mut c, Modality::Image), list(&mut c, Modality::Text))
    };
    let seed_pairs = 10u64;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut acked: HashSet<(SampleId, SampleId)> = HashSet::new();
    let mut k = 0usize;
    for round in 0..KILLS {
        let (mut d, mut c, _) = spawn_stdio(&data, &[]);
        c.initialize("durability", None).unwrap();
        // Everything acknowledged before any earlier kill is still there.
        let st = c.call::<methods::Status>(Empty {}).unwrap();
        // Every confirmed pair, page by page (pages are capped at 1000; a fast machine
        // confirms more than that over the rounds).
        let mut stored: HashSet<(SampleId, SampleId)> = HashSet::new();
        let mut offset = 0u64;
        loop {
            let page = c
                .call::<methods::ListPairs>(ListPairsParams {
                    state: Some(PairState::Confirmed),
                    offset,
                    limit: 1000,
                })
                .unwrap();
            offset += page.items.len() as u64;
            stored.extend(page.items.iter().map(|p| (p.image, p.text)));
            if page.items.is_empty() || offset >= page.total {
                break;
            }
        }
        assert_eq!(
            st.counts.confirmed_pairs,
            stored.len() as u64,
            "round {round}: counts disagree with the pairs"
        );
        let lost: Vec<_> = acked.difference(&stored).collect();
        assert!(
            lost.is_empty(),
            "round {round}: acknowledged confirms lost: {lost:?}"
        );
        // At most one confirm per kill may be committed without having been acknowledged.
        assert!(stored.len() as u64 <= seed_pairs + acked.len() as u64 + round as u64);

        // Kill at a random moment while confirms stream in.
        let delay = Duration::from_millis(rng.random_range(5..120));
        let pid = d.child.id();
        let killer = std::thread::spawn(move || {
            std::thread::sleep(delay);
            // SIGKILL: no chance to flush anything.
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        });
        loop {
            let pair = (
                images[k % images.len()],
                texts[(k / images.len() + k) % texts.len()],
            );
            k += 1;
            match c.call::<methods::Confirm>(DecideParams {
                image: pair.0,
                text: pair.1,
                source: None,
                annotator: None,
                shown_revision: None,
            }) {
                Ok(_) => {
                    acked.insert(pair);
                }
                Err(_) => break, // the daemon died mid-call: this one was not acknowledged
            }
        }
        killer.join().unwrap();
        let _ = d.child.wait();
    }
    assert!(
        acked.len() > KILLS,
        "too few confirms acknowledged to mean anything: {}",
        acked.len()
    );
    // The store itself: opens, passes SQLite's integrity check, holds every acked pair.
    let store = sotalign::store::Store::open(&data).unwrap();
    assert_eq!(store.integrity_check().unwrap(), "ok");
    let stored: HashSet<(SampleId, SampleId)> = store
        .pair_ids(PairState::Confirmed)
        .unwrap()
        .into_iter()
        .collect();
    assert!(acked.is_subset(&stored));
    let counts = store.counts().unwrap();
    assert_eq!(counts.confirmed_pairs, stored.len() as u64);
    assert_eq!(counts.images, 55);
}
