//! The relay's own check of what `jsonb` refuses ([`check`]) agrees with PostgreSQL: on the
//! edges of each rule and on many generated payloads.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::value::RawValue;
use tokio_postgres::Client;

use super::{check, MAX_DEPTH};
use crate::testing::{connect, fresh_database};

/// Whether PostgreSQL stores `text` as `jsonb`. Only a refusal of the data (SQLSTATE classes
/// 22 and 54) counts as a no: a lost connection must not pass for agreement.
async fn postgres_stores(client: &Client, text: &str) -> bool {
    match client
        .query_one("SELECT $1::text::jsonb IS NOT NULL", &[&text])
        .await
    {
        Ok(_) => true,
        Err(error) => {
            let code = error.code().map(|state| state.code().to_owned());
            assert!(
                code.as_deref()
                    .is_some_and(|code| code.starts_with("22") || code.starts_with("54")),
                "PostgreSQL failed otherwise than by refusing the data: {error}"
            );
            false
        }
    }
}

/// Texts at the edge of each rule, agreed on one by one (the unit tests beside `check` say
/// which way each goes; here PostgreSQL says it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_agree_with_postgresql() {
    let client = connect(&fresh_database().await).await;
    let edges = [
        "1e131071",
        "1e131072",
        "9.9999e131071",
        "10e131071",
        "0.00001e131076",
        "0.00001e131077",
        "0.1e131072",
        "-1E+0131071",
        "1e-16383",
        "1e-16384",
        "1.5e-16382",
        "1.55e-16382",
        "0e-16383",
        "0e-16384",
        "0.0e-16383",
        "0e1073741822",
        "0e1073741823",
        "0e-1073741823",
        "1e999999",
        "0e99999999999999999999",
        "-0",
        r#""\u0000""#,
        r#"{"\u0000": 1}"#,
        r#""\\u0000""#,
        r#""\\\u0000""#,
        r#""\ud800""#,
        r#""\udc00""#,
        r#""\ud800\udc00""#,
        r#""\uDBFF\uDFFF""#,
        r#""\ud800\ud800\udc00""#,
        r#""\ud800\u0041""#,
        r#""\ud800\n""#,
        r#""\uffff \u0001 \u007f""#,
    ];
    for text in edges {
        assert!(
            serde_json::from_str::<Box<RawValue>>(text).is_ok(),
            "{text}"
        );
        assert_eq!(
            check(text).is_ok(),
            postgres_stores(&client, text).await,
            "{text}: the check says {:?}",
            check(text)
        );
    }
    // The decimal point's 131,072 digits, written out.
    let longest = format!("9{}", "0".repeat(131_071));
    assert!(check(&longest).is_ok() && postgres_stores(&client, &longest).await);
    let longer = format!("{longest}0");
    assert!(check(&longer).is_err() && !postgres_stores(&client, &longer).await);
}

/// The inside of a JSON string: fragments that meet jsonb's rules (`\u0000`, every kind of
/// surrogate escape, an escaped backslash before `u0000`) among ordinary text.
fn string_contents() -> impl Strategy<Value = String> {
    let fragment = prop_oneof![
        "[a-z ]{0,4}",
        Just(r"\u0000".to_owned()),
        Just(r"\\u0000".to_owned()),
        (0xD800u32..=0xDFFF).prop_map(|unit| format!(r"\u{unit:04x}")),
        (0xD800u32..=0xDBFF, 0xDC00u32..=0xDFFF)
            .prop_map(|(high, low)| format!(r"\u{high:04X}\u{low:04x}")),
        any::<u16>().prop_map(|unit| format!(r"\u{unit:04x}")),
        prop::sample::select(vec![
            r#"\""#, r"\\", r"\/", r"\b", r"\f", r"\n", r"\r", r"\t"
        ])
        .prop_map(str::to_owned),
        any::<char>()
            .prop_filter("no quote, backslash or C0 control", |c| {
                !matches!(c, '"' | '\\' | '\0'..='\x1f')
            })
            .prop_map(String::from),
    ];
    prop::collection::vec(fragment, 0..6).prop_map(|fragments| fragments.concat())
}

