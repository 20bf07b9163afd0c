//! The one LISTEN connection per instance, and the dispatch of what it hears.
//!
//! A notification is only a wake-up: any login of the database may NOTIFY on any channel, so
//! nothing in a notification is trusted, and any login may LISTEN, so nothing private travels
//! in one. On a wake-up the dispatcher makes one pass, with its own role: it
//! numbers the messages and signals writers have committed since (`pgrelay.sequence()`: rows
//! are stored pending and get their ids from the relays, in commit order, in transactions no
//! writer can hold open), then reads every message and signal after the last ones it read (ids
//! are commit-ordered, so that range is exact), in one round trip per batch of wake-ups, and
//! hands the rows that local streams want to the registry. A forged wake-up costs one pass that
//! finds nothing; a missing or reordered one delays nothing that the next wake-up or heartbeat
//! does not read. Every instance numbers; the order lock makes them take turns, and a pass
//! that finds nothing pending takes no lock.
//!
//! The pass's statements are prepared on the LISTEN connection itself: the connection is a
//! session of its own, so they survive, and the database neither parses and plans them for
//! every batch nor wakes a second backend. A read that fails ends the session like any other
//! connection failure, and the reconnect's catch-up fills the gap. Numbering that fails (a
//! peer relay stuck holding the order lock, a role without the grant) is retried at every
//! wake-up, and on its own soon after (then less often, up to the heartbeat or 10 s), since the
//! lock's holder may let go without numbering and no commit may follow; [`Health`] reports how
//! long numbering has lagged.
//!
//! Two tasks share the work so the socket is always read: the connection driver raises a flag
//! for every notification without ever waiting (a listener that stops reading fills
//! PostgreSQL's notify queue, and then every notifying commit in the cluster fails), and the
//! dispatcher does the queries. Wake-ups say next to nothing, so the flag coalesces them: a
//! stranger flooding the channel costs the relay one fetch per round, never a growing queue.
//! The wake-up a peer's numbering sends names the highest ids it numbered, and a dispatcher
//! whose last pass numbered and read that far skips it (it had waited for that peer's order
//! lock and read those rows in the pass the writer's own wake-up caused). A forged one can
//! cause a pass, never prevent one: any other wake-up, or a failed numbering, still makes one.
//!
//! When the connection is lost, notifications committed meanwhile are gone for good. After
//! reconnecting and LISTENing again, every open stream is told to catch up from its own cursor
//! before it takes another live message, so the gap is filled from the table exactly.
//!
//! A connection can also fail silently: a half-open TCP connection, a serverless database that
//! suspended it, or a transaction-mode pooler where LISTEN "succeeds" and nothing ever arrives.
//! So at every `--heartbeat` interval the relay sends a heartbeat NOTIFY from a pool session
//! and treats the LISTEN connection as lost when it has not heard it by the next interval. The
//! relay reports ready only after the first heartbeat has made the round trip.

mod heartbeat;

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::Notify;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::error::Error;
use crate::metrics::Metrics;
use crate::registry::{Live, Registry};
use crate::replica::WalMarks;
use crate::store::{self, DbPool};
use crate::tls;
use heartbeat::Heartbeat;

/// What the listener needs from the rest of the relay.
pub struct Listener {
    /// The NOTIFY channel to LISTEN on.
    pub channel: String,
    /// How often the connection proves itself with a heartbeat.
    pub heartbeat: Duration,
    /// Messages larger than this are read without their payload and delivered as `oversized`
    /// stand-ins.
    pub max_event_bytes: i64,
    /// Query connections, for sending heartbeats as an application would.
    pub pool: DbPool,
    /// Where what is read gets delivered.
    pub registry: Arc<Registry>,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// What `/readyz` and `/metrics` learn of the listener.
    pub health: Arc<Health>,
    /// With a read replica: where each pass records how far in the WAL the rows it routed
    /// reach, before it routes them, so catch-ups know what the replica must have replayed.
    pub marks: Option<Arc<WalMarks>>,
    /// Cancelled at shutdown.
    pub shutdown: CancellationToken,
}

