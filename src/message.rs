//! What a message is: the domain every other module speaks.
//!
//! A [`Message`] is a stored row, addressed to participants and identified by its
//! commit-ordered id; a [`Signal`] is a live-only event that is never stored for catch-up
//! (typing indicators, presence). Both carry their event JSON rendered once, here, so the
//! stream, `GET /v1/messages` and every recipient share the same bytes. The naming rules
//! ([`valid_kind`], [`valid_name`]) are the ones the SQL enforces on every stored row.
//!
//! A message's `participants` are addresses: a person (`alice`), a room (`#general`) or
//! everyone (`*`). Whom a stream hears is `crate::access`'s business.
//!
//! This module depends on no other module of the crate.

use std::hash::{Hash, Hasher};
use std::sync::OnceLock;

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;

/// One stored message, with its event JSON rendered once and shared by every recipient.
#[derive(Debug)]
pub struct Message {
    /// The commit-ordered id: the SSE `id:` field and the resume position.
    pub id: i64,
    /// The SSE `event:` name: always a [`valid_kind`], so framing-safe and never one of the
    /// relay's own events (see [`Message::from_row`]).
    pub kind: String,
    /// Who receives it; the registry routes on this.
    pub participants: Vec<String>,
    /// The event's JSON, exactly as sent on the stream and in `GET /v1/messages`: the message,
    /// or its stand-in when it is [`oversized`](Message::oversized).
    pub data: Box<RawValue>,
    /// Whether the message was larger than `--max-event-bytes`, so its payload was never
    /// loaded: `data` is the stand-in `{"id","kind","sender","participants","bytes"}` and the
    /// event is named `oversized`. `GET /v1/messages/{id}` reads it whole.
    pub oversized: bool,
    /// The SSE frame, rendered by the first stream that sends it and shared by the others.
    pub frame: OnceLock<Bytes>,
    /// Set when the row is not a message but a change of its one participant's access,
    /// written by pgrelay's own SQL (`rooms_changed`, `revoke_tokens`): streams apply it at
    /// the row's position instead of sending the row.
    pub control: Option<Control>,
    /// [`Message::memory`], counted once: every inbox that takes the message asks.
    memory: u64,
}

/// A change of one participant's access, stored as a `control` row of pgrelay.messages.
#[derive(Debug, Clone, PartialEq)]
pub enum Control {
    /// The participant's member rooms are now `rooms` (what `member_rooms` answered under the
    /// participant's lock); `version` orders such sets whatever order their rows were numbered
    /// in (sql/0010_live_access.sql).
    Rooms { version: i64, rooms: Vec<String> },
    /// Tokens of the participant issued before this time (seconds since the epoch), or without
    /// `iat`, are revoked.
    Revoked { issued_before: f64 },
}

impl Control {
    /// Reads a control row's payload; `None` for a row that is not one pgrelay wrote.
    fn parse(kind: &str, payload: &RawValue) -> Option<Control> {
        #[derive(serde::Deserialize)]
        struct RoomsRow {
            version: i64,
            rooms: Vec<String>,
        }
        #[derive(serde::Deserialize)]
        struct RevokedRow {
            issued_before: f64,
        }
        match kind {
            ROOMS_EVENT => serde_json::from_str::<RoomsRow>(payload.get())
                .ok()
                .map(|row| Control::Rooms {
                    version: row.version,
                    rooms: row.rooms,
                }),
            REVOKED_EVENT => serde_json::from_str::<RevokedRow>(payload.get())
                .ok()
                .map(|row| Control::Revoked {
                    issued_before: row.issued_before,
                }),
            _ => None,
        }
    }
}

/// The event a stream receives when its rooms change.
pub const ROOMS_EVENT: &str = "rooms";

/// The event a stream receives, before it ends, when its token is revoked.
pub const REVOKED_EVENT: &str = "revoked";

/// The event name of a message too large to send whole: the stand-in that takes its place,
/// with its id, so streams stay in order and bounded.
pub const OVERSIZED_EVENT: &str = "oversized";

