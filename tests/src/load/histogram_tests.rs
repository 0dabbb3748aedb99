//! Unit tests of `load/histogram.rs`.
use super::{BUCKETS, Histogram, bucket_of, highest_in};

#[test]
fn buckets_are_contiguous_and_ordered() {
    let mut previous = 0;
    for value in (0..5_000u64).chain([1 << 20, (1 << 20) + 12_345, 1 << 35]) {
        let index = bucket_of(value);
        assert!(index >= previous || value > 5_000, "value {value}");
        assert!(highest_in(index) >= value, "value {value} above its bucket");
        if index > 0 {
            assert!(highest_in(index - 1) < value, "value {value} fits an earlier bucket");
        }
        previous = index;
    }
    assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
}

#[test]
fn small_values_are_exact() {
    let mut h = Histogram::default();
    for v in 1..=100 {
        h.record(v);
    }
    assert_eq!(h.count(), 100);
    assert_eq!(h.quantile_ppm(500_000), 50);
    assert_eq!(h.quantile_ppm(990_000), 99);
    assert_eq!(h.quantile_ppm(999_000), 100);
    assert_eq!(h.quantile_ppm(1_000_000), 100);
    assert_eq!(h.max(), 100);
}

#[test]
fn large_values_stay_within_relative_error() {
    let mut h = Histogram::default();
    for v in 1..=10_000u64 {
        h.record(v * 100);
    }
    for (ppm, exact) in [(500_000, 500_000u64), (990_000, 990_000), (999_000, 999_000)] {
        let got = h.quantile_ppm(ppm);
        assert!(got >= exact && got - exact <= exact / 64, "ppm {ppm}: {got} vs {exact}");
    }
    assert_eq!(h.quantile_ppm(1_000_000), 1_000_000);
}

#[test]
fn merge_adds_counts_and_keeps_max() {
    let (mut a, mut b) = (Histogram::default(), Histogram::default());
    a.record(10);
    b.record(3_000);
    b.record(20);
    a.merge(&b);
    assert_eq!(a.count(), 3);
    assert_eq!(a.max(), 3_000);
    assert_eq!(a.quantile_ppm(500_000), 20);
    assert_eq!(Histogram::default().quantile_ppm(500_000), 0);
}
