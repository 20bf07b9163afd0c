//! HTTP/1.1 spoken by hand on a raw socket, for tests of what the relay does with bytes no
//! well-behaved client sends: malformed heads, pipelining, trickled or abandoned requests.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{address, PATIENCE};

/// A connection to `address` whose receive buffer holds 4 KiB: a client that reads slowly, or
/// never, fills it at once and leaves the relay's writes stalled.
pub async fn slow_reader(address: std::net::SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(address).await.unwrap()
}

/// One connection to the relay and the bytes it answered that no answer has used yet.
pub struct RawConnection {
    pub socket: TcpStream,
    received: Vec<u8>,
}

/// One answer read off a [`RawConnection`].
#[derive(Debug)]
pub struct RawAnswer {
    pub status: u16,
    /// The head after the status line, lowercased, one field a line.
    pub head: String,
    pub body: Vec<u8>,
}

impl RawAnswer {
    /// The value of header `name` (lowercase), if the answer has it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (field, value) = line.split_once(':')?;
            (field == name).then(|| value.trim())
        })
    }

    /// Checks the answer is `status` with a JSON body `{"error": code, "message": <text>}`.
    pub fn assert_json_error(&self, status: u16, code: &str, context: &str) {
        let body = String::from_utf8_lossy(&self.body);
        assert_eq!(self.status, status, "{context}: {body}");
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{context}: {}",
            self.head
        );
        let json: Value = serde_json::from_str(&body)
            .unwrap_or_else(|error| panic!("{context}: body is not JSON ({error}): {body:?}"));
        assert_eq!(json["error"], code, "{context}: {json}");
        assert!(
            json["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{context}: {json}"
        );
    }
}

impl RawConnection {
    /// Connects to the relay at `base` (`http://host:port`).
    pub async fn open(base: &str) -> RawConnection {
        RawConnection {
            socket: TcpStream::connect(address(base)).await.unwrap(),
            received: Vec::new(),
        }
    }

    /// Sends `bytes` in one write. Errors are ignored: the relay may close a connection it
    /// refuses before it has read everything.
    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = self.socket.write_all(bytes).await;
    }

    /// Reads more bytes; false when the connection closed or `deadline` passed.
    async fn receive(&mut self, deadline: Instant) -> bool {
        let mut buffer = [0u8; 16 * 1024];
        match tokio::time::timeout_at(deadline, self.socket.read(&mut buffer)).await {
            Ok(Ok(read)) if read > 0 => {
                self.received.extend_from_slice(&buffer[..read]);
                true
            }
            _ => false,
        }
    }

    /// Reads the next answer: its head, then a body of its `content-length` (none for a
    /// `100 Continue` or when `bodiless`, as after `HEAD`), or else up to the close.
    pub async fn answer(&mut self, bodiless: bool) -> RawAnswer {
        let deadline = Instant::now() + PATIENCE;
        let end = loop {
            if let Some(end) = self.received.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            assert!(
                self.receive(deadline).await,
                "no answer head; received {:?}",
                String::from_utf8_lossy(&self.received)
            );
        };
        let head = String::from_utf8_lossy(&self.received[..end]).to_ascii_lowercase();
        self.received.drain(..end + 4);
        let (status_line, head) = head.split_once("\r\n").unwrap_or((&head, ""));
        let status: u16 = status_line
            .strip_prefix("http/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not a status line: {status_line:?}"));
        let mut answer = RawAnswer {
            status,
            head: head.replace("\r\n", "\n"),
            body: Vec::new(),
        };
        if bodiless || status < 200 {
            return answer;
        }
        let length = answer.header("content-length").map(|l| l.parse().unwrap());
        match length {
            Some(length) => {
                while self.received.len() < length {
                    assert!(self.receive(deadline).await, "the body ended early");
                }
                answer.body = self.received.drain(..length).collect();
            }
            None => {
                while self.receive(deadline).await {}
                answer.body = std::mem::take(&mut self.received);
            }
        }
        answer
    }

    /// How long until the relay closes the connection (reads are discarded), or `None` if it
    /// is still open after `wait`. A reset counts as a close.
    pub async fn closed_within(&mut self, wait: Duration) -> Option<Duration> {
        let started = Instant::now();
        let mut buffer = [0u8; 4096];
        loop {
            match tokio::time::timeout_at(started + wait, self.socket.read(&mut buffer)).await {
                Err(_) => return None,
                Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
                Ok(Ok(_)) => continue,
            }
        }
    }
}
