//! The SSE client.

use super::*;

/// HTTP/1.1 chunked transfer coding, then the event stream inside it.
pub(crate) struct SseDecoder {
    pub(crate) pending: Vec<u8>,
    pub(crate) state: Chunk,
    pub(crate) parser: SseParser,
}

#[derive(Clone, Copy)]
pub(crate) enum Chunk {
    /// Reading a chunk-size line.
    Size,
    /// Inside a chunk, this many bytes to go.
    Data(usize),
    /// The CRLF after a chunk's data.
    End,
    /// The last chunk has been read.
    Done,
}

impl SseDecoder {
    pub(crate) fn new() -> SseDecoder {
        SseDecoder {
            pending: Vec::new(),
            state: Chunk::Size,
            parser: SseParser::new(),
        }
    }

    /// Decodes `bytes` and appends the completed SSE items to `items`.
    pub(crate) fn feed(&mut self, bytes: &[u8], items: &mut Vec<SseItem>) -> Result<(), String> {
        self.pending.extend_from_slice(bytes);
        let mut at = 0;
        loop {
            match self.state {
                Chunk::Size => {
                    let Some(end) = find(&self.pending[at..], b"\r\n") else {
                        break;
                    };
                    let line = &self.pending[at..at + end];
                    let digits = line.split(|&b| b == b';').next().unwrap_or_default();
                    let size = std::str::from_utf8(digits)
                        .ok()
                        .and_then(|hex| usize::from_str_radix(hex.trim(), 16).ok())
                        .ok_or_else(|| {
                            format!("bad chunk size {:?}", String::from_utf8_lossy(line))
                        })?;
                    at += end + 2;
                    self.state = if size == 0 {
                        Chunk::Done
                    } else {
                        Chunk::Data(size)
                    };
                }
                Chunk::Data(left) => {
                    let available = self.pending.len() - at;
                    if available == 0 {
                        break;
                    }
                    let take = left.min(available);
                    items.extend(self.parser.feed(&self.pending[at..at + take]));
                    at += take;
                    self.state = if take == left {
                        Chunk::End
                    } else {
                        Chunk::Data(left - take)
                    };
                }
                Chunk::End => {
                    if self.pending.len() - at < 2 {
                        break;
                    }
                    if &self.pending[at..at + 2] != b"\r\n" {
                        return Err("a chunk does not end with CRLF".into());
                    }
                    at += 2;
                    self.state = Chunk::Size;
                }
                Chunk::Done => break,
            }
        }
        self.pending.drain(..at);
        Ok(())
    }
}

/// A stream past its response head and opening block.
pub(crate) struct OpenStream {
    pub(crate) socket: TcpStream,
    pub(crate) decoder: SseDecoder,
    /// Items parsed after the opening block, not yet handled.
    pub(crate) items: Vec<SseItem>,
    /// The opening block's `id:`: the stream's position.
    pub(crate) position: i64,
}

/// `GET /v1/stream?token=…[&since_id=…]`, read up to and including the opening block.
pub(crate) async fn open_stream(
    addr: SocketAddr,
    token: &str,
    since: Option<i64>,
) -> Res<OpenStream> {
    read_opening(TcpStream::connect(addr).await?, token, since).await
}

/// [`open_stream`] from the loopback address `source`: one source address runs out of
/// ephemeral ports near 28,000 connections.
#[allow(unsafe_code)] // setsockopt: neither std, tokio nor socket2 sets IP_BIND_ADDRESS_NO_PORT
pub(crate) async fn open_stream_from(
    source: IpAddr,
    addr: SocketAddr,
    token: &str,
) -> Res<OpenStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    // Leave the port to `connect`, which needs it unique per destination only: a port picked
    // by `bind` must be free for every destination, and finding one slows down as they fill.
    let yes: libc::c_int = 1;
    // SAFETY: the option value is a c_int that outlives the call, and the descriptor is open.
    let set = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&yes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if set != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    socket.bind(SocketAddr::new(source, 0))?;
    read_opening(socket.connect(addr).await?, token, None).await
}

