//! Storing what `POST /v1/messages` publishes: one transaction per batch (group commit), each
//! message once per idempotency key.

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
}

/// Stores a message (with its key, if any) and says what came of it.
pub async fn publish(
    pool: &DbPool,
    message: &NewMessage,
    key: Option<&IdempotencyKey>,
) -> Result<Published, Error> {
    let outcomes = publish_all(pool, &[(message, key)]).await?;
    Ok(outcomes[0])
}

/// Stores `messages` in one transaction, one call of `pgrelay.publish_many` (one lock, one
/// commit, ids in this order), and returns each one's outcome in that order. A key repeated in
/// the batch, or stored by an earlier transaction, fails nothing: that element is answered
/// with the first message's id.
pub async fn publish_all(
    pool: &DbPool,
    messages: &[(&NewMessage, Option<&IdempotencyKey>)],
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
    }
    let rows: Vec<Row> = messages
        .iter()
        .map(|(message, key)| Row {
            participants: &message.participants,
            payload: &message.payload,
            kind: &message.kind,
            sender: &message.sender,
            idempotency_subject: key.map(|key| key.subject.as_str()),
            idempotency_key: key.map(|key| key.key.as_str()),
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
            let id: i64 = row.try_get(0)?;
            match row.try_get::<_, &str>(1)? {
                "published" => Ok(Published::New(id)),
                "replayed" => Ok(Published::Replayed(id)),
                "key_reused" => Ok(Published::KeyReused(id)),
                other => Err(schema_mismatch(&format!("the outcome {other:?}"))),
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
