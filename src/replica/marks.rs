//! How far in the primary's WAL the rows the listener has routed reach.
//!
//! A stream that catches up must read every row the listener routed before the stream asked
//! (its inbox dropped those, or never had them); whatever the listener routes later reaches
//! its inbox live. So a catch-up is exact on a replica whose replay has passed the WAL
//! position read after the pass that routed the newest of those rows. The listener records
//! that position with every pass *before* it hands the pass's rows to any stream, and a pass
//! that has begun but not recorded yet (its rows may already be filtered out for a stream
//! filed a moment ago) makes a reader wait for its record.

use std::time::Duration;

use tokio::sync::watch;

/// The listener's passes and the WAL position of the newest one recorded.
#[derive(Debug, Clone, Copy, Default)]
struct Mark {
    /// Passes begun (and session starts, which count as passes).
    begun: u64,
    /// Passes whose position is recorded, or that failed before routing anything.
    recorded: u64,
    /// The WAL position below which every routed row's commit lies; `None` before the first
    /// pass, or after one that could not read it.
    wal: Option<i64>,
}

/// What the listener has routed, as a WAL position; shared by the listener, which records it,
/// and the catch-ups, which wait for it.
pub struct WalMarks {
    mark: watch::Sender<Mark>,
}

impl Default for WalMarks {
    fn default() -> WalMarks {
        WalMarks {
            mark: watch::Sender::new(Mark::default()),
        }
    }
}

impl WalMarks {
    /// A pass begins (or a LISTEN session starts): readers from now on wait for its record.
    pub fn pass_begins(&self) {
        self.mark.send_modify(|mark| mark.begun += 1);
    }

    /// The pass read its rows, and then the primary's WAL position `wal` (`None`: unknown,
    /// and catch-ups read the primary until a pass knows it again). Called before the pass
    /// routes anything.
    pub fn pass_read(&self, wal: Option<i64>) {
        self.mark.send_modify(|mark| {
            mark.recorded = mark.begun;
            mark.wal = wal.map(|wal| mark.wal.map_or(wal, |before| before.max(wal)));
        });
    }

    /// The pass failed before it routed anything (the session ended): what was routed is
    /// what the last recorded position covers.
    pub fn pass_abandoned(&self) {
        self.mark.send_modify(|mark| mark.recorded = mark.begun);
    }

    /// The newest recorded position, for the replica's lag.
    pub fn latest(&self) -> Option<i64> {
        self.mark.borrow().wal
    }

    /// The WAL position a replica must have replayed for a read to see every row routed
    /// until now: waits (at most `patience`) for the pass under way, if any, to record its
    /// position. `None` when it is not known in time: read the primary.
    pub async fn routed(&self, patience: Duration) -> Option<i64> {
        let mut marks = self.mark.subscribe();
        let begun = marks.borrow().begun;
        let recorded = tokio::time::timeout(patience, marks.wait_for(|m| m.recorded >= begun))
            .await
            .ok()
            .and_then(Result::ok)
            .map(|mark| mark.wal);
        recorded.flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that comes during a pass gets the position that pass records, not the one
    /// before: the pass may route rows the reader's stream will not get live.
    #[tokio::test]
    async fn a_reader_during_a_pass_waits_for_its_position() {
        let marks = std::sync::Arc::new(WalMarks::default());
        marks.pass_begins();
        marks.pass_read(Some(100));
        assert_eq!(marks.routed(Duration::ZERO).await, Some(100));

        marks.pass_begins();
        let reader = tokio::spawn({
            let marks = std::sync::Arc::clone(&marks);
            async move { marks.routed(Duration::from_secs(10)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        marks.pass_read(Some(200));
        assert_eq!(reader.await.unwrap(), Some(200));

        marks.pass_begins();
        assert_eq!(
            marks.routed(Duration::from_millis(10)).await,
            None,
            "a pass that records nothing in time sends the read to the primary"
        );
        marks.pass_abandoned();
        assert_eq!(marks.routed(Duration::ZERO).await, Some(200));
        marks.pass_begins();
        marks.pass_read(None);
        assert_eq!(
            marks.routed(Duration::ZERO).await,
            None,
            "unknown stays unknown"
        );
        marks.pass_begins();
        marks.pass_read(Some(300));
        assert_eq!(marks.routed(Duration::ZERO).await, Some(300));
    }
}
