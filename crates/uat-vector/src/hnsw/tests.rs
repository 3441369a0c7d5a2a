use super::search::Query;
use super::*;
use crate::distance::normalize;
use proptest::prelude::*;
use rand::{Rng, SeedableRng, rngs::StdRng};
use rayon::prelude::*;
use std::collections::HashSet;
use std::sync::Arc;

fn data(n: usize, dim: usize, seed: u64, metric: Metric) -> Vec<Vec<f32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let centers: Vec<Vec<f32>> = (0..16)
        .map(|_| (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect())
        .collect();
    (0..n)
        .map(|i| {
            let c = &centers[i % centers.len()];
            let mut v: Vec<f32> = c.iter().map(|x| x + rng.random_range(-0.5..0.5)).collect();
            if metric == Metric::Cosine {
                normalize(&mut v);
            }
            v
        })
        .collect()
}

fn build(vs: &[Vec<f32>], metric: Metric, m: usize, efc: usize) -> Hnsw {
    let h = Hnsw::new(metric, vs[0].len(), m, efc);
    vs.par_iter().enumerate().for_each(|(i, v)| {
        h.insert(PointId::Num(i as u64), v.clone().into_boxed_slice(), None);
    });
    h
}

fn recall(h: &Hnsw, queries: &[Vec<f32>], k: usize, ef: usize) -> f64 {
    let all = |i: u32| !h.is_deleted(i);
    let mut hit = 0usize;
    let mut total = 0usize;
    for q in queries {
        let truth: HashSet<u32> = h
            .scan(&Query::exact(q), k, k, 0..h.len() as u32)
            .into_iter()
            .map(|x| x.1)
            .collect();
        let got = h.knn(&h.query(q), k, ef, &all);
        total += truth.len();
        hit += got.iter().filter(|x| truth.contains(&x.1)).count();
    }
    hit as f64 / total.max(1) as f64
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, rng_seed: proptest::test_runner::RngSeed::Fixed(42), ..ProptestConfig::default() })]

    #[test]
    fn recall_matches_brute_force(
        m in 6usize..24,
        ef in 64usize..160,
        metric in prop_oneof![Just(Metric::Cosine), Just(Metric::Dot), Just(Metric::L2)],
        dim in prop_oneof![Just(8usize), Just(17), Just(64)],
        n in 400usize..1500,
        delete_every in prop_oneof![Just(0usize), Just(3), Just(7)],
        seed in 0u64..1000,
    ) {
        let vs = data(n, dim, seed, metric);
        let h = build(&vs, metric, m, 100);
        if delete_every > 0 {
            for i in (0..h.len() as u32).step_by(delete_every) {
                h.tombstone(i);
            }
        }
        let queries = data(40, dim, seed + 1, metric);
        let r = recall(&h, &queries, 10, ef);
        prop_assert!(r >= 0.9, "recall {r} (m={m} ef={ef} {metric:?} dim={dim} n={n} del={delete_every})");
        // Tombstones never come back.
        let all = |i: u32| !h.is_deleted(i);
        for q in &queries {
            for (_, id) in h.knn(&h.query(q), 10, ef, &all) {
                prop_assert!(!h.is_deleted(id));
            }
        }
    }
}

#[test]
fn sq8_walk_with_rescoring_keeps_recall() {
    let vs = data(3000, 48, 5, Metric::Cosine);
    let h = Hnsw::new(Metric::Cosine, 48, 16, 100);
    let _ = h.quant.set(crate::quant::Quantizer::train_sq8(
        vs.iter().map(|v| v.as_slice()),
    ));
    vs.par_iter().enumerate().for_each(|(i, v)| {
        h.insert(PointId::Num(i as u64), v.clone().into_boxed_slice(), None);
    });
    let queries = data(50, 48, 9, Metric::Cosine);
    let r = recall(&h, &queries, 10, 100);
    assert!(r >= 0.9, "sq8 recall {r}");
}

