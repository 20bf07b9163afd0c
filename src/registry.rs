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

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::message::{Message, Signal};

/// How many live messages a stream may hold before it falls back to the database.
pub const INBOX_CAPACITY: usize = 256;

/// How many bytes of messages' JSON a stream may hold before it falls back to the database:
/// messages are shared by their recipients, but a slow reader of 256 distinct messages of up
/// to `--max-event-bytes` each would otherwise pin 256 of them.
pub const INBOX_BYTES: usize = 1024 * 1024;

/// The streams open on this instance, keyed by address.
#[derive(Default)]
pub struct Registry {
    /// A std mutex: every critical section is a map lookup or a push, never an await.
    streams: Mutex<Streams>,
    /// Bumped whenever a stream opens or closes, so the presence task can skip comparing the
    /// participant sets when nothing changed (with 10,000 idle streams that comparison was
    /// most of the relay's CPU).
    generation: AtomicU64,
}

/// The open streams by address, and how many each participant has open.
#[derive(Default)]
struct Streams {
    by_address: HashMap<String, Vec<Arc<Inbox>>>,
    per_participant: HashMap<String, usize>,
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
    /// The bytes of its event JSON, what an inbox holding it pins.
    fn size(&self) -> usize {
        match self {
            Live::Message(message) => message.data.get().len(),
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
}

#[derive(Default)]
struct InboxState {
    queue: VecDeque<Live>,
    /// The JSON bytes of the messages in `queue`.
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
    addresses: Vec<String>,
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

    /// The addresses the stream is registered under: what a message must name one of.
    pub fn addresses(&self) -> &[String] {
        &self.addresses
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.registry
            .remove(&self.participant, &self.addresses, &self.inbox);
    }
}

impl Registry {
    /// Adds a stream of `participant` listening on `addresses`, which sees every event
    /// delivered from now on; `None` when the participant already has `max_streams` open here.
    pub fn subscribe(
        self: &Arc<Self>,
        participant: &str,
        addresses: Vec<String>,
        max_streams: usize,
    ) -> Option<Subscription> {
        let inbox = Arc::new(Inbox {
            state: Mutex::default(),
            wake: Notify::new(),
        });
        let mut streams = self.streams.lock().unwrap();
        let open = streams
            .per_participant
            .entry(participant.to_owned())
            .or_default();
        if *open >= max_streams {
            return None;
        }
        *open += 1;
        for address in &addresses {
            streams
                .by_address
                .entry(address.clone())
                .or_default()
                .push(Arc::clone(&inbox));
        }
        self.generation.fetch_add(1, Ordering::Relaxed);
        Some(Subscription {
            registry: Arc::clone(self),
            participant: participant.to_owned(),
            addresses,
            inbox,
        })
    }

    fn remove(&self, participant: &str, addresses: &[String], inbox: &Arc<Inbox>) {
        self.generation.fetch_add(1, Ordering::Relaxed);
        let mut streams = self.streams.lock().unwrap();
        for address in addresses {
            if let Some(inboxes) = streams.by_address.get_mut(address) {
                // Comparing pointers reads no inbox: `*` lists every stream, and closing
                // 10,000 streams must not touch 10,000 inboxes each.
                if let Some(at) = inboxes.iter().position(|open| Arc::ptr_eq(open, inbox)) {
                    inboxes.swap_remove(at);
                }
                if inboxes.is_empty() {
                    streams.by_address.remove(address);
                }
            }
        }
        if let Some(open) = streams.per_participant.get_mut(participant) {
            *open -= 1;
            if *open == 0 {
                streams.per_participant.remove(participant);
            }
        }
    }

    /// Hands a message or signal to the open streams of its addresses, once per stream even
    /// when a stream has several of them.
    pub fn deliver(&self, event: &Live) {
        let addresses = match event {
            Live::Message(message) => &message.participants,
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

    /// Whether any of `addresses` has an open stream here.
    pub fn has_any(&self, addresses: &[String]) -> bool {
        let streams = self.streams.lock().unwrap();
        addresses
            .iter()
            .any(|address| streams.by_address.contains_key(address))
    }

    /// Makes every open stream catch up from the database.
    pub fn request_catch_up_all(&self) {
        let streams = self.streams.lock().unwrap();
        // A stream is in the list of each of its addresses; asking it twice is harmless.
        for inbox in streams.by_address.values().flatten() {
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
        streams.per_participant.keys().cloned().collect()
    }

    /// How many streams are open.
    pub fn stream_count(&self) -> usize {
        let streams = self.streams.lock().unwrap();
        streams.per_participant.values().sum()
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
        })
        .unwrap();
        Live::Message(Arc::new(message))
    }

    fn inbox_of(registry: &Arc<Registry>) -> Subscription {
        registry
            .subscribe("alice", vec!["alice".into()], 1)
            .unwrap()
    }

    /// An inbox falls back to the database once it holds INBOX_BYTES of messages, long before
    /// INBOX_CAPACITY of them; and one message larger than that still fits an empty inbox.
    #[test]
    fn an_inbox_is_bounded_in_bytes_too() {
        let registry = Arc::new(Registry::default());
        let stream = inbox_of(&registry);
        let large = INBOX_BYTES / 4;
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
