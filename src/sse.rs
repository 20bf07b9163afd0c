//! A minimal, incremental parser for `text/event-stream` (Server-Sent Events).
//!
//! pgrelay serves its messages as SSE, and two of its own clients have to read
//! them back: `pgrelay tail` and the integration tests. Both want to see the
//! stream as it is on the wire, so this parser follows the WHATWG "event
//! stream interpretation" rules, with two deliberate differences from what a
//! browser's `EventSource` reports:
//!
//! * comments are yielded instead of dropped, so keepalives can be observed;
//! * a block that set only `id:`, `event:` or `retry:` is yielded too, where a
//!   browser would silently update its state and dispatch nothing.
//!
//! The parser is fed byte chunks exactly as they come off the network. A
//! chunk may end anywhere, in the middle of a UTF-8 sequence or between the
//! CR and LF of a line ending, so the parser buffers the unfinished line and
//! remembers a trailing CR. Line endings are ASCII bytes that never occur
//! inside a multi-byte UTF-8 sequence, which is why lines can be split as
//! bytes and only decoded once complete.

use std::mem;

/// The UTF-8 byte order mark, which the stream may start with and which is
/// not part of the first line.
const BOM: &[u8] = "\u{feff}".as_bytes();

/// One dispatched block of an event stream (including blocks that only carried `id:` or `retry:`, which browsers do not dispatch but tools want to see).
///
/// Every field describes this block alone: a field is `None` when the block
/// did not set it. In particular `id` is not carried over from earlier
/// blocks; the stream's last event ID is the most recent `id` that was `Some`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The value of the block's last valid `id:` line.
    pub id: Option<String>,
    /// The value of the block's last `event:` line, the event type.
    pub event: Option<String>,
    /// The values of all the block's `data:` lines, joined with `\n`.
    pub data: Option<String>,
    /// The reconnection time in milliseconds from the block's last valid `retry:` line.
    pub retry: Option<u64>,
}

impl SseEvent {
    /// Whether this is a relay stream's opening event (`position`), which carries the
    /// stream's position in `id:` and is no message.
    pub fn is_opening(&self) -> bool {
        self.event.as_deref() == Some(crate::message::POSITION_EVENT)
    }

    /// Whether this is a stored message: an event with an `id:` and data that is not the
    /// opening. (Signals and control events carry no `id:`.)
    pub fn is_message(&self) -> bool {
        self.id.is_some() && self.data.is_some() && !self.is_opening()
    }
}

/// What the parser yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseItem {
    /// A complete block, dispatched by a blank line.
    Event(SseEvent),
    /// A line starting with `:`, without the colon and one following space.
    Comment(String),
}

/// Incremental parser: feed bytes, take items.
#[derive(Default)]
pub struct SseParser {
    /// The current line so far, without its line ending.
    line: Vec<u8>,
    /// Whether the last byte seen was a CR, so that an LF arriving in the
    /// next chunk completes a CRLF instead of ending an empty line.
    after_cr: bool,
    /// Whether the start of the stream has been checked for a BOM.
    bom_checked: bool,
    /// The fields set so far in the current block.
    block: SseEvent,
}

impl SseParser {
    /// Creates a parser positioned at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes the next chunk of the stream and returns the items it completed.
    ///
    /// Anything after the last line ending is kept for the next call. A
    /// block still open when the stream ends is never dispatched, as the
    /// specification requires.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<SseItem> {
        if !self.bom_checked {
            // The BOM itself may be split across chunks: hold on to a prefix
            // of it until enough bytes have arrived to tell. None of its
            // bytes is a line ending, so `line` can hold them meanwhile.
            self.line.extend_from_slice(bytes);
            if self.line.len() < BOM.len() && BOM.starts_with(&self.line) {
                return Vec::new();
            }
            self.bom_checked = true;
            let head = mem::take(&mut self.line);
            return self.feed(head.strip_prefix(BOM).unwrap_or(&head));
        }

