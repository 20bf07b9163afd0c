//! What PostgreSQL's `jsonb` refuses among texts that are valid JSON.
//!
//! Payloads are stored as `jsonb`, which is stricter than JSON: it decodes every string into
//! the database's text and every number into `numeric`. A payload it refuses fails the
//! whole group-commit transaction it was put in, so the relay refuses such payloads itself,
//! with a 422, before they join one (PostgreSQL 15 has no `pg_input_is_valid` to ask).
//!
//! [`check`] walks the JSON text once, without building anything. Its rules were read in
//! PostgreSQL 15's `jsonapi.c` (`json_lex_string`) and `numeric.c` (`set_var_from_str`,
//! `make_result`) and measured against the server; the tests in `agreement` hold it to
//! `$1::text::jsonb` on many generated payloads. They assume a UTF-8 database (the relay's
//! own test clusters and every hosted PostgreSQL we know of), where any other code point
//! is stored as is. Sizes past jsonb's 256 MiB are left to the payload limit; whatever the
//! check cannot foresee (a constraint an application adds, say) still fails only its own
//! publish, at the price of splitting its batch (see `publisher`).
//!
//! This module depends on no other module of the crate.

use std::fmt;

/// How deep a payload may nest arrays and objects. PostgreSQL's JSON parser recurses once per
/// level and stops at `max_stack_depth` (measured on PostgreSQL 15: about 13,000 levels at the
/// default 2 MB, about 620 at the smallest setting, 100 kB). That limit depends on the
/// setting and on how the server was compiled, so it cannot be mirrored exactly; this one is
/// below it on every setting, with room for the two levels a group-commit batch adds around
/// each payload. It is the one rule of this module stricter than PostgreSQL.
pub const MAX_DEPTH: usize = 512;

/// Most decimal digits `numeric` keeps after the decimal point (its display scale is 14 bits).
const MAX_SCALE: i64 = 16_383;

/// The highest decimal exponent of a nonzero `numeric`'s leading digit: `numeric` stores
/// base-10000 digits with a 16-bit weight, so the leading digit's weight `floor(e / 4)` is at
/// most 32767, which allows 131,072 digits before the decimal point.
const MAX_LEADING_EXPONENT: i64 = 131_071;

/// The exponent `numeric_in` refuses outright, whatever the digits (`INT_MAX / 2` in
/// `set_var_from_str`): a zero such as `0e1073741822` is still accepted, `0e1073741823` is not.
const EXPONENT_LIMIT: i64 = i32::MAX as i64 / 2;

/// Why `jsonb` would refuse a JSON text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// A string or key holds the escape `\u0000`: text in PostgreSQL cannot hold NUL.
    NulCharacter,
    /// A `\uD800`–`\uDFFF` escape that is not a high surrogate directly followed by a low one:
    /// it names no character.
    LoneSurrogate,
    /// A number outside `numeric`'s range: 131,072 digits before the decimal point, 16,383
    /// after it (trailing zeros and exponent included, as `numeric` keeps them).
    NumberOutOfRange,
    /// Arrays and objects nested deeper than [`MAX_DEPTH`].
    TooDeep,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refused::NulCharacter => "a string or key holds \\u0000, which jsonb cannot store",
            Refused::LoneSurrogate => {
                "a string or key holds a \\uD800-\\uDFFF escape that is not half of a \
                 surrogate pair, which names no character"
            }
            Refused::NumberOutOfRange => {
                "a number is outside jsonb's range (at most 131072 digits before the decimal \
                 point and 16383 after it)"
            }
            Refused::TooDeep => "arrays and objects are nested more than 512 deep",
        })
    }
}