/// The listener's state as `/readyz` and `/metrics` see it.
#[derive(Default)]
pub struct Health {
    /// True while the LISTEN connection is up.
    up: AtomicBool,
    /// When the oldest pass that has not numbered successfully yet began; `None` while
    /// numbering keeps up. A std mutex: set and read in a few instructions, never held across
    /// an await.
    lagging_since: Mutex<Option<Instant>>,
    /// When this instance first heard of a commit (a wake-up, or the LISTEN connection lost,
    /// which may hide any number) that it has not delivered yet; `None` while caught up.
    behind_since: Mutex<Option<Instant>>,
}

impl Health {
    /// Whether the LISTEN connection is up.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    /// How long committed rows may have waited for their ids: since the oldest pass that has
    /// not numbered successfully yet began (zero while every pass succeeds).
    pub fn numbering_lag(&self) -> Duration {
        self.lagging_since
            .lock()
            .unwrap()
            .map_or(Duration::ZERO, |since| since.elapsed())
    }

    /// How long the oldest commit this instance heard of has waited to be delivered (zero while
    /// caught up). Unlike the numbering lag it also grows while the LISTEN connection is down,
    /// when no pass runs at all.
    pub fn listener_lag(&self) -> Duration {
        self.behind_since
            .lock()
            .unwrap()
            .map_or(Duration::ZERO, |since| since.elapsed())
    }

    /// Something was committed that the next pass will deliver (or the connection was lost,
    /// and with it the wake-ups of whatever commits meanwhile).
    fn fell_behind(&self) {
        self.behind_since
            .lock()
            .unwrap()
            .get_or_insert_with(Instant::now);
    }

    /// A pass that began at `began` read everything there was: whatever was heard before it
    /// began is delivered. A wake-up heard during the pass waits for the next one.
    fn caught_up(&self, began: Instant) {
        let mut behind_since = self.behind_since.lock().unwrap();
        if behind_since.is_some_and(|since| since <= began) {
            *behind_since = None;
        }
    }

    /// A pass begins: lag counts from here until one succeeds.
    fn pass_begins(&self) {
        self.lagging_since
            .lock()
            .unwrap()
            .get_or_insert_with(Instant::now);
    }

    /// A pass numbered everything pending when it began.
    fn numbering_caught_up(&self) {
        *self.lagging_since.lock().unwrap() = None;
    }
}

/// What one pass may do: read at most 500 messages and 4 MiB of them, and as many signals and
/// bytes of signals, number at most 10,000 pending messages (and as many signals); more follow
/// right after. The wait for the order lock and the largest message read whole are the relay's
/// own (set in [`dispatch`]), so a pass holds at most 8 MiB plus one message of
/// `--max-event-bytes` and one signal (at most 33 KiB).
const PASS: store::PassLimits = store::PassLimits {
    rows: 500,
    bytes: 4 * 1024 * 1024,
    numbered: 10_000,
    lock_wait: Duration::ZERO,
    max_event_bytes: 0,
};

/// The first and the longest wait between reconnect attempts (and between retries of numbering
/// that failed, which the heartbeat caps too).
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Keeps a LISTEN connection open until shutdown, reconnecting with capped exponential backoff
/// and jitter, and dispatches every notification to the registry.
pub async fn run(listener: Listener, listen_url: String) {
    let mut attempt: u32 = 0;
    loop {
        let span = tracing::info_span!("listener", channel = %listener.channel);
        let result = session(&listener, &listen_url, &mut attempt)
            .instrument(span)
            .await;
        listener.health.up.store(false, Ordering::SeqCst);
        listener.health.fell_behind();
        // A pass cut short routed nothing: what was routed is what the marks say.
        if let Some(marks) = &listener.marks {
            marks.pass_abandoned();
        }
        match result {
            Ok(()) => return,
            Err(error) => warn!(%error, "LISTEN connection lost; reconnecting"),
        }
        listener.metrics.listener_reconnects.inc();
        let delay = backoff(attempt);
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = listener.shutdown.cancelled() => return,
        }
    }
}

