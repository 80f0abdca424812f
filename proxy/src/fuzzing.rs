//! Entry points for the fuzz targets in `fuzz/` (`make fuzz`): the codec and protocol detection
//! reached without making their modules public. Each function panics when a property the proxy
//! relies on breaks, so libFuzzer reports it; none is used by the proxy itself.
//!
//! Properties, beyond "never panics":
//! - a head is judged the same whole as when it arrives a byte at a time (a prefix of a complete
//!   head is incomplete, never refused nor accepted early);
//! - what the proxy writes on for a request parses again as a request with the same framing (the
//!   next hop cannot read a different message boundary: no smuggling through the re-encoding);
//! - a chunked body ends at the same byte, with the same payload or the same refusal, however it
//!   is split;
//! - protocol detection never changes its mind as more bytes arrive.

use crate::detect::classify;
use crate::h1::{self, Body, Framing, HeadError, RequestOpts, ResponseOpts};

/// Longest input checked at every split point (the check is quadratic).
const SPLIT_MAX: usize = 4096;

fn request(buf: &[u8], out: &mut Vec<u8>) -> Result<Option<(usize, Framing)>, HeadError> {
    let opts = RequestOpts {
        forwarded_for: Some(b"10.0.0.1"),
        log: true,
    };
    out.clear();
    h1::parse_request(buf, &opts, out).map(|r| r.map(|r| (r.head_len, r.body)))
}

/// A request head: whole and byte by byte, and its re-encoding.
pub fn request_head(data: &[u8]) {
    let mut out = Vec::new();
    let whole = request(data, &mut out);
    if let Ok(Some((len, framing))) = whole {
        assert!(len <= data.len());
        let mut again = Vec::new();
        let reparsed = request(&out, &mut again)
            .unwrap_or_else(|e| panic!("re-encoded head refused ({e}): {out:?}"));
        let (len2, framing2) = reparsed.expect("re-encoded head incomplete");
        assert_eq!(len2, out.len(), "re-encoded head has trailing bytes");
        assert_eq!(framing, framing2, "re-encoding changed the framing");
        if data.len() <= SPLIT_MAX {
            for k in 0..len {
                let mut scratch = Vec::new();
                // A prefix may be refused early only for its size or a syntax error the whole
                // head would also have had: it was accepted, so a prefix is incomplete.
                assert!(
                    matches!(request(&data[..k], &mut scratch), Ok(None)),
                    "prefix of {k} bytes of an accepted head was not incomplete"
                );
            }
        }
    }
}

/// A response head, for each kind of request it may answer.
pub fn response_head(data: &[u8]) {
    for (head_method, upgrade, http10_client, keep_alive) in [
        (false, false, false, true),
        (true, false, false, true),
        (false, true, false, true),
        (false, false, true, false),
    ] {
        let opts = ResponseOpts {
            head_method,
            upgrade,
            http10_client,
            keep_alive,
        };
        let mut out = Vec::new();
        if let Ok(Some(r)) = h1::parse_response(data, &opts, &mut out) {
            assert!(r.head_len <= data.len());
            if data.len() <= SPLIT_MAX {
                for k in 0..r.head_len {
                    let mut scratch = Vec::new();
                    assert!(
                        matches!(
                            h1::parse_response(&data[..k], &opts, &mut scratch),
                            Ok(None)
                        ),
                        "prefix of {k} bytes of an accepted response was not incomplete"
                    );
                }
            }
        }
    }
}

/// Feeds `data` to a chunked body in pieces ending at `cuts`, the way the relay does: the bytes
/// a step does not consume are kept for the next. Returns (bytes consumed, decoded payload,
/// done, refusal).
fn chunked_in_pieces(data: &[u8], cuts: &[usize]) -> (usize, Vec<u8>, bool, Option<String>) {
    let mut body = Body::new(Framing::Chunked);
    let mut decoded = Vec::new();
    let mut consumed = 0;
    for &end in cuts.iter().chain(std::iter::once(&data.len())) {
        let end = end.clamp(consumed, data.len());
        loop {
            match body.take(&data[consumed..end], Some(&mut decoded)) {
                Ok((0, _)) => break,
                Ok((n, _)) => consumed += n,
                // Where in the failing step the fault lies is not reported: compare the rest.
                Err(e) => return (0, decoded, false, Some(e.to_string())),
            }
            if body.is_done() {
                return (consumed, decoded, true, None);
            }
        }
    }
    (consumed, decoded, body.is_done(), None)
}

/// A chunked body: whole, split at every byte, and split at every pair of bytes (short inputs).
pub fn chunked(data: &[u8]) {
    let whole = chunked_in_pieces(data, &[]);
    assert!(whole.0 <= data.len());
    if data.len() > SPLIT_MAX {
        return;
    }
    for k in 0..data.len() {
        let split = chunked_in_pieces(data, &[k]);
        assert_eq!(whole, split, "chunked body split at {k}");
    }
    if data.len() <= 64 {
        let bytes: Vec<usize> = (0..data.len()).collect();
        assert_eq!(
            whole,
            chunked_in_pieces(data, &bytes),
            "chunked body byte by byte"
        );
    }
}

/// Protocol detection decides once, whatever follows.
pub fn detect(data: &[u8]) {
    let mut decided = None;
    for k in 0..=data.len().min(256) {
        match (decided, classify(&data[..k])) {
            (None, d) => decided = d,
            (Some(p), Some(q)) => assert_eq!(p, q, "detection changed its mind at {k} bytes"),
            (Some(p), None) => panic!("detection undecided again at {k} bytes after {p:?}"),
        }
    }
}
