//! Who is listening: address → open streams, and each stream's bounded inbox.
//!
//! A stream is registered under each of its addresses (its participant, its rooms, and `*`).
//! The listener hands every message to [`Registry::deliver`], which looks up only the
//! message's own addresses, so fan-out costs grow with a message's recipients, not with the
//! number of connected subscribers: a broadcast walks the one list of `*`, a room message its
//! room's list. Each stream owns an [`Inbox`] of bounded size: when a
//! reader falls behind and its inbox fills, the inbox drops its queue and asks the stream to
//! catch up from the database instead. Memory stays bounded and nothing is skipped, because
//! every dropped message is already committed and the catch-up query will find it.
//! (Signals are live-only: an overflowing inbox drops them, as it would for an offline client.)
//!
//! A stream's addresses change while it is open (`crate::access`): a control row (a
//! participant's new rooms, a revocation) is routed to every stream of its participant, and
//! the registry files those streams under their new addresses before it routes anything else,
//! so the next row, in the same batch or not, already goes by them. A revoked stream is
//! filed under nothing and told to end at once.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::access::{Access, Change};
use crate::message::{Control, Message, Signal};

/// How many live messages a stream may hold before it falls back to the database.
pub const INBOX_CAPACITY: usize = 256;

/// How many bytes of messages ([`Message::memory`]) a stream may hold before it falls back to
/// the database: messages are shared by their recipients, but a slow reader of 256 distinct
/// messages of up to `--max-event-bytes` each would otherwise pin 256 of them.
pub const INBOX_BYTES: usize = 1024 * 1024;

/// The streams open on this instance, keyed by address.
#[derive(Default)]
pub struct Registry {
    /// A std mutex: every critical section is a map lookup or a push, never an await.
    streams: Mutex<StreamIndex>,
    /// Bumped whenever a stream opens or closes, so the presence task can skip comparing the
    /// participant sets when nothing changed (with 10,000 idle streams that comparison was
    /// most of the relay's CPU).
    generation: AtomicU64,
}

/// The open streams by address and by participant, and how far the listener has routed.
#[derive(Default)]
struct StreamIndex {
    by_address: HashMap<String, Vec<Arc<Inbox>>>,
    /// Every open stream of each participant, narrowed or not: where its control rows go.
    by_participant: HashMap<String, Vec<Arc<Inbox>>>,
    /// The highest message id the listener has routed (or skipped for want of streams).
    routed_through: i64,
    /// Whether the listener is routing a pass whose rows it read before a stream that
    /// subscribes now was filed.
    in_pass: bool,
}

/// A live event for a stream: a stored message or a signal.
#[derive(Clone)]
pub enum Live {
    /// A stored message (it may repeat an id the stream already sent).
    Message(Arc<Message>),
    /// A live-only signal.
    Signal(Arc<Signal>),
}

impl Live {
    /// The bytes an inbox holding it pins: a message's [`Message::memory`], a signal's JSON.
    fn size(&self) -> usize {
        match self {
            Live::Message(message) => message.memory() as usize,
            Live::Signal(signal) => signal.data.get().len(),
        }
    }
}

/// What a stream finds when it looks into its inbox.
pub enum Delivery {
    /// Live events, oldest first.
    Events(Vec<Live>),
    /// The stream must read the database from its cursor: it overflowed, or the listener
    /// reconnected and live delivery may have a gap.
    CatchUp,
    /// Nothing yet: wait on [`Inbox::changed`].
    Empty,
}

/// One stream's bounded queue of live messages. The registry pushes, the stream takes.
pub struct Inbox {
    state: Mutex<InboxState>,
    /// Wakes the stream; `notify_one` keeps a permit, so a push between `take` and the
    /// stream's wait is never missed.
    wake: Notify,
    /// Set when a revocation reached the stream's token: it ends at once, whatever it still
    /// holds or has yet to catch up on.
    revoked: AtomicBool,
    /// The stream's access as of the listener's position: the addresses it is filed under.
    /// Changed only under the registry's lock (so never contended), by the listener's control
    /// rows and by the stream's catch-ups, which may read rows the listener routed before the
    /// stream was filed.
    route: Mutex<Access>,
}