        let mut items = Vec::new();
        let mut rest = bytes;
        while let Some((&first, after_first)) = rest.split_first() {
            if mem::take(&mut self.after_cr) && first == b'\n' {
                rest = after_first;
                continue;
            }
            let Some(end) = rest.iter().position(|&b| b == b'\r' || b == b'\n') else {
                self.line.extend_from_slice(rest);
                break;
            };
            self.line.extend_from_slice(&rest[..end]);
            self.after_cr = rest[end] == b'\r';
            rest = &rest[end + 1..];
            let line = mem::take(&mut self.line);
            if let Some(item) = self.process_line(&String::from_utf8_lossy(&line)) {
                items.push(item);
            }
        }
        items
    }

    /// Applies one complete line, returning the item it completes, if any.
    fn process_line(&mut self, line: &str) -> Option<SseItem> {
        if line.is_empty() {
            let block = mem::take(&mut self.block);
            return (block != SseEvent::default()).then_some(SseItem::Event(block));
        }
        if let Some(comment) = line.strip_prefix(':') {
            let comment = comment.strip_prefix(' ').unwrap_or(comment);
            return Some(SseItem::Comment(comment.to_owned()));
        }

        // A line without a colon is a field name with an empty value.
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => self.block.event = Some(value.to_owned()),
            "data" => match &mut self.block.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.block.data = Some(value.to_owned()),
            },
            // An ID with a NUL could not be sent back in a `Last-Event-ID`
            // header, so the specification ignores it.
            "id" if !value.contains('\0') => self.block.id = Some(value.to_owned()),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                // Digits only, so parsing fails only on overflow; such a
                // delay is meaningless and ignored like any invalid one.
                if let Ok(retry) = value.parse() {
                    self.block.retry = Some(retry);
                }
            }
            // Unknown fields, and invalid `id` and `retry` values, are ignored.
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(stream: &[u8]) -> Vec<SseItem> {
        SseParser::new().feed(stream)
    }

    fn event(
        id: Option<&str>,
        event: Option<&str>,
        data: Option<&str>,
        retry: Option<u64>,
    ) -> SseItem {
        SseItem::Event(SseEvent {
            id: id.map(str::to_owned),
            event: event.map(str::to_owned),
            data: data.map(str::to_owned),
            retry,
        })
    }

    fn data(data: &str) -> SseItem {
        event(None, None, Some(data), None)
    }

    fn comment(text: &str) -> SseItem {
        SseItem::Comment(text.to_owned())
    }

    /// A stream exercising every feature, with all three line endings and
    /// multi-byte characters, so that splitting it anywhere is interesting.
    const SAMPLE: &[u8] = b"\xef\xbb\xbf: hello\r\n\
        retry: 2500\r\n\
        \r\n\
        id: 1\n\
        event: message\n\
        data: caf\xc3\xa9 \xf0\x9f\xa6\x80\n\
        data:second line\n\
        \n\
        :keepalive\r\
        \r\
        id: 2\r\n\
        \r\n\
        data\r\n\
        \r\n\
        id: 3\r\
        data: {\"n\":3}\r\n\
        unknown: ignored\n\
        \n\
        data: never dispatched";

    fn sample_items() -> Vec<SseItem> {
        vec![
            comment("hello"),
            event(None, None, None, Some(2500)),
            event(
                Some("1"),
                Some("message"),
                Some("café 🦀\nsecond line"),
                None,
            ),
            comment("keepalive"),
            event(Some("2"), None, None, None),
            data(""),
            event(Some("3"), None, Some("{\"n\":3}"), None),
        ]
    }

    #[test]
    fn parses_a_sample_stream() {
        assert_eq!(parse(SAMPLE), sample_items());
    }

    #[test]
    fn any_split_into_two_chunks_gives_the_same_items() {
        for at in 0..=SAMPLE.len() {
            let mut parser = SseParser::new();
            let mut items = parser.feed(&SAMPLE[..at]);
            items.extend(parser.feed(&SAMPLE[at..]));
            assert_eq!(items, sample_items(), "split at byte {at}");
        }
    }

    #[test]
    fn byte_by_byte_feeding_gives_the_same_items() {
        let mut parser = SseParser::new();
        let items: Vec<_> = SAMPLE.iter().flat_map(|&b| parser.feed(&[b])).collect();
        assert_eq!(items, sample_items());
    }

    #[test]
    fn all_line_endings_are_equivalent() {
        let expected = vec![data("a\nb"), comment("c")];
        for ending in ["\n", "\r", "\r\n"] {
            let stream = ["data: a", "data: b", "", ": c", ""].join(ending);
            assert_eq!(parse(stream.as_bytes()), expected, "{ending:?}");
        }
        // Mixed endings, including LF CR, which is two line endings.
        assert_eq!(parse(b"data: a\n\rdata: b\r\n\n"), [data("a"), data("b")]);
    }

    #[test]
    fn crlf_split_across_chunks_is_one_line_ending() {
        let mut parser = SseParser::new();
        assert_eq!(parser.feed(b"data: a\r"), []);
        // Were the LF a line ending of its own, it would dispatch "a" alone.
        assert_eq!(parser.feed(b"\ndata: b\r"), []);
        assert_eq!(parser.feed(b"\n"), []);
        assert_eq!(parser.feed(b""), []);
        assert_eq!(parser.feed(b"\r\n"), [data("a\nb")]);
    }

    #[test]
    fn data_lines_are_joined_with_newlines() {
        assert_eq!(
            parse(b"data: one\ndata:\ndata:  three\n\n"),
            [data("one\n\n three")]
        );
        assert_eq!(parse(b"data\ndata\n\n"), [data("\n")]);
    }

    #[test]
    fn only_one_space_after_the_colon_is_stripped() {
        assert_eq!(parse(b"data:x\n\n"), [data("x")]);
        assert_eq!(parse(b"data: x\n\n"), [data("x")]);
        assert_eq!(parse(b"data:  x \n\n"), [data(" x ")]);
        assert_eq!(parse(b"data: a: b\n\n"), [data("a: b")]);
        assert_eq!(parse(b"data:\tx\n\n"), [data("\tx")]);
    }

    #[test]
    fn comments_are_yielded_in_order() {
        assert_eq!(
            parse(b": keepalive\n:\n::x\ndata: a\n: inside\n\n"),
            [
                comment("keepalive"),
                comment(""),
                comment(":x"),
                comment("inside"),
                data("a")
            ]
        );
    }

    #[test]
    fn blocks_without_data_are_yielded() {
        assert_eq!(parse(b"id: 7\n\n"), [event(Some("7"), None, None, None)]);
        assert_eq!(parse(b"id\n\n"), [event(Some(""), None, None, None)]);
        assert_eq!(
            parse(b"event: ping\n\n"),
            [event(None, Some("ping"), None, None)]
        );
        assert_eq!(parse(b"event\n\n"), [event(None, Some(""), None, None)]);
        // Blocks with nothing valid in them dispatch nothing.
        assert_eq!(parse(b"\n\n\r\n"), []);
        assert_eq!(parse(b"foo: bar\nretry: soon\nid: a\0b\n\n"), []);
    }

    #[test]
    fn later_fields_override_earlier_ones() {
        assert_eq!(
            parse(b"id: 1\nid: 2\nevent: a\nevent: b\nretry: 1\nretry: 2\ndata: x\n\n"),
            [event(Some("2"), Some("b"), Some("x"), Some(2))]
        );
        // Ignored values leave the earlier valid ones in place.
        assert_eq!(
            parse(b"id: 1\nid: \0\nretry: 5\nretry: 6s\ndata: x\n\n"),
            [event(Some("1"), None, Some("x"), Some(5))]
        );
    }

    #[test]
    fn fields_do_not_carry_over_between_blocks() {
        assert_eq!(
            parse(b"id: 1\nevent: a\nretry: 9\ndata: x\n\ndata: y\n\n"),
            [event(Some("1"), Some("a"), Some("x"), Some(9)), data("y")]
        );
    }

    #[test]
    fn retry_must_be_digits_only() {
        for bad in [
            "",
            "  5",
            "5 ",
            "-5",
            "+5",
            "5.0",
            "5ms",
            "99999999999999999999999",
        ] {
            let stream = format!("retry:{bad}\ndata: x\n\n");
            assert_eq!(parse(stream.as_bytes()), [data("x")], "{bad:?}");
        }
        assert_eq!(parse(b"retry: 007\n\n"), [event(None, None, None, Some(7))]);
    }

    #[test]
    fn field_names_are_exact() {
        assert_eq!(parse(b"Data: x\ndata : y\n data: z\n\n"), []);
    }

    #[test]
    fn a_bom_is_stripped_only_at_the_start() {
        assert_eq!(parse(b"\xef\xbb\xbfdata: a\n\n"), [data("a")]);
        // A second BOM belongs to the field name, which is then unknown.
        assert_eq!(parse(b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\n"), []);
        assert_eq!(parse(b"data: \xef\xbb\xbfa\n\n"), [data("\u{feff}a")]);

        let mut parser = SseParser::new();
        assert_eq!(parser.feed(b"\xef"), []);
        assert_eq!(parser.feed(b"\xbb"), []);
        assert_eq!(parser.feed(b"\xbfdata: a\n\n"), [data("a")]);

        // Something that merely starts like a BOM is kept.
        assert_eq!(parse(b"\xef\xbbdata: a\n\n"), []);
        let mut parser = SseParser::new();
        assert_eq!(parser.feed(b"\xef"), []);
        assert_eq!(parser.feed(b"\n: x\n"), [comment("x")]);
    }

    #[test]
    fn invalid_utf8_becomes_replacement_characters() {
        assert_eq!(parse(b"data: a\xffb\xc3\n\n"), [data("a\u{fffd}b\u{fffd}")]);
    }

    #[test]
    fn an_unterminated_block_is_not_dispatched() {
        let mut parser = SseParser::new();
        assert_eq!(parser.feed(b"data: a\n"), []);
        assert_eq!(parser.feed(b"data: b"), []);
        assert_eq!(parser.feed(b"\n\n"), [data("a\nb")]);
    }
}