/// `BACKOFF_MIN · 2^attempt`, capped, with up to 50% random jitter so that many relays
/// reconnecting after a database restart do not arrive in lockstep.
fn backoff(attempt: u32) -> Duration {
    let base = BACKOFF_MIN
        .saturating_mul(1 << attempt.min(16))
        .min(BACKOFF_MAX);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let jitter = base.mul_f64(f64::from(nanos % 1000) / 2000.0);
    base + jitter
}

/// How long connecting, LISTEN and the first heartbeat round trip may take together. The
/// connect timeout covers only TCP; a server (or proxy) that stalls later must not leave the
/// listener waiting forever.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// An established LISTEN connection.
struct ListenConnection {
    client: tokio_postgres::Client,
    /// The dispatcher's statements, prepared on `client`.
    statements: store::NewsStatements,
    /// The last message and signal read: the next fetch starts after them.
    position: store::NewsPosition,
    /// The primary's WAL position read after `position` (with a replica): every row up to
    /// `position` committed below it.
    position_wal: Option<i64>,
    /// Set while passes cannot number (the failure is logged once, not every pass).
    numbering_failed: Option<NumberingRetry>,
    /// Reads the socket; ends when the connection does.
    driver: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    /// Aborts the driver (closing the socket) when the connection is dropped.
    _abort_driver: AbortOnDrop,
    /// Wake-ups (notifications other than heartbeats) the driver heard.
    wakeups: Arc<Wakeups>,
    heartbeat: Arc<Heartbeat>,
}

/// Connects, LISTENs and proves with a heartbeat that notifications arrive.
async fn open(listener: &Listener, listen_url: &str) -> Result<ListenConnection, Error> {
    let (mut config, tls) = tls::connect_config(listen_url)?;
    config.application_name("pgrelay-listen");
    config.connect_timeout(Duration::from_secs(5));
    // The default keepalive waits two hours before probing; a dead peer must be found sooner.
    config.keepalives_idle(Duration::from_secs(15));
    config.keepalives_interval(Duration::from_secs(5));
    config.keepalives_retries(3);
    let (client, mut connection) = config.connect(tls).await?;

    let heartbeat = Arc::new(Heartbeat::new());
    let wakeups = Arc::new(Wakeups::default());
    let driver_heartbeat = Arc::clone(&heartbeat);
    let driver_wakeups = Arc::clone(&wakeups);
    let driver_health = Arc::clone(&listener.health);
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(|cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message? {
                // Heartbeats are recognised here, as soon as they are read, so a busy
                // dispatcher cannot make a healthy connection look dead.
                AsyncMessage::Notification(notification)
                    if driver_heartbeat.is_heartbeat(notification.payload()) => {}
                AsyncMessage::Notification(notification) => {
                    let unnamed =
                        driver_wakeups.raise(notification.process_id(), notification.payload());
                    // A peer's numbering is behind only if the dispatcher has not read its
                    // rows, which it finds when it looks; every row also has its writer's
                    // wake-up, heard here.
                    if unnamed {
                        driver_health.fell_behind();
                    }
                }
                AsyncMessage::Notice(notice) => debug!(%notice, "notice on LISTEN connection"),
                _ => {}
            }
        }
        Ok::<(), tokio_postgres::Error>(())
    });
    let abort_driver = AbortOnDrop(driver.abort_handle());

    client
        .batch_execute(&format!("LISTEN {}", quote_ident(&listener.channel)))
        .await?;
    let statements = store::prepare_news(&client, listener.marks.is_some()).await?;
    let backend: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .try_get(0)?;
    wakeups.own_backend.store(backend, Ordering::Relaxed);
    // Everything committed from here on has a larger id. Streams catch up on what came before
    // from their own positions.
    let position = store::news_position(&client).await?;
    let position_wal = statements.wal_position(&client).await?;
    // Ready only once a notification has made the round trip: a LISTEN through a
    // transaction-mode pooler "succeeds" and then never hears anything.
    heartbeat.round_trip(listener, &client).await?;
    Ok(ListenConnection {
        client,
        statements,
        position,
        position_wal,
        numbering_failed: None,
        driver,
        _abort_driver: abort_driver,
        wakeups,
        heartbeat,
    })
}

