//! One message read whole, for `GET /v1/messages/{id}` (never a control row: those are
//! changes of access, not messages): first its size, so the caller can
//! reserve the memory before anything large is read, then the row, whose payload is sent
//! from the driver's own buffer without a copy. Each is one statement on a client the caller
//! chose (the primary's or a replica's, `crate::replica`).

use bytes::Bytes;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Row};

use super::MESSAGE_SIZE;
use crate::error::Error;
use crate::message::{served_kind, Message};

/// The size ([`MESSAGE_SIZE`]) of message `id` if it is addressed to one of `addresses`;
/// `None` when there is no such message, or it is not theirs (the two are not told apart).
pub async fn message_size(
    client: &Client,
    id: i64,
    addresses: &[String],
) -> Result<Option<i64>, Error> {
    let rows = client
        .query_typed(
            &format!(
                "SELECT ({MESSAGE_SIZE})::int8 FROM pgrelay.messages m \
                  WHERE id = $1 AND participants && $2::text[] AND NOT control"
            ),
            &[(&id, Type::INT8), (&addresses, Type::TEXT_ARRAY)],
        )
        .await?;
    Ok(match rows.first() {
        Some(row) => Some(row.try_get(0)?),
        None => None,
    })
}

/// Message `id` whole, if it is (still) addressed to one of `addresses`.
pub async fn whole_message(
    client: &Client,
    id: i64,
    addresses: &[String],
) -> Result<Option<WholeMessage>, Error> {
    let mut rows = client
        .query_typed(
            "SELECT id, kind, sender, participants, payload::text, \
                    to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') \
               FROM pgrelay.messages WHERE id = $1 AND participants && $2::text[] AND NOT control",
            &[(&id, Type::INT8), (&addresses, Type::TEXT_ARRAY)],
        )
        .await?;
    Ok(rows.pop().map(|row| WholeMessage { row }))
}

/// A message's row as the driver read it.
pub struct WholeMessage {
    row: Row,
}

/// Column of the payload's JSON text in a [`whole_message`] row.
const PAYLOAD: usize = 4;

impl WholeMessage {
    /// The message's event JSON (the same as a stream's `data:`) in three pieces: what comes
    /// before the payload, the payload, and what comes after. The payload is the row's own
    /// buffer, not a copy: it lives until the last piece of it has been written.
    pub fn into_json(self) -> Result<[Bytes; 3], Error> {
        let row = &self.row;
        // Checked here, so `RowPayload::as_ref` cannot fail.
        row.try_get::<_, &str>(PAYLOAD)?;
        let participants: Vec<String> = row.try_get(3)?;
        let (before, after) = Message::around_payload(
            row.try_get(0)?,
            &served_kind(row.try_get(1)?),
            row.try_get(2)?,
            &participants,
            row.try_get(5)?,
        )?;
        Ok([
            before.into(),
            Bytes::from_owner(RowPayload(self.row)),
            after.into(),
        ])
    }
}

/// The payload column of a row, as bytes.
struct RowPayload(Row);

impl AsRef<[u8]> for RowPayload {
    fn as_ref(&self) -> &[u8] {
        self.0.get::<_, &str>(PAYLOAD).as_bytes()
    }
}
