//! Whom a stream or request may hear, and how that changes while a stream is open.
//!
//! A stream's addresses are its participant, the rooms its token's `rooms` claim grants (fixed
//! for the token's life), the rooms `pgrelay.member_rooms` answers (its *member rooms*, which
//! change), and everyone (`*`). `?rooms=` narrows a stream to some of its rooms: a narrowed
//! stream hears only those, never its participant's direct messages or broadcasts, and a
//! change of membership only ever takes rooms away from it, never adds one it did not ask for.
//!
//! Changes arrive as [`Control`] rows at their positions in the message order, and [`Access`]
//! applies them: a membership set replaces the member rooms when its version is newer than the
//! one the stream holds (sets are versioned because their rows may be numbered out of the
//! order they were evaluated in; see sql/0010_live_access.sql), and a revocation ends a stream
//! whose token was issued before the cutoff. The same [`Access`] is kept twice per stream: the
//! registry routes live messages by one (as of the listener's position), the stream filters
//! and catches up by the other (as of its cursor); both apply the same rows in id order.

use crate::message::{valid_room, Control, EVERYONE};

/// One stream's (or request's) access: what it hears now.
#[derive(Debug, Clone)]
pub struct Access {
    participant: String,
    /// The token's `rooms` claim: kept for the token's life.
    granted: Vec<String>,
    /// `pgrelay.member_rooms`'s answer, as of `version`.
    members: Vec<String>,
    /// The version of the membership set `members` reflects.
    version: i64,
    /// `?rooms=`: the only rooms this stream may hear, if narrowed.
    narrowed: Option<Vec<String>>,
    /// The token's `iat`, against which revocations are compared.
    issued_at: Option<u64>,
    /// Set once a revocation applied: the stream hears nothing more.
    revoked: bool,
}

/// What applying a [`Control`] changed for one stream.
#[derive(Debug, PartialEq)]
pub enum Change {
    /// Nothing: an older membership set, a set that changes none of this stream's rooms, or a
    /// revocation of tokens issued before this one.
    None,
    /// The stream's rooms changed.
    Rooms {
        added: Vec<String>,
        removed: Vec<String>,
    },
    /// The stream's token is revoked: it hears nothing more.
    Revoked,
}

impl Access {
    /// The access of `participant`'s token (its `rooms` claim `granted` and `iat`), with the
    /// member rooms `members` as of membership version `version`; narrowed to `narrowed` when
    /// given, which errs with the first of those rooms the participant does not have.
    pub fn new(
        participant: String,
        granted: Vec<String>,
        members: Vec<String>,
        version: i64,
        issued_at: Option<u64>,
        narrowed: Option<Vec<String>>,
    ) -> Result<Access, String> {
        let access = Access {
            participant,
            granted: rooms_only(granted),
            members: rooms_only(members),
            version,
            narrowed: None,
            issued_at,
            revoked: false,
        };
        if let Some(rooms) = &narrowed {
            if let Some(stranger) = rooms.iter().find(|room| !access.has_room(room)) {
                return Err(stranger.clone());
            }
        }
        Ok(Access { narrowed, ..access })
    }

    /// Whose access this is.
    pub fn participant(&self) -> &str {
        &self.participant
    }

    /// Whether `room` is among the participant's rooms (granted or member), narrowing aside.
    pub fn has_room(&self, room: &str) -> bool {
        self.granted
            .iter()
            .chain(&self.members)
            .any(|mine| mine == room)
    }

    /// The rooms heard now, each once.
    fn rooms(&self) -> Vec<String> {
        if self.revoked {
            return Vec::new();
        }
        let mut rooms: Vec<String> = Vec::new();
        for room in self.granted.iter().chain(&self.members) {
            let heard = match &self.narrowed {
                Some(narrowed) => narrowed.contains(room),
                None => true,
            };
            if heard && !rooms.contains(room) {
                rooms.push(room.clone());
            }
        }
        rooms
    }

    /// The addresses a message must name one of to be heard.
    pub fn addresses(&self) -> Vec<String> {
        let mut list = self.rooms();
        if self.narrowed.is_none() && !self.revoked {
            list.insert(0, self.participant.clone());
            list.push(EVERYONE.to_owned());
        }
        list
    }

    /// What a catch-up reads: the addresses, plus the participant's own address when narrowed,
    /// because the participant's control rows are addressed to it and must be applied in order.
    pub fn catch_up_addresses(&self) -> Vec<String> {
        let mut list = self.addresses();
        if !list.contains(&self.participant) {
            list.push(self.participant.clone());
        }
        list
    }

    /// Whether a message to `participants` is heard.
    pub fn hears(&self, participants: &[String]) -> bool {
        if self.revoked {
            return false;
        }
        participants.iter().any(|address| {
            if self.narrowed.is_none() && (address == &self.participant || address == EVERYONE) {
                return true;
            }
            self.rooms().contains(address)
        })
    }