/// One connection's life: connect, LISTEN, fill gaps, dispatch until the connection fails
/// (`Err`) or shutdown (`Ok`).
async fn session(listener: &Listener, listen_url: &str, attempt: &mut u32) -> Result<(), Error> {
    let setup = tokio::select! {
        setup = tokio::time::timeout(SETUP_TIMEOUT, open(listener, listen_url)) => setup,
        _ = listener.shutdown.cancelled() => return Ok(()),
    };
    let mut connection = setup.map_err(|_| {
        Error::connection(format!(
            "connecting and LISTENing took longer than {SETUP_TIMEOUT:?}"
        ))
    })??;
    // Notifications that arrived with the LISTEN reply are already queued behind this point,
    // so every stream sees the catch-up request before any of them. Rows up to the session's
    // starting position are never routed: a stream opening from an older position reads them.
    if let Some(marks) = &listener.marks {
        marks.pass_begins();
        marks.pass_read(connection.position_wal);
    }
    listener.registry.routed(connection.position.message);
    listener.registry.request_catch_up_all();
    // Rows committed while no relay was listening are still pending: number them before
    // reporting ready.
    dispatch(listener, &mut connection).await?;
    listener.health.up.store(true, Ordering::SeqCst);
    *attempt = 0;
    info!("listening");

    let mut ticks = tokio::time::interval(listener.heartbeat);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = connection.wakeups.raised.notified() => {}
            ended = &mut connection.driver => {
                return match ended {
                    Ok(Err(error)) => Err(error.into()),
                    _ => Err(Error::connection("the LISTEN connection closed")),
                };
            }
            _ = ticks.tick() => {
                connection.heartbeat.beat(listener, &connection.client).await?;
                // Also read, though nothing woke us: wake-ups are hints, and this bounds how
                // long a lost one could delay anything.
                dispatch(listener, &mut connection).await?;
                continue;
            }
            _ = NumberingRetry::due(connection.numbering_failed) => {
                dispatch(listener, &mut connection).await?;
                continue;
            }
            _ = listener.shutdown.cancelled() => return Ok(()),
        }
        // Wake-ups say little more than "something was committed": one fetch answers them all.
        let count = connection.wakeups.heard.swap(0, Ordering::Relaxed);
        listener.metrics.notifications_received.add(count);
        // After a failed numbering any wake-up is a retry: rows its pass read past may still
        // be pending (a peer numbered only some of them, or none and let go of the lock).
        let heard = connection.wakeups.take();
        if connection.numbering_failed.is_some() || heard.need_pass(connection.position) {
            dispatch(listener, &mut connection).await?;
        }
    }
}

/// Passes that could not number, in a row, and when the next one follows though nothing
/// wakes the dispatcher.
#[derive(Debug, Clone, Copy)]
struct NumberingRetry {
    failures: u32,
    at: tokio::time::Instant,
}

impl NumberingRetry {
    /// After `previous` and one more failure: the wait of [`backoff`] (from [`BACKOFF_MIN`],
    /// doubling, with jitter, up to [`BACKOFF_MAX`]), and never past `heartbeat`, whose pass
    /// would come anyway.
    fn after(previous: Option<NumberingRetry>, heartbeat: Duration) -> NumberingRetry {
        let failures = previous.map_or(0, |retry| retry.failures);
        NumberingRetry {
            failures: failures.saturating_add(1),
            at: tokio::time::Instant::now() + backoff(failures).min(heartbeat),
        }
    }

    /// Resolves when `retry` is due; never without one.
    async fn due(retry: Option<NumberingRetry>) {
        match retry {
            Some(retry) => tokio::time::sleep_until(retry.at).await,
            None => std::future::pending().await,
        }
    }
}

