//! `GET /v1/presence?participants=a,b`: who is online, for participants the caller may see.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::addresses;
use super::extract::{comma_list, Authenticated, Params};
use super::{ApiError, AppState};
use crate::message::valid_name;
use crate::store;

/// Most participants one `GET /v1/presence` may ask about.
const MAX_PRESENCE_QUERY: usize = 100;

/// The query parameters of `GET /v1/presence`.
#[derive(Deserialize, Default)]
pub struct PresenceParams {
    participants: Option<String>,
}

/// Each participant's state: online since when, or offline and last seen when.
pub async fn presence(
    State(state): State<Arc<AppState>>,
    Authenticated(claims): Authenticated,
    Params(params): Params<PresenceParams>,
) -> Result<Json<Value>, ApiError> {
    if let Err(wait) = state.limits.presence.try_take(&claims.sub) {
        return Err(ApiError::rate_limited(
            "too many presence requests; slow down",
            wait,
        ));
    }
    let asked = comma_list(
        params.participants.as_deref().unwrap_or(""),
        valid_name,
        "participants",
        "participant names",
    )?;
    if asked.len() > MAX_PRESENCE_QUERY {
        return Err(ApiError::invalid(format!(
            "ask about at most {MAX_PRESENCE_QUERY} participants at once"
        )));
    }
    // The addresses its stream would hear (the check refuses a revoked token).
    let (access, _) = addresses::listening(&state, &claims, None).await?;
    let states = store::presence(
        &state.pool,
        &claims.sub,
        &access.addresses(),
        &asked,
        state.settings.presence_ttl,
    )
    .await
    .map_err(|error| ApiError::internal("reading presence failed", &error))?;
    let hidden: Vec<&str> = states
        .iter()
        .filter(|state| !state.visible)
        .map(|state| state.participant.as_str())
        .collect();
    if !hidden.is_empty() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "not_in_audience",
            format!(
                "you are not in the presence audience of: {}",
                hidden.join(", ")
            ),
        ));
    }
    let presence: serde_json::Map<String, Value> = states
        .into_iter()
        .map(|state| {
            let entry = match state.since {
                Some(since) => json!({ "online": true, "since": since }),
                None => json!({ "online": false, "last_seen": state.last_seen }),
            };
            (state.participant, entry)
        })
        .collect();
    Ok(Json(json!({ "presence": presence })))
}
