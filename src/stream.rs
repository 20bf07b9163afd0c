//! One subscriber's Server-Sent-Events stream: catch-up, live delivery, expiry and shutdown.
//!
//! The stream registers in the registry *before* it reads anything from the database, so a
//! message committed while it catches up is either in the query's result or in its inbox
//! (often both). The stream's cursor — the last id it sent — makes both paths safe: anything
//! at or below it is a duplicate and is dropped. Whenever the inbox asks for a catch-up (the
//! reader fell behind, or the listener reconnected), the stream reads the table from its
//! cursor in pages before it takes another live message.
//!
//! The stream keeps its own [`Access`] as of its cursor and applies its participant's control
//! rows when it reaches them, whether they came live or from a catch-up page, so both paths
//! deliver the same events: a message is sent only if the access at its position hears it; a
//! `rooms` change is sent as `event: rooms` and, when it adds a room, the stream reads the
//! table again from there (the page it came in, or the live messages after it, were chosen
//! without that room); a revocation of its token is sent as `event: revoked` and ends it, at
//! once when the listener routes it (the stream drops what it has not sent yet).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::access::{Access, Change};
use crate::budget::{self, SharedReservation, Written};
use crate::catch_up::{
    self, Answer, CatchUps, PageQuery, Reader, Share, CATCH_UP_BYTES, CATCH_UP_PAGE,
};
use crate::error::Error;
use crate::frame;
use crate::message::{Control, Message, REVOKED_EVENT, ROOMS_EVENT};
use crate::open_reads::OpenReads;
use crate::registry::{Delivery, Inbox, Live, Subscription};
use crate::replica::{Read, Through};
use crate::store::{self, AccessQuery};

/// The longest a stream counts on its token: a token without a lifetime bound
/// (`--max-token-lifetime 0s`) may name an `exp` further ahead than the clock can hold.
const LONGEST_VALIDITY: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// Longest wait between catch-up attempts while the database is unreachable.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// What every stream of this instance shares: where it registers, what it reads from, and
/// when it must stop.
pub struct StreamContext {
    /// Where pages are read and within what bounds, shared with the catch-up task and the
    /// history routes: the read source, the registry, the pool share, the page budget.
    pub reader: Arc<Reader>,
    /// Interval of the keepalive comment.
    pub keepalive: Duration,
    /// Most open streams of one participant on this instance.
    pub max_per_participant: usize,
    /// Cancelled at shutdown; every stream ends.
    pub shutdown: CancellationToken,
    /// Where streams whose cursor is recent catch up together, in shared reads.
    pub catch_ups: CatchUps,
    /// Where openings read their access and position bounds together.
    pub open_reads: OpenReads,
}

/// One open stream.
pub struct EventStream {
    context: Arc<StreamContext>,
    /// Keeps the stream registered until it is dropped (the client disconnected).
    subscription: Subscription,
    /// What the stream hears as of its cursor: the catch-up query's filter and every event's.
    access: Access,
    /// The id of the last message sent (or the opening position): the resume point.
    cursor: i64,
    /// Events read but not yet sent, oldest first.
    pending: VecDeque<Live>,
    /// The shares of the page budget held by the catch-up page in `pending` (one, or one per
    /// page of a shared read it came from); the page's last frame carries them to the socket.
    page: Vec<SharedReservation>,
    /// The id through which the shared read of the page in `pending` read the log: once the
    /// page is sent the stream has heard everything it may up to there, and its cursor moves
    /// on (rows it does not hear must not be read again).
    page_end: Option<i64>,
    /// Resolves once the last page's last frame is written: the next page is read only then,
    /// so a client that stops reading holds one page of the budget, not two.
    page_written: Option<Written>,
    /// Frames to send before anything else: the opening position, and `reset` whenever
    /// retention removed messages after the cursor.
    preamble: VecDeque<Bytes>,
    /// When to send a keepalive if nothing else is sent before.
    keepalive_at: Instant,
    /// When the token expires.
    expires: Instant,
    /// Set once `token_expired` has been sent.
    finished: bool,
    /// Consecutive failed catch-up queries, for backoff.
    failures: u32,
    /// Set when retention removed rows after the cursor before the stream read them: they may
    /// have changed its participant's rooms, so its member rooms are read again before it
    /// sends anything after them.
    membership_stale: bool,
    /// The presence change last sent (`Signal::presence_change`): the rows
    /// of one change are heard once.
    last_presence: Option<u64>,
}

