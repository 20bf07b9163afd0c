//! One client connection: its requests read, handed to the router and answered, one after
//! another, until either side ends it.
//!
//! Each request's head has one deadline, `--header-timeout`, counted from the connection's
//! start for the first request and from the end of the previous answer for the next ones;
//! a body must then keep arriving (no read waits longer than that timeout). Until its whole
//! request has arrived, and again while an answer other than a stream is written, the
//! connection is among the waiting ones ([`super::waiting`]), where it may have to give way. A request the relay cannot take is answered with JSON and the
//! connection closed.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, Version};
use axum::Router;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::body::Chunked;
use super::head::Framing;
use super::head::{self, Head, HeadEnd};
use super::input::Input;
use super::refusal::Refusal;
use super::waiting::{Ticket, Waiting};
use super::writer::{self, Answering};
use crate::config::ConnectionLimits;

/// How long a refused connection is read from after its answer, and how much of it, so the
/// client is not reset before it has read the answer (closing a socket with unread input
/// resets it).
const LINGER: Duration = Duration::from_secs(2);
const MOST_LINGER_BYTES: usize = 8 * 1024 * 1024;

/// What every connection of a server is served with, shared: a stream holds one pointer to
/// it for its whole life, not copies.
pub struct Server {
    /// The routes.
    pub app: Router,
    /// Connection cap, header timeout (also how long a body may stall), write timeout.
    pub limits: ConnectionLimits,
    /// Largest request body any route takes; a larger one is refused (413) unread.
    pub max_body: usize,
    /// The slots, and the connections waiting for a request.
    pub waiting: Arc<Waiting>,
    /// Cancelled at shutdown: waiting connections close, answers say `connection: close`.
    pub shutdown: CancellationToken,
}

/// What arrived on a connection.
enum Incoming {
    /// A whole request, and how to answer it.
    Request(Request<Body>, Answering),
    /// Something the relay cannot take: answered with this, then the connection closes.
    Refused(Refusal),
    /// The client went away or stayed silent past its deadline, the connection gave way, or
    /// the relay is stopping: the connection closes unanswered.
    Gone,
}

impl Server {
    /// Serves `socket`, which holds the waiting place `ticket`, until either side ends it.
    pub async fn serve(self: Arc<Self>, mut socket: TcpStream, mut ticket: Ticket) {
        let mut input = Input::default();
        let mut deadline = Instant::now() + self.limits.header_timeout;
        loop {
            // Boxed: inline, reading's state would size every open stream's task.
            let incoming = self.read(&mut socket, &mut input, &mut ticket, deadline);
            let (request, answering) = match Box::pin(incoming).await {
                Incoming::Request(request, answering) => (request, answering),
                Incoming::Refused(refusal) => {
                    // Boxed like reading, and for the same reason.
                    let refused = self.refuse_with(socket, refusal, Some(&mut ticket));
                    return Box::pin(refused).await;
                }
                Incoming::Gone => return,
            };
            let Some(slot) = ticket.served() else {
                return;
            };
            // Boxed: the router's future is needed only until the answer's head, and inline it
            // would stay in the task for a stream's whole life.
            let Ok(response) = Box::pin(self.app.clone().oneshot(request)).await;
            let answering = Answering {
                keep_alive: answering.keep_alive && !self.shutdown.is_cancelled(),
                ..answering
            };
            let stream = writer::is_stream(&response, answering);
            let write_timeout = self.limits.write_timeout;
            let writing = writer::answer(&socket, response, answering, write_timeout);
            let written = if stream {
                // A stream holds its slot for as long as it runs.
                let written = writing.await;
                ticket = self.waiting.wait_with(slot);
                written
            } else {
                // Any other answer is over once the client has read it, so its connection
                // waits again while it is written: a client that never reads cannot keep its
                // slot for the write timeout, and under pressure gives way like an idle one.
                ticket = self.waiting.wait_with(slot);
                ticket.holds(input.held());
                // Boxed as reading is; biased, so that an answer written at once is not cut.
                tokio::select! {
                    biased;
                    written = Box::pin(writing) => written,
                    () = ticket.given_way() => return,
                }
            };
            match written {
                Ok(true) => {}
                Ok(false) => {
                    let _ = socket.shutdown().await;
                    return;
                }
                Err(error) => {
                    tracing::debug!(%error, "writing an answer failed");
                    return;
                }
            }
            deadline = Instant::now() + self.limits.header_timeout;
        }
    }

    /// Answers a connection accepted while every slot serves a request with 503, once its
    /// request head has arrived: clients (hyper, browsers) take an answer to a request they
    /// have not sent yet for a broken connection.
    pub async fn refuse(self: Arc<Self>, mut socket: TcpStream) {
        let deadline = Instant::now() + self.limits.header_timeout.min(Duration::from_secs(5));
        let mut input = Input::default();
        let refusal = match self
            .read_head(&mut socket, &mut input, None, deadline)
            .await
        {
            Ok(Some(_)) => Refusal::over_capacity(),
            Err(refusal) => refusal,
            Ok(None) => return,
        };
        self.refuse_with(socket, refusal, None).await;
    }

