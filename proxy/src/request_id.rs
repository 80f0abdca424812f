//! `x-request-id` values. Not wire format (the codec only writes what it is given), so the
//! generator lives apart from [`crate::h1`]: a per-thread xorshift, no locks, no syscalls.

use std::cell::Cell;

thread_local! {
    static RNG: Cell<u64> = Cell::new({
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0x5eed);
        h.finish() | 1
    });
}

fn next_u64() -> u64 {
    RNG.with(|r| {
        // xorshift64*: fast, good enough for request ids (not for secrets).
        let mut x = r.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        r.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

/// A random UUID (version 4 layout) for `x-request-id`, hex-encoded by hand.
pub fn generate() -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let a = (next_u64() & !0xf000) | 0x4000;
    let b = (next_u64() & !(0xc << 60)) | (0x8 << 60);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&a.to_be_bytes());
    bytes[8..].copy_from_slice(&b.to_be_bytes());
    let mut out = [b'-'; 36];
    // Where each byte's two digits go: 8-4-4-4-12.
    const AT: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
    for (byte, at) in bytes.iter().zip(AT) {
        out[at] = HEX[(byte >> 4) as usize];
        out[at + 1] = HEX[(byte & 0xf) as usize];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::generate as request_id;

    #[test]
    fn request_ids_are_distinct_version_4_uuids() {
        assert_ne!(request_id(), request_id());
        for _ in 0..100 {
            let id = request_id();
            for (i, &c) in id.iter().enumerate() {
                match i {
                    8 | 13 | 18 | 23 => assert_eq!(c, b'-'),
                    14 => assert_eq!(c, b'4'),
                    19 => assert!(b"89ab".contains(&c)),
                    _ => assert!(c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
                }
            }
        }
    }
}
