//! The nearest-neighbour index against independent references: an f64 brute force written
//! here, exact search for HNSW recall, and the generation contract of background rebuilds.
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier};

use sotalign::index::synth::{Clustered, gaussian};
use sotalign::index::{
    BackendKind, BuildPhase, Filter, Hit, HnswParams, IndexConfig, IndexError, IndexSet, Modality,
    RebuildOutcome, VectorIndex,
};
use sotalign_engine::Matrix;

fn ids(n: usize, offset: u64) -> Vec<u64> {
    (0..n as u64).map(|i| offset + i * 3).collect()
}

fn config(exact_below: usize) -> IndexConfig {
    IndexConfig {
        exact_below,
        hnsw: HnswParams {
            insert_batch: 512,
            ..HnswParams::default()
        },
    }
}

/// Cosine top-k in f64 over raw rows: (id, score), best first, ties to the earlier row.
fn brute_force(
    data: &Matrix,
    ids: &[u64],
    q: &[f32],
    k: usize,
    keep: impl Fn(u64) -> bool,
) -> Vec<(u64, f64)> {
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let qn = norm(q);
    let mut all: Vec<(usize, f64)> = (0..data.rows)
        .filter(|r| keep(ids[*r]))
        .map(|r| {
            let row = data.row(r);
            let d: f64 = row.iter().zip(q).map(|(a, b)| *a as f64 * *b as f64).sum();
            (r, d / (norm(row) * qn))
        })
        .collect();
    all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    all.into_iter().take(k).map(|(r, s)| (ids[r], s)).collect()
}

/// Same ids in the same order (rank swaps allowed only between scores within 1e-5) and
/// scores within 1e-5 of the f64 reference.
fn assert_matches(got: &[Hit], want: &[(u64, f64)]) {
    assert_eq!(got.len(), want.len(), "result length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g.score as f64 - w.1).abs() < 1e-5,
            "rank {i}: score {} vs {}",
            g.score,
            w.1
        );
        if g.id != w.0 {
            let other = want
                .iter()
                .find(|x| x.0 == g.id)
                .expect("returned id is not in the true top-k");
            assert!(
                (other.1 - w.1).abs() < 1e-5,
                "rank {i}: id {} instead of {}",
                g.id,
                w.0
            );
        }
    }
}

#[test]
fn exact_search_equals_brute_force() {
    let mix = Clustered::new(48, 30, 1);
    let data = mix.sample(3000, 2);
    let qs = mix.sample(25, 3);
    let id = ids(data.rows, 100);
    let index = VectorIndex::build(id.clone(), &data, &config(usize::MAX)).unwrap();
    assert_eq!(index.backend_kind(), BackendKind::Exact);
    let batch = index.search_batch(&qs, 10, &Filter::All).unwrap();
    for i in 0..qs.rows {
        let want = brute_force(&data, &id, qs.row(i), 10, |_| true);
        assert_matches(&index.search(qs.row(i), 10, &Filter::All).unwrap(), &want);
        assert_matches(&batch[i], &want);
    }
    // k larger than the collection returns everything, sorted.
    let small = VectorIndex::build(
        vec![7, 8, 9],
        &data.select_rows(&[0, 1, 2]),
        &config(usize::MAX),
    )
    .unwrap();
    let hits = small.search(qs.row(0), 10, &Filter::All).unwrap();
    assert_eq!(hits.len(), 3);
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
}

fn recall_at_10(index: &VectorIndex, qs: &Matrix) -> f64 {
    let truth = index.search_batch_exact(qs, 10, &Filter::All).unwrap();
    let mut found = 0usize;
    for i in 0..qs.rows {
        let t: HashSet<u64> = truth[i].iter().map(|h| h.id).collect();
        found += index
            .search(qs.row(i), 10, &Filter::All)
            .unwrap()
            .iter()
            .filter(|h| t.contains(&h.id))
            .count();
    }
    found as f64 / (10 * qs.rows) as f64
}

