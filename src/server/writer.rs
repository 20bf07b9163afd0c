//! Writes answers straight to the socket, without a buffer of the connection's own.
//!
//! Every event of a stream is a frame rendered once and shared by all its recipients
//! (`Bytes`), so the writer hands the kernel those frames themselves: whatever is ready goes
//! out in one `writev`, wrapped in one HTTP/1.1 chunk. While a stream waits, the connection
//! holds its socket, the response body and a few pointers, and reads nothing but the client's
//! close. Every other answer (JSON, the client module, an error) is a head and a body of known
//! length, written the same way, after which the connection may serve its next request.

use std::future::{poll_fn, Future};
use std::io::{self, IoSlice, Write as _};
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use axum::body::{Body, HttpBody};
use axum::http::{header, response, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures::FutureExt;
use tokio::net::TcpStream;

use super::head::has_token;

/// Most frames one write gathers; the rest wait for the next write.
const MOST_FRAMES_PER_WRITE: usize = 32;

/// What the request says about its answer.
#[derive(Debug, Clone, Copy)]
pub struct Answering {
    /// HTTP/1.1 (chunks allowed); else HTTP/1.0, whose bodies of unknown length end with the
    /// connection.
    pub http_1_1: bool,
    /// A `HEAD` request: the head of the answer only.
    pub head_only: bool,
    /// The client will send another request on this connection, and the relay is not
    /// stopping.
    pub keep_alive: bool,
}

/// How an answer's body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delimited {
    /// No body: `HEAD`, 1xx, 204, 304.
    Nothing,
    /// `content-length`.
    Length,
    /// `transfer-encoding: chunked`: a stream to an HTTP/1.1 client.
    Chunks,
    /// The close: a stream to an HTTP/1.0 client.
    Close,
}

/// Writes `response` to `socket`; whether the connection may serve another request after
/// it. A write that makes no progress for `write_timeout` (the client stopped reading) fails.
pub async fn answer(
    socket: &TcpStream,
    response: Response,
    answering: Answering,
    write_timeout: Duration,
) -> io::Result<bool> {
    let (head, body, delimited, keep_alive) = prepare(response, answering);
    let writer = Writer {
        socket,
        write_timeout,
        chunked: delimited == Delimited::Chunks,
        watch_client: !keep_alive,
    };
    match delimited {
        Delimited::Nothing => {
            // Let a stream opened for a `HEAD` go before the head is even written.
            drop(body);
            writer.write(Some(head), &[], false).await?;
        }
        _ => writer.send(head, body).await?,
    }
    Ok(keep_alive)
}

/// The answer's head, its body, how the body is delimited, and whether the connection stays
/// open after it. The response's parts are dropped here, before any write: a stream's task
/// keeps only what it needs across its waits.
fn prepare(response: Response, answering: Answering) -> (Bytes, Body, Delimited, bool) {
    let delimited = delimit(&response, answering);
    let (parts, body) = response.into_parts();
    let length = body.size_hint().exact();
    // A body of unknown length is a stream, whose writer watches the socket for the client's
    // close (and would take the next request for it), so its connection ends with it; a route
    // may also ask for the close with `Connection: close`.
    let keep_alive = answering.keep_alive
        && matches!(delimited, Delimited::Nothing | Delimited::Length)
        && !has_token(&parts.headers, &header::CONNECTION, "close");
    let head = response_head(&parts, delimited, length, keep_alive);
    (head, body, delimited, keep_alive)
}

/// Whether `response` is a stream: a body of unknown length, written as it comes for as long
/// as it lasts, after which the connection closes.
pub fn is_stream(response: &Response, answering: Answering) -> bool {
    matches!(
        delimit(response, answering),
        Delimited::Chunks | Delimited::Close
    )
}

/// How the body of `response` goes on the wire.
fn delimit(response: &Response, answering: Answering) -> Delimited {
    let status = response.status();
    if answering.head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Delimited::Nothing
    } else if response.body().size_hint().exact().is_some() {
        Delimited::Length
    } else if answering.http_1_1 {
        Delimited::Chunks
    } else {
        Delimited::Close
    }
}

/// Writes the interim `100 Continue` that a client sending `Expect: 100-continue` waits for
/// before its body.
pub async fn send_continue(socket: &TcpStream, write_timeout: Duration) -> io::Result<()> {
    let writer = Writer {
        socket,
        write_timeout,
        chunked: false,
        watch_client: false,
    };
    let head = Bytes::from_static(b"HTTP/1.1 100 Continue\r\n\r\n");
    writer.write(Some(head), &[], false).await
}