/// Why a stream could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// The participant has the maximum number of streams open on this instance.
    TooManyStreams,
    /// The opening queries failed.
    Database(Error),
}

impl From<Error> for OpenError {
    fn from(error: Error) -> OpenError {
        OpenError::Database(error)
    }
}

/// Why a wait ended early.
enum Interrupt {
    Shutdown,
    Expired,
    /// The token was revoked: the stream ends at once, not after the read it waits for.
    Revoked,
}

impl StreamContext {
    /// Registers a stream with `access` (read when the newest message was `newest`), resuming
    /// after `resume` (or live from `newest` when `None`), valid until `expires_in` has passed.
    pub async fn open(
        self: &Arc<Self>,
        access: Access,
        newest: i64,
        resume: Option<i64>,
        expires_in: Duration,
    ) -> Result<EventStream, OpenError> {
        let (subscription, missed) = self
            .reader
            .registry
            .subscribe(access.clone(), newest, self.max_per_participant)
            .ok_or(OpenError::TooManyStreams)?;
        let mut preamble = VecDeque::new();
        let cursor = match resume {
            Some(since) => {
                let bounds = self.open_reads.retention_bounds().await?;
                let (position, reset) = resume_point(since, &bounds);
                preamble.push_back(frame::opening(position));
                if let Some(reset) = reset {
                    preamble.push_back(frame::control("reset", &reset.to_string()));
                }
                subscription.inbox().request_catch_up();
                // Everything up to pruned_through is gone, and the client has just been told
                // (or asked for all that is retained, with 0): catch-ups start after it, and
                // only a later prune past the cursor is news.
                position.max(bounds.pruned_through)
            }
            None => {
                // `newest` was read with the access, before the stream was filed: if the
                // listener routed a later row meanwhile, the stream reads it from the table.
                if missed {
                    subscription.inbox().request_catch_up();
                }
                preamble.push_back(frame::opening(newest));
                newest
            }
        };
        Ok(EventStream {
            context: Arc::clone(self),
            keepalive_at: Instant::now() + self.keepalive,
            subscription,
            access,
            cursor,
            pending: VecDeque::new(),
            page: Vec::new(),
            page_end: None,
            page_written: None,
            preamble,
            expires: Instant::now() + expires_in.min(LONGEST_VALIDITY),
            finished: false,
            failures: 0,
            membership_stale: false,
            last_presence: None,
        })
    }
}