/// Whether PostgreSQL's `jsonb` stores `json`, a text already parsed as JSON (by serde_json);
/// if not, why. On text that is not JSON the answer means nothing, but it never panics.
pub fn check(json: &str) -> Result<(), Refused> {
    let bytes = json.as_bytes();
    let mut depth = 0usize;
    let mut at = 0;
    while let Some(&byte) = bytes.get(at) {
        at = match byte {
            b'"' => check_string(bytes, at + 1)?,
            b'-' | b'0'..=b'9' => check_number(bytes, at)?,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(Refused::TooDeep);
                }
                at + 1
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                at + 1
            }
            // Whitespace, `,`, `:` and the letters of `true`, `false` and `null`.
            _ => at + 1,
        };
    }
    Ok(())
}

/// Checks the string whose contents start at `at`; returns where its closing quote ends.
fn check_string(bytes: &[u8], mut at: usize) -> Result<usize, Refused> {
    loop {
        match bytes.get(at) {
            None => return Ok(at),
            Some(b'"') => return Ok(at + 1),
            Some(b'\\') if bytes.get(at + 1) == Some(&b'u') => {
                at = check_unicode_escape(bytes, at)?;
            }
            // Any other escape is one character after the backslash.
            Some(b'\\') => at += 2,
            Some(_) => at += 1,
        }
    }
}

/// Checks the `\uXXXX` escape at `at` (with its partner, for a surrogate pair); returns where
/// it ends.
fn check_unicode_escape(bytes: &[u8], at: usize) -> Result<usize, Refused> {
    match hex_escape(bytes, at) {
        Some(0) => Err(Refused::NulCharacter),
        Some(0xD800..=0xDBFF) => match hex_escape(bytes, at + 6) {
            Some(0xDC00..=0xDFFF) => Ok(at + 12),
            _ => Err(Refused::LoneSurrogate),
        },
        Some(0xDC00..=0xDFFF) => Err(Refused::LoneSurrogate),
        _ => Ok(at + 6),
    }
}

/// The code unit of the `\uXXXX` escape at `at`, if there is one.
fn hex_escape(bytes: &[u8], at: usize) -> Option<u32> {
    let escape = bytes.get(at..at + 6)?;
    if !escape.starts_with(b"\\u") {
        return None;
    }
    escape[2..].iter().try_fold(0, |value, &digit| {
        let digit = char::from(digit).to_digit(16)?;
        Some(value * 16 + digit)
    })
}

/// A number's text as `numeric_in` reads it.
struct Number {
    /// Where its text ends.
    end: usize,
    /// Whether it is written with a minus sign.
    negative: bool,
    /// The written exponent (0 without one), saturated.
    exponent: i64,
    /// The digits `numeric` keeps after the decimal point: the display scale, which the
    /// exponent shifts (`1.5e-3` has scale 4, `1.5e3` scale 0).
    scale: i64,
    /// The decimal exponent of the leading nonzero digit; `None` for a zero.
    leading: Option<i64>,
}

/// Reads the number that starts at `at`.
fn read_number(bytes: &[u8], at: usize) -> Number {
    let negative = bytes.get(at) == Some(&b'-');
    let mut end = at + usize::from(negative);
    let integer = digits(bytes, &mut end);
    let fraction = match bytes.get(end) {
        Some(b'.') => {
            end += 1;
            digits(bytes, &mut end)
        }
        _ => &[][..],
    };
    let exponent = match bytes.get(end) {
        Some(b'e' | b'E') => {
            end += 1;
            let negative = bytes.get(end) == Some(&b'-');
            if matches!(bytes.get(end), Some(b'-' | b'+')) {
                end += 1;
            }
            // Saturating, as `strtol` does: anything this large is refused anyway.
            let magnitude = digits(bytes, &mut end).iter().fold(0i64, |value, digit| {
                value
                    .saturating_mul(10)
                    .saturating_add(i64::from(digit - b'0'))
            });
            if negative {
                -magnitude
            } else {
                magnitude
            }
        }
        _ => 0,
    };
    let fraction_len = i64::try_from(fraction.len()).unwrap_or(i64::MAX);
    let leading = integer
        .iter()
        .chain(fraction)
        .position(|&digit| digit != b'0')
        .map(|index| {
            // The integer digits count down from `integer.len() - 1`, and the fraction's
            // continue below zero.
            let position = i64::try_from(integer.len()).unwrap_or(i64::MAX)
                - 1
                - i64::try_from(index).unwrap_or(i64::MAX);
            position.saturating_add(exponent)
        });
    Number {
        end,
        negative,
        exponent,
        scale: fraction_len.saturating_sub(exponent).max(0),
        leading,
    }
}