/// The answer's head in HTTP/1.1 form. The connection's own fields (`connection`, the body's
/// delimitation) are the server's to write, whatever the route set.
fn response_head(
    parts: &response::Parts,
    delimited: Delimited,
    length: Option<u64>,
    keep_alive: bool,
) -> Bytes {
    let mut head = Vec::with_capacity(256);
    let status = parts.status;
    let reason = status.canonical_reason().unwrap_or("");
    // Writes to a Vec cannot fail.
    let _ = write!(head, "HTTP/1.1 {} {reason}\r\n", status.as_str());
    // No length where there is no body by status, or where the body goes in chunks.
    let lengthless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || delimited == Delimited::Chunks;
    for (name, value) in &parts.headers {
        let servers = name == header::CONNECTION
            || name == header::TRANSFER_ENCODING
            || (name == header::CONTENT_LENGTH && lengthless);
        if servers {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    let date = httpdate::fmt_http_date(SystemTime::now());
    let _ = write!(head, "date: {date}\r\n");
    match (delimited, length) {
        (Delimited::Length, Some(length))
            if !parts.headers.contains_key(header::CONTENT_LENGTH) =>
        {
            let _ = write!(head, "content-length: {length}\r\n");
        }
        (Delimited::Chunks, _) => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        _ => {}
    }
    if !keep_alive {
        head.extend_from_slice(b"connection: close\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head.into()
}

/// Writes one answer to a socket.
struct Writer<'a> {
    socket: &'a TcpStream,
    write_timeout: Duration,
    chunked: bool,
    /// Whether a wait for the body's next frame also watches for the client's close (and
    /// ends the answer then). Only an answer after which the connection closes may: the
    /// watch reads the socket, and on a kept-alive connection that is the next request.
    watch_client: bool,
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
                    () = self.client_gone() => return Ok(()),
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

    /// Resolves when the client goes away, if this writer watches for it; never otherwise.
    async fn client_gone(&self) {
        match self.watch_client {
            true => client_gone(self.socket).await,
            false => std::future::pending().await,
        }
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

    /// The I/O slices of everything after the first `written` bytes, as many as `slices`
    /// holds; how many it filled. Empty parts get no slice.
    fn slices_from<'s>(&'s self, mut written: usize, slices: &mut [IoSlice<'s>]) -> usize {
        let mut count = 0;
        for part in self.parts() {
            if count == slices.len() {
                break;
            }
            if written >= part.len() {
                written -= part.len();
                continue;
            }
            slices[count] = IoSlice::new(&part[written..]);
            written = 0;
            count += 1;
        }
        count
    }

    /// One `writev` of everything after the first `written` bytes; how many bytes the socket
    /// took (perhaps fewer than offered: the next call starts from there).
    fn try_write_from(&self, socket: &TcpStream, written: usize) -> io::Result<usize> {
        let mut slices = [IoSlice::new(&[]); MOST_FRAMES_PER_WRITE + 4];
        let count = self.slices_from(written, &mut slices);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn frames() -> Vec<Bytes> {
        [
            "id: 1\nevent: message\ndata: {}\n\n",
            "",
            ":\n",
            "id: 2\ndata: {\"a\":1}\n\n",
        ]
        .into_iter()
        .map(|frame| Bytes::from_static(frame.as_bytes()))
        .collect()
    }

    /// The bytes a whole write must put on the wire.
    fn wire(write: &Write<'_>) -> Vec<u8> {
        write.parts().flatten().copied().collect()
    }

    /// What the slices from `written` on hold, in order.
    fn rest_after(write: &Write<'_>, written: usize) -> Vec<u8> {
        let mut slices = [IoSlice::new(&[]); MOST_FRAMES_PER_WRITE + 4];
        let count = write.slices_from(written, &mut slices);
        slices[..count]
            .iter()
            .flat_map(|slice| slice.iter().copied())
            .collect()
    }

    #[test]
    fn a_chunk_wraps_the_frames_and_the_last_chunk_ends_the_body() {
        let frames = frames();
        let head = Bytes::from_static(b"HTTP/1.1 200 OK\r\n\r\n");
        let write = Write::new(Some(head), &frames, true, true);
        let data = frames.concat();
        let mut expected = b"HTTP/1.1 200 OK\r\n\r\n36\r\n".to_vec();
        assert_eq!(data.len(), 0x36);
        expected.extend_from_slice(&data);
        expected.extend_from_slice(b"\r\n0\r\n\r\n");
        assert_eq!(wire(&write), expected);
        assert_eq!(write.len(), expected.len());
        // No frames: no empty chunk (it would end the body), only the last chunk if asked.
        assert_eq!(wire(&Write::new(None, &[], true, true)), b"0\r\n\r\n");
        assert_eq!(wire(&Write::new(None, &[], true, false)), b"");
        // Unchunked (HTTP/1.0, or a body of known length): the frames alone.
        let plain = Write::new(None, &frames, false, true);
        assert_eq!(wire(&plain), frames.concat());
    }

    #[test]
    fn every_offset_continues_with_the_byte_after_it() {
        let frames = frames();
        let head = Bytes::from_static(b"HTTP/1.1 200 OK\r\n\r\n");
        let write = Write::new(Some(head), &frames, true, true);
        let expected = wire(&write);
        for written in 0..=expected.len() {
            assert_eq!(
                rest_after(&write, written),
                &expected[written..],
                "{written}"
            );
        }
        // A write that ended inside the second frame resumes inside it.
        let inside = 19 + 4 + frames[0].len() + 1;
        let mut slices = [IoSlice::new(&[]); MOST_FRAMES_PER_WRITE + 4];
        let count = write.slices_from(inside, &mut slices);
        assert_eq!(&*slices[0], b"\n");
        assert_eq!(
            count, 4,
            "the rest of `:\\n`, the next frame, the chunk's end, the last chunk"
        );
    }

    #[test]
    fn short_writes_of_any_size_put_every_byte_once_in_order() {
        let frames: Vec<Bytes> = (0..MOST_FRAMES_PER_WRITE)
            .map(|n| Bytes::from(format!("id: {n}\ndata: {}\n\n", "x".repeat(n * 7))))
            .collect();
        let head = Bytes::from_static(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
        let write = Write::new(Some(head), &frames, true, true);
        let expected = wire(&write);
        for taken_per_write in [1, 2, 3, 17, 100, 4096, expected.len()] {
            // A socket that takes at most `taken_per_write` bytes of each writev.
            let mut sent = Vec::new();
            while sent.len() < write.len() {
                let offered = rest_after(&write, sent.len());
                sent.extend_from_slice(&offered[..offered.len().min(taken_per_write)]);
            }
            assert_eq!(sent, expected, "{taken_per_write} bytes per write");
        }
    }

    /// A real socket with small buffers and a slow reader takes each write in pieces; what
    /// arrives is the head and exactly the frames, chunked, then the last chunk.
    #[tokio::test]
    async fn a_stream_through_a_slow_socket_arrives_whole() {
        use tokio::io::AsyncReadExt;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpSocket::new_v4().unwrap();
        client.set_recv_buffer_size(4096).unwrap();
        let connecting = client.connect(listener.local_addr().unwrap());
        let (connected, accepted) = tokio::join!(connecting, listener.accept());
        let mut reader = connected.unwrap();
        let socket = accepted.unwrap().0;
        // A send buffer smaller than one write's 32 frames: every write is taken in pieces.
        socket2::SockRef::from(&socket)
            .set_send_buffer_size(4096)
            .unwrap();
        let frames: Vec<Bytes> = (0..2000)
            .map(|n| Bytes::from(format!("id: {n}\ndata: {}\n\n", "y".repeat(n % 300))))
            .collect();
        let expected: Vec<u8> = frames.concat();
        let body = Body::from_stream(futures::stream::iter(
            frames.into_iter().map(Ok::<_, std::convert::Infallible>),
        ));
        let answering = Answering {
            http_1_1: true,
            head_only: false,
            keep_alive: true,
        };
        let writing = async {
            let timeout = Duration::from_secs(10);
            let kept = answer(&socket, Response::new(body), answering, timeout).await;
            assert!(!kept.unwrap(), "a stream's connection ends with it");
        };
        let reading = async {
            let mut received = Vec::new();
            let mut buffer = [0u8; 1000];
            loop {
                tokio::time::sleep(Duration::from_millis(1)).await;
                match reader.read(&mut buffer).await.unwrap() {
                    0 => break received,
                    read => received.extend_from_slice(&buffer[..read]),
                }
                if received.ends_with(b"\r\n0\r\n\r\n") {
                    break received;
                }
            }
        };
        let ((), received) = tokio::join!(writing, reading);
        let end = received.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&received[..end]);
        assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
        assert!(head.contains("connection: close\r\n"), "{head}");
        let mut decoder = super::super::body::Chunked::new(usize::MAX);
        assert_eq!(
            decoder.feed(&received[end..]).unwrap(),
            received.len() - end
        );
        assert!(decoder.is_done());
        assert_eq!(decoder.into_body(), expected);
    }
}
