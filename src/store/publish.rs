//! Storing what `POST /v1/messages` publishes: one transaction per batch (group commit), each
//! message once per idempotency key, none from a revoked token.

use std::time::Duration;

use serde_json::value::RawValue;
use tokio::time::Instant;
use tokio_postgres::types::{Json, Type};

use super::DbPool;
use crate::error::Error;
use crate::message::NewMessage;

/// A request's `Idempotency-Key`, which belongs to the token subject that sent it: the same
/// key from the same subject, within retention, is the same message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// The token's `sub` (a `service` token's, not the `sender` it named).
    pub subject: String,
    /// The header's value: 1 to 255 visible ASCII characters.
    pub key: String,
}

/// The token a message is published with. `pgrelay.publish_many` checks it against
/// `pgrelay.revocations` inside the transaction that would store the message, after the order
/// lock: exact, and without a query of its own before the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Author {
    /// The token's `sub`: who answers for the request (its rate limit, its keys; a `service`
    /// token's, not the `sender` it named).
    pub subject: String,
    /// The token's `iat` (seconds since the epoch); a token without one counts as issued
    /// before any revocation.
    pub issued_at: Option<u64>,
}

/// One message to publish, with its author and the request's key, if any.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// What to store.
    pub message: &'a NewMessage,
    /// The token it comes with.
    pub author: &'a Author,
    /// The request's `Idempotency-Key`.
    pub key: Option<&'a IdempotencyKey>,
}

/// What publishing one message came to (`pgrelay.publish_many`'s outcome).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// Stored now, with this id.
    New(i64),
    /// Its key was used before, for the same message, stored with this id; nothing new was
    /// stored.
    Replayed(i64),
    /// Its key was used before for another message (this id); nothing was stored.
    KeyReused(i64),
    /// Its token was revoked (`pgrelay.revoke_tokens`); nothing was stored.
    TokenRevoked,
}

/// One element of `pgrelay.publish_many`'s argument.
#[derive(Debug, serde::Serialize)]
struct Row<'a> {
    participants: &'a [String],
    payload: &'a RawValue,
    kind: &'a str,
    sender: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_subject: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<&'a str>,
    token_subject: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_issued_at: Option<u64>,
}

/// Stores a message (with its key, if any) and says what came of it.
pub async fn publish(pool: &DbPool, outgoing: Outgoing<'_>) -> Result<Published, Error> {
    let outcomes = publish_all(pool, &[outgoing]).await?;
    Ok(outcomes[0])
}

/// Stores `messages` in one transaction, one call of `pgrelay.publish_many` (one lock, one
/// commit, ids in this order), and returns each one's outcome in that order. Behind more
/// pending messages than a page, earlier calls number a page each and store nothing. A key
/// repeated in the batch, or stored by an earlier transaction, fails nothing: that element is
/// answered with the first message's id. Nor does a revoked token: its message is not stored.
pub async fn publish_all(
    pool: &DbPool,
    messages: &[Outgoing<'_>],
) -> Result<Vec<Published>, Error> {
    let rows: Vec<Row> = messages
        .iter()
        .map(|outgoing| Row {
            participants: &outgoing.message.participants,
            payload: &outgoing.message.payload,
            kind: &outgoing.message.kind,
            sender: &outgoing.message.sender,
            idempotency_subject: outgoing.key.map(|key| key.subject.as_str()),
            idempotency_key: outgoing.key.map(|key| key.key.as_str()),
            token_subject: &outgoing.author.subject,
            token_issued_at: outgoing.author.issued_at,
        })
        .collect();
    let batch = Json(rows);
    // Each call gives ids only after numbering everything committed before it, one page of
    // it under the order lock; with more pending it stores nothing and is called again.
    let deadline = Instant::now() + NUMBERING_PATIENCE;
    loop {
        if let Some(outcomes) = publish_once(pool, &batch, messages.len()).await? {
            return Ok(outcomes);
        }
        if Instant::now() >= deadline {
            return Err(Error::connection(format!(
                "the messages committed before this publish were still being numbered after \
                 {NUMBERING_PATIENCE:?}; nothing was stored"
            )));
        }
    }
}

/// How long a publish goes on numbering, a page per call, what committed before it.
const NUMBERING_PATIENCE: Duration = Duration::from_secs(10);

/// One call of `pgrelay.publish_many`, committed: each message's outcome, or `None` when it
/// numbered a page of what committed before and stored nothing.
async fn publish_once(
    pool: &DbPool,
    batch: &Json<Vec<Row<'_>>>,
    count: usize,
) -> Result<Option<Vec<Published>>, Error> {
    let mut client = pool.get().await?;
    let transaction = client.transaction().await?;
    let answer = transaction
        .query_typed(
            "SELECT id, outcome FROM pgrelay.publish_many($1)",
            &[(batch, Type::JSONB)],
        )
        .await?;
    if let [row] = answer.as_slice() {
        if row.try_get::<_, &str>(1)? == "numbering_behind" {
            transaction.commit().await?;
            return Ok(None);
        }
    }
    let outcomes = answer
        .iter()
        .map(|row| {
            let id: Option<i64> = row.try_get(0)?;
            match (row.try_get::<_, &str>(1)?, id) {
                ("published", Some(id)) => Ok(Published::New(id)),
                ("replayed", Some(id)) => Ok(Published::Replayed(id)),
                ("key_reused", Some(id)) => Ok(Published::KeyReused(id)),
                ("token_revoked", None) => Ok(Published::TokenRevoked),
                (other, _) => Err(schema_mismatch(&format!("the outcome {other:?}"))),
            }
        })
        .collect::<Result<Vec<Published>, Error>>()?;
    // Checked before the commit: dropping the transaction rolls it back.
    if outcomes.len() != count {
        return Err(schema_mismatch(&format!(
            "{} rows for {count} messages",
            outcomes.len(),
        )));
    }
    transaction.commit().await?;
    Ok(Some(outcomes))
}

/// The error of a `pgrelay.publish_many` whose answer this relay does not understand: the
/// database was migrated by another version.
fn schema_mismatch(answered: &str) -> Error {
    Error::setup(format!(
        "pgrelay.publish_many answered {answered}; run `pgrelay migrate` with this version"
    ))
}
