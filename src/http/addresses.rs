//! Whom a caller may hear and address: its participant, the rooms its token grants and those
//! `pgrelay.member_rooms` returns, and everyone (`*`). Streams and history reads listen on
//! these (or, with `?rooms=`, on some of the rooms); publishing to a room needs it among them.

use axum::http::StatusCode;

use super::extract::comma_list;
use super::{ApiError, AppState};
use crate::auth::Claims;
use crate::message::{is_room, valid_room, Addresses, EVERYONE};
use crate::store;

/// Most rooms one `?rooms=` may name.
const MAX_NARROWED_ROOMS: usize = 100;

/// The caller's rooms: the token's `rooms` claim and the app's `pgrelay.member_rooms`.
async fn rooms_of(state: &AppState, claims: &Claims) -> Result<Vec<String>, ApiError> {
    let mut rooms = claims.rooms.clone();
    let members = store::member_rooms(&state.pool, &claims.sub)
        .await
        .map_err(|error| ApiError::internal("pgrelay.member_rooms failed", &error))?;
    rooms.extend(members);
    Ok(rooms)
}

/// The addresses a stream or history read listens on: all the caller's, or with `?rooms=`
/// (`narrow`) only those rooms, each of which the caller must have (403 otherwise).
pub async fn listening(
    state: &AppState,
    claims: &Claims,
    narrow: Option<&str>,
) -> Result<Addresses, ApiError> {
    // Checked before the database is asked anything.
    let narrow = narrow.map(parse_rooms).transpose()?;
    let addresses = Addresses::new(claims.sub.clone(), rooms_of(state, claims).await?);
    match narrow {
        None => Ok(addresses),
        Some(rooms) => addresses.narrow(rooms).map_err(|room| {
            ApiError::new(
                StatusCode::FORBIDDEN,
                "room_not_granted",
                format!("you are not a member of {room}"),
            )
        }),
    }
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
/// app) or the room among the caller's.
pub async fn check_may_address(
    state: &AppState,
    claims: &Claims,
    participants: &[String],
) -> Result<(), ApiError> {
    if claims.has_scope("broadcast") {
        return Ok(());
    }
    if participants.iter().any(|address| address == EVERYONE) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "broadcast_not_allowed",
            "sending to `*` (everyone) needs a token with scope `broadcast`",
        ));
    }
    if claims.has_scope(super::publish::SERVICE) {
        return Ok(());
    }
    let unlisted: Vec<String> = participants
        .iter()
        .filter(|address| is_room(address) && !claims.rooms.contains(address))
        .cloned()
        .collect();
    if unlisted.is_empty() {
        return Ok(());
    }
    // Only now ask the app's membership: direct messages never need it.
    let members = rooms_of(state, claims).await?;
    match unlisted.into_iter().find(|room| !members.contains(room)) {
        None => Ok(()),
        Some(room) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "room_not_granted",
            format!("you are not a member of {room}"),
        )),
    }
}