/// The parts of a stored row that a client sees.
pub struct StoredRow<'a> {
    /// The commit-ordered id.
    pub id: i64,
    /// The event name.
    pub kind: String,
    /// Who sent it, when a participant did.
    pub sender: Option<&'a str>,
    /// Who receives it.
    pub participants: Vec<String>,
    /// Any JSON value; `None` when the message was too large to load.
    pub payload: Option<&'a RawValue>,
    /// When it was inserted, RFC 3339 in UTC.
    pub created_at: &'a str,
    /// Its size: the bytes of the payload's JSON and of the participants' text.
    pub bytes: i64,
    /// Whether pgrelay's own SQL wrote it as a change of access ([`Control`]).
    pub control: bool,
}

/// The JSON shape of a message event (the contract's `data:` object).
#[derive(Serialize)]
struct MessageData<'a> {
    id: i64,
    kind: &'a str,
    sender: Option<&'a str>,
    participants: &'a [String],
    payload: &'a RawValue,
    created_at: &'a str,
}

/// The JSON shape of an `oversized` stand-in: what routing and a client's display need, and
/// how large the message is, never its payload.
#[derive(Serialize)]
struct StandInData<'a> {
    id: i64,
    kind: &'a str,
    sender: Option<&'a str>,
    participants: &'a [String],
    bytes: i64,
}

/// The start of a message's event JSON, up to its payload: [`Message::around_payload`].
#[derive(Serialize)]
struct Head<'a> {
    id: i64,
    kind: &'a str,
    sender: Option<&'a str>,
    participants: &'a [String],
}

/// What each name of a list costs the relay beyond its bytes: its `String`, and the
/// allocator's block around the bytes (glibc's has 8 bytes of header and rounds up to 16
/// bytes, 32 at least, so a name of one letter takes a block of 32).
pub const NAME_OVERHEAD: usize = std::mem::size_of::<String>() + 32;

/// What a message holds beyond its JSON, its frame and its names: the `Message` itself, its
/// kind and the frame's `id:` and `event:` lines. An estimate, generous for ordinary rows.
pub const MESSAGE_OVERHEAD: usize = 256;

/// The memory a list of names takes: their bytes and [`NAME_OVERHEAD`] each.
fn names_memory(names: &[String]) -> usize {
    names.iter().map(|name| name.len() + NAME_OVERHEAD).sum()
}

impl Message {
    /// A message as clients see it, its JSON rendered from `row`; the stand-in when the row
    /// came without its payload. A stored kind that is not a valid one is served as `message`
    /// (`DEFAULT_KIND`), in the event name and the JSON alike, so that no row can pass for one
    /// of the relay's own events or break the framing: rows stored before their kind was
    /// reserved (`rooms` before migration 0008, say; a CHECK constraint is not re-checked
    /// against old rows), or while an operator had dropped the constraint.
    pub fn from_row(row: StoredRow<'_>) -> Result<Message, serde_json::Error> {
        let control = match (row.control, row.payload) {
            (true, Some(payload)) => Control::parse(&row.kind, payload),
            _ => None,
        };
        let kind = served_kind(row.kind);
        let data = match row.payload {
            Some(payload) => serde_json::value::to_raw_value(&MessageData {
                id: row.id,
                kind: &kind,
                sender: row.sender,
                participants: &row.participants,
                payload,
                created_at: row.created_at,
            })?,
            None => serde_json::value::to_raw_value(&StandInData {
                id: row.id,
                kind: &kind,
                sender: row.sender,
                participants: &row.participants,
                bytes: row.bytes,
            })?,
        };
        let rooms = match &control {
            Some(Control::Rooms { rooms, .. }) => names_memory(rooms),
            _ => 0,
        };
        let memory = 2 * data.get().len() + names_memory(&row.participants) + rooms;
        Ok(Message {
            id: row.id,
            kind,
            participants: row.participants,
            data,
            oversized: row.payload.is_none(),
            frame: OnceLock::new(),
            control,
            memory: (memory + MESSAGE_OVERHEAD) as u64,
        })
    }

    /// The bytes the relay holds for this message while streams send it: its event JSON and
    /// the frame rendered from it, and its participants (a control row, its rooms too) as
    /// names. Names count for more than their text: a message to 10,000 one-letter names
    /// has 40 KB of JSON and holds 600 KB.
    pub fn memory(&self) -> u64 {
        self.memory
    }

