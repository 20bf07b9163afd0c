//! Rooms and broadcast: messages to everyone (`*`) with 10,000 streams open, each timed to the
//! last stream's receipt, and the relay's CPU per delivered event beside the CPU the same
//! socket writes take with no relay at all.

use super::*;

/// Broadcasts timed, one after the other.
pub(crate) const BROADCASTS: usize = 100;

/// Payload keys of the broadcasts start here (other phases use `run · KEY_BASE`).
const BROADCAST_KEYS: i64 = 900 * KEY_BASE;

pub(crate) struct Broadcast {
    pub(crate) streams: u32,
    /// Commit (the writer's INSERT returned) → the first stream's receipt, per broadcast (µs).
    pub(crate) first: Percentiles,
    /// Commit → the last stream's receipt, per broadcast (µs).
    pub(crate) last: Percentiles,
    /// The relay's CPU while the broadcasts were delivered.
    pub(crate) cpu: CpuUse,
    pub(crate) deliveries: u64,
    /// The same number of socket writes with no relay: CPU of the writing thread per write (µs).
    pub(crate) floor_us: f64,
}

impl Broadcast {
    /// The relay's CPU seconds over all the broadcasts.
    pub(crate) fn relay_cpu_seconds(&self) -> f64 {
        self.cpu.relay_cores * self.cpu.seconds
    }

    /// The relay's CPU per delivered event (µs).
    pub(crate) fn relay_us_per_event(&self) -> f64 {
        self.relay_cpu_seconds() * 1e6 / self.deliveries as f64
    }
}

/// Sends [`BROADCASTS`] messages to `*`, one at a time, each once every one of `streams`
/// open streams received the previous one.
pub(crate) async fn broadcast_phase(
    ctx: &RelayCtx<'_>,
    heard: &mut mpsc::UnboundedReceiver<Arrival>,
    streams: u32,
) -> Res<Broadcast> {
    progress(format!(
        "broadcast: {BROADCASTS} messages to * with {streams} streams open…"
    ));
    let writer = connect(ctx.url, "pgrelay-bench-broadcast").await?;
    while heard.try_recv().is_ok() {} // nothing older counts
    let (mut firsts, mut lasts) = (Vec::new(), Vec::new());
    let before = CpuSnapshot::take(Some(ctx.relay));
    for sent in 0..BROADCASTS {
        let key = BROADCAST_KEYS + sent as i64;
        writer
            .execute(
                "INSERT INTO pgrelay.messages (participants, payload) \
                 VALUES ('{*}', jsonb_build_object('s', $1::int8, 'x', $2::text))",
                &[&key, &TEXT],
            )
            .await?;
        let committed = Instant::now();
        let (mut got, mut first, mut last) = (0u32, None, committed);
        while got < streams {
            let arrival = tokio::time::timeout(SILENCE, heard.recv())
                .await
                .map_err(|_| format!("broadcast {sent}: {got} of {streams} streams received it"))?
                .ok_or("the subscribers' channel closed")?;
            if arrival.key != key {
                return Err(format!("broadcast {sent}: a delivery of key {}", arrival.key).into());
            }
            got += 1;
            first.get_or_insert(arrival.at);
            last = last.max(arrival.at);
        }
        firsts.push(micros_between(committed, first.unwrap_or(last)));
        lasts.push(micros_between(committed, last));
    }
    let cpu = before.until(&CpuSnapshot::take(Some(ctx.relay)));
    let deliveries = u64::from(streams) * BROADCASTS as u64;
    let floor_us = write_floor(deliveries).await?;
    let broadcast = Broadcast {
        streams,
        first: Percentiles::of(&firsts),
        last: Percentiles::of(&lasts),
        cpu,
        deliveries,
        floor_us,
    };
    progress(format!(
        "  commit → last stream p50/p90/p99/max {}; relay {:.2} CPU s, {:.2} µs per event; \
         socket writes alone {:.2} µs per event",
        broadcast.last.describe(),
        broadcast.relay_cpu_seconds(),
        broadcast.relay_us_per_event(),
        broadcast.floor_us
    ));
    Ok(broadcast)
}

/// `writes` writes of [`SOCKET_FLOOR_FRAME`] bytes, round-robin over `FEW` loopback
/// connections read by tokio tasks, from one thread; returns that thread's CPU per write (µs):
/// what delivering that many events costs the sending side with no relay at all.
async fn write_floor(writes: u64) -> Res<f64> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut readers = Vec::new();
    let mut sockets = Vec::new();
    for _ in 0..FEW {
        let mut reader = TcpStream::connect(addr).await?;
        let (socket, _) = listener.accept()?;
        socket.set_nodelay(true)?;
        sockets.push(socket);
        readers.push(tokio::spawn(async move {
            let mut buffer = vec![0u8; 64 * 1024];
            while let Ok(1..) = reader.read(&mut buffer).await {}
        }));
    }
    let writer = std::thread::spawn(move || -> std::io::Result<f64> {
        use std::io::Write;
        let frame = [b'x'; SOCKET_FLOOR_FRAME];
        let started = thread_cpu_seconds();
        let count = sockets.len();
        for write in 0..writes {
            sockets[write as usize % count].write_all(&frame)?;
        }
        Ok(thread_cpu_seconds() - started)
    });
    let seconds = tokio::task::spawn_blocking(move || writer.join())
        .await?
        .map_err(|_| "the write floor's writer panicked")??;
    for reader in readers {
        reader.abort();
    }
    Ok(seconds * 1e6 / writes as f64)
}
