//! Request bodies: the decoder of chunked ones (the head says how a body ends: [`Framing`](super::head::Framing)).
//!
//! A body is read whole before its request reaches the router: every route that takes one
//! wants all of it (a JSON object) and bounds it far below what a connection may hold, so one
//! bounded read is simpler than streaming it, and the server, the one parser of the
//! connection, is what decides where each request ends.

use bytes::Bytes;

use super::head::MOST_FIELDS;
use super::refusal::Refusal;

/// Longest line of a chunked body's framing: a size with its extensions, or a trailer field.
const MOST_LINE_BYTES: usize = 4 * 1024;

/// A chunked body's decoder (RFC 9112 §7.1), fed the connection's input as it arrives.
pub struct Chunked {
    state: State,
    body: Vec<u8>,
    /// Most bytes of data the body may hold.
    most: usize,
}

/// Where the decoder is in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk, with this many data bytes to go.
    Data(usize),
    /// After a chunk's data, expecting its CRLF.
    DataEnd,
    /// After the last chunk, with this many trailer fields read (they are dropped).
    Trailer(usize),
    /// The body is complete.
    Done,
}

impl Chunked {
    /// A decoder for a body of at most `most` bytes of data.
    pub fn new(most: usize) -> Chunked {
        Chunked {
            state: State::Size,
            body: Vec::new(),
            most,
        }
    }

    /// Decodes what it can of `input`, which starts where the last call stopped; returns how
    /// many bytes it used. Bytes of an incomplete line are left for the next call.
    pub fn feed(&mut self, input: &[u8]) -> Result<usize, Refusal> {
        let mut used = 0;
        loop {
            let rest = &input[used..];
            match self.state {
                State::Size => {
                    let Some(line) = line(rest)? else {
                        return Ok(used);
                    };
                    let size = chunk_size(&rest[..line - 2])?;
                    used += line;
                    self.state = match size {
                        0 => State::Trailer(0),
                        size if size > self.most - self.body.len() => {
                            return Err(Refusal::body_too_large())
                        }
                        size => State::Data(size),
                    };
                }
                State::Data(left) => {
                    if rest.is_empty() {
                        return Ok(used);
                    }
                    let taken = left.min(rest.len());
                    self.body.extend_from_slice(&rest[..taken]);
                    used += taken;
                    self.state = match left - taken {
                        0 => State::DataEnd,
                        left => State::Data(left),
                    };
                }
                State::DataEnd => {
                    if rest.len() < 2 {
                        return Ok(used);
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(Refusal::malformed("a chunk is longer than its size"));
                    }
                    used += 2;
                    self.state = State::Size;
                }
                State::Trailer(fields) => {
                    let Some(line) = line(rest)? else {
                        return Ok(used);
                    };
                    used += line;
                    self.state = match line {
                        2 => State::Done,
                        _ if fields == MOST_FIELDS => {
                            return Err(Refusal::malformed("a chunked body has too many trailers"))
                        }
                        _ => State::Trailer(fields + 1),
                    };
                }
                State::Done => return Ok(used),
            }
        }
    }

    /// Whether the last chunk and the trailer section have been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The memory the data decoded so far holds.
    pub fn held(&self) -> usize {
        self.body.capacity()
    }

    /// The body's data.
    pub fn into_body(self) -> Bytes {
        Bytes::from(self.body)
    }
}

/// The length of the CRLF-terminated line `input` starts with, CRLF included, or `None` if
/// it has not all arrived. A bare CR or LF, or a line too long, is refused.
fn line(input: &[u8]) -> Result<Option<usize>, Refusal> {
    let window = &input[..input.len().min(MOST_LINE_BYTES)];
    match window.iter().position(|&b| b == b'\n') {
        Some(lf) if lf > 0 && input[lf - 1] == b'\r' && !input[..lf - 1].contains(&b'\r') => {
            Ok(Some(lf + 1))
        }
        Some(_) => Err(Refusal::malformed("lines of a chunked body end with CRLF")),
        // A CR may end what has arrived (its LF still to come), nowhere else.
        None if window[..window.len().saturating_sub(1)].contains(&b'\r') => {
            Err(Refusal::malformed("lines of a chunked body end with CRLF"))
        }
        None if input.len() >= MOST_LINE_BYTES => {
            Err(Refusal::malformed("a line of a chunked body is too long"))
        }
        None => Ok(None),
    }
}