    /// The event JSON of a message, in the two parts that go around its payload (the JSON of
    /// [`Message::data`] is `before`, the payload, `after`): for answers that pass a large
    /// payload through without parsing or copying it.
    pub fn around_payload(
        id: i64,
        kind: &str,
        sender: Option<&str>,
        participants: &[String],
        created_at: &str,
    ) -> Result<(String, String), serde_json::Error> {
        let mut before = serde_json::to_string(&Head {
            id,
            kind,
            sender,
            participants,
        })?;
        before.pop(); // the closing brace
        before.push_str(r#","payload":"#);
        let after = format!(r#","created_at":{}}}"#, serde_json::to_string(created_at)?);
        Ok((before, after))
    }
}

/// One signal, with its SSE `data` rendered once for every recipient. Signals go out without
/// an `id:` line, so they never move a client's resume position.
#[derive(Debug)]
pub struct Signal {
    /// The SSE `event:` name.
    pub kind: String,
    /// Who receives it.
    pub participants: Vec<String>,
    /// `{"kind":…,"sender":…,"participants":[…],"payload":…}`; for the relay's own
    /// `presence` signals, just the payload `{"participant":…,"online":…,"at":…}`.
    pub data: Box<RawValue>,
    /// The SSE frame, rendered once and shared by every stream that sends it.
    pub frame: OnceLock<Bytes>,
    /// For a presence signal, a fingerprint of the change it carries. A change too large for
    /// one signal row is written as several rows with the same data, one after another, and a
    /// stream that listens on addresses in two of them (a room in one, its own name in the
    /// next) must still hear it once.
    pub presence_change: Option<u64>,
}

/// The JSON shape of a signal event (`data:`), except for presence, whose data is its payload.
#[derive(Serialize)]
struct SignalData<'a> {
    kind: &'a str,
    sender: Option<&'a str>,
    participants: &'a [String],
    payload: &'a RawValue,
}

impl Signal {
    /// A signal as clients see it: presence changes carry their payload as the event's data,
    /// every other kind the sender, participants and payload.
    pub fn new(
        kind: String,
        sender: Option<&str>,
        participants: Vec<String>,
        payload: Box<RawValue>,
    ) -> Result<Signal, serde_json::Error> {
        let data = if kind == "presence" {
            payload
        } else {
            serde_json::value::to_raw_value(&SignalData {
                kind: &kind,
                sender,
                participants: &participants,
                payload: &payload,
            })?
        };
        let presence_change = (kind == "presence").then(|| {
            let mut hasher = std::hash::DefaultHasher::new();
            data.get().hash(&mut hasher);
            hasher.finish()
        });
        Ok(Signal {
            kind,
            participants,
            data,
            frame: OnceLock::new(),
            presence_change,
        })
    }
}

/// A message to publish (or a signal to send), already validated.
#[derive(Debug)]
pub struct NewMessage {
    /// Recipients, the sender included.
    pub participants: Vec<String>,
    /// The SSE event name.
    pub kind: String,
    /// The token's subject.
    pub sender: String,
    /// Any JSON value.
    pub payload: Box<RawValue>,
}

/// The event name of a stream's opening block, which carries the stream's position.
pub const POSITION_EVENT: &str = "position";

/// Event names the relay sends itself, which no message or signal may use. The SQL
/// `pgrelay.valid_kind` reserves the same (`oversized`, `rooms` and `revoked` since
/// migration 0008, whose rows from before are served as [`DEFAULT_KIND`]).
pub const RESERVED_KINDS: [&str; 7] = [
    "oversized",
    POSITION_EVENT,
    "presence",
    "reset",
    REVOKED_EVENT,
    ROOMS_EVENT,
    "token_expired",
];

/// The kind of a message that names none, and the kind a stored row is served as when its
/// own kind is not (or no longer) a valid one.
pub const DEFAULT_KIND: &str = "message";

/// Whether `kind` may name a message or signal: it becomes the SSE `event:` field, so it must
/// not be able to break the framing, and the relay's own event names are reserved. The SQL
/// CHECK constraint `pgrelay.valid_kind` is the same rule.
///
/// ```
/// assert!(pgrelay::valid_kind("chat.edit"));
/// assert!(!pgrelay::valid_kind("two words"));
/// assert!(!pgrelay::valid_kind("line\nbreak"));
/// assert!(!pgrelay::valid_kind("presence")); // reserved for the relay
/// assert!(!pgrelay::valid_kind("position")); // the stream's opening event
/// assert!(!pgrelay::valid_kind("oversized")); // the stand-in for a large message
/// ```
pub fn valid_kind(kind: &str) -> bool {
    (1..=64).contains(&kind.len())
        && kind
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
        && !RESERVED_KINDS.contains(&kind)
}

/// The kind a stored row is served as: its own, or [`DEFAULT_KIND`] when that is not (or no
/// longer) a valid one.
pub fn served_kind(stored: String) -> String {
    if valid_kind(&stored) {
        stored
    } else {
        DEFAULT_KIND.to_owned()
    }
}

/// Longest participant (or sender, or token subject) name, in bytes.
pub const MAX_NAME_LEN: usize = 256;

/// Whether `name` may name a participant, a sender or a token's subject: 1 to 256 bytes of
/// which no character could hide, pass for another or break a display. Names appear in other
/// people's streams, so `alice` must not be forgeable as `ali\u{200B}ce`, `\u{202E}ecila`,
/// `alice\u{2028}` or a blank-looking `\u{3164}`. [`REFUSED_IN_NAMES`] lists what is refused
/// and why; the SQL function `pgrelay.valid_name` is the same rule and guards every stored row
/// (a test compares the two on every code point).
///
/// ```
/// assert!(pgrelay::valid_name("alice"));
/// assert!(pgrelay::valid_name("Zoë 🦀"));
/// assert!(!pgrelay::valid_name(""));
/// assert!(!pgrelay::valid_name("bob\u{0}"));
/// assert!(!pgrelay::valid_name("\u{202E}ecila"));
/// assert!(!pgrelay::valid_name("ali\u{200B}ce"));
/// assert!(!pgrelay::valid_name("alice\u{2028}"));
/// assert!(!pgrelay::valid_name("\u{3164}"));
/// ```
pub fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len()) && !name.chars().any(refused_in_names)
}

