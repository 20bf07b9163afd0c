//! The stream's wire format: each event rendered once into the bytes that go on the socket.
//!
//! Server-Sent Events leave room for readers to differ, and the common SSE libraries do (see
//! docs/http-api.md). So the relay writes only what every one of them reads the same way:
//!
//! - The opening is a *named* event, `position`, with the position in `id:` and as data. A
//!   browser's `EventSource` does not hand named events to `onmessage`, and records the id;
//!   libraries that ignore the id of a block without data still see this one.
//! - A keepalive is a lone comment line, `:`, with no blank line after it: it keeps proxies
//!   from closing an idle stream but ends no event block, so libraries that hand the
//!   application an event for every blank line hand it nothing.
//! - Every other event carries data; only stored messages and `rooms` changes (stored like
//!   them) carry an `id:`.

use bytes::Bytes;

use crate::message::{Message, Signal, OVERSIZED_EVENT, POSITION_EVENT};

/// What the relay sends when a stream has been quiet for the keepalive interval.
pub const KEEPALIVE: Bytes = Bytes::from_static(b":\n");

/// The reconnect delay browsers are told to use, in milliseconds.
const RETRY_MS: u64 = 2000;

/// The opening block: the reconnect delay and the stream's position.
pub fn opening(position: i64) -> Bytes {
    let mut frame = format!("retry: {RETRY_MS}\n");
    push_event(
        &mut frame,
        Some(position),
        POSITION_EVENT,
        &format!(r#"{{"position":{position}}}"#),
    );
    frame.into()
}

/// A stored message: its id, its kind as the event name, its JSON as data (or, for a message
/// too large to send, its id, `oversized` and the stand-in); rendered once and shared by every
/// stream that sends it.
pub fn message(message: &Message) -> Bytes {
    message
        .frame
        .get_or_init(|| render_message(message))
        .clone()
}

/// A message's kind is always a valid one ([`Message::from_row`] sees to stored rows whose
/// kind is not), so it is safe as the event name.
fn render_message(message: &Message) -> Bytes {
    let kind = if message.oversized {
        OVERSIZED_EVENT
    } else {
        message.kind.as_str()
    };
    event(Some(message.id), kind, message.data.get())
}

/// A signal: no `id:`, so it never moves a client's resume position; rendered once.
pub fn signal(signal: &Signal) -> Bytes {
    signal
        .frame
        .get_or_init(|| event(None, &signal.kind, signal.data.get()))
        .clone()
}

/// A change of the stream's rooms, at the position of the row that recorded it, so that a
/// client resuming after it does not see it again.
pub fn change(id: i64, name: &str, data: &str) -> Bytes {
    event(Some(id), name, data)
}

/// A control event of the relay's own (`reset`, `token_expired`).
pub fn control(name: &str, data: &str) -> Bytes {
    event(None, name, data)
}

fn event(id: Option<i64>, name: &str, data: &str) -> Bytes {
    let mut frame = String::with_capacity(data.len() + name.len() + 40);
    push_event(&mut frame, id, name, data);
    frame.into()
}

/// Appends one event block. Data is JSON, which has no line breaks outside strings (where
/// they are escaped); any that an operator's hand-made row might still hold become separate
/// `data:` lines, which readers join back with `\n`.
fn push_event(frame: &mut String, id: Option<i64>, name: &str, data: &str) {
    if let Some(id) = id {
        frame.push_str(&format!("id: {id}\n"));
    }
    frame.push_str("event: ");
    frame.push_str(name);
    frame.push('\n');
    for line in data.split('\n') {
        frame.push_str("data: ");
        frame.push_str(line.strip_suffix('\r').unwrap_or(line));
        frame.push('\n');
    }
    frame.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::{SseItem, SseParser};

    fn parse(bytes: &[u8]) -> Vec<SseItem> {
        SseParser::new().feed(bytes)
    }

    #[test]
    fn the_opening_is_a_named_event_with_the_position() {
        let items = parse(&opening(42));
        let [SseItem::Event(event)] = items.as_slice() else {
            panic!("{items:?}");
        };
        assert_eq!(event.id.as_deref(), Some("42"));
        assert_eq!(event.event.as_deref(), Some("position"));
        assert_eq!(event.data.as_deref(), Some(r#"{"position":42}"#));
        assert_eq!(event.retry, Some(2000));
    }

    #[test]
    fn a_keepalive_ends_no_event() {
        let mut bytes = KEEPALIVE.to_vec();
        bytes.extend_from_slice(&control("reset", "{}"));
        bytes.extend_from_slice(&KEEPALIVE);
        let items = parse(&bytes);
        let events: Vec<_> = items
            .iter()
            .filter_map(|item| match item {
                SseItem::Event(event) => Some(event),
                SseItem::Comment(_) => None,
            })
            .collect();
        assert_eq!(events.len(), 1, "{items:?}");
        assert_eq!(events[0].event.as_deref(), Some("reset"));
    }

    #[test]
    fn an_oversized_message_is_the_oversized_event_with_its_own_id() {
        let message = Message::from_row(crate::message::StoredRow {
            id: 9,
            kind: "chat".into(),
            sender: None,
            participants: vec!["bob".into()],
            payload: None,
            created_at: "2026-12-04T18:00:00.000000Z",
            bytes: 2_000_000,
            control: false,
        })
        .unwrap();
        let items = parse(&super::message(&message));
        let [SseItem::Event(event)] = items.as_slice() else {
            panic!("{items:?}");
        };
        assert_eq!(event.id.as_deref(), Some("9"));
        assert_eq!(event.event.as_deref(), Some("oversized"));
        assert_eq!(event.data.as_deref(), Some(message.data.get()));
    }

    #[test]
    fn line_breaks_in_data_become_data_lines() {
        let items = parse(&control("reset", "a\nb\r\nc"));
        let [SseItem::Event(event)] = items.as_slice() else {
            panic!("{items:?}");
        };
        assert_eq!(event.data.as_deref(), Some("a\nb\nc"));
    }
}