impl EventStream {
    /// The stream as a response body: the bytes of each event in turn. Dropping it (the
    /// client went away) unregisters the stream.
    pub fn into_body(self) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
        futures::stream::unfold(self, |mut stream| async move {
            let frame = stream.next_frame().await?;
            stream.keepalive_at = Instant::now() + stream.context.keepalive;
            Some((Ok(frame), stream))
        })
    }

    /// The next frame to send, or `None` when the stream should end.
    async fn next_frame(&mut self) -> Option<Bytes> {
        if let Some(event) = self.preamble.pop_front() {
            return Some(event);
        }
        if self.finished {
            return None;
        }
        loop {
            if self.subscription.inbox().is_revoked() {
                return Some(self.revoked());
            }
            // A catch-up may have queued a `reset` to go before its page.
            if let Some(event) = self.preamble.pop_front() {
                return Some(event);
            }
            while let Some(event) = self.pending.pop_front() {
                let frame = match event {
                    Live::Message(message) if message.id <= self.cursor => continue, // sent
                    Live::Message(message) => match &message.control {
                        Some(control) => match self.apply(&message, control) {
                            Some(frame) => frame,
                            None => continue,
                        },
                        None if self.access.hears(&message.participants) => {
                            self.cursor = message.id;
                            self.context.reader.metrics.events_delivered.inc();
                            frame::message(&message)
                        }
                        // Not heard at its position: a room removed before it.
                        None => continue,
                    },
                    Live::Signal(signal) => match signal.presence_change {
                        Some(change) if self.last_presence == Some(change) => continue,
                        Some(change) => {
                            self.last_presence = Some(change);
                            frame::signal(&signal)
                        }
                        None => frame::signal(&signal),
                    },
                };
                // The page's last frame: its reservations are given back once it is written.
                if self.pending.is_empty() && !self.page.is_empty() {
                    let held = self
                        .page
                        .drain(..)
                        .fold(frame, |frame, held| held.held_by(frame));
                    let (frame, written) = budget::watch_written(held);
                    self.page_written = Some(written);
                    return Some(frame);
                }
                return Some(frame);
            }
            // A page whose tail was already sent holds nothing any more.
            self.page.clear();
            if let Some(end) = self.page_end.take() {
                self.cursor = self.cursor.max(end);
            }
            let delivery = self.subscription.inbox().take();
            let interrupted = match delivery {
                Delivery::Events(events) => {
                    self.pending.extend(events);
                    continue;
                }
                // Boxed: the catch-up future is the largest this stream awaits, and unboxed it
                // would size every idle stream (measured: 17.1 → 14.2 KiB RSS per stream).
                Delivery::CatchUp => Box::pin(self.catch_up()).await.err(),
                Delivery::Empty => {
                    let changed = self.subscription.inbox().changed();
                    let quiet = tokio::time::timeout_at(self.keepalive_at, changed);
                    match interruptible(&self.context.shutdown, self.expires, None, quiet).await {
                        Ok(Ok(())) => None,
                        Ok(Err(_)) => return Some(frame::KEEPALIVE),
                        Err(interrupt) => Some(interrupt),
                    }
                }
            };
            match interrupted {
                None => {}
                Some(Interrupt::Shutdown) => return None,
                // The loop's next turn sends `revoked`.
                Some(Interrupt::Revoked) => {}
                Some(Interrupt::Expired) => {
                    self.finished = true;
                    let data = r#"{"reason":"token_expired"}"#;
                    return Some(frame::control("token_expired", data));
                }
            }
        }
    }

    /// Reads one page after the cursor into `pending`: its part of a shared read when its
    /// cursor is recent (`catch_up`), else, or when the shared read sends it back, its own.
    async fn catch_up(&mut self) -> Result<(), Interrupt> {
        // Only the writer holds that frame, and it drops it once written (or with the
        // connection), so this wait is as long as the client takes to read it.
        if let Some(written) = self.page_written.take() {
            written.wait().await;
        }
        if self.membership_stale && !self.refresh_membership().await? {
            return Ok(());
        }
        let context = Arc::clone(&self.context);
        if context.reader.registry.routed_through() - self.cursor <= catch_up::MAX_SHARED_SPAN {
            let shared = context
                .catch_ups
                .catch_up(self.cursor, self.access.catch_up_addresses());
            if let Answer::Shared(share) = interruptible(
                &context.shutdown,
                self.expires,
                Some(self.subscription.inbox()),
                shared,
            )
            .await?
            {
                self.take_share(share).await;
                return Ok(());
            }
        }
        self.read_alone().await
    }

    /// Takes its part of a shared read as it takes a page of its own.
    async fn take_share(&mut self, share: Share) {
        self.failures = 0;
        self.page = share.reservations;
        if share.pruned_through > self.cursor {
            self.truncated(share.pruned_through, Some(share.oldest_id))
                .await;
            // The page was chosen by rooms the removed rows may have changed.
            self.page.clear();
            self.subscription.inbox().request_catch_up();
            return;
        }
        if share.more {
            self.subscription.inbox().request_catch_up();
        }
        self.page_end = Some(share.through);
        self.pending
            .extend(share.messages.into_iter().map(Live::Message));
    }

    /// Reads one page after the cursor into `pending` with its own query. On failure it asks
    /// for another catch-up after a backoff, so a database outage delays messages but never
    /// loses them.
    async fn read_alone(&mut self) -> Result<(), Interrupt> {
        self.context.reader.metrics.catch_up_queries.inc();
        let context = &self.context;
        let query = async {
            // Found after the inbox asked for this catch-up, so it covers what the inbox
            // dropped; before the permit, since it may wait for a listener pass.
            let at = context.reader.exact.position(Through::Routed).await;
            let addresses = self.access.catch_up_addresses();
            let (page, mut reservation) = context
                .reader
                .read_page(PageQuery {
                    at,
                    read: Read::CatchUp,
                    addresses: &addresses,
                    rows: store::Rows::WithControl,
                    since: self.cursor,
                    limit: CATCH_UP_PAGE,
                    bytes: CATCH_UP_BYTES,
                })
                .await;
            if let Ok(page) = &page {
                reservation.shrink_to(page.memory());
            }
            (page, reservation)
        };
        let (page, reservation) = interruptible(
            &self.context.shutdown,
            self.expires,
            Some(self.subscription.inbox()),
            query,
        )
        .await?;
        match page {
            Ok(page) => {
                self.failures = 0;
                self.page = vec![reservation.share()];
                if page.pruned_through > self.cursor {
                    // Retention removed messages after the cursor before this stream read them
                    // (it fell behind, or was quiet longer than the retention period): say so
                    // before going on, never skip silently. The page was chosen by rooms the
                    // removed rows may have changed: it is read again once they are known.
                    self.truncated(page.pruned_through, None).await;
                    self.page.clear();
                    self.subscription.inbox().request_catch_up();
                    return Ok(());
                }
                if page.more {
                    // Read the next page once this one is sent.
                    self.subscription.inbox().request_catch_up();
                }
                self.pending
                    .extend(page.messages.into_iter().map(Live::Message));
                Ok(())
            }
            Err(error) => {
                warn!(%error, participant = %self.subscription.participant(), "catch-up query failed; retrying");
                self.back_off().await
            }
        }
    }

    /// Waits before the next attempt after a failed read, longer after each, then asks for
    /// another catch-up: a database outage delays messages but never loses them.
    async fn back_off(&mut self) -> Result<(), Interrupt> {
        let delay = Duration::from_millis(100)
            .saturating_mul(1 << self.failures.min(6))
            .min(MAX_RETRY_DELAY);
        self.failures += 1;
        // Anything new in the inbox (say, the listener reconnected because the database is
        // back) ends the wait early.
        let wait = async {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.subscription.inbox().changed() => {}
            }
        };
        let waited = interruptible(&self.context.shutdown, self.expires, None, wait).await;
        self.subscription.inbox().request_catch_up();
        waited
    }
}