/// The wake-ups the connection driver heard, coalesced into one flag and a count.
#[derive(Default)]
struct Wakeups {
    /// Raised by the driver, awaited by the dispatcher; `notify_one` keeps one permit, so a
    /// wake-up that arrives while a fetch runs makes the next fetch happen.
    raised: Notify,
    /// How many arrived since the dispatcher last looked, for `/metrics`.
    heard: AtomicU64,
    /// Whether a wake-up that names nothing (a writer's commit, or anyone's) arrived since the
    /// dispatcher last looked.
    unnamed: AtomicBool,
    /// The highest message id peers' numbering wake-ups named since then.
    numbered_message: AtomicI64,
    /// The highest signal id they named.
    numbered_signal: AtomicI64,
    /// The process id of this session's backend (0 until known). When a pass numbers rows,
    /// `pgrelay.sequence()` notifies to wake the *other* relays; this relay read those rows in
    /// the same pass, so its own notification is no wake-up (heeding it would double the
    /// passes under steady traffic).
    own_backend: AtomicI32,
}

impl Wakeups {
    /// Wakes the dispatcher for a notification from `sender` carrying `payload`, unless it is
    /// this session's own `numbered` wake-up (its pass read what it numbered); true when it
    /// names nothing, so a pass must follow. A numbering page that ends at its names sends an
    /// empty wake-up from this session too, and that one asks for the next pass.
    fn raise(&self, sender: i32, payload: &str) -> bool {
        let own = sender == self.own_backend.load(Ordering::Relaxed);
        if own && numbered_through(payload).is_some() {
            return false;
        }
        let unnamed = match numbered_through(payload) {
            Some(numbered) => {
                self.numbered_message
                    .fetch_max(numbered.message, Ordering::Relaxed);
                self.numbered_signal
                    .fetch_max(numbered.signal, Ordering::Relaxed);
                false
            }
            None => {
                self.unnamed.store(true, Ordering::Relaxed);
                true
            }
        };
        self.heard.fetch_add(1, Ordering::Relaxed);
        self.raised.notify_one();
        unnamed
    }

    /// What arrived since the dispatcher last looked, taken.
    fn take(&self) -> Heard {
        Heard {
            unnamed: self.unnamed.swap(false, Ordering::Relaxed),
            numbered: store::NewsPosition {
                message: self.numbered_message.swap(0, Ordering::Relaxed),
                signal: self.numbered_signal.swap(0, Ordering::Relaxed),
            },
        }
    }
}

/// The wake-ups the dispatcher takes at once.
struct Heard {
    /// A wake-up that names nothing arrived.
    unnamed: bool,
    /// The highest ids peers said they numbered (0: none).
    numbered: store::NewsPosition,
}

impl Heard {
    /// Whether a pass may find something after `read`, where the dispatcher has read up to.
    fn need_pass(&self, read: store::NewsPosition) -> bool {
        self.unnamed || self.numbered.message > read.message || self.numbered.signal > read.signal
    }
}

/// The ids a peer's `pgrelay.sequence()` says it numbered: its wake-up's payload is
/// `numbered <highest message id> <highest signal id>` (0 for none of a kind). `None` for any
/// other payload, such as a writer's empty one.
fn numbered_through(payload: &str) -> Option<store::NewsPosition> {
    let mut ids = payload.strip_prefix("numbered ")?.split(' ');
    let message = ids.next()?.parse().ok()?;
    let signal = ids.next()?.parse().ok()?;
    ids.next()
        .is_none()
        .then_some(store::NewsPosition { message, signal })
}