/// Sends the stream request on `socket` and reads up to and including the opening block.
async fn read_opening(socket: TcpStream, token: &str, since: Option<i64>) -> Res<OpenStream> {
    let since = since
        .map(|id| format!("&since_id={id}"))
        .unwrap_or_default();
    let request = format!("GET /v1/stream?token={token}{since} HTTP/1.1\r\nHost: x\r\n\r\n");
    send_stream_request(socket, &request).await
}

/// Sends `request` (a whole `GET /v1/stream` head) on `socket` and reads up to and including
/// the opening block.
pub(crate) async fn send_stream_request(mut socket: TcpStream, request: &str) -> Res<OpenStream> {
    socket.set_nodelay(true)?;
    socket.write_all(request.as_bytes()).await?;
    let mut received = Vec::with_capacity(1024);
    let mut buffer = [0u8; 4096];
    let body_start = loop {
        let read = socket.read(&mut buffer).await?;
        if read == 0 {
            return Err("the relay closed the connection before answering".into());
        }
        received.extend_from_slice(&buffer[..read]);
        if let Some(end) = find(&received, b"\r\n\r\n") {
            break end + 4;
        }
        if received.len() > 16 * 1024 {
            return Err("the response head is too long".into());
        }
    };
    let head = String::from_utf8_lossy(&received[..body_start]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") {
        let answer = String::from_utf8_lossy(&received);
        return Err(format!("the stream was refused: {answer}").into());
    }
    if !head
        .lines()
        .any(|line| line.trim() == "transfer-encoding: chunked")
    {
        return Err("the stream is not chunked".into());
    }
    let mut decoder = SseDecoder::new();
    let mut items = Vec::new();
    decoder.feed(&received[body_start..], &mut items)?;
    loop {
        if let Some(index) = items
            .iter()
            .position(|item| matches!(item, SseItem::Event(_)))
        {
            let SseItem::Event(opening) = items.remove(index) else {
                unreachable!("position found an event");
            };
            items.drain(..index);
            if !opening.is_opening() || opening.retry.is_none() {
                return Err(format!("unexpected opening block {opening:?}").into());
            }
            let position = event_id(&opening).ok_or("the opening block has no id")?;
            return Ok(OpenStream {
                socket,
                decoder,
                items,
                position,
            });
        }
        let read = socket.read(&mut buffer).await?;
        if read == 0 {
            return Err("the stream ended before its opening block".into());
        }
        decoder.feed(&buffer[..read], &mut items)?;
    }
}

pub(crate) fn event_id(event: &SseEvent) -> Option<i64> {
    event.id.as_deref().and_then(|id| id.parse().ok())
}

/// The benchmark key in a message event's data (`…"payload":{"s": KEY, …}…`).
pub(crate) fn payload_key(data: &str) -> Option<i64> {
    let payload = &data[data.find("\"payload\"")?..];
    json_int_after(payload, "\"s\"")
}

/// One delivery: a message (by key) reached a participant's stream at `at`.
pub(crate) struct Arrival {
    pub(crate) key: i64,
    pub(crate) participant: u32,
    pub(crate) at: Instant,
}

/// Where the subscribers report.
pub(crate) struct Hub {
    pub(crate) arrivals: mpsc::UnboundedSender<Arrival>,
    /// Streams that ended on their own.
    pub(crate) closed: AtomicUsize,
    /// Signal events (presence) seen.
    pub(crate) signals: AtomicU64,
    pub(crate) problems: Mutex<Vec<String>>,
}

impl Hub {
    /// A hub, and the channel its subscribers report their arrivals on.
    pub(crate) fn start() -> (Arc<Hub>, mpsc::UnboundedReceiver<Arrival>) {
        let (arrivals, heard) = mpsc::unbounded_channel();
        let hub = Hub {
            arrivals,
            closed: AtomicUsize::new(0),
            signals: AtomicU64::new(0),
            problems: Mutex::new(Vec::new()),
        };
        (Arc::new(hub), heard)
    }

