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
#[path = "classify_tests.rs"]
mod tests;
