//! Client input quoted back in messages (denials, 400 bodies, logs), cut short.
//!
//! A message names the bad input so the user can find it, but the input can be a megabyte: echoed
//! whole, the sender would make the webhook copy, log and send it back. Everything quoted is cut
//! to [`SHOWN`] bytes with a marker giving the full size, e.g. `trellis.dev/x…(1048576 bytes)`.

use std::borrow::Cow;

/// The most bytes of one piece of input quoted in a message.
pub const SHOWN: usize = 128;

/// `s` as it is, or its first [`SHOWN`] bytes and `…(N bytes)`.
pub fn shown(s: &str) -> Cow<'_, str> {
    shown_max(s, SHOWN)
}

/// `s` quoted like `{:?}`, cut like [`shown`] (the marker outside the quotes).
pub fn quoted(s: &str) -> String {
    match cut(s, SHOWN) {
        None => format!("{s:?}"),
        Some(head) => format!("{head:?}…({} bytes)", s.len()),
    }
}

/// `s` as it is, or its first `max` bytes (on a character boundary) and `…(N bytes)`.
pub fn shown_max(s: &str, max: usize) -> Cow<'_, str> {
    match cut(s, max) {
        None => Cow::Borrowed(s),
        Some(head) => Cow::Owned(format!("{head}…({} bytes)", s.len())),
    }
}

/// The first `max` bytes of `s` (backing off to a character boundary), if `s` is longer.
fn cut(s: &str, max: usize) -> Option<&str> {
    if s.len() <= max {
        return None;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Some(&s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_input_is_shown_whole() {
        assert_eq!(shown("trellis.dev/inject"), "trellis.dev/inject");
        assert_eq!(quoted("ten"), "\"ten\"");
    }

    #[test]
    fn long_input_is_cut_with_its_size() {
        let long = "x".repeat(1 << 20);
        let s = shown(&long);
        assert!(s.ends_with("…(1048576 bytes)"), "{s}");
        assert!(s.len() < SHOWN + 32);
        let q = quoted(&long);
        assert!(
            q.starts_with("\"xxx") && q.ends_with("\"…(1048576 bytes)"),
            "{q}"
        );
        // Never inside a character.
        let wide = "é".repeat(200);
        assert!(shown(&wide).starts_with(&"é".repeat(SHOWN / 2)));
    }
}