/// Checks the number that starts at `at` against `numeric`'s range; returns where it ends.
///
/// `numeric_in` keeps the digits after the decimal point as the display scale and places the
/// leading nonzero digit at a decimal exponent. A zero has no leading digit, so only its scale
/// and the exponent's own limit apply: `0e100000` is stored, `0.0e-16383` is not.
fn check_number(bytes: &[u8], at: usize) -> Result<usize, Refused> {
    let number = read_number(bytes, at);
    let in_range = number.exponent.abs() < EXPONENT_LIMIT
        && number.scale <= MAX_SCALE
        && number
            .leading
            .map_or(true, |leading| leading <= MAX_LEADING_EXPONENT);
    if in_range {
        Ok(number.end)
    } else {
        Err(Refused::NumberOutOfRange)
    }
}

/// The length of `json` (a text [`check`] accepts) with each number counted as PostgreSQL
/// prints it back, digit by digit: `1e5` is `100000`, `1e131071` has 131,072 digits. What
/// streams and reads serve is that printed text, so a payload's limit applies to it. (The
/// rest prints at most about as long as written: `jsonb` adds a space after each `,` and `:`
/// and may shorten escapes.)
pub fn stored_len(json: &str) -> usize {
    let bytes = json.as_bytes();
    let mut len = 0usize;
    let mut at = 0;
    while let Some(&byte) = bytes.get(at) {
        let (next, printed) = match byte {
            b'"' => {
                let end = check_string(bytes, at + 1).unwrap_or(bytes.len());
                (end, end - at)
            }
            b'-' | b'0'..=b'9' => {
                let number = read_number(bytes, at);
                (number.end, printed_len(&number))
            }
            _ => (at + 1, 1),
        };
        len = len.saturating_add(printed);
        at = next;
    }
    len
}

/// How long `numeric_out` prints `number`: its sign, its integer digits (at least `0`), and
/// its scale's digits after a point.
fn printed_len(number: &Number) -> usize {
    let sign = usize::from(number.negative && number.leading.is_some());
    let integer = number
        .leading
        .map_or(1, |leading| leading.max(0).saturating_add(1));
    let fraction = match number.scale {
        0 => 0,
        scale => scale.saturating_add(1),
    };
    let digits = usize::try_from(integer.saturating_add(fraction)).unwrap_or(usize::MAX);
    sign.saturating_add(digits)
}

/// The run of ASCII digits at `*at`, moving `*at` past it.
fn digits<'a>(bytes: &'a [u8], at: &mut usize) -> &'a [u8] {
    let start = *at;
    while bytes.get(*at).is_some_and(u8::is_ascii_digit) {
        *at += 1;
    }
    &bytes[start..*at]
}

#[cfg(test)]
mod agreement;

#[cfg(test)]
mod tests {
    use super::*;

