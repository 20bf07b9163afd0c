//! Answers a `GET /v1/stream` straight on its socket, without a buffer of the connection's own.
//!
//! Every event is a frame rendered once and shared by all its recipients (`Bytes`), so the
//! writer hands the kernel those frames themselves: whatever is ready goes out in one
//! `writev`, wrapped in one HTTP/1.1 chunk. While the stream waits, the connection holds its
//! socket, the response body and a few pointers, and reads nothing but the client's close.
//! The connection ends with the response: the head says `connection: close`.

use std::future::{poll_fn, Future};
use std::io::{self, IoSlice, Write as _};
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use axum::body::{Body, HttpBody};
use axum::http::{header, Request, Version};
use axum::response::Response;
use axum::Router;
use bytes::Bytes;
use futures::FutureExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tower::ServiceExt;

/// Most frames one write gathers; the rest wait for the next write.
const MOST_FRAMES_PER_WRITE: usize = 32;

/// Serves `request` with `app` on `socket`, then closes it. A write that makes no progress for
/// `write_timeout` (the client stopped reading) ends the connection.
pub async fn respond(
    mut socket: TcpStream,
    app: Router,
    request: Request<Body>,
    write_timeout: Duration,
) -> io::Result<()> {
    let http_1_1 = request.version() == Version::HTTP_11;
    // Boxed: the router's future is needed only until the head, and inline it would stay in
    // the connection's task for the stream's whole life.
    let Ok(response) = Box::pin(app.oneshot(request)).await;
    let (head, body, chunked) = response_head(response, http_1_1);
    let writer = Writer {
        socket: &socket,
        write_timeout,
        chunked,
    };
    writer.send(head, body).await?;
    socket.shutdown().await
}

/// The response's head in HTTP/1.1 form, its body, and whether the body goes in chunks (a
/// body of unknown length to an HTTP/1.1 client; an HTTP/1.0 client reads to the close).
fn response_head(response: Response, http_1_1: bool) -> (Bytes, Body, bool) {
    let (parts, body) = response.into_parts();
    let mut head = Vec::with_capacity(256);
    let status = parts.status;
    let reason = status.canonical_reason().unwrap_or("");
    // Writes to a Vec cannot fail.
    let _ = write!(head, "HTTP/1.1 {} {reason}\r\n", status.as_str());
    for (name, value) in &parts.headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    let date = httpdate::fmt_http_date(SystemTime::now());
    let _ = write!(head, "date: {date}\r\n");
    let length = body.size_hint().exact();
    if let Some(length) = length {
        if !parts.headers.contains_key(header::CONTENT_LENGTH) {
            let _ = write!(head, "content-length: {length}\r\n");
        }
    }
    let chunked = http_1_1 && length.is_none();
    if chunked {
        head.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    head.extend_from_slice(b"connection: close\r\n\r\n");
    (head.into(), body, chunked)
}

/// Writes one response to a socket.
struct Writer<'a> {
    socket: &'a TcpStream,
    write_timeout: Duration,
    chunked: bool,
}

impl Writer<'_> {
    /// Writes `head`, then the body's frames as they come, until the body ends or the client
    /// goes away.
    async fn send(&self, head: Bytes, mut body: Body) -> io::Result<()> {
        let mut head = Some(head);
        let mut frames: Vec<Bytes> = Vec::new();
        let mut ended = false;
        while !ended {
            if head.is_none() {
                // Nothing is due: wait for the next frame, or for the client to close.
                tokio::select! {
                    frame = next_frame(&mut body) => match frame? {
                        Some(frame) => frames.push(frame),
                        None => ended = true,
                    },
                    () = client_gone(self.socket) => return Ok(()),
                }
            }
            // Take along whatever else is ready now.
            while !ended && frames.len() < MOST_FRAMES_PER_WRITE {
                match next_frame(&mut body).now_or_never() {
                    Some(frame) => match frame? {
                        Some(frame) => frames.push(frame),
                        None => ended = true,
                    },
                    None => break,
                }
            }
            self.write(head.take(), &frames, ended).await?;
            frames.clear();
        }
        Ok(())
    }

    /// Writes `head` (if any) and `frames` as one chunk, then the last chunk if `last`, in as
    /// few system calls as the socket takes.
    async fn write(&self, head: Option<Bytes>, frames: &[Bytes], last: bool) -> io::Result<()> {
        let write = Write::new(head, frames, self.chunked, last);
        let mut written = 0;
        while written < write.len() {
            match write.try_write_from(self.socket, written) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(more) => written += more,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    // Boxed: a timer inline would size every idle stream's task.
                    let writable = tokio::time::timeout(self.write_timeout, self.socket.writable());
                    Box::pin(writable).await.map_err(|_| {
                        io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the client has not read for the write timeout",
                        )
                    })??;
                }
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }
}