impl EventStream {
    /// Applies a control row of the stream's participant at its position; the event to send,
    /// if it changed anything for this stream.
    fn apply(&mut self, row: &Message, control: &Control) -> Option<Bytes> {
        self.cursor = row.id;
        // The listener may have routed this row before the stream was filed, or while it
        // caught up: its routing takes it now (a second application changes nothing).
        self.subscription.apply(control);
        let change = self.access.apply(control);
        self.announce(row.id, change)
    }

    /// The event that says what `change`, at position `id`, did to the stream, if anything.
    fn announce(&mut self, id: i64, change: Change) -> Option<Bytes> {
        match change {
            Change::None => None,
            Change::Rooms { added, removed } => {
                if !added.is_empty() {
                    // What follows was read, or routed, without the added rooms: read again
                    // from here with them.
                    self.pending.clear();
                    self.page_end = None;
                    self.subscription.inbox().request_catch_up();
                }
                let data = serde_json::json!({"added": added, "removed": removed});
                Some(frame::change(id, ROOMS_EVENT, &data.to_string()))
            }
            Change::Revoked => Some(self.revoked()),
        }
    }

    /// Ends the stream after `event: revoked`, dropping whatever it still holds: a revoked
    /// token's stream ends at once, not after its backlog. The event has no `id:`, so a client
    /// that comes back with a fresh token resumes after the last message it did receive.
    fn revoked(&mut self) -> Bytes {
        self.finished = true;
        self.pending.clear();
        self.preamble.clear();
        frame::control(REVOKED_EVENT, r#"{"reason":"token_revoked"}"#)
    }

    /// Sends `history_truncated` before anything else and moves the cursor past what
    /// retention removed, so the next catch-up does not report it again. The oldest id is
    /// read unless the page's read brought it (`oldest_id`).
    async fn truncated(&mut self, pruned_through: i64, oldest_id: Option<i64>) {
        let oldest_id = match oldest_id {
            Some(oldest_id) => oldest_id,
            None => match self.context.open_reads.retention_bounds().await {
                Ok(bounds) => bounds.oldest_id,
                Err(_) => pruned_through + 1,
            },
        };
        let reset = serde_json::json!({"reason": "history_truncated", "oldest_id": oldest_id});
        self.preamble
            .push_back(frame::control("reset", &reset.to_string()));
        self.cursor = pruned_through;
        self.membership_stale = true;
    }

    /// Reads the participant's member rooms again, on the primary, after retention removed rows
    /// the stream never read: a change of its rooms among them would otherwise never apply, and
    /// a room it left would go on reaching it. What is read is the membership now, as when a
    /// stream opens (a member reads a room's retained history). Whether it was read; if not,
    /// the stream tries again after a backoff, sending nothing meanwhile.
    async fn refresh_membership(&mut self) -> Result<bool, Interrupt> {
        let query = AccessQuery {
            participant: self.subscription.participant().to_owned(),
            issued_at: None,
            with_rooms: true,
        };
        let read = self.context.open_reads.access_now(query);
        match interruptible(
            &self.context.shutdown,
            self.expires,
            Some(self.subscription.inbox()),
            read,
        )
        .await?
        {
            Ok(now) => {
                self.membership_stale = false;
                // The listener routes by membership sets it applied live, so its filing of the
                // stream is already current.
                let change = self.access.replace_members(now.version, now.member_rooms);
                if let Some(frame) = self.announce(self.cursor, change) {
                    self.preamble.push_back(frame);
                }
                Ok(true)
            }
            Err(error) => {
                warn!(%error, participant = %self.subscription.participant(), "reading member rooms failed; retrying");
                self.back_off().await?;
                Ok(false)
            }
        }
    }
}

/// Where a stream resuming after `since` starts, and the `reset` to send first, if any.
///
/// - Below pruned history: the stream continues from `since` (everything retained follows),
///   after `history_truncated`. `since = 0` asks for "all retained history", so it is never
///   truncated.
/// - Above every id ever issued (a position from another database, say one recreated since):
///   nothing could be delivered until ids caught up, so the stream starts at the newest
///   message instead, after `unknown_position`, and the client learns the new position.
fn resume_point(since: i64, bounds: &store::RetentionBounds) -> (i64, Option<serde_json::Value>) {
    if since > bounds.highest_issued {
        let reset =
            serde_json::json!({"reason": "unknown_position", "newest_id": bounds.newest_id});
        (bounds.newest_id, Some(reset))
    } else if since > 0 && since < bounds.pruned_through {
        let reset =
            serde_json::json!({"reason": "history_truncated", "oldest_id": bounds.oldest_id});
        (since, Some(reset))
    } else {
        (since, None)
    }
}

/// Runs `work` unless shutdown or token expiry comes first, or, when `inbox` is given, a
/// revocation of the stream's token. A `work` that waits on the inbox itself must not give
/// it: each wake-up of the inbox goes to one waiter.
async fn interruptible<T>(
    shutdown: &CancellationToken,
    expires: Instant,
    inbox: Option<&Inbox>,
    work: impl Future<Output = T>,
) -> Result<T, Interrupt> {
    let revoked = async {
        let Some(inbox) = inbox else {
            return std::future::pending().await;
        };
        // Waking here takes no event from the stream: it looks into the inbox after the read.
        while !inbox.is_revoked() {
            inbox.changed().await;
        }
    };
    tokio::select! {
        biased;
        _ = shutdown.cancelled() => Err(Interrupt::Shutdown),
        _ = tokio::time::sleep_until(expires) => Err(Interrupt::Expired),
        () = revoked => Err(Interrupt::Revoked),
        value = work => Ok(value),
    }
}