    /// Whether a revocation with this cutoff (seconds since the epoch) refuses this token.
    pub fn is_revoked_by(&self, issued_before: f64) -> bool {
        match self.issued_at {
            Some(at) => (at as f64) < issued_before,
            None => true,
        }
    }

    /// Applies a change of this participant's access; answers what it changed for this stream.
    pub fn apply(&mut self, control: &Control) -> Change {
        if self.revoked {
            return Change::None;
        }
        match control {
            Control::Rooms { version, rooms } => {
                if *version <= self.version {
                    return Change::None;
                }
                self.set_members(*version, rooms.clone())
            }
            Control::Revoked { issued_before } => {
                if self.is_revoked_by(*issued_before) {
                    self.revoked = true;
                    Change::Revoked
                } else {
                    Change::None
                }
            }
        }
    }

    /// Replaces the member rooms with `rooms`, read as of membership version `version`,
    /// whatever version the access holds: after retention removed membership sets a stream
    /// never read, the newest version left may be older than the stream's own, and the rooms
    /// read now are still the truth.
    pub fn replace_members(&mut self, version: i64, rooms: Vec<String>) -> Change {
        if self.revoked {
            return Change::None;
        }
        self.set_members(version.max(self.version), rooms)
    }

    /// Takes `rooms` as the member rooms as of `version`; answers what that changed.
    fn set_members(&mut self, version: i64, rooms: Vec<String>) -> Change {
        let before = self.rooms();
        self.version = version;
        self.members = rooms_only(rooms);
        let after = self.rooms();
        let added: Vec<String> = after
            .iter()
            .filter(|r| !before.contains(r))
            .cloned()
            .collect();
        let removed: Vec<String> = before
            .iter()
            .filter(|r| !after.contains(r))
            .cloned()
            .collect();
        if added.is_empty() && removed.is_empty() {
            Change::None
        } else {
            Change::Rooms { added, removed }
        }
    }
}

/// The well-formed rooms among `names`, each once, in order.
fn rooms_only(names: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut kept: Vec<String> = Vec::new();
    for name in names {
        if valid_room(&name) && !kept.contains(&name) {
            kept.push(name);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rooms(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| name.to_string()).collect()
    }

    fn set(version: i64, names: &[&str]) -> Control {
        Control::Rooms {
            version,
            rooms: rooms(names),
        }
    }

    /// A newer set replaces the member rooms and says what changed; an older one, numbered
    /// after it, changes nothing (the concurrent-changes case).
    #[test]
    fn sets_apply_by_version_not_by_arrival() {
        let mut access =
            Access::new("dave".into(), vec![], rooms(&["#a"]), 1, Some(10), None).unwrap();
        assert_eq!(
            access.apply(&set(3, &["#b"])),
            Change::Rooms {
                added: rooms(&["#b"]),
                removed: rooms(&["#a"])
            }
        );
        assert_eq!(access.apply(&set(2, &[])), Change::None);
        assert_eq!(access.addresses(), rooms(&["dave", "#b", "*"]));
        assert!(access.hears(&rooms(&["#b"])) && !access.hears(&rooms(&["#a"])));
    }

    /// A narrowed stream loses rooms but never gains one outside its narrowing; rooms its
    /// token grants stay whatever membership says.
    #[test]
    fn narrowing_only_loses_and_granted_rooms_stay() {
        let narrowed = Some(rooms(&["#a", "#g"]));
        let mut access = Access::new(
            "dave".into(),
            rooms(&["#g"]),
            rooms(&["#a"]),
            0,
            Some(10),
            narrowed,
        )
        .unwrap();
        assert_eq!(
            access.apply(&set(1, &["#b"])),
            Change::Rooms {
                added: vec![],
                removed: rooms(&["#a"])
            }
        );
        assert_eq!(access.addresses(), rooms(&["#g"]));
        assert_eq!(access.catch_up_addresses(), rooms(&["#g", "dave"]));
        assert!(!access.hears(&rooms(&["dave"])));
    }

    /// A revocation hits tokens issued before it or without `iat`, and silences them.
    #[test]
    fn revocation_hits_older_tokens_only() {
        let cutoff = Control::Revoked {
            issued_before: 100.5,
        };
        let mut older = Access::new("m".into(), vec![], vec![], 0, Some(100), None).unwrap();
        let mut newer = Access::new("m".into(), vec![], vec![], 0, Some(101), None).unwrap();
        let mut unknown = Access::new("m".into(), vec![], vec![], 0, None, None).unwrap();
        assert_eq!(older.apply(&cutoff), Change::Revoked);
        assert_eq!(unknown.apply(&cutoff), Change::Revoked);
        assert_eq!(newer.apply(&cutoff), Change::None);
        assert!(older.addresses().is_empty() && !older.hears(&rooms(&["m"])));
        assert_eq!(older.apply(&set(5, &["#a"])), Change::None);
    }
}