/// The bytes of one write: the head, one chunk around the frames, maybe the last chunk.
///
/// The I/O slices are built on the stack for each attempt, not kept: the writer's future
/// holds what it holds across a wait for every idle stream, so it stays small.
struct Write<'a> {
    head: Option<Bytes>,
    size_line: [u8; 20],
    size_line_len: usize,
    frames: &'a [Bytes],
    chunk_end: &'static [u8],
    last_chunk: &'static [u8],
}

impl<'a> Write<'a> {
    fn new(head: Option<Bytes>, frames: &'a [Bytes], chunked: bool, last: bool) -> Write<'a> {
        let length: usize = frames.iter().map(Bytes::len).sum();
        let framed = chunked && length > 0;
        let mut size_line = [0u8; 20];
        let mut size_line_len = 0;
        if framed {
            let mut cursor = io::Cursor::new(&mut size_line[..]);
            // 20 bytes hold any usize in hex and CRLF.
            let _ = write!(cursor, "{length:x}\r\n");
            size_line_len = cursor.position() as usize;
        }
        Write {
            head,
            size_line,
            size_line_len,
            frames,
            chunk_end: if framed { b"\r\n" } else { b"" },
            last_chunk: if chunked && last { b"0\r\n\r\n" } else { b"" },
        }
    }

    /// The parts in order, empty ones included.
    fn parts(&self) -> impl Iterator<Item = &[u8]> {
        [
            self.head.as_deref().unwrap_or(&[]),
            &self.size_line[..self.size_line_len],
        ]
        .into_iter()
        .chain(self.frames.iter().map(|frame| &frame[..]))
        .chain([self.chunk_end, self.last_chunk])
    }

    fn len(&self) -> usize {
        self.parts().map(<[u8]>::len).sum()
    }

    /// One `writev` of everything after the first `written` bytes (as much as fits in one
    /// call's slices); how many bytes the socket took.
    fn try_write_from(&self, socket: &TcpStream, mut written: usize) -> io::Result<usize> {
        let mut slices = [IoSlice::new(&[]); MOST_FRAMES_PER_WRITE + 4];
        let mut count = 0;
        for part in self.parts() {
            if written >= part.len() {
                written -= part.len();
                continue;
            }
            slices[count] = IoSlice::new(&part[written..]);
            written = 0;
            count += 1;
        }
        socket.try_write_vectored(&slices[..count])
    }
}

/// The body's next data frame, `None` at its end.
fn next_frame(body: &mut Body) -> impl Future<Output = io::Result<Option<Bytes>>> + '_ {
    poll_fn(move |cx| loop {
        return match std::task::ready!(Pin::new(&mut *body).poll_frame(cx)) {
            None => std::task::Poll::Ready(Ok(None)),
            Some(Err(error)) => std::task::Poll::Ready(Err(io::Error::other(error))),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if data.is_empty() => continue,
                Ok(data) => std::task::Poll::Ready(Ok(Some(data))),
                // Trailers: HTTP/1.1 without `TE: trailers` drops them.
                Err(_) => continue,
            },
        };
    })
}

/// Resolves when the client closes the connection, fails, or sends anything: a stream's
/// client only listens, and bytes it sends are not read otherwise.
async fn client_gone(socket: &TcpStream) {
    let mut byte = [0u8; 1];
    loop {
        if socket.readable().await.is_err() {
            return;
        }
        match socket.try_read(&mut byte) {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            _ => return,
        }
    }
}
