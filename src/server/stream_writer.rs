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
    let chunked = request.version() == Version::HTTP_11;
    let Ok(response) = app.oneshot(request).await;
    let (head, body) = response_head(response, chunked);
    let writer = Writer {
        socket: &socket,
        write_timeout,
        chunked: chunked && body.size_hint().exact().is_none(),
    };
    writer.send(head, body).await?;
    socket.shutdown().await
}

/// The response's head in HTTP/1.1 form, and its body.
fn response_head(response: Response, chunked: bool) -> (Bytes, Body) {
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
    match body.size_hint().exact() {
        Some(length) if !parts.headers.contains_key(header::CONTENT_LENGTH) => {
            let _ = write!(head, "content-length: {length}\r\n");
        }
        Some(_) => {}
        None if chunked => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        // An HTTP/1.0 client reads to the close.
        None => {}
    }
    head.extend_from_slice(b"connection: close\r\n\r\n");
    (head.into(), body)
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
        let length: usize = frames.iter().map(Bytes::len).sum();
        let framed = self.chunked && length > 0;
        let mut size_line = [0u8; 20];
        let size_line = if framed {
            let mut cursor = io::Cursor::new(&mut size_line[..]);
            // 20 bytes hold any usize in hex and CRLF.
            let _ = write!(cursor, "{length:x}\r\n");
            let used = cursor.position() as usize;
            &size_line[..used]
        } else {
            &[]
        };
        let chunk_end: &[u8] = if framed { b"\r\n" } else { &[] };
        let last_chunk: &[u8] = if self.chunked && last {
            b"0\r\n\r\n"
        } else {
            &[]
        };
        let parts = [head.as_deref().unwrap_or(&[]), size_line]
            .into_iter()
            .chain(frames.iter().map(|frame| &frame[..]))
            .chain([chunk_end, last_chunk])
            .filter(|part| !part.is_empty());
        let mut slices = [IoSlice::new(&[]); MOST_FRAMES_PER_WRITE + 4];
        let mut count = 0;
        for part in parts {
            slices[count] = IoSlice::new(part);
            count += 1;
        }
        self.write_all(&mut slices[..count]).await
    }

    /// Writes every byte of `slices`, waiting while the socket is full, at most
    /// `write_timeout` at a time.
    async fn write_all(&self, mut slices: &mut [IoSlice<'_>]) -> io::Result<()> {
        while !slices.is_empty() {
            match self.socket.try_write_vectored(slices) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => IoSlice::advance_slices(&mut slices, written),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    let writable = tokio::time::timeout(self.write_timeout, self.socket.writable());
                    writable.await.map_err(|_| {
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
