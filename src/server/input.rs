//! What a connection has read from its client and not used yet.
//!
//! One buffer per connection carries bytes from one request to the next: whatever arrived
//! after a request's end (a pipelined request, or the start of one) is where the next head is
//! looked for before the socket is read again. Used bytes are skipped, not moved: a read of
//! many small pipelined requests would otherwise shift what follows each one, quadratic work
//! in the buffer's size; they are dropped when the buffer is next read into, and an empty
//! buffer holds no allocation, so an idle kept-alive connection or an open stream keeps none.

use std::io;

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Bytes a read asks for at least, and at most: small enough that a flood of one-byte sockets
/// costs little, large enough that a body arrives in few reads.
const LEAST_READ: usize = 2 * 1024;
const MOST_READ: usize = 64 * 1024;

/// A connection's unused input.
#[derive(Default)]
pub struct Input {
    bytes: Vec<u8>,
    /// Where the unused bytes start: the ones before it have been used.
    used: usize,
}

impl Input {
    /// The bytes read and not used yet.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes[self.used..]
    }

    /// How many bytes are waiting to be used.
    pub fn len(&self) -> usize {
        self.bytes.len() - self.used
    }

    /// The memory the buffer holds.
    pub fn held(&self) -> usize {
        self.bytes.capacity()
    }

    /// Reads what the socket has (as much again as is waiting, within bounds); how many bytes
    /// arrived, 0 when the client closed its side.
    pub async fn read_from(&mut self, socket: &mut TcpStream) -> io::Result<usize> {
        self.drop_used();
        self.bytes
            .reserve(self.bytes.len().clamp(LEAST_READ, MOST_READ));
        socket.read_buf(&mut self.bytes).await
    }

    /// Forgets the first `count` bytes: a head, or a body's framing, that has been used.
    pub fn consume(&mut self, count: usize) {
        if count >= self.len() {
            // Let the allocation go rather than keep an empty buffer for an idle connection.
            *self = Input::default();
        } else {
            self.used += count;
        }
    }

    /// Takes the first `count` bytes out: a body of known length. The body keeps the buffer
    /// and what follows it is copied, since a body is usually all there is.
    pub fn take(&mut self, count: usize) -> Bytes {
        self.drop_used();
        let rest = self.bytes.split_off(count);
        Bytes::from(std::mem::replace(&mut self.bytes, rest))
    }

    /// Moves the unused bytes to the buffer's start, once per read rather than per request.
    fn drop_used(&mut self) {
        self.bytes.drain(..self.used);
        self.used = 0;
    }

    /// Appends `bytes` as if they had been read (for tests of what follows a request).
    #[cfg(test)]
    pub fn push(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn used_bytes_leave_and_the_rest_stays_in_order() {
        let mut input = Input::default();
        input.push(b"GET / HTTP/1.1\r\n\r\nbodyGET /next");
        input.consume(18);
        assert_eq!(input.take(4), Bytes::from_static(b"body"));
        assert_eq!(input.bytes(), b"GET /next");
        input.consume(9);
        assert_eq!(input.len(), 0);
        assert_eq!(
            input.bytes.capacity(),
            0,
            "an empty input holds no allocation"
        );
    }

    #[test]
    fn using_a_pipelined_request_moves_none_of_the_others() {
        let request = b"GET /healthz HTTP/1.1\r\n\r\n";
        let mut input = Input::default();
        input.push(&request.repeat(1000));
        let start = input.bytes().as_ptr();
        input.consume(request.len());
        assert_eq!(input.bytes().as_ptr(), start.wrapping_add(request.len()));
        assert_eq!(input.bytes(), &request.repeat(999)[..]);
        assert_eq!(input.take(request.len()), Bytes::from_static(request));
        assert_eq!(input.len(), 998 * request.len());
    }
}