/// A JSON number whose digits, scale and exponent land near `numeric`'s limits: 131,072
/// digits before the decimal point, 16,383 after, and the exponent `numeric_in` refuses
/// outright.
fn number() -> impl Strategy<Value = String> {
    let integer = prop_oneof![
        4 => Just("0".to_owned()),
        4 => "[1-9][0-9]{0,8}",
        1 => (1u32..=9, 131_060usize..131_080)
            .prop_map(|(lead, zeros)| format!("{lead}{}", "0".repeat(zeros))),
    ];
    let fraction = prop_oneof![
        4 => Just(String::new()),
        4 => "[0-9]{1,8}",
        2 => (0usize..20).prop_map(|zeros| format!("{}1", "0".repeat(zeros))),
        1 => (16_378usize..16_390, any::<bool>())
            .prop_map(|(len, zeros)| if zeros { "0".repeat(len) } else { "7".repeat(len) }),
    ];
    (any::<bool>(), integer, fraction).prop_flat_map(|(negative, integer, fraction)| {
        let sign = if negative { "-" } else { "" };
        let mantissa = if fraction.is_empty() {
            format!("{sign}{integer}")
        } else {
            format!("{sign}{integer}.{fraction}")
        };
        // Exponents near each limit for these digits: the leading digit at 10^131071, a
        // scale of 16,383, and `strtol`'s result at `INT_MAX / 2`; or small, or huge.
        let leading = integer.len() as i64 - 1;
        let scale_edge = fraction.len() as i64 - 16_383;
        let near = prop_oneof![
            Just(0i64),
            Just(131_071 - leading),
            Just(scale_edge),
            Just(1_073_741_823i64),
            Just(-1_073_741_823i64),
        ];
        let exponent = prop_oneof![
            2 => Just(None),
            2 => (-20i64..20).prop_map(Some),
            4 => (near, -3i64..=3).prop_map(|(edge, delta)| Some(edge + delta)),
            1 => "[0-9]{19,25}".prop_map(|digits| Some(digits.parse().unwrap_or(i64::MAX))),
        ];
        let written = (
            exponent,
            prop::sample::select(vec!["e", "E"]),
            any::<bool>(),
            0usize..3,
        );
        written.prop_map(move |(exponent, marker, plus, zeros)| match exponent {
            None => mantissa.clone(),
            Some(exponent) => {
                let sign = if exponent < 0 {
                    "-"
                } else if plus {
                    "+"
                } else {
                    ""
                };
                let padding = "0".repeat(zeros);
                format!(
                    "{mantissa}{marker}{sign}{padding}{}",
                    exponent.unsigned_abs()
                )
            }
        })
    })
}

/// Payloads built from those strings and numbers, as keys and values, a few levels deep.
fn tricky_payload() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        3 => number(),
        3 => string_contents().prop_map(|contents| format!("\"{contents}\"")),
        1 => prop::sample::select(vec!["true", "false", "null"]).prop_map(str::to_owned),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        let separator = prop::sample::select(vec![",", ", ", ",\n\t "]);
        prop_oneof![
            (
                prop::collection::vec(inner.clone(), 0..4),
                separator.clone()
            )
                .prop_map(|(items, separator)| format!("[{}]", items.join(separator))),
            (
                prop::collection::vec((string_contents(), inner), 0..4),
                separator
            )
                .prop_map(|(fields, separator)| {
                    let fields: Vec<String> = fields
                        .into_iter()
                        .map(|(key, value)| format!("\"{key}\": {value}"))
                        .collect();
                    format!("{{{}}}", fields.join(separator))
                }),
        ]
    })
}

/// On thousands of generated payloads that serde_json parses (as the relay does), the check
/// passes exactly those that `$1::text::jsonb` stores.
#[test]
fn generated_payloads_agree_with_postgresql() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = runtime.block_on(async { connect(&fresh_database().await).await });
    let mut runner = TestRunner::new(Config::with_cases(3000));
    let refused = std::cell::Cell::new(0u32);
    runner
        .run(&tricky_payload(), |text| {
            if serde_json::from_str::<Box<RawValue>>(&text).is_err() {
                return Err(TestCaseError::reject("not JSON"));
            }
            let stored = runtime.block_on(postgres_stores(&client, &text));
            refused.set(refused.get() + u32::from(!stored));
            prop_assert_eq!(
                check(&text).is_ok(),
                stored,
                "the check says {:?} for {:?}",
                check(&text),
                text
            );
            Ok(())
        })
        .unwrap();
    // The generator must exercise both answers, or agreement proves little.
    let refused = refused.get();
    println!("{refused} of 3000 generated payloads refused");
    assert!(refused > 300, "only {refused} refused");
}

/// Arrays nested `depth` deep.
fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

/// Nesting is the one rule the check makes stricter than PostgreSQL, whose limit depends on
/// `max_stack_depth`: a payload nested `MAX_DEPTH` deep is stored through
/// `pgrelay.publish_many` (two levels more) even at the smallest setting, 100 kB; one level
/// more is refused; so is a depth PostgreSQL refuses at the default setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nesting_is_refused_below_any_stack_limit() {
    let mut client = connect(&fresh_database().await).await;
    let deepest = nested(MAX_DEPTH);
    assert!(check(&deepest).is_ok());
    assert!(check(&nested(MAX_DEPTH + 1)).is_err());
    let batch = format!(r#"[{{"participants": ["a"], "sender": "a", "payload": {deepest}}}]"#);
    let transaction = client.transaction().await.unwrap();
    transaction
        .batch_execute("SET LOCAL max_stack_depth = '100kB'")
        .await
        .unwrap();
    transaction
        .query("SELECT pgrelay.publish_many($1::text::jsonb)", &[&batch])
        .await
        .expect("stored at the smallest stack");
    transaction.rollback().await.unwrap();

    let too_deep = nested(20_000);
    assert!(check(&too_deep).is_err());
    assert!(!postgres_stores(&client, &too_deep).await);
}
