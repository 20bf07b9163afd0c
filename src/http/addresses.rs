//! Whom a caller may hear and address: its participant, the rooms its token grants and those
//! `pgrelay.member_rooms` returns, and everyone (`*`). Streams and history reads listen on
//! these (or, with `?rooms=`, on some of the rooms); publishing to a room needs it among them.
//! Every such request reads the caller's access in one query, which also refuses a revoked
//! token (401 `token_revoked`), so the revocation check costs no round trip of its own; and
//! requests that come at once (a reconnect storm) share that query (`open_reads`). A message
//! is the exception: `pgrelay.publish_many` refuses a revoked token in the transaction that
//! would store it, so a direct message needs no query before it joins its batch.

use axum::http::StatusCode;

use super::extract::{comma_list, unauthorized};
use super::{ApiError, AppState};
use crate::access::Access;
use crate::auth::Claims;
use crate::message::{is_room, valid_room, EVERYONE};
use crate::store::{AccessNow, AccessQuery};

/// Most rooms one `?rooms=` may name.
const MAX_NARROWED_ROOMS: usize = 100;

/// The caller's access now (member rooms only `with_rooms`); 401 when its token is revoked.
async fn access_now(
    state: &AppState,
    claims: &Claims,
    with_rooms: bool,
) -> Result<AccessNow, ApiError> {
    let asked = AccessQuery {
        participant: claims.sub.clone(),
        issued_at: claims.iat,
        with_rooms,
    };
    let now = state
        .streams
        .open_reads
        .access_now(asked)
        .await
        .map_err(|error| ApiError::internal("pgrelay.member_rooms failed", &error))?;
    if now.revoked {
        return Err(token_revoked());
    }
    Ok(now)
}

/// The answer to a revoked token.
pub fn token_revoked() -> ApiError {
    unauthorized(
        "token_revoked",
        "this token was revoked (pgrelay.revoke_tokens); get a new one",
    )
}

/// Where a publish's token is checked against `pgrelay.revocations`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationCheck {
    /// Before anything is sent (a signal: one query).
    Now,
    /// By the transaction that stores the message (`pgrelay.publish_many`), exactly and at no
    /// extra round trip.
    WhenStored,
}

/// What a stream or history read hears: all the caller's addresses, or with `?rooms=`
/// (`narrow`) only those rooms, each of which the caller must have (403 otherwise); and the
/// newest message id when it was read.
pub async fn listening(
    state: &AppState,
    claims: &Claims,
    narrow: Option<&str>,
) -> Result<(Access, i64), ApiError> {
    // Checked before the database is asked anything.
    let narrow = narrow.map(parse_rooms).transpose()?;
    let now = access_now(state, claims, true).await?;
    let access = Access::new(
        claims.sub.clone(),
        claims.rooms.clone(),
        now.member_rooms,
        now.version,
        claims.iat,
        narrow,
    )
    .map_err(|room| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "room_not_granted",
            format!("you are not a member of {room}"),
        )
    })?;
    Ok((access, now.newest_id))
}

/// `?rooms=#a,#b`: well-formed rooms, each once.
fn parse_rooms(list: &str) -> Result<Vec<String>, ApiError> {
    let rooms = comma_list(list, valid_room, "rooms", "rooms such as %23general")?;
    if rooms.len() > MAX_NARROWED_ROOMS {
        return Err(ApiError::invalid(format!(
            "`rooms` may name at most {MAX_NARROWED_ROOMS} rooms"
        )));
    }
    Ok(rooms)
}

/// Whether the caller may send to every address in `participants`: `*` needs scope
/// `broadcast`; a room needs scope `broadcast` or `service` (a backend, which speaks for the
/// app) or the room among the caller's. Asks the database only for membership the token does
/// not list, and for revocation when `revocation` says it is checked now.
pub async fn check_may_address(
    state: &AppState,
    claims: &Claims,
    participants: &[String],
    revocation: RevocationCheck,
) -> Result<(), ApiError> {
    let check_now = revocation == RevocationCheck::Now;
    let broadcast = claims.has_scope("broadcast");
    if !broadcast && participants.iter().any(|address| address == EVERYONE) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "broadcast_not_allowed",
            "sending to `*` (everyone) needs a token with scope `broadcast`",
        ));
    }
    if broadcast || claims.is_service() {
        if check_now {
            access_now(state, claims, false).await?;
        }
        return Ok(());
    }
    let unlisted: Vec<String> = participants
        .iter()
        .filter(|address| is_room(address) && !claims.rooms.contains(address))
        .cloned()
        .collect();
    if unlisted.is_empty() && !check_now {
        return Ok(());
    }
    // Only then ask the app's membership: direct messages never need it.
    let members = access_now(state, claims, !unlisted.is_empty())
        .await?
        .member_rooms;
    match unlisted.into_iter().find(|room| !members.contains(room)) {
        None => Ok(()),
        Some(room) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "room_not_granted",
            format!("you are not a member of {room}"),
        )),
    }
}