    /// One text of each answer.
    #[test]
    fn one_of_each_answer() {
        assert_eq!(
            check(r#"{"text": "hi \ud83e\udd80", "n": 1e131071}"#),
            Ok(())
        );
        assert_eq!(check(r#"{"text": "\u0000"}"#), Err(Refused::NulCharacter));
        assert_eq!(check(r#"["\ud800"]"#), Err(Refused::LoneSurrogate));
        assert_eq!(check("1e131072"), Err(Refused::NumberOutOfRange));
        assert_eq!(check("0.5e-16383"), Err(Refused::NumberOutOfRange));
    }

    /// Texts PostgreSQL 15 was seen to store or refuse, at the edges of each rule.
    #[test]
    fn edges_measured_on_postgresql() {
        let stored = [
            "1e131071",
            "9.9999e131071",
            "0.00001e131076",
            "0.1e131072",
            "1e+0131071",
            "1E131071",
            "1e-16383",
            "1.5e-16382",
            "0e-16383",
            "0.000e-16380",
            "0e1073741822",
            "-0",
            r#""\ud800\udc00""#,
            r#""\uDBFF\uDFFF""#,
            r#""\uffff""#,
            r#""\u0001""#,
            r#""a\\u0000""#,
            r#"{"a": [true, false, null, -1.5e-3, "x\"y"]}"#,
        ];
        for text in stored {
            assert_eq!(check(text), Ok(()), "{text}");
        }
        let refused = [
            ("1e131072", Refused::NumberOutOfRange),
            ("0.00001e131077", Refused::NumberOutOfRange),
            ("10e131071", Refused::NumberOutOfRange),
            ("100000000000000000000e131052", Refused::NumberOutOfRange),
            ("1e999999", Refused::NumberOutOfRange),
            ("1e-16384", Refused::NumberOutOfRange),
            ("1.55e-16382", Refused::NumberOutOfRange),
            ("0e-16384", Refused::NumberOutOfRange),
            ("-0e-16384", Refused::NumberOutOfRange),
            ("0.0e-16383", Refused::NumberOutOfRange),
            ("0e1073741823", Refused::NumberOutOfRange),
            ("0e99999999999999999999", Refused::NumberOutOfRange),
            (r#""\u0000""#, Refused::NulCharacter),
            (r#"{"\u0000": 1}"#, Refused::NulCharacter),
            (r#""\\\u0000""#, Refused::NulCharacter),
            (r#""\ud800""#, Refused::LoneSurrogate),
            (r#""\udc00""#, Refused::LoneSurrogate),
            (r#""\ud800x""#, Refused::LoneSurrogate),
            (r#""\ud800\u0041""#, Refused::LoneSurrogate),
            (r#""\ud800\ud800\udc00""#, Refused::LoneSurrogate),
            (r#""\ud800\n""#, Refused::LoneSurrogate),
        ];
        for (text, why) in refused {
            assert_eq!(check(text), Err(why), "{text}");
        }
    }

    /// Numbers count as PostgreSQL prints them back; the rest as written.
    #[test]
    fn stored_length_counts_numbers_digit_by_digit() {
        let lengths = [
            ("1e5", 6),      // 100000
            ("1.50", 4),     // 1.50
            ("-1.5e-3", 7),  // -0.0015
            ("-0", 1),       // 0
            ("0e100000", 1), // 0
            ("0.000e-3", 8), // 0.000000
            ("[1e131071]", 131_074),
            (r#"{"a":"x\"y"}"#, 12),
        ];
        for (text, stored) in lengths {
            assert_eq!(stored_len(text), stored, "{text}");
        }
    }

    /// Nesting is counted outside strings only, and refused one level past the limit.
    #[test]
    fn depth_is_counted_outside_strings() {
        let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        assert_eq!(check(&nested(MAX_DEPTH)), Ok(()));
        assert_eq!(check(&nested(MAX_DEPTH + 1)), Err(Refused::TooDeep));
        let brackets_in_a_string = format!("\"{}\"", "[{".repeat(MAX_DEPTH));
        assert_eq!(check(&brackets_in_a_string), Ok(()));
    }

    /// Text cut anywhere never panics the walk.
    #[test]
    fn truncated_text_never_panics() {
        let text = r#"{"a": "\ud800\udc00 \u0041", "b": [-1.25e+17, 0.5]}"#;
        for end in 0..=text.len() {
            let _ = check(&text[..end]);
        }
    }
}
