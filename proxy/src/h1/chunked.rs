//! Chunked transfer coding (RFC 9112 §7.1), followed byte by byte: the proxy learns where a
//! chunked body ends without buffering it, and decodes it only for an HTTP/1.0 client.

use super::head::MAX_HEAD;

/// Why a chunked body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkedError {
    #[error("chunk size missing")]
    SizeMissing,
    /// More than 15 hex digits: over what a `u64` length can safely carry.
    #[error("chunk size too large")]
    SizeTooLarge,
    #[error("invalid chunk size")]
    InvalidSize,
    /// A chunk extension ended by LF alone (a smuggling shape some servers accept).
    #[error("bare LF in chunk extension")]
    BareLfInExtension,
    #[error("chunk size line not ended by CRLF")]
    SizeLineNotCrlf,
    #[error("chunk data not followed by CRLF")]
    DataNotCrlf,
    /// Over [`MAX_HEAD`] bytes of trailers.
    #[error("trailers too large")]
    TrailersTooLarge,
    #[error("chunked body not ended by CRLF")]
    EndNotCrlf,
}

/// Where a chunked body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum ChunkState {
    #[default]
    Size,
    /// After the size: extensions or whitespace, up to CR.
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final CRLF).
    Trailer,
    TrailerLine,
    EndLf,
    Done,
}

/// Follows a chunked body (RFC 9112 §7.1) as its bytes go by.
#[derive(Debug, Default)]
pub struct Chunked {
    state: ChunkState,
    size: u64,
    digits: u8,
    /// Bytes in the current trailer section (bounded like a head).
    trailer_bytes: usize,
}

/// One [`Chunked::scan`] step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scanned {
    /// Input bytes that belong to the body.
    pub consumed: usize,
    /// Payload bytes among them (what the body carries, without the framing).
    pub payload: u64,
    /// The body ended with the last consumed byte.
    pub done: bool,
}

impl Chunked {
    #[cfg(test)]
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Reads body bytes from `input`, stopping at the end of the body. With `decode`, the
    /// payload is appended to it.
    pub fn scan(
        &mut self,
        input: &[u8],
        mut decode: Option<&mut Vec<u8>>,
    ) -> Result<Scanned, ChunkedError> {
        use ChunkState::*;
        let mut i = 0;
        let mut payload = 0u64;
        while i < input.len() && self.state != Done {
            let b = input[i];
            match self.state {
                Size => match (b as char).to_digit(16) {
                    Some(d) => {
                        self.digits += 1;
                        if self.digits > 15 {
                            return Err(ChunkedError::SizeTooLarge);
                        }
                        self.size = self.size * 16 + d as u64;
                    }
                    None if self.digits == 0 => return Err(ChunkedError::SizeMissing),
                    None if b == b'\r' => self.state = SizeLf,
                    None if b == b';' || b == b' ' || b == b'\t' => self.state = Ext,
                    None => return Err(ChunkedError::InvalidSize),
                },
                Ext => match b {
                    b'\r' => self.state = SizeLf,
                    b'\n' => return Err(ChunkedError::BareLfInExtension),
                    _ => {}
                },
                SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkedError::SizeLineNotCrlf);
                    }
                    self.digits = 0;
                    self.state = if self.size == 0 { Trailer } else { Data };
                }
                Data => {
                    let n = (self.size as usize).min(input.len() - i);
                    if let Some(d) = decode.as_deref_mut() {
                        d.extend_from_slice(&input[i..i + n]);
                    }
                    payload += n as u64;
                    self.size -= n as u64;
                    i += n;
                    if self.size == 0 {
                        self.state = DataCr;
                    }
                    continue;
                }
                DataCr => {
                    if b != b'\r' {
                        return Err(ChunkedError::DataNotCrlf);
                    }
                    self.state = DataLf;
                }
                DataLf => {
                    if b != b'\n' {
                        return Err(ChunkedError::DataNotCrlf);
                    }
                    self.state = Size;
                }
                Trailer => {
                    self.state = if b == b'\r' { EndLf } else { TrailerLine };
                }
                TrailerLine => {
                    self.trailer_bytes += 1;
                    if self.trailer_bytes > MAX_HEAD {
                        return Err(ChunkedError::TrailersTooLarge);
                    }
                    if b == b'\n' {
                        self.state = Trailer;
                    }
                }
                EndLf => {
                    if b != b'\n' {
                        return Err(ChunkedError::EndNotCrlf);
                    }
                    self.state = Done;
                }
                Done => unreachable!(),
            }
            i += 1;
        }
        Ok(Scanned {
            consumed: i,
            payload,
            done: self.state == Done,
        })
    }
}