    /// Reads the next request: its head, then its body; the read ends if the connection
    /// holding `ticket` gives way.
    async fn read(
        &self,
        socket: &mut TcpStream,
        input: &mut Input,
        ticket: &mut Ticket,
        deadline: Instant,
    ) -> Incoming {
        let length = match self
            .read_head(socket, input, Some(&mut *ticket), deadline)
            .await
        {
            Ok(Some(length)) => length,
            Ok(None) => return Incoming::Gone,
            Err(refusal) => return Incoming::Refused(refusal),
        };
        let head = match head::parse(&input.bytes()[..length]) {
            Ok(head) => head,
            Err(refusal) => return Incoming::Refused(refusal),
        };
        input.consume(length);
        let Head {
            request,
            body,
            keep_alive,
            expects_continue,
        } = head;
        let answering = Answering {
            http_1_1: request.version() == Version::HTTP_11,
            head_only: request.method() == Method::HEAD,
            keep_alive,
        };
        let body = self
            .read_body(socket, input, body, expects_continue, ticket)
            .await;
        match body {
            Ok(Some(body)) => Incoming::Request(request.map(|()| body), answering),
            Ok(None) => Incoming::Gone,
            Err(refusal) => Incoming::Refused(refusal),
        }
    }

    /// Reads until `input` holds a whole head; its length, or `None` if the connection ends
    /// first (or gives way, when it holds a `ticket`).
    async fn read_head(
        &self,
        socket: &mut TcpStream,
        input: &mut Input,
        mut ticket: Option<&mut Ticket>,
        deadline: Instant,
    ) -> Result<Option<usize>, Refusal> {
        let mut end = HeadEnd::default();
        loop {
            if let Some(length) = end.find(input.bytes())? {
                return Ok(Some(length));
            }
            if !self
                .read_more(socket, input, ticket.as_deref_mut(), deadline, 0)
                .await
            {
                return Ok(None);
            }
        }
    }

    /// Reads a body framed as `framing`, sending `100 Continue` first if the client waits for
    /// it; `None` if the connection ends first.
    async fn read_body(
        &self,
        socket: &mut TcpStream,
        input: &mut Input,
        framing: Framing,
        expects_continue: bool,
        ticket: &mut Ticket,
    ) -> Result<Option<Body>, Refusal> {
        let stall = self.limits.header_timeout;
        let length = match framing {
            Framing::Length(0) => return Ok(Some(Body::empty())),
            Framing::Length(length) if length > self.max_body as u64 => {
                return Err(Refusal::body_too_large())
            }
            // Within `max_body`, which is a usize.
            Framing::Length(length) => Some(length as usize),
            Framing::Chunked => None,
        };
        if expects_continue && input.len() == 0 {
            let write_timeout = self.limits.write_timeout;
            if writer::send_continue(socket, write_timeout).await.is_err() {
                return Ok(None);
            }
        }
        let Some(length) = length else {
            let mut chunked = Chunked::new(self.max_body);
            loop {
                let used = chunked.feed(input.bytes())?;
                input.consume(used);
                if chunked.is_done() {
                    return Ok(Some(Body::from(chunked.into_body())));
                }
                let deadline = Instant::now() + stall;
                let decoded = chunked.held();
                if !self
                    .read_more(socket, input, Some(&mut *ticket), deadline, decoded)
                    .await
                {
                    return Ok(None);
                }
            }
        };
        while input.len() < length {
            let deadline = Instant::now() + stall;
            if !self
                .read_more(socket, input, Some(&mut *ticket), deadline, 0)
                .await
            {
                return Ok(None);
            }
        }
        Ok(Some(Body::from(input.take(length))))
    }

    /// Waits for more bytes until `deadline`, then tells the waiting set what the connection
    /// holds (its input, and `held_elsewhere`: a body decoded so far); false if the client
    /// closed its side or failed, the deadline passed, the connection gave way, or the relay
    /// is stopping.
    async fn read_more(
        &self,
        socket: &mut TcpStream,
        input: &mut Input,
        mut ticket: Option<&mut Ticket>,
        deadline: Instant,
        held_elsewhere: usize,
    ) -> bool {
        let read = tokio::select! {
            read = input.read_from(socket) => matches!(read, Ok(read) if read > 0),
            () = tokio::time::sleep_until(deadline) => false,
            () = given_way(ticket.as_deref_mut()) => false,
            () = self.shutdown.cancelled() => false,
        };
        if let (true, Some(ticket)) = (read, ticket) {
            ticket.holds(input.held() + held_elsewhere);
        }
        read
    }

    /// Answers `refusal` and closes the connection, reading (and dropping) what the client
    /// still sends for a moment so that the answer reaches it.
    async fn refuse_with(&self, socket: TcpStream, refusal: Refusal, ticket: Option<&mut Ticket>) {
        let answering = Answering {
            http_1_1: true,
            head_only: false,
            keep_alive: false,
        };
        let write_timeout = self.limits.write_timeout;
        let answered = writer::answer(&socket, refusal.into_response(), answering, write_timeout);
        if answered.await.is_ok() {
            linger(socket, ticket).await;
        }
    }
}

/// Resolves when the connection holding `ticket` has given way; never without one.
async fn given_way(ticket: Option<&mut Ticket>) {
    match ticket {
        Some(ticket) => ticket.given_way().await,
        None => std::future::pending().await,
    }
}

/// Closes the sending side, then reads what the client still sends, up to [`LINGER`] and
/// [`MOST_LINGER_BYTES`], or until it closes too or the connection gives way.
async fn linger(mut socket: TcpStream, ticket: Option<&mut Ticket>) {
    if socket.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut buffer = vec![0u8; 8 * 1024];
        let mut drained = 0;
        while drained < MOST_LINGER_BYTES {
            match tokio::io::AsyncReadExt::read(&mut socket, &mut buffer).await {
                Ok(read) if read > 0 => drained += read,
                _ => return,
            }
        }
    };
    tokio::select! {
        () = drain => {}
        () = tokio::time::sleep(LINGER) => {}
        () = given_way(ticket) => {}
    }
}