/// The code points no name may contain, as sorted, disjoint, inclusive ranges. They are the
/// union of (Unicode 16, `DerivedCoreProperties.txt` and the General_Category of
/// `UnicodeData.txt`):
///
/// - controls (Cc) and format characters (Cf): invisible, or reorder what follows (U+202E);
/// - line and paragraph separators (Zl U+2028, Zp U+2029), which break a line in a display;
/// - space separators (Zs) other than U+0020 SPACE, each of which passes for a space;
/// - `Default_Ignorable_Code_Point`: what a renderer shows as nothing when it has no glyph,
///   among them U+034F, the variation selectors (so an emoji written with U+FE0F is refused;
///   the same emoji without it is fine), the Hangul fillers U+115F, U+1160, U+3164 and U+FFA0,
///   and the reserved default-ignorable ranges, so a future assignment there stays refused;
/// - U+2800 BRAILLE PATTERN BLANK, a symbol (So) that renders blank and is the usual way to
///   make a name look empty.
///
/// The SQL `pgrelay.valid_name` (sql/0008) lists the same ranges.
pub const REFUSED_IN_NAMES: &[(char, char)] = &[
    ('\u{0}', '\u{1F}'),
    ('\u{7F}', '\u{A0}'),
    ('\u{AD}', '\u{AD}'),
    ('\u{34F}', '\u{34F}'),
    ('\u{600}', '\u{605}'),
    ('\u{61C}', '\u{61C}'),
    ('\u{6DD}', '\u{6DD}'),
    ('\u{70F}', '\u{70F}'),
    ('\u{890}', '\u{891}'),
    ('\u{8E2}', '\u{8E2}'),
    ('\u{115F}', '\u{1160}'),
    ('\u{1680}', '\u{1680}'),
    ('\u{17B4}', '\u{17B5}'),
    ('\u{180B}', '\u{180F}'),
    ('\u{2000}', '\u{200F}'),
    ('\u{2028}', '\u{202F}'),
    ('\u{205F}', '\u{206F}'),
    ('\u{2800}', '\u{2800}'),
    ('\u{3000}', '\u{3000}'),
    ('\u{3164}', '\u{3164}'),
    ('\u{FE00}', '\u{FE0F}'),
    ('\u{FEFF}', '\u{FEFF}'),
    ('\u{FFA0}', '\u{FFA0}'),
    ('\u{FFF0}', '\u{FFFB}'),
    ('\u{110BD}', '\u{110BD}'),
    ('\u{110CD}', '\u{110CD}'),
    ('\u{13430}', '\u{1343F}'),
    ('\u{1BCA0}', '\u{1BCA3}'),
    ('\u{1D173}', '\u{1D17A}'),
    ('\u{E0000}', '\u{E0FFF}'),
];

