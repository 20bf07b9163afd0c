//! Request heads: where one ends, found as its bytes arrive, and what it says, parsed once and
//! checked strictly.
//!
//! The end is looked for only in bytes not seen before ([`HeadEnd`]), and the head is parsed
//! (with httparse) once it is whole, so a head trickled in a byte at a time costs time in
//! proportion to its length, not to its square. The checks that decide where the request
//! ends — Content-Length and Transfer-Encoding — are the strict ones of RFC 9112 §6: anything
//! ambiguous is refused rather than guessed, so a proxy in front and the relay cannot read the
//! same bytes as different requests.

use axum::http::header::{CONNECTION, CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, Version};

use super::refusal::Refusal;

/// Most bytes of a request head. Browsers send a few KiB; a token with 100 KB of claims (137 KB
/// once encoded) is still answered by the relay itself, 401 `token_too_long`, as it was when
/// hyper read heads.
pub const MOST_HEAD_BYTES: usize = 160 * 1024;

/// Most header fields of a head (hyper's limit too).
pub const MOST_FIELDS: usize = 100;

/// How a request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Exactly this many bytes (0 when the head names no length).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// The search for the blank line that ends a head, carried across reads.
#[derive(Default)]
pub struct HeadEnd {
    /// Bytes already looked at.
    scanned: usize,
    /// Where the line being read starts.
    line_start: usize,
    /// Lines of the head so far: the request line and the fields.
    lines: usize,
}

impl HeadEnd {
    /// Looks at the bytes of `input` not seen before: `Some(length)` once the head is its
    /// first `length` bytes, `None` while it is incomplete. Every line must end with CRLF.
    pub fn find(&mut self, input: &[u8]) -> Result<Option<usize>, Refusal> {
        while let Some(offset) = input[self.scanned..].iter().position(|&b| b == b'\n') {
            let lf = self.scanned + offset;
            self.scanned = lf + 1;
            if lf == 0 || input[lf - 1] != b'\r' {
                return Err(Refusal::malformed("lines of a request head end with CRLF"));
            }
            let empty = lf - 1 == self.line_start;
            self.line_start = lf + 1;
            if !empty {
                self.lines += 1;
                if self.lines > MOST_FIELDS + 1 {
                    return Err(Refusal::head_too_large(
                        "a request head has at most 100 fields",
                    ));
                }
            } else if self.lines > 0 {
                return match lf + 1 > MOST_HEAD_BYTES {
                    true => Err(too_long()),
                    false => Ok(Some(lf + 1)),
                };
            }
            // An empty line before the request line is skipped (RFC 9112 §2.2).
        }
        self.scanned = input.len();
        match input.len() >= MOST_HEAD_BYTES {
            true => Err(too_long()),
            false => Ok(None),
        }
    }
}

fn too_long() -> Refusal {
    Refusal::head_too_large("a request head is at most 160 KiB")
}

/// A request head, parsed and checked.
#[derive(Debug)]
pub struct Head {
    /// Method, target, version and fields; the body is read next, as [`Head::body`] says.
    pub request: Request<()>,
    /// How the body is delimited.
    pub body: Framing,
    /// Whether the connection may serve another request after this one: HTTP/1.1 without
    /// `Connection: close`. HTTP/1.0 connections close after one answer.
    pub keep_alive: bool,
    /// `Expect: 100-continue` (HTTP/1.1): the client waits for `100 Continue` before its body.
    pub expects_continue: bool,
}

/// Parses a whole head (the bytes [`HeadEnd::find`] delimited).
pub fn parse(bytes: &[u8]) -> Result<Head, Refusal> {
    let mut fields = [httparse::EMPTY_HEADER; MOST_FIELDS];
    let mut parsed = httparse::Request::new(&mut fields);
    match parsed.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(Refusal::malformed("the request head is incomplete"))
        }
        Err(httparse::Error::Version) => return Err(Refusal::version()),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal::head_too_large(
                "a request head has at most 100 fields",
            ))
        }
        Err(error) => {
            return Err(Refusal::malformed(format!(
                "the request head is malformed: {error}"
            )))
        }
    }
    // A complete parse has all three.
    let (Some(method), Some(target), Some(minor)) = (parsed.method, parsed.path, parsed.version)
    else {
        return Err(Refusal::malformed("the request line is incomplete"));
    };
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| Refusal::malformed("the method is not a token"))?;
    // httparse lets bytes above 0x7E through; a URI has none (RFC 3986).
    let uri: Uri = target
        .parse()
        .map_err(|_| Refusal::malformed("the request target is not a valid URI"))?;
    let version = match minor {
        1 => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    let mut headers = HeaderMap::with_capacity(parsed.headers.len());
    for field in parsed.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| Refusal::malformed("a header field name is not a token"))?;
        let value = HeaderValue::from_bytes(field.value)
            .map_err(|_| Refusal::malformed("a header field value has a control character"))?;
        headers.append(name, value);
    }
    let body = framing(&headers, version)?;
    let http_1_1 = version == Version::HTTP_11;
    let keep_alive = http_1_1 && !has_token(&headers, &CONNECTION, "close");
    let expects_continue = http_1_1
        && headers
            .get(EXPECT)
            .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Ok(Head {
        request,
        body,
        keep_alive,
        expects_continue,
    })
}

