//! Unit tests of `load.rs`.
use super::LoadReport;

#[test]
fn report_round_trips_through_json() {
    let mut report = LoadReport { requests: 5, ok: 3, resets: 1, timeouts: 1, ..LoadReport::default() };
    report.by_generation.insert("a".to_owned(), 3);
    report.by_pid.insert(42, 3);
    assert_eq!(report.failed(), 2);
    let json = serde_json::to_string(&report).unwrap();
    assert_eq!(serde_json::from_str::<LoadReport>(&json).unwrap(), report);
}