/// Whether `c` is in [`REFUSED_IN_NAMES`].
fn refused_in_names(c: char) -> bool {
    let after = REFUSED_IN_NAMES.partition_point(|&(_, last)| last < c);
    REFUSED_IN_NAMES
        .get(after)
        .is_some_and(|&(first, _)| first <= c)
}

/// The address of every stream: a message to `*` is a broadcast.
pub const EVERYONE: &str = "*";

/// Whether the address `name` is a room's: rooms start with `#`.
pub fn is_room(name: &str) -> bool {
    name.starts_with('#')
}

/// Whether `name` is a well-formed room: `#`, then at least one more character, within the
/// participant-name rule.
///
/// ```
/// assert!(pgrelay::valid_room("#general"));
/// assert!(!pgrelay::valid_room("general"));
/// assert!(!pgrelay::valid_room("#"));
/// ```
pub fn valid_room(name: &str) -> bool {
    is_room(name) && name.len() > 1 && valid_name(name)
}

/// Whether `name` may be a token's subject, the participant a stream is for: a valid name that
/// is neither a room nor everyone.
pub fn valid_subject(name: &str) -> bool {
    valid_name(name) && !is_room(name) && name != EVERYONE
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(payload: Option<&RawValue>) -> StoredRow<'_> {
        StoredRow {
            id: 7,
            kind: "chat".into(),
            sender: Some("alice"),
            participants: vec!["alice".into(), "#ops".into()],
            payload,
            created_at: "2026-12-04T18:00:00.000000Z",
            bytes: 4_000_000,
            control: false,
        }
    }

    #[test]
    fn the_json_around_a_payload_is_the_messages_own() {
        let payload = RawValue::from_string(r#"{"text":"hi \"there\""}"#.into()).unwrap();
        let message = Message::from_row(row(Some(&payload))).unwrap();
        let (before, after) = Message::around_payload(
            7,
            "chat",
            Some("alice"),
            &message.participants,
            "2026-12-04T18:00:00.000000Z",
        )
        .unwrap();
        assert_eq!(
            format!("{before}{}{after}", payload.get()),
            message.data.get()
        );
        assert!(!message.oversized);
    }

    #[test]
    fn a_row_without_its_payload_is_the_stand_in() {
        let message = Message::from_row(row(None)).unwrap();
        assert!(message.oversized);
        assert_eq!(
            message.data.get(),
            r##"{"id":7,"kind":"chat","sender":"alice","participants":["alice","#ops"],"bytes":4000000}"##
        );
    }

    /// The refused ranges are exactly the classes the rule names, as Unicode 16 defines them
    /// (regex-syntax's tables): controls, format characters, line and paragraph separators,
    /// spaces but U+0020, default-ignorable code points, and U+2800. Also sorted and merged,
    /// which the lookup relies on.
    #[test]
    fn the_refused_ranges_are_the_unicode_classes_the_rule_names() {
        let hir = regex_syntax::parse(
            r"[[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{Zs}\p{Default_Ignorable_Code_Point}\x{2800}]--\x20]",
        )
        .unwrap();
        let regex_syntax::hir::HirKind::Class(regex_syntax::hir::Class::Unicode(class)) =
            hir.kind()
        else {
            panic!("{hir:?}");
        };
        let expected: Vec<(char, char)> = class
            .ranges()
            .iter()
            .map(|range| (range.start(), range.end()))
            .collect();
        assert_eq!(REFUSED_IN_NAMES, expected.as_slice());
    }

    /// A stored row whose kind is not (or no longer) valid is served as `message`, in the
    /// event name and the JSON alike.
    #[test]
    fn a_stored_row_with_a_reserved_kind_is_served_as_a_message() {
        let payload = RawValue::from_string("{}".to_owned()).unwrap();
        for (stored, served) in [
            ("rooms", "message"),
            ("two words", "message"),
            ("chat", "chat"),
        ] {
            let message = Message::from_row(StoredRow {
                id: 7,
                kind: stored.to_owned(),
                sender: None,
                participants: vec!["alice".to_owned()],
                payload: Some(&payload),
                created_at: "2026-01-01T00:00:00.000000Z",
                bytes: 2,
                control: false,
            })
            .unwrap();
            assert_eq!(message.kind, served);
            let data: serde_json::Value = serde_json::from_str(message.data.get()).unwrap();
            assert_eq!(data["kind"], served);
        }
    }
}