#[test]
fn hnsw_recall_on_clustered_data() {
    let mix = Clustered::new(96, 25, 11);
    let data = mix.sample(5000, 12);
    let qs = mix.sample(200, 13);
    let index = VectorIndex::build(ids(5000, 0), &data, &config(1000)).unwrap();
    assert_eq!(index.backend_kind(), BackendKind::Hnsw);
    let r = recall_at_10(&index, &qs);
    assert!(r >= 0.95, "recall@10 = {r}");
    // HNSW scores are exact dot products of the normalised vectors, like the exact backend's.
    let q = qs.row(0);
    let want = brute_force(&data, index.ids(), q, 10, |_| true);
    for h in index.search(q, 10, &Filter::All).unwrap() {
        let v = index.vector(h.id).unwrap();
        let qn: f64 = q.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let s: f64 = v
            .iter()
            .zip(q)
            .map(|(a, b)| *a as f64 * *b as f64)
            .sum::<f64>()
            / qn;
        assert!((h.score as f64 - s).abs() < 1e-5);
        assert!(h.score as f64 <= want[0].1 + 1e-5);
    }
}

#[test]
fn automatic_backend_choice_follows_the_threshold() {
    let data = gaussian(300, 16, 5);
    let below = VectorIndex::build(
        ids(299, 0),
        &data.select_rows(&(0..299).collect::<Vec<_>>()),
        &config(300),
    )
    .unwrap();
    let at = VectorIndex::build(ids(300, 0), &data, &config(300)).unwrap();
    assert_eq!(below.backend_kind(), BackendKind::Exact);
    assert_eq!(at.backend_kind(), BackendKind::Hnsw);
}

#[test]
fn filters_hide_ids_in_both_backends() {
    let mix = Clustered::new(32, 10, 21);
    let data = mix.sample(2000, 22);
    let qs = mix.sample(20, 23);
    let id = ids(2000, 0);
    for exact_below in [usize::MAX, 0] {
        let index = VectorIndex::build(id.clone(), &data, &config(exact_below)).unwrap();
        for i in 0..qs.rows {
            let q = qs.row(i);
            // Exclude the current true top 5 and every id divisible by 9.
            let top: Vec<u64> = brute_force(&data, &id, q, 5, |_| true)
                .into_iter()
                .map(|x| x.0)
                .collect();
            let excluded: HashSet<u64> = top
                .iter()
                .copied()
                .chain(id.iter().copied().filter(|x| x % 9 == 0))
                .collect();
            let hits = index.search(q, 10, &Filter::Exclude(&excluded)).unwrap();
            assert_eq!(hits.len(), 10);
            assert!(hits.iter().all(|h| !excluded.contains(&h.id)));
            let want = brute_force(&data, &id, q, 10, |x| !excluded.contains(&x));
            if exact_below == usize::MAX {
                assert_matches(&hits, &want);
            } else {
                let w: HashSet<u64> = want.iter().map(|x| x.0).collect();
                assert!(hits.iter().filter(|h| w.contains(&h.id)).count() >= 8);
            }
            // Allow-list of a few ids: exactly those come back, best first.
            let allowed: HashSet<u64> = id.iter().copied().skip(i * 7).take(4).collect();
            let hits = index.search(q, 10, &Filter::Only(&allowed)).unwrap();
            let want = brute_force(&data, &id, q, 10, |x| allowed.contains(&x));
            assert_matches(&hits, &want);
            // A predicate, and both combined.
            let odd = |x: u64| x % 2 == 1;
            let pred = Filter::Predicate(&odd);
            let hits = index
                .search(q, 10, &Filter::Both(&pred, &Filter::Exclude(&excluded)))
                .unwrap();
            assert!(
                hits.iter()
                    .all(|h| h.id % 2 == 1 && !excluded.contains(&h.id))
            );
            assert_eq!(hits.len(), 10);
        }
    }
}