/// How the body is delimited (RFC 9112 §6.3), refusing every ambiguous case instead of
/// choosing one reading: both Content-Length and Transfer-Encoding, either field twice, a
/// length that is not plain digits, Transfer-Encoding in HTTP/1.0.
fn framing(headers: &HeaderMap, version: Version) -> Result<Framing, Refusal> {
    let mut lengths = headers.get_all(CONTENT_LENGTH).iter();
    let length = match (lengths.next(), lengths.next()) {
        (None, _) => None,
        (Some(value), None) => Some(content_length(value.as_bytes())?),
        (Some(_), Some(_)) => return Err(Refusal::malformed("Content-Length is given twice")),
    };
    let mut codings = headers.get_all(TRANSFER_ENCODING).iter();
    let coding = match (codings.next(), codings.next()) {
        (None, _) => return Ok(Framing::Length(length.unwrap_or(0))),
        (Some(coding), None) => coding,
        (Some(_), Some(_)) => return Err(Refusal::malformed("Transfer-Encoding is given twice")),
    };
    if version == Version::HTTP_10 {
        return Err(Refusal::malformed("HTTP/1.0 has no Transfer-Encoding"));
    }
    if length.is_some() {
        return Err(Refusal::malformed(
            "Content-Length and Transfer-Encoding exclude each other",
        ));
    }
    match coding
        .as_bytes()
        .trim_ascii()
        .eq_ignore_ascii_case(b"chunked")
    {
        true => Ok(Framing::Chunked),
        false => Err(Refusal::transfer_coding()),
    }
}

/// A Content-Length value: 1 to 19 ASCII digits, nothing else (no sign, no list).
fn content_length(value: &[u8]) -> Result<u64, Refusal> {
    let digits = (1..=19).contains(&value.len()) && value.iter().all(u8::is_ascii_digit);
    let length = std::str::from_utf8(value).ok().filter(|_| digits);
    length
        .and_then(|length| length.parse().ok())
        .ok_or_else(|| Refusal::malformed("Content-Length is not a number of bytes"))
}

