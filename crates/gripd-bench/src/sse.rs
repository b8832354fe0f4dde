//! Decoding of the benchmark's SSE events (`data: <seq> <ts_ns>`) out of a held response body.

use anyhow::Result;
use bytes::BytesMut;

use crate::http::{find, Chunked, Head};

/// Turns the raw bytes of a held response into `(seq, send_ts_ns)` events.
#[derive(Debug)]
pub(crate) struct EventReader {
    chunked: Option<Chunked>,
    body: Vec<u8>,
}

impl EventReader {
    pub(crate) fn new(head: &Head) -> Self {
        Self {
            chunked: head.chunked.then(Chunked::default),
            body: Vec::with_capacity(256),
        }
    }

    /// Consumes `input` and calls `f(seq, ts_ns)` for each complete event.
    /// Returns false when the response body has ended (last chunk seen).
    pub(crate) fn feed(
        &mut self,
        input: &mut BytesMut,
        mut f: impl FnMut(u64, u64),
    ) -> Result<bool> {
        match self.chunked.as_mut() {
            Some(dec) => dec.decode(input, &mut self.body)?,
            None => {
                self.body.extend_from_slice(input);
                input.clear();
            }
        }
        let mut start = 0;
        // Bounded by the body length: every iteration moves `start` forward.
        while let Some(end) = find(&self.body[start..], b"\n\n") {
            let event = &self.body[start..start + end];
            for line in event.split(|b| *b == b'\n') {
                if let Some((seq, ts)) = parse_data(line) {
                    f(seq, ts);
                }
            }
            start += end + 2;
        }
        self.body.drain(..start);
        if self.body.len() > 1 << 20 {
            // Not our framing; drop it rather than grow without bound.
            self.body.clear();
        }
        Ok(!self.chunked.as_ref().is_some_and(Chunked::done))
    }
}

fn parse_data(line: &[u8]) -> Option<(u64, u64)> {
    let rest = line.strip_prefix(b"data: ")?;
    let s = std::str::from_utf8(rest).ok()?;
    let mut it = s.split_ascii_whitespace();
    let seq = it.next()?.parse().ok()?;
    let ts = it.next()?.parse().ok()?;
    Some((seq, ts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_from_chunks() -> Result<()> {
        let head = Head {
            status: 200,
            chunked: true,
            content_length: None,
            close: false,
        };
        let mut r = EventReader::new(&head);
        let mut got = Vec::new();
        let mut input = BytesMut::from(&b"5\r\n:ok\n\n\r\n11\r\ndata: 1 100\n\ndata\r\n"[..]);
        assert!(r.feed(&mut input, |s, t| got.push((s, t)))?);
        input.extend_from_slice(b"8\r\n: 2 200\n\r\n1\r\n\n\r\n0\r\n\r\n");
        assert!(!r.feed(&mut input, |s, t| got.push((s, t)))?);
        assert_eq!(got, vec![(1, 100), (2, 200)]);
        Ok(())
    }
}