#[test]
fn code_scans_rescore_and_keep_points_inserted_before_the_codes() {
    // An f32 graph (walks stay f32) whose first 500 points predate the
    // quantizer, as after loading an old snapshot: the scan ranks the coded
    // points by code, always rescores the uncoded ones, and returns exact
    // distances.
    let vs = data(3000, 48, 21, Metric::Cosine);
    let mut h = Hnsw::new(Metric::Cosine, 48, 16, 100);
    h.walk_quantized = false;
    for (i, v) in vs.iter().enumerate().take(500) {
        h.insert(PointId::Num(i as u64), v.clone().into_boxed_slice(), None);
    }
    let _ = h.quant.set(crate::quant::Quantizer::train_sq8(
        vs.iter().map(|v| v.as_slice()),
    ));
    for (i, v) in vs.iter().enumerate().skip(500) {
        h.insert(PointId::Num(i as u64), v.clone().into_boxed_slice(), None);
    }
    let queries = data(30, 48, 22, Metric::Cosine);
    let mut hit = 0;
    for q in &queries {
        let truth = h.scan(&Query::exact(q), 10, 10, 0..h.len() as u32);
        let got = h.scan(&h.query(q), 10, 40, 0..h.len() as u32);
        assert_eq!(got.len(), 10);
        for (d, i) in &got {
            let v = h.vector(*i).expect("vector");
            assert!((d - Metric::Cosine.distance(q, v)).abs() < 1e-6);
        }
        hit += got
            .iter()
            .filter(|g| truth.iter().any(|t| t.1 == g.1))
            .count();
        // A query whose nearest point is an uncoded one still finds it.
        let early = &vs[7];
        let got = h.scan(&h.query(early), 1, 40, 0..h.len() as u32);
        assert_eq!(got.first().map(|g| g.1), Some(7));
    }
    assert!(hit as f64 >= 0.97 * 300.0, "code-scan recall {hit}/300");
}

#[test]
fn concurrent_inserts_and_searches() {
    let vs = Arc::new(data(4000, 32, 11, Metric::L2));
    let h = Arc::new(Hnsw::new(Metric::L2, 32, 12, 80));
    let mut handles = Vec::new();
    for t in 0..3 {
        let (h, vs) = (h.clone(), vs.clone());
        handles.push(std::thread::spawn(move || {
            for i in (t..vs.len()).step_by(3) {
                h.insert(
                    PointId::Num(i as u64),
                    vs[i].clone().into_boxed_slice(),
                    None,
                );
            }
        }));
    }
    let searcher = {
        let (h, vs) = (h.clone(), vs.clone());
        std::thread::spawn(move || {
            let all = |_: u32| true;
            let mut found = 0usize;
            // Search until the inserts are done (at least 2,000 times): a
            // fixed count could finish before the first insert lands.
            let mut i = 0;
            while i < 2000 || h.len() < vs.len() {
                let res = h.knn(&h.query(&vs[i % 100]), 5, 32, &all);
                found += res.len();
                i += 1;
            }
            found
        })
    };
    for hd in handles {
        assert!(hd.join().is_ok());
    }
    assert!(searcher.join().is_ok_and(|f| f > 0));
    assert_eq!(h.len(), 4000);
    // Every point is reachable and finds itself.
    let all = |_: u32| true;
    let mut self_hits = 0;
    for id in 0..h.len() as u32 {
        let Some(v) = h.vector(id) else {
            panic!("slot {id} empty")
        };
        let res = h.knn(&h.query(v), 1, 64, &all);
        if res.first().is_some_and(|r| r.0 <= 1e-6) {
            self_hits += 1;
        }
    }
    assert!(self_hits as f64 >= 0.99 * 4000.0, "self hits {self_hits}");
    assert!(recall(&h, &vs[..50], 10, 100) >= 0.95);
}

#[test]
fn small_scans_of_a_coded_graph_are_exact_and_skip_tombstones() {
    // Fewer than twice `ef` points: the scan reads their vectors alone, so
    // its answer is the exact one (a code pass could only approximate it).
    let vs = data(400, 32, 31, Metric::Cosine);
    let h = Hnsw::new(Metric::Cosine, 32, 12, 80);
    let _ = h.quant.set(crate::quant::Quantizer::train_sq8(
        vs.iter().map(|v| v.as_slice()),
    ));
    for (i, v) in vs.iter().enumerate() {
        h.insert(PointId::Num(i as u64), v.clone().into_boxed_slice(), None);
    }
    let subset: Vec<u32> = (0..400).step_by(5).collect(); // 80 points, ef 64
    h.tombstone(subset[3]);
    for q in &data(20, 32, 32, Metric::Cosine) {
        let mut truth: Vec<(f32, u32)> = subset
            .iter()
            .filter(|&&i| !h.is_deleted(i))
            .map(|&i| (Metric::Cosine.distance(q, &vs[i as usize]), i))
            .collect();
        truth.sort_by(|a, b| a.0.total_cmp(&b.0));
        truth.truncate(10);
        let got = h.scan(&h.query(q), 10, 64, subset.iter().copied());
        assert_eq!(
            got.iter().map(|g| g.1).collect::<Vec<_>>(),
            truth.iter().map(|t| t.1).collect::<Vec<_>>()
        );
    }
}
