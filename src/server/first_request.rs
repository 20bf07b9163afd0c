//! Reads a connection's first request head, to serve a stream without hyper.
//!
//! hyper keeps an 8 KiB read buffer and an 8 KiB write buffer for the whole life of every
//! connection, and for an idle stream, which only ever writes, those two were three quarters
//! of its memory (BENCHMARKS.md, "Memory per idle stream"). So the relay reads the first head
//! itself: a plain `GET /v1/stream` is answered by [`super::stream_writer`], everything else
//! goes to hyper with the bytes already read put back in front.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Method, Request, Version};
use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The path whose requests are served without hyper.
const STREAM_PATH: &str = "/v1/stream";

/// Heads up to this size may open a lean stream. A bigger one (a browser with many cookies,
/// say) goes to hyper, which takes heads up to 128 KiB.
const MOST_HEAD_BYTES: usize = 16 * 1024;

/// Most header fields of a head parsed here; a head with more goes to hyper, which takes 100.
const MOST_HEADERS: usize = 64;

/// What the first bytes of a connection turned out to be.
pub enum FirstRequest {
    /// A complete `GET /v1/stream` without a body, and nothing after it.
    Stream(Box<Request<Body>>),
    /// Anything else, with the bytes read so far, for hyper to serve.
    Other(Bytes),
    /// The client went away, sent nothing whole within the header timeout, or the relay is
    /// shutting down: the connection ends unanswered (as hyper ends it).
    Gone,
}

/// Reads until the first head is complete or shows it is not a stream's.
pub async fn read(
    socket: &mut TcpStream,
    header_timeout: Duration,
    shutdown: &CancellationToken,
) -> FirstRequest {
    let deadline = Instant::now() + header_timeout;
    let mut buffer = Vec::with_capacity(2048);
    loop {
        let read = tokio::select! {
            read = tokio::time::timeout_at(deadline, socket.read_buf(&mut buffer)) => read,
            _ = shutdown.cancelled() => return FirstRequest::Gone,
        };
        match read {
            Ok(Ok(read)) if read > 0 => {}
            _ => return FirstRequest::Gone,
        }
        match parse(&buffer) {
            Parsed::Stream(request) => return FirstRequest::Stream(request),
            Parsed::Other => return FirstRequest::Other(buffer.into()),
            Parsed::Partial if buffer.len() >= MOST_HEAD_BYTES => {
                return FirstRequest::Other(buffer.into())
            }
            Parsed::Partial => {}
        }
    }
}

/// What the bytes read so far hold.
enum Parsed {
    Stream(Box<Request<Body>>),
    Other,
    Partial,
}

fn parse(bytes: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MOST_HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    match head.parse(bytes) {
        Ok(httparse::Status::Partial) => Parsed::Partial,
        // Anything after the head (a body, a pipelined request) is hyper's to handle.
        Ok(httparse::Status::Complete(length)) if length == bytes.len() => {
            stream_request(&head).map_or(Parsed::Other, |request| Parsed::Stream(Box::new(request)))
        }
        // Malformed or unusual heads get hyper's answers.
        Ok(httparse::Status::Complete(_)) | Err(_) => Parsed::Other,
    }
}

/// The request as axum takes it, if `head` opens a stream and carries no body.
fn stream_request(head: &httparse::Request<'_, '_>) -> Option<Request<Body>> {
    let target = head.path?;
    let path = target.split('?').next()?;
    if head.method? != "GET" || path != STREAM_PATH {
        return None;
    }
    let version = match head.version? {
        1 => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    let mut request = Request::builder()
        .method(Method::GET)
        .uri(target)
        .version(version);
    for field in head.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes()).ok()?;
        let announces_body = name == axum::http::header::TRANSFER_ENCODING
            || (name == axum::http::header::CONTENT_LENGTH && field.value != b"0");
        if announces_body {
            return None;
        }
        request = request.header(name, HeaderValue::from_bytes(field.value).ok()?);
    }
    request.body(Body::empty()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(bytes: &[u8]) -> &'static str {
        match parse(bytes) {
            Parsed::Stream(_) => "stream",
            Parsed::Other => "other",
            Parsed::Partial => "partial",
        }
    }

    #[test]
    fn only_a_whole_bodiless_stream_request_is_taken() {
        let stream = b"GET /v1/stream?token=t HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(kind(stream), "stream");
        assert_eq!(kind(b"GET /v1/stream HTTP/1.0\r\n\r\n"), "stream");
        assert_eq!(kind(&stream[..20]), "partial");
        assert_eq!(kind(b"GET /healthz HTTP/1.1\r\n\r\n"), "other");
        assert_eq!(kind(b"GET /v1/streams HTTP/1.1\r\n\r\n"), "other");
        assert_eq!(kind(b"HEAD /v1/stream HTTP/1.1\r\n\r\n"), "other");
        assert_eq!(kind(b"GET http://x/v1/stream HTTP/1.1\r\n\r\n"), "other");
        assert_eq!(kind(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), "other");
        let pipelined = b"GET /v1/stream HTTP/1.1\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n";
        assert_eq!(kind(pipelined), "other");
        let with_body = b"GET /v1/stream HTTP/1.1\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(kind(with_body), "other");
        let chunked = b"GET /v1/stream HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(kind(chunked), "other");
    }

    #[test]
    fn the_request_keeps_query_version_and_headers() {
        let bytes = b"GET /v1/stream?since_id=7 HTTP/1.0\r\nLast-Event-ID: 9\r\nX-A: b\r\n\r\n";
        let Parsed::Stream(request) = parse(bytes) else {
            panic!("not a stream request");
        };
        assert_eq!(request.uri().query(), Some("since_id=7"));
        assert_eq!(request.version(), Version::HTTP_10);
        assert_eq!(request.headers()["last-event-id"], "9");
        assert_eq!(request.headers()["x-a"], "b");
    }
}