#[derive(Default)]
struct InboxState {
    queue: VecDeque<Live>,
    /// The bytes ([`Live::size`]) of the events in `queue`.
    bytes: usize,
    needs_catch_up: bool,
}

impl Inbox {
    fn push(&self, event: &Live) {
        {
            let mut state = self.state.lock().unwrap();
            if state.needs_catch_up {
                // The catch-up query will read a message from the table; a signal is dropped.
                return;
            }
            let size = event.size();
            // One message always fits, however large: an empty inbox takes it.
            let full = state.queue.len() >= INBOX_CAPACITY
                || (!state.queue.is_empty() && state.bytes + size > INBOX_BYTES);
            if full {
                state.queue.clear();
                state.bytes = 0;
                state.needs_catch_up = true;
            } else {
                state.bytes += size;
                state.queue.push_back(event.clone());
            }
        }
        self.wake.notify_one();
    }

    /// Ends the stream: its token was revoked.
    fn revoke(&self) {
        self.revoked.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Whether the stream's token was revoked.
    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }

    /// Makes the stream re-read the database from its cursor before any further live message.
    pub fn request_catch_up(&self) {
        {
            let mut state = self.state.lock().unwrap();
            state.queue.clear();
            state.bytes = 0;
            state.needs_catch_up = true;
        }
        self.wake.notify_one();
    }

    /// Takes everything waiting. A catch-up request wins over queued messages: the queue is
    /// cleared, because everything in it was committed before the catch-up query runs.
    pub fn take(&self) -> Delivery {
        let mut state = self.state.lock().unwrap();
        state.bytes = 0;
        if state.needs_catch_up {
            state.needs_catch_up = false;
            state.queue.clear();
            Delivery::CatchUp
        } else if state.queue.is_empty() {
            Delivery::Empty
        } else {
            Delivery::Events(state.queue.drain(..).collect())
        }
    }

    /// Resolves when something was pushed or requested since the last `take`.
    pub async fn changed(&self) {
        self.wake.notified().await;
    }
}

/// A stream's place in the registry; dropping it (the client went away) removes the stream.
pub struct Subscription {
    registry: Arc<Registry>,
    participant: String,
    inbox: Arc<Inbox>,
}

impl Subscription {
    /// The stream's inbox.
    pub fn inbox(&self) -> &Inbox {
        &self.inbox
    }

    /// Whose stream this is.
    pub fn participant(&self) -> &str {
        &self.participant
    }

    /// Applies a control row the stream read in a catch-up to the addresses it is filed under
    /// (a row the listener routed already changes nothing: sets are versioned and a revocation
    /// applies once).
    pub fn apply(&self, control: &Control) {
        let mut streams = self.registry.streams.lock().unwrap();
        refile(&mut streams, &self.inbox, control);
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.registry.remove(&self.participant, &self.inbox);
    }
}

/// Applies `control` to `inbox`'s route and files it under its new addresses; answers what
/// changed.
fn refile(streams: &mut StreamIndex, inbox: &Arc<Inbox>, control: &Control) -> Change {
    let mut route = inbox.route.lock().unwrap();
    let before = route.addresses();
    let change = route.apply(control);
    if change == Change::None {
        return change;
    }
    let after = route.addresses();
    for address in before.iter().filter(|address| !after.contains(address)) {
        unlist(streams, address, inbox);
    }
    for address in after
        .into_iter()
        .filter(|address| !before.contains(address))
    {
        streams
            .by_address
            .entry(address)
            .or_default()
            .push(Arc::clone(inbox));
    }
    change
}