/// Aborts the connection driver when the session ends, closing the socket.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Numbers what has committed, reads everything after the last read and delivers what local
/// streams want; repeats while a page or a numbering batch was full.
async fn dispatch(listener: &Listener, connection: &mut ListenConnection) -> Result<(), Error> {
    // While the pass runs no heartbeat is checked, so it gets the heartbeat's own patience
    // (sent at one tick, missed at the next): a half-open connection is found as quickly.
    let patience = 2 * listener.heartbeat;
    loop {
        let began = Instant::now();
        listener.metrics.listener_passes.inc();
        listener.health.pass_begins();
        let limits = store::PassLimits {
            // Well within the pass's patience: a peer relay stuck holding the order lock
            // fails this pass's numbering, not the session.
            lock_wait: (listener.heartbeat / 2)
                .clamp(Duration::from_millis(100), Duration::from_secs(5)),
            max_event_bytes: listener.max_event_bytes,
            ..PASS
        };
        // Until the pass is routed, a stream that opens cannot know whether it was filed in
        // time for the pass's rows: it reads them from the table.
        listener.registry.begin_pass();
        if let Some(marks) = &listener.marks {
            marks.pass_begins();
        }
        let pass = store::news(
            &connection.client,
            &connection.statements,
            connection.position,
            limits,
            |participants, control| listener.registry.wants(participants, control),
        );
        let news = tokio::time::timeout(patience, pass)
            .await
            .map_err(|_| {
                Error::connection(format!(
                    "reading new messages took longer than {patience:?}"
                ))
            })?
            .map_err(|error| Error::connection(format!("reading new messages failed: {error}")))?;
        // Before any row of the pass reaches a stream: a catch-up asked for after that must
        // find the pass's position.
        if let Some(marks) = &listener.marks {
            marks.pass_read(news.wal);
        }
        let more_pending = match &news.numbered {
            Ok(numbered) => {
                listener.metrics.rows_numbered.add(*numbered);
                *numbered >= PASS.numbered as u64
            }
            Err(error) => {
                listener.metrics.numbering_failures.inc();
                // Once per outage: wake-ups keep coming, and so would the same line.
                if connection.numbering_failed.is_none() {
                    warn!(%error, "numbering committed messages failed; retrying at every wake-up and on its own");
                }
                connection.numbering_failed = Some(NumberingRetry::after(
                    connection.numbering_failed,
                    listener.heartbeat,
                ));
                false
            }
        };
        if news.numbered.is_ok() {
            if connection.numbering_failed.take().is_some() {
                info!("numbering committed messages works again");
            }
            if !more_pending {
                listener.health.numbering_caught_up();
            }
        }
        for signal in news.signals {
            listener.registry.deliver(&Live::Signal(signal));
        }
        for (message, committed_at) in news.messages {
            listener.registry.deliver(&Live::Message(message));
            if let Some(at) = committed_at {
                listener
                    .metrics
                    .commit_to_send
                    .observe_since_unix_micros(at);
            }
        }
        connection.position = news.position;
        listener.registry.routed(news.position.message);
        if !news.more && !more_pending {
            if news.numbered.is_ok() {
                listener.health.caught_up(began);
            }
            return Ok(());
        }
    }
}

/// Quotes a channel name as an SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_numbering_wake_up_names_its_ids_and_nothing_else_does() {
        let ids = |message, signal| Some(store::NewsPosition { message, signal });
        assert_eq!(numbered_through("numbered 42 7"), ids(42, 7));
        assert_eq!(numbered_through("numbered 42 0"), ids(42, 0));
        for other in [
            "",
            "numbered",
            "numbered 42",
            "numbered 42 7 1",
            "numbered x 7",
            "42 7",
        ] {
            assert_eq!(numbered_through(other), None, "{other:?}");
        }
    }

    #[test]
    fn numbering_retries_soon_then_less_often_up_to_the_heartbeat() {
        let heartbeat = Duration::from_secs(5);
        let wait = |retry: NumberingRetry| retry.at - tokio::time::Instant::now();
        let mut retry = NumberingRetry::after(None, heartbeat);
        assert!(wait(retry) <= BACKOFF_MIN.mul_f64(1.5), "{retry:?}");
        let mut waits = vec![wait(retry)];
        for _ in 0..10 {
            retry = NumberingRetry::after(Some(retry), heartbeat);
            waits.push(wait(retry));
        }
        assert_eq!(retry.failures, 11);
        assert!(waits[3] > waits[0], "{waits:?}");
        assert!(waits.iter().all(|wait| *wait <= heartbeat), "{waits:?}");
    }

    #[test]
    fn a_pass_follows_unless_every_named_id_is_read() {
        let read = store::NewsPosition {
            message: 10,
            signal: 5,
        };
        let heard = |unnamed, message, signal| Heard {
            unnamed,
            numbered: store::NewsPosition { message, signal },
        };
        assert!(!heard(false, 10, 5).need_pass(read));
        assert!(!heard(false, 0, 0).need_pass(read));
        assert!(heard(false, 11, 0).need_pass(read));
        assert!(heard(false, 0, 6).need_pass(read));
        assert!(heard(true, 0, 0).need_pass(read));
    }
}
