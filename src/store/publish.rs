//! Storing what `POST /v1/messages` publishes: one transaction per batch (group commit), each
//! message once per idempotency key, none from a revoked token.

use serde_json::value::RawValue;
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

/// Stores a message (with its key, if any) and says what came of it.
pub async fn publish(pool: &DbPool, outgoing: Outgoing<'_>) -> Result<Published, Error> {
    let outcomes = publish_all(pool, &[outgoing]).await?;
    Ok(outcomes[0])
}

/// Stores `messages` in one transaction, one call of `pgrelay.publish_many` (one lock, one
/// commit, ids in this order), and returns each one's outcome in that order. A key repeated in
/// the batch, or stored by an earlier transaction, fails nothing: that element is answered
/// with the first message's id. Nor does a revoked token: its message is not stored.
pub async fn publish_all(
    pool: &DbPool,
    messages: &[Outgoing<'_>],
) -> Result<Vec<Published>, Error> {
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
    let mut client = pool.get().await?;
    let transaction = client.transaction().await?;
    let outcomes = transaction
        .query_typed(
            "SELECT id, outcome FROM pgrelay.publish_many($1)",
            &[(&batch, Type::JSONB)],
        )
        .await?
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
    if outcomes.len() != messages.len() {
        return Err(schema_mismatch(&format!(
            "{} rows for {} messages",
            outcomes.len(),
            messages.len()
        )));
    }
    transaction.commit().await?;
    Ok(outcomes)
}

/// The error of a `pgrelay.publish_many` whose answer this relay does not understand: the
/// database was migrated by another version.
fn schema_mismatch(answered: &str) -> Error {
    Error::setup(format!(
        "pgrelay.publish_many answered {answered}; run `pgrelay migrate` with this version"
    ))
}
