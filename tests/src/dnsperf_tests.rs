//! Unit tests of `dnsperf.rs`.
use std::path::Path;
use std::time::Duration;

use super::{DnsperfConfig, parse_report};

const OUTPUT: &str = "\
[Status] Testing complete (time limit)

Statistics:

  Queries sent:         4000
  Queries completed:    3990 (99.75%)
  Queries lost:         10 (0.25%)

  Response codes:       NOERROR 3990 (100.00%)
  Average packet size:  request 31, response 47
  Run time (s):         2.000247
  Queries per second:   1994.753031
";

#[test]
fn the_statistics_block_parses() {
    let r = parse_report(OUTPUT).unwrap();
    assert_eq!((r.sent, r.completed, r.lost, r.interrupted), (4000, 3990, 10, 0));
    let interrupted =
        OUTPUT.replace("  Response codes:", "  Queries interrupted:  7 (0.17%)\n  Response codes:");
    assert_eq!(parse_report(&interrupted).unwrap().interrupted, 7);
    assert!((r.queries_per_second - 1994.753).abs() < 0.001);
    assert!(parse_report("[Status] Sending queries").is_err());
}

#[test]
fn a_fixed_rate_run_passes_q_and_a_maximum_rate_run_does_not() {
    let target = "127.0.0.1:5353".parse().unwrap();
    let fixed = DnsperfConfig::new(target, Some(5000), Duration::from_secs(3), Path::new("/q"));
    let args = fixed.to_args().join(" ");
    assert!(args.contains("-s 127.0.0.1 -p 5353 -d /q -l 3.000 -t 2.000 -c 4"), "{args}");
    assert!(args.ends_with("-Q 5000"), "{args}");
    let max = DnsperfConfig::new(target, None, Duration::from_secs(3), Path::new("/q"));
    assert!(!max.to_args().contains(&"-Q".to_owned()));
}
