//! Unit tests of `bench.rs`.
use super::Summary;

#[test]
fn nearest_rank_percentiles() {
    let values: Vec<u64> = (1..=200).rev().collect();
    let s = Summary::of(&values);
    assert_eq!((s.count, s.p50, s.p99, s.max), (200, 100, 198, 200));
    let s = Summary::of(&[7]);
    assert_eq!((s.p50, s.p99, s.max), (7, 7, 7));
    assert_eq!(Summary::of(&[]).count, 0);
}