/// Whether a comma-separated field (such as `Connection`) lists `token`.
pub fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .any(|item| item.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` to a fresh search in pieces of `step` bytes.
    fn end_in_pieces(input: &[u8], step: usize) -> Result<Option<usize>, Refusal> {
        let mut end = HeadEnd::default();
        for stop in (step..input.len()).step_by(step) {
            if let Some(found) = end.find(&input[..stop])? {
                return Ok(Some(found));
            }
        }
        end.find(input)
    }

    #[test]
    fn the_end_is_found_however_the_bytes_arrive() {
        let head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut input = head.to_vec();
        input.extend_from_slice(b"next request");
        for step in [1, 2, 3, 7, 100] {
            assert_eq!(end_in_pieces(&input, step), Ok(Some(head.len())), "{step}");
        }
        assert_eq!(end_in_pieces(&head[..head.len() - 1], 1), Ok(None));
        let leading = b"\r\nGET / HTTP/1.1\r\n\r\n";
        assert_eq!(end_in_pieces(leading, 1), Ok(Some(leading.len())));
    }

    #[test]
    fn bare_line_feeds_many_fields_and_long_heads_are_refused() {
        let status = |input: &[u8]| end_in_pieces(input, 5).unwrap_err().status.as_u16();
        assert_eq!(status(b"GET / HTTP/1.1\nHost: x\n\n"), 400);
        let many: String = (0..101).map(|n| format!("X-{n}: v\r\n")).collect();
        assert_eq!(
            status(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()),
            431
        );
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MOST_HEAD_BYTES));
        assert_eq!(status(long.as_bytes()), 431);
        // 100 fields are fine.
        let hundred: String = (0..100).map(|n| format!("X-{n}: v\r\n")).collect();
        let head = format!("GET / HTTP/1.1\r\n{hundred}\r\n");
        assert!(parse(head.as_bytes()).is_ok());
        assert_eq!(end_in_pieces(head.as_bytes(), 9), Ok(Some(head.len())));
    }

    /// The status a whole head is refused with, or 0 if it is taken.
    fn refused(head: impl AsRef<[u8]>) -> u16 {
        parse(head.as_ref()).map_or_else(|refusal| refusal.status.as_u16(), |_| 0)
    }

    #[test]
    fn heads_are_checked_strictly() {
        assert_eq!(refused("GET /x HTTP/1.1\r\nHost: y\r\n\r\n"), 0);
        assert_eq!(refused("GET /x HTTP/1.1\r\nHost : y\r\n\r\n"), 400);
        assert_eq!(refused("GET /x HTTP/1.1\r\nA: b\r\n c\r\n\r\n"), 400);
        assert_eq!(refused("GET /x HTTP/1.1\r\nA: b\0c\r\n\r\n"), 400);
        assert_eq!(refused(b"GET /\xff HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(refused("GET /x HTTP/1.2\r\n\r\n"), 505);
        assert_eq!(refused("PRI * HTTP/2.0\r\n\r\n"), 505);
        assert_eq!(
            refused("GET /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n"),
            400
        );
        assert_eq!(
            refused("GET /x HTTP/1.1\r\nContent-Length: 1,1\r\n\r\n"),
            400
        );
        assert_eq!(
            refused("GET /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
            400
        );
        assert_eq!(
            refused("GET /x HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n"),
            400
        );
        let both = "POST /x HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(refused(both), 400);
        assert_eq!(
            refused("POST /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            400
        );
        assert_eq!(
            refused("POST /x HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
            501
        );
        let twice =
            "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(refused(twice), 400);
    }

    #[test]
    fn a_head_says_how_its_body_ends_and_whether_the_connection_stays() {
        let head = parse(b"POST /a?b=c HTTP/1.1\r\nContent-Length: 12\r\nX-A: 1\r\n\r\n").unwrap();
        assert_eq!(head.body, Framing::Length(12));
        assert!(head.keep_alive && !head.expects_continue);
        assert_eq!(head.request.uri().query(), Some("b=c"));
        assert_eq!(head.request.headers()["x-a"], "1");
        let chunked = parse(b"POST / HTTP/1.1\r\nTransfer-Encoding: Chunked \r\n\r\n").unwrap();
        assert_eq!(chunked.body, Framing::Chunked);
        let close = parse(b"GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n").unwrap();
        assert!(!close.keep_alive);
        let old = parse(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        assert!(!old.keep_alive && old.request.version() == Version::HTTP_10);
        assert_eq!(old.body, Framing::Length(0));
        let expect = parse(b"POST / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n");
        assert!(expect.unwrap().expects_continue);
    }

    /// Bytes a request head is made of, and the ones that break one.
    fn head_bytes() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let piece = prop_oneof![
            Just(b"GET / HTTP/1.1\r\n".to_vec()),
            Just(b"POST /v1/messages?token=x HTTP/1.0\r\n".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"\r".to_vec()),
            Just(b"\n".to_vec()),
            Just(b"Content-Length: 12\r\n".to_vec()),
            Just(b"Transfer-Encoding: chunked\r\n".to_vec()),
            Just(b"Connection: close\r\n".to_vec()),
            Just(b"Expect: 100-continue\r\n".to_vec()),
            Just(b"Host: x\r\n".to_vec()),
            Just(b": ".to_vec()),
            Just(b" ".to_vec()),
            Just(b"\t".to_vec()),
            Just(b"http://a@b:c/%ff?#".to_vec()),
            Just(b"*".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..8),
        ];
        proptest::collection::vec(piece, 0..24).prop_map(|pieces| pieces.concat())
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(2000))]

        /// Whatever the bytes, and however they arrive, the search for the end agrees with
        /// itself and a delimited head is parsed or refused, never a panic.
        #[test]
        fn any_bytes_are_delimited_alike_and_parsed_or_refused(
            input in head_bytes(),
            step in 1usize..40,
        ) {
            let whole = HeadEnd::default().find(&input).map_err(|r| r.status);
            let pieces = end_in_pieces(&input, step).map_err(|r| r.status);
            proptest::prop_assert_eq!(&whole, &pieces);
            if let Ok(Some(length)) = whole {
                let _ = parse(&input[..length]);
            }
            let _ = parse(&input);
        }
    }
}