/// Takes `inbox` off the list of `address`.
fn unlist(streams: &mut StreamIndex, address: &str, inbox: &Arc<Inbox>) {
    if let Some(inboxes) = streams.by_address.get_mut(address) {
        // Comparing pointers reads no inbox: `*` lists every stream, and closing 10,000
        // streams must not touch 10,000 inboxes each.
        if let Some(at) = inboxes.iter().position(|open| Arc::ptr_eq(open, inbox)) {
            inboxes.swap_remove(at);
        }
        if inboxes.is_empty() {
            streams.by_address.remove(address);
        }
    }
}

impl Registry {
    /// Adds a stream with `access`, which sees every event routed from now on; `None` when its
    /// participant already has `max_streams` open here. `read_at` is the newest message id
    /// when `access` was read: the answer's flag says whether the listener may have routed a
    /// later row before the stream was filed, which the stream must then read from the table.
    pub fn subscribe(
        self: &Arc<Self>,
        access: Access,
        read_at: i64,
        max_streams: usize,
    ) -> Option<(Subscription, bool)> {
        let participant = access.participant().to_owned();
        let addresses = access.addresses();
        let inbox = Arc::new(Inbox {
            state: Mutex::default(),
            wake: Notify::new(),
            revoked: AtomicBool::new(false),
            route: Mutex::new(access),
        });
        let mut streams = self.streams.lock().unwrap();
        let open = streams
            .by_participant
            .entry(participant.clone())
            .or_default();
        if open.len() >= max_streams {
            if open.is_empty() {
                streams.by_participant.remove(&participant);
            }
            return None;
        }
        open.push(Arc::clone(&inbox));
        for address in addresses {
            streams
                .by_address
                .entry(address)
                .or_default()
                .push(Arc::clone(&inbox));
        }
        let missed = streams.in_pass || streams.routed_through > read_at;
        self.generation.fetch_add(1, Ordering::Relaxed);
        Some((
            Subscription {
                registry: Arc::clone(self),
                participant,
                inbox,
            },
            missed,
        ))
    }

    fn remove(&self, participant: &str, inbox: &Arc<Inbox>) {
        self.generation.fetch_add(1, Ordering::Relaxed);
        let mut streams = self.streams.lock().unwrap();
        let addresses = inbox.route.lock().unwrap().addresses();
        for address in &addresses {
            unlist(&mut streams, address, inbox);
        }
        if let Some(open) = streams.by_participant.get_mut(participant) {
            if let Some(at) = open.iter().position(|mine| Arc::ptr_eq(mine, inbox)) {
                open.swap_remove(at);
            }
            if open.is_empty() {
                streams.by_participant.remove(participant);
            }
        }
    }

    /// The listener begins routing a pass: a stream filed from now until [`Registry::routed`]
    /// may miss its rows.
    pub fn begin_pass(&self) {
        self.streams.lock().unwrap().in_pass = true;
    }

    /// The listener has routed (or skipped) every row up to `position`.
    pub fn routed(&self, position: i64) {
        let mut streams = self.streams.lock().unwrap();
        streams.in_pass = false;
        streams.routed_through = streams.routed_through.max(position);
    }

    /// The highest message id the listener has routed: how recent a stream's cursor is.
    pub fn routed_through(&self) -> i64 {
        self.streams.lock().unwrap().routed_through
    }

    /// Hands a message or signal to the open streams of its addresses, once per stream even
    /// when a stream has several of them.
    /// A control row goes to every stream of its participant whose access it changes, which
    /// is refiled first.
    pub fn deliver(&self, event: &Live) {
        let addresses = match event {
            Live::Message(message) => {
                if let Some(control) = &message.control {
                    self.route_control(event, &message.participants, control);
                    return;
                }
                &message.participants
            }
            Live::Signal(signal) => &signal.participants,
        };
        let streams = self.streams.lock().unwrap();
        let mut lists = addresses
            .iter()
            .filter_map(|address| streams.by_address.get(address));
        let Some(first) = lists.next() else { return };
        let mut rest = lists.peekable();
        if rest.peek().is_none() {
            // One address with streams (the usual direct message, room or broadcast): each
            // stream is in its list once.
            for inbox in first {
                inbox.push(event);
            }
            return;
        }
        // An inbox's address is its identity.
        let mut reached = std::collections::HashSet::new();
        for inbox in first.iter().chain(rest.flatten()) {
            if reached.insert(Arc::as_ptr(inbox)) {
                inbox.push(event);
            }
        }
    }

