//! Judging a complete reply (everything read until EOF) as a pure function of its
//! bytes: which generation and pid answered, or why the reply does not count.

use super::Protocol;

/// Who answered a successful request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer<'a> {
    /// The `gen=<NAME>` word of the reply.
    pub generation: &'a str,
    /// The `pid=<PID>` word, if the reply has one.
    pub pid: Option<u32>,
}

/// The verdict on a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// A complete, well-formed reply.
    Ok(Answer<'a>),
    /// The connection ended before the reply was complete.
    Short(&'static str),
    /// A complete reply that is not a success (HTTP status, missing `gen=`).
    Bad(String),
}

/// Judges `reply`, the bytes read until the server closed the connection.
#[must_use]
pub fn classify(protocol: Protocol, reply: &[u8]) -> Verdict<'_> {
    match protocol {
        Protocol::Line => classify_line(reply),
        Protocol::Http => classify_http(reply),
    }
}

/// The line protocol: `gen=<NAME> pid=<PID>\n`.
fn classify_line(reply: &[u8]) -> Verdict<'_> {
    if reply.is_empty() {
        return Verdict::Short("empty reply");
    }
    if !reply.ends_with(b"\n") {
        return Verdict::Short("reply does not end with a newline");
    }
    parse_body(reply)
}

/// HTTP/1.x with status 200 and, if it has a Content-Length, that many body bytes.
fn classify_http(reply: &[u8]) -> Verdict<'_> {
    if reply.is_empty() {
        return Verdict::Short("empty reply");
    }
    let Some(end) = reply.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Verdict::Short("EOF inside the HTTP header");
    };
    let Ok(head) = std::str::from_utf8(&reply[..end]) else {
        return Verdict::Bad("HTTP header is not UTF-8".to_owned());
    };
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut words = status_line.split(' ');
    let (version, status) = (words.next().unwrap_or_default(), words.next());
    if !version.starts_with("HTTP/1.") {
        return Verdict::Bad(format!("malformed status line {status_line:?}"));
    }
    match status {
        Some("200") => {}
        Some(code) => return Verdict::Bad(format!("HTTP status {code}")),
        None => return Verdict::Bad(format!("malformed status line {status_line:?}")),
    }
    let mut body = &reply[end + 4..];
    let length = lines.find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim().eq_ignore_ascii_case("content-length").then(|| value.trim())
    });
    if let Some(length) = length {
        let Ok(length) = length.parse::<usize>() else {
            return Verdict::Bad(format!("malformed Content-Length {length:?}"));
        };
        if body.len() < length {
            return Verdict::Short("EOF before Content-Length body bytes");
        }
        body = &body[..length];
    }
    parse_body(body)
}

/// Finds the `gen=` and `pid=` words of a body.
fn parse_body(body: &[u8]) -> Verdict<'_> {
    let Ok(text) = std::str::from_utf8(body) else {
        return Verdict::Bad("reply body is not UTF-8".to_owned());
    };
    let mut words = text.split_ascii_whitespace();
    let generation = words.clone().find_map(|w| w.strip_prefix("gen=")).filter(|g| !g.is_empty());
    let Some(generation) = generation else {
        return Verdict::Bad(format!("no gen= in reply {:?}", truncate(text, 80)));
    };
    let pid = words.find_map(|w| w.strip_prefix("pid=")).and_then(|p| p.parse().ok());
    Verdict::Ok(Answer { generation, pid })
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

#[cfg(test)]
mod tests {
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
}