    pub(crate) fn problem(&self, problem: String) {
        let mut problems = self.problems.lock().unwrap();
        if problems.len() < 20 {
            problems.push(problem);
        }
    }

    pub(crate) fn take_problems(&self) -> Vec<String> {
        std::mem::take(&mut *self.problems.lock().unwrap())
    }
}

/// Reads one subscriber's stream until it ends or is aborted, reporting every message event.
pub(crate) async fn read_live(mut stream: OpenStream, participant: u32, hub: Arc<Hub>) {
    let mut last_id = stream.position;
    let mut buffer = vec![0u8; 4096];
    let mut items = std::mem::take(&mut stream.items);
    let mut at = Instant::now();
    loop {
        for item in items.drain(..) {
            let SseItem::Event(event) = item else {
                continue; // keep-alive comment
            };
            let Some(data) = event.data.as_deref().filter(|_| !event.is_opening()) else {
                continue; // the opening block
            };
            let Some(id) = event_id(&event) else {
                hub.signals.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            if id <= last_id {
                hub.problem(format!(
                    "participant {participant}: id {id} after id {last_id}"
                ));
            }
            last_id = id;
            match payload_key(data) {
                Some(key) if event.event.as_deref() == Some("message") => {
                    let _ = hub.arrivals.send(Arrival {
                        key,
                        participant,
                        at,
                    });
                }
                _ => hub.problem(format!("participant {participant}: unexpected {event:?}")),
            }
        }
        match stream.socket.read(&mut buffer).await {
            Ok(0) | Err(_) => {
                hub.closed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(read) => {
                at = Instant::now();
                if let Err(error) = stream.decoder.feed(&buffer[..read], &mut items) {
                    hub.problem(format!("participant {participant}: {error}"));
                    hub.closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    }
}

/// The open subscribers, by participant number; aborting a reader closes its socket.
#[derive(Default)]
pub(crate) struct Subscribers {
    pub(crate) open: Vec<(u32, AbortHandle)>,
}

impl Subscribers {
    /// Opens a stream for each participant in `range` and starts reading it; returns how long
    /// opening them all took (every stream had sent its opening block).
    pub(crate) async fn open(
        &mut self,
        addr: SocketAddr,
        keys: &Keys,
        names: &Names,
        range: Range<u32>,
        hub: &Arc<Hub>,
    ) -> Res<Duration> {
        self.open_from(None, addr, keys, names, range, hub).await
    }

    /// [`Subscribers::open`], from the loopback address `source` when given.
    pub(crate) async fn open_from(
        &mut self,
        source: Option<IpAddr>,
        addr: SocketAddr,
        keys: &Keys,
        names: &Names,
        range: Range<u32>,
        hub: &Arc<Hub>,
    ) -> Res<Duration> {
        let started = Instant::now();
        let opened: Vec<(u32, AbortHandle)> = futures::stream::iter(range)
            .map(|index| {
                let token = keys.mint(&names[index as usize], Duration::from_secs(7200), &[]);
                let hub = Arc::clone(hub);
                async move {
                    let stream = match source {
                        Some(source) => open_stream_from(source, addr, &token).await,
                        None => open_stream(addr, &token, None).await,
                    }
                    .map_err(|error| format!("subscriber {index}: {error}"))?;
                    let reader = tokio::spawn(read_live(stream, index, hub));
                    Ok::<_, String>((index, reader.abort_handle()))
                }
            })
            .buffer_unordered(OPEN_CONCURRENCY)
            .try_collect()
            .await?;
        self.open.extend(opened);
        Ok(started.elapsed())
    }

    /// Closes every stream of participant number `first` and above.
    pub(crate) fn close_from(&mut self, first: u32) {
        self.open.retain(|(index, reader)| {
            let keep = *index < first;
            if !keep {
                reader.abort();
            }
            keep
        });
    }
}

impl Drop for Subscribers {
    fn drop(&mut self) {
        self.close_from(0);
    }
}
