//! Unit tests of `load/classify.rs`.
use super::{Answer, Protocol, Verdict, classify};

fn ok(generation: &str, pid: Option<u32>) -> Verdict<'_> {
    Verdict::Ok(Answer { generation, pid })
}

#[test]
fn line_complete() {
    assert_eq!(classify(Protocol::Line, b"gen=a pid=17\n"), ok("a", Some(17)));
    assert_eq!(classify(Protocol::Line, b"gen=blue\n"), ok("blue", None));
}

#[test]
fn line_short_or_bad() {
    assert!(matches!(classify(Protocol::Line, b""), Verdict::Short(_)));
    assert!(matches!(classify(Protocol::Line, b"gen=a pid=1"), Verdict::Short(_)));
    assert!(matches!(classify(Protocol::Line, b"hello\n"), Verdict::Bad(_)));
    assert!(matches!(classify(Protocol::Line, b"gen= pid=3\n"), Verdict::Bad(_)));
}

#[test]
fn http_complete() {
    let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nConnection: close\r\n\r\ngen=b pid=42\n";
    assert_eq!(classify(Protocol::Http, reply), ok("b", Some(42)));
    let lower = b"HTTP/1.0 200 OK\r\ncontent-length:6\r\n\r\ngen=c\nextra";
    assert_eq!(classify(Protocol::Http, lower), ok("c", None));
    let no_length = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\ngen=d pid=5\n";
    assert_eq!(classify(Protocol::Http, no_length), ok("d", Some(5)));
}

#[test]
fn http_short() {
    let cut_body = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\ngen=b";
    assert!(matches!(classify(Protocol::Http, cut_body), Verdict::Short(_)));
    let cut_head = b"HTTP/1.1 200 OK\r\nContent-Len";
    assert!(matches!(classify(Protocol::Http, cut_head), Verdict::Short(_)));
    assert!(matches!(classify(Protocol::Http, b""), Verdict::Short(_)));
}

#[test]
fn http_wrong_status_or_garbage() {
    let unavailable = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(classify(Protocol::Http, unavailable), Verdict::Bad("HTTP status 503".to_owned()));
    let not_http = b"gen=a pid=1\r\n\r\n";
    assert!(matches!(classify(Protocol::Http, not_http), Verdict::Bad(_)));
    let no_gen = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nhi\n";
    assert!(matches!(classify(Protocol::Http, no_gen), Verdict::Bad(_)));
}