#[test]
fn bad_inputs_are_typed_errors() {
    let data = gaussian(500, 24, 31);
    for exact_below in [usize::MAX, 0] {
        let index = VectorIndex::build(ids(500, 0), &data, &config(exact_below)).unwrap();
        let good = data.row(0).to_vec();
        assert!(matches!(
            index.search(&good[..23], 5, &Filter::All),
            Err(IndexError::DimensionMismatch {
                expected: 24,
                got: 23,
                ..
            })
        ));
        let mut nan = good.clone();
        nan[4] = f32::NAN;
        assert_eq!(
            index.search(&nan, 5, &Filter::All),
            Err(IndexError::NonFinite {
                what: "query",
                row: 0,
                col: 4
            })
        );
        let mut inf = good.clone();
        inf[0] = f32::INFINITY;
        assert!(matches!(
            index.search(&inf, 5, &Filter::All),
            Err(IndexError::NonFinite { col: 0, .. })
        ));
        assert!(matches!(
            index.search(&[0.0; 24], 5, &Filter::All),
            Err(IndexError::ZeroNorm { .. })
        ));
        assert_eq!(index.search(&good, 0, &Filter::All), Err(IndexError::ZeroK));
        let mut batch = data.select_rows(&[0, 1, 2, 3, 4, 5]);
        batch.row_mut(3)[7] = f32::NEG_INFINITY;
        assert_eq!(
            index.search_batch(&batch, 5, &Filter::All),
            Err(IndexError::NonFinite {
                what: "query",
                row: 3,
                col: 7
            })
        );
        let wrong = Matrix::zeros(2, 25);
        assert!(matches!(
            index.search_batch(&wrong, 5, &Filter::All),
            Err(IndexError::DimensionMismatch { .. })
        ));
        // Tiny but valid values are fine (normalised in f64).
        let tiny: Vec<f32> = good.iter().map(|x| x * 1e-30).collect();
        assert_eq!(
            index.search(&tiny, 3, &Filter::All).unwrap(),
            index.search(&good, 3, &Filter::All).unwrap()
        );
    }
    let c = config(usize::MAX);
    assert_eq!(
        VectorIndex::build(vec![1, 2, 1], &data.select_rows(&[0, 1, 2]), &c).unwrap_err(),
        IndexError::DuplicateId(1)
    );
    assert_eq!(
        VectorIndex::build(vec![1, 2], &data.select_rows(&[0, 1, 2]), &c).unwrap_err(),
        IndexError::IdCountMismatch { ids: 2, rows: 3 }
    );
    let mut bad = data.select_rows(&[0, 1, 2]);
    bad.row_mut(2)[5] = f32::NAN;
    assert_eq!(
        VectorIndex::build(vec![1, 2, 3], &bad, &c).unwrap_err(),
        IndexError::NonFinite {
            what: "embedding row",
            row: 2,
            col: 5
        }
    );
    let mut zero = data.select_rows(&[0, 1]);
    zero.row_mut(1).fill(0.0);
    assert!(matches!(
        VectorIndex::build(vec![1, 2], &zero, &c),
        Err(IndexError::ZeroNorm { row: 1, .. })
    ));
    let bad_params = IndexConfig {
        exact_below: 0,
        hnsw: HnswParams {
            max_connections: 1000,
            ..HnswParams::default()
        },
    };
    assert!(matches!(
        VectorIndex::build(
            ids(10, 0),
            &data.select_rows(&(0..10).collect::<Vec<_>>()),
            &bad_params
        ),
        Err(IndexError::InvalidParameter(_))
    ));
}

/// Search `set` and check that the hits come from the collection of the generation reported.
fn check_consistent(set: &IndexSet, q: &[f32], gens: &[(u64, HashSet<u64>)]) -> u64 {
    let r = set.search(Modality::Text, q, 5, &Filter::All).unwrap();
    let (_, members) = gens
        .iter()
        .find(|(g, _)| *g == r.generation)
        .expect("unknown generation");
    assert_eq!(r.hits.len(), 5);
    assert!(
        r.hits.iter().all(|h| members.contains(&h.id)),
        "generation {} served foreign ids",
        r.generation
    );
    r.generation
}