    /// Refiles the streams of the control row's participant; hands each one whose rooms it
    /// changed the row, to apply at its position, and ends each one whose token it revokes.
    fn route_control(&self, event: &Live, participants: &[String], control: &Control) {
        let mut streams = self.streams.lock().unwrap();
        let Some(participant) = participants.first() else {
            return;
        };
        let Some(inboxes) = streams.by_participant.get(participant).cloned() else {
            return;
        };
        for inbox in inboxes {
            match refile(&mut streams, &inbox, control) {
                Change::None => {}
                Change::Rooms { .. } => inbox.push(event),
                Change::Revoked => inbox.revoke(),
            }
        }
    }

    /// Whether a row to `participants` has an open stream here: for a control row, a stream
    /// of its participant; otherwise a stream filed under one of its addresses.
    pub fn wants(&self, participants: &[String], control: bool) -> bool {
        let streams = self.streams.lock().unwrap();
        if control {
            return participants
                .first()
                .is_some_and(|participant| streams.by_participant.contains_key(participant));
        }
        participants
            .iter()
            .any(|address| streams.by_address.contains_key(address))
    }

    /// Makes every open stream catch up from the database.
    pub fn request_catch_up_all(&self) {
        let streams = self.streams.lock().unwrap();
        for inbox in streams.by_participant.values().flatten() {
            inbox.request_catch_up();
        }
    }

    /// A number that changes whenever a stream opens or closes.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// The participants with at least one open stream here.
    pub fn participants(&self) -> std::collections::HashSet<String> {
        let streams = self.streams.lock().unwrap();
        streams.by_participant.keys().cloned().collect()
    }

    /// How many streams are open.
    pub fn stream_count(&self) -> usize {
        let streams = self.streams.lock().unwrap();
        streams.by_participant.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::StoredRow;
    use serde_json::value::RawValue;

    /// A message to alice whose payload is a string of `size` bytes.
    fn message(id: i64, size: usize) -> Live {
        let payload = RawValue::from_string(format!("\"{}\"", "x".repeat(size))).unwrap();
        let message = Message::from_row(StoredRow {
            id,
            kind: "message".into(),
            sender: None,
            participants: vec!["alice".into()],
            payload: Some(&payload),
            created_at: "2026-12-04T00:00:00.000000Z",
            bytes: size as i64,
            control: false,
        })
        .unwrap();
        Live::Message(Arc::new(message))
    }

    fn inbox_of(registry: &Arc<Registry>) -> Subscription {
        let access = Access::new("alice".into(), vec![], vec![], 0, None, None).unwrap();
        registry.subscribe(access, 0, 1).unwrap().0
    }

    /// An inbox falls back to the database once it holds INBOX_BYTES of messages, long before
    /// INBOX_CAPACITY of them; and one message larger than that still fits an empty inbox.
    #[test]
    fn an_inbox_is_bounded_in_bytes_too() {
        let registry = Arc::new(Registry::default());
        let stream = inbox_of(&registry);
        // A message holds its JSON twice (the event and its frame): a quarter of the bytes each.
        let large = INBOX_BYTES / 8;
        for id in 1..=4 {
            registry.deliver(&message(id, large));
        }
        assert!(matches!(stream.inbox().take(), Delivery::CatchUp));

        registry.deliver(&message(5, 2 * INBOX_BYTES));
        let Delivery::Events(events) = stream.inbox().take() else {
            panic!("one message, however large, fits an empty inbox");
        };
        assert_eq!(events.len(), 1);
        for id in 6..=8 {
            registry.deliver(&message(id, large));
        }
        assert!(
            matches!(stream.inbox().take(), Delivery::Events(events) if events.len() == 3),
            "taking empties the inbox's byte count"
        );
    }
}