/// The size on a chunk-size line: hex digits, then optionally whitespace and `;` extensions
/// (ignored).
fn chunk_size(line: &[u8]) -> Result<usize, Refusal> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let after = &line[digits..];
    let extension = after.trim_ascii_start();
    let valid = (1..=15).contains(&digits) && (after.is_empty() || extension.starts_with(b";"));
    let size = std::str::from_utf8(&line[..digits])
        .ok()
        .filter(|_| valid)
        .and_then(|hex| usize::from_str_radix(hex, 16).ok());
    size.ok_or_else(|| Refusal::malformed("a chunk size is not a hexadecimal number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `step` bytes, as a connection's reads would, carrying
    /// unused bytes over; the body, or the refusal's status.
    fn decode(input: &[u8], step: usize, most: usize) -> Result<Vec<u8>, u16> {
        let mut decoder = Chunked::new(most);
        let mut pending = Vec::new();
        for piece in input.chunks(step) {
            pending.extend_from_slice(piece);
            let used = decoder.feed(&pending).map_err(|r| r.status.as_u16())?;
            pending.drain(..used);
            if decoder.is_done() {
                assert!(pending.is_empty() || input.ends_with(&pending));
                return Ok(decoder.into_body().to_vec());
            }
        }
        Err(0)
    }

    #[test]
    fn chunks_decode_however_they_arrive() {
        let body =
            b"4;ext=1\r\nWiki\r\n5 ; x\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-T: 1\r\n\r\n";
        for step in [1, 2, 5, 64] {
            assert_eq!(
                decode(body, step, 100).unwrap(),
                b"Wikipedia in\r\n\r\nchunks.",
                "{step}"
            );
        }
        // What follows the body (the next request) is not used.
        let mut decoder = Chunked::new(100);
        assert_eq!(decoder.feed(b"1\r\na\r\n0\r\n\r\nGET /"), Ok(11));
        assert!(decoder.is_done());
    }

    #[test]
    fn bad_framing_and_large_bodies_are_refused() {
        let refused = |body: &[u8]| decode(body, 3, 10).unwrap_err();
        assert_eq!(refused(b"zz\r\nab\r\n0\r\n\r\n"), 400);
        assert_eq!(refused(b"+2\r\nab\r\n0\r\n\r\n"), 400);
        assert_eq!(refused(b"2\nab\r\n0\r\n\r\n"), 400);
        assert_eq!(refused(b"2\r\nabc\r\n0\r\n\r\n"), 400);
        assert_eq!(refused(b"2\r\nab\r\n0\r\nX: a\rb\r\n\r\n"), 400);
        assert_eq!(refused(b"ffffffffffffffffff\r\n"), 400);
        // A stray CR is refused even when what has arrived ends in another.
        let stray = Chunked::new(10).feed(b"\r00\r");
        assert_eq!(stray.map_err(|r| r.status.as_u16()), Err(400));
        assert_eq!(refused(b"b\r\n"), 413);
        assert_eq!(refused(b"6\r\nabcdef\r\n6\r\n"), 413);
        let long = format!("1;{}\r\n", "x".repeat(MOST_LINE_BYTES));
        assert_eq!(refused(long.as_bytes()), 400);
        let trailers: String = (0..=MOST_FIELDS).map(|n| format!("T{n}: v\r\n")).collect();
        assert_eq!(refused(format!("0\r\n{trailers}\r\n").as_bytes()), 400);
        assert_eq!(
            decode(b"a\r\n0123456789\r\n0\r\n\r\n", 4, 10)
                .unwrap()
                .len(),
            10
        );
    }

    /// Decodes `input` fed in pieces of `step` bytes: the body and how many bytes it took,
    /// the refusal's status, or 0 if the body is incomplete.
    fn decode_counting(input: &[u8], step: usize) -> Result<(Vec<u8>, usize), u16> {
        let mut decoder = Chunked::new(16);
        let (mut start, mut end) = (0, 0);
        while end < input.len() {
            end = (end + step).min(input.len());
            start += decoder
                .feed(&input[start..end])
                .map_err(|r| r.status.as_u16())?;
            if decoder.is_done() {
                return Ok((decoder.into_body().to_vec(), start));
            }
        }
        Err(0)
    }

    /// Bytes a chunked body is made of, and the ones that break one.
    fn chunked_bytes() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let piece = prop_oneof![
            Just(b"0".to_vec()),
            Just(b"1".to_vec()),
            Just(b"a".to_vec()),
            Just(b"F".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"\r".to_vec()),
            Just(b"\n".to_vec()),
            Just(b";ext=\"v\"".to_vec()),
            Just(b" ".to_vec()),
            Just(b"X-T: v\r\n".to_vec()),
            Just(b"0\r\n\r\n".to_vec()),
            Just(b"3\r\nabc\r\n".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..8),
        ];
        proptest::collection::vec(piece, 0..24).prop_map(|pieces| pieces.concat())
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(2000))]

        /// Whatever the bytes, and however they arrive, a chunked body decodes to the same
        /// body or is refused with the same status, never a panic.
        #[test]
        fn any_bytes_decode_alike_in_any_pieces(input in chunked_bytes(), step in 1usize..40) {
            let whole = decode_counting(&input, input.len().max(1));
            proptest::prop_assert_eq!(whole, decode_counting(&input, step));
        }
    }
}