#[test]
fn queries_during_a_rebuild_see_the_old_generation_until_the_swap() {
    let set = Arc::new(IndexSet::new(config(1000)));
    assert_eq!(set.generation(Modality::Text), 0);
    let mix = Clustered::new(32, 12, 41);
    let old = mix.sample(1500, 42);
    let new = mix.sample(2500, 43);
    let q = mix.sample(1, 44);
    let old_ids = ids(1500, 0);
    let new_ids = ids(2500, 1_000_000);
    // The initial empty index answers with nothing, not an error.
    assert!(
        set.search(Modality::Text, q.row(0), 5, &Filter::All)
            .unwrap()
            .hits
            .is_empty()
    );
    match set.replace(Modality::Text, old_ids.clone(), old).unwrap() {
        RebuildOutcome::Swapped {
            generation: 1,
            backend: BackendKind::Hnsw,
            items: 1500,
            ..
        } => {}
        other => panic!("unexpected outcome {other:?}"),
    }
    let gens = vec![
        (1u64, old_ids.iter().copied().collect::<HashSet<_>>()),
        (2u64, new_ids.iter().copied().collect::<HashSet<_>>()),
    ];

    // The rebuild reports Built, then blocks until the test lets it swap.
    let (built_tx, built_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let mut inserted = 0;
    let handle =
        set.rebuild_in_background(
            Modality::Text,
            new_ids.clone(),
            new,
            move |phase| match phase {
                BuildPhase::Inserting { done, .. } => inserted = done,
                BuildPhase::Built => {
                    built_tx.send(inserted).unwrap();
                    go_rx.recv().unwrap();
                }
            },
        );
    // A reader hammering the set throughout: every answer is internally consistent and the
    // generation it sees never goes backwards.
    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(Barrier::new(2));
    let reader = {
        let (set, stop, started, gens, q) = (
            set.clone(),
            stop.clone(),
            started.clone(),
            gens.clone(),
            q.clone(),
        );
        std::thread::spawn(move || {
            started.wait();
            let (mut last, mut count) = (0, 0);
            loop {
                // A search that starts after `stop` was seen started after the swap.
                let stopping = stop.load(Ordering::SeqCst);
                let g = check_consistent(&set, q.row(0), &gens);
                assert!(g >= last);
                last = g;
                count += 1;
                if stopping && count >= 10 {
                    break;
                }
            }
            (last, count)
        })
    };
    started.wait();
    let inserted = built_rx.recv().unwrap();
    assert_eq!(
        inserted, 2500,
        "all points were inserted before the Built phase"
    );
    // Fully built but not swapped: still the old generation.
    for _ in 0..20 {
        assert_eq!(check_consistent(&set, q.row(0), &gens), 1);
    }
    assert!(!handle.is_finished());
    go_tx.send(()).unwrap();
    match handle.wait().unwrap() {
        RebuildOutcome::Swapped {
            generation: 2,
            backend: BackendKind::Hnsw,
            items: 2500,
            ..
        } => {}
        other => panic!("unexpected outcome {other:?}"),
    }
    assert_eq!(check_consistent(&set, q.row(0), &gens), 2);
    stop.store(true, Ordering::SeqCst);
    let (last, count) = reader.join().unwrap();
    assert_eq!(last, 2);
    assert!(count >= 10);
}

#[test]
fn a_newer_rebuild_supersedes_an_older_one_and_cancel_stops_one() {
    let set = Arc::new(IndexSet::new(config(usize::MAX)));
    let data = gaussian(400, 16, 51);
    // The first rebuild parks in its Built phase until the second has swapped in.
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let first = set.rebuild_in_background(Modality::Image, ids(400, 0), data.clone(), move |p| {
        if p == BuildPhase::Built {
            let _ = go_rx.recv();
        }
    });
    let second = set.rebuild_in_background(Modality::Image, ids(400, 5000), data.clone(), |_| {});
    assert!(matches!(
        second.wait().unwrap(),
        RebuildOutcome::Swapped { generation: 1, .. }
    ));
    // It may already have stopped without reaching Built (its cancel flag was raised).
    let _ = go_tx.send(());
    assert_eq!(first.wait().unwrap(), RebuildOutcome::Superseded);
    let served = set.current(Modality::Image);
    assert_eq!(served.generation, 1);
    assert!(served.index.contains(5000) && !served.index.contains(0));

    let (go_tx, go_rx) = mpsc::channel::<()>();
    let third = set.rebuild_in_background(Modality::Image, ids(400, 9000), data, move |p| {
        if p == BuildPhase::Built {
            let _ = go_rx.recv();
        }
    });
    third.cancel();
    let _ = go_tx.send(());
    assert_eq!(third.wait().unwrap(), RebuildOutcome::Cancelled);
    assert_eq!(set.generation(Modality::Image), 1);
    // The other modality was never touched.
    assert_eq!(set.generation(Modality::Text), 0);
}

#[test]
fn tombstones_hide_ids_until_a_rebuild_drops_them() {
    let set = IndexSet::new(config(usize::MAX));
    let mix = Clustered::new(16, 5, 61);
    let data = mix.sample(300, 62);
    let q = data.row(10).to_vec();
    set.replace(Modality::Image, ids(300, 0), data.clone())
        .unwrap();
    let first = set
        .search(Modality::Image, &q, 3, &Filter::All)
        .unwrap()
        .hits;
    assert_eq!(
        first[0].id, 30,
        "a stored vector is its own nearest neighbour"
    );
    set.tombstone(Modality::Image, [30, 999_999]);
    let hits = set
        .search(Modality::Image, &q, 3, &Filter::All)
        .unwrap()
        .hits;
    assert!(hits.iter().all(|h| h.id != 30));
    assert_eq!(hits[0].id, first[1].id);
    set.restore(Modality::Image, [30]);
    assert_eq!(
        set.search(Modality::Image, &q, 3, &Filter::All)
            .unwrap()
            .hits[0]
            .id,
        30
    );
    set.tombstone(Modality::Image, [30]);
    // Rebuild without item 30: its tombstone (and the unknown id's) are pruned.
    let keep: Vec<usize> = (0..300).filter(|r| *r != 10).collect();
    let keep_ids: Vec<u64> = keep.iter().map(|r| *r as u64 * 3).collect();
    set.replace(Modality::Image, keep_ids, data.select_rows(&keep))
        .unwrap();
    assert!(set.tombstones(Modality::Image).is_empty());
}

/// Exact first, graph later: the exact index serves as soon as its handle returns, the graph
/// upgrade then swaps in an HNSW index over the same items whose answers agree with it, and a
/// collection below the threshold (or already a graph) has nothing to upgrade.
#[test]
fn exact_first_then_the_graph_swaps_in() {
    let set = IndexSet::new(config(100));
    let data = Clustered::new(16, 4, 3).sample(300, 4);
    let item_ids = ids(300, 7);
    let first = set
        .rebuild_exact_first(Modality::Text, item_ids.clone(), data.clone(), |_| {})
        .wait()
        .unwrap();
    assert!(matches!(
        first,
        RebuildOutcome::Swapped {
            backend: BackendKind::Exact,
            items: 300,
            ..
        }
    ));
    let q = data.row(5).to_vec();
    let exact = set.search(Modality::Text, &q, 5, &Filter::All).unwrap();
    let up = set
        .upgrade_to_graph(Modality::Text)
        .expect("300 items >= 100");
    assert!(matches!(
        up.wait().unwrap(),
        RebuildOutcome::Swapped {
            backend: BackendKind::Hnsw,
            items: 300,
            ..
        }
    ));
    assert_eq!(
        set.current(Modality::Text).index.backend_kind(),
        BackendKind::Hnsw
    );
    let graph = set.search(Modality::Text, &q, 5, &Filter::All).unwrap();
    assert!(graph.generation > exact.generation);
    let top =
        |r: &sotalign::index::set::SearchResult| r.hits.iter().map(|h| h.id).collect::<Vec<_>>();
    assert_eq!(top(&graph), top(&exact));
    assert!(
        set.upgrade_to_graph(Modality::Text).is_none(),
        "already a graph"
    );
    set.replace(
        Modality::Image,
        ids(50, 1),
        data.select_rows(&(0..50).collect::<Vec<_>>()),
    )
    .unwrap();
    assert!(
        set.upgrade_to_graph(Modality::Image).is_none(),
        "below the threshold"
    );
}
