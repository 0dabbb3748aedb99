//! A minimal DNS client: one TXT query over UDP and the first TXT string of the answer,
//! enough to ask an unbound generation its name ([`crate::unbound::GEN_NAME`]).

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail, ensure};

use crate::netns::NetNs;

const TYPE_TXT: u16 = 16;
const CLASS_IN: u16 = 1;

/// The query message for `name` (absolute or not), type TXT, class IN, with `id`.
///
/// # Errors
///
/// When a label is empty or longer than 63 bytes.
pub fn txt_query(id: u16, name: &str) -> anyhow::Result<Vec<u8>> {
    let mut msg = Vec::with_capacity(64);
    msg.extend_from_slice(&id.to_be_bytes());
    // Flags: recursion desired; one question, no other records.
    msg.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        ensure!(!label.is_empty() && label.len() <= 63, "bad DNS label {label:?} in {name:?}");
        msg.push(u8::try_from(label.len())?);
        msg.extend_from_slice(label.as_bytes());
    }
    msg.push(0);
    msg.extend_from_slice(&TYPE_TXT.to_be_bytes());
    msg.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(msg)
}

/// The first string of the first TXT record in the answer to query `id`.
///
/// # Errors
///
/// When the message is not that answer, has an error code, or holds no TXT record.
pub fn parse_txt_answer(id: u16, msg: &[u8]) -> anyhow::Result<String> {
    let byte = |i: usize| msg.get(i).copied().ok_or_else(|| anyhow!("DNS answer cut at byte {i}"));
    let word = |i: usize| Ok::<_, anyhow::Error>(u16::from_be_bytes([byte(i)?, byte(i + 1)?]));
    ensure!(word(0)? == id, "answer to another query (id {} instead of {id})", word(0)?);
    ensure!(byte(2)? & 0x80 != 0, "not an answer");
    let rcode = byte(3)? & 0x0f;
    ensure!(rcode == 0, "DNS error code {rcode}");
    let (questions, answers) = (word(4)?, word(6)?);
    let mut at = 12;
    for _ in 0..questions {
        at = skip_name(msg, at)? + 4;
    }
    for _ in 0..answers {
        at = skip_name(msg, at)?;
        let (kind, len) = (word(at)?, usize::from(word(at + 8)?));
        let data = at + 10;
        if kind == TYPE_TXT {
            let n = usize::from(byte(data)?);
            let text = msg.get(data + 1..data + 1 + n).ok_or_else(|| anyhow!("TXT string cut"))?;
            return Ok(String::from_utf8_lossy(text).into_owned());
        }
        at = data + len;
    }
    bail!("no TXT record in the answer")
}

/// The offset just past the (possibly compressed) name at `at`.
fn skip_name(msg: &[u8], mut at: usize) -> anyhow::Result<usize> {
    loop {
        let len = *msg.get(at).ok_or_else(|| anyhow!("DNS name cut at byte {at}"))?;
        match len {
            0 => return Ok(at + 1),
            l if l & 0xc0 == 0xc0 => return Ok(at + 2),
            l => at += 1 + usize::from(l),
        }
    }
}

/// Asks `server` (from inside `ns`) for the TXT record of `name`; one try, 1 s timeout.
///
/// # Errors
///
/// When no valid answer comes within the timeout.
pub fn query_txt(ns: &NetNs, server: SocketAddr, name: &str) -> anyhow::Result<String> {
    let name = name.to_owned();
    ns.spawn_in(move || {
        let socket = UdpSocket::bind(("127.0.0.1", 0)).context("binding a DNS client socket")?;
        socket.set_read_timeout(Some(Duration::from_secs(1)))?;
        socket.connect(server).with_context(|| format!("connecting to {server}"))?;
        let id = u16::try_from(std::process::id() & 0xffff).unwrap_or(1);
        socket.send(&txt_query(id, &name)?).context("sending the DNS query")?;
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).with_context(|| format!("no answer from {server} for {name} TXT"))?;
        parse_txt_answer(id, &buf[..n])
    })
    .join()
    .map_err(|_| anyhow!("the DNS client thread panicked"))?
}

#[cfg(test)]
#[path = "dns_tests.rs"]
mod tests;
