//! Group commit for `POST /v1/messages`.
//!
//! Every message commits under pgrelay's order lock and PostgreSQL's cluster-wide notify lock,
//! held through the WAL flush, so one message per transaction caps the whole database at one
//! publish per flush. Apps that insert from SQL can put many rows in a transaction; HTTP
//! publishers cannot. So the handlers hand their messages to one task, which inserts whatever
//! arrived while its previous commit was in flight as the next transaction (up to
//! `--publish-batch` rows) and answers each request with its own id once that commit is done.
//!
//! A row the database refuses fails its whole transaction, so one sender's bad message must
//! not reach the others' transactions. The HTTP handlers refuse what `jsonb` would (see
//! `jsonb`) before it gets here; this module takes what they cannot foresee, such as a
//! constraint an application added. A refused transaction is split in halves until the guilty
//! message fails alone: it fails only its own request and costs the others a few transactions,
//! not one each. Its publisher (the token's subject: the sender, or the backend that named it)
//! then publishes alone for a while ([`QUARANTINE`]), each message in
//! a transaction of its own beside the batches, a few at a time: a sender that keeps posting
//! such rows would otherwise fail nearly every batch, and since its rows pile up while a batch
//! is split, later batches would hold more of them and take longer to split (measured: honest
//! publishers fell to 3–23% of their throughput alone, worse than retrying one by one).
//!
//! A request with an `Idempotency-Key` travels with its key, and `pgrelay.publish_many` decides
//! under its order lock whether the key was used before (in an earlier transaction, on any
//! instance, or earlier in the same batch): such a request is answered with the first message's
//! id and stores nothing, and never fails its batch. Halves of a split batch commit in order, so
//! a key's first request stays first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::debug;

use crate::error::Error;
use crate::message::NewMessage;
use crate::store::{self, Author, DbPool, IdempotencyKey, Outgoing, Published};

/// Requests that may wait for the publishing task; more make their handlers wait too, so a
/// flood of publishers holds bounded memory.
const QUEUE: usize = 4096;

/// How long a sender whose message the database refused publishes alone; each further
/// refusal starts the period again.
const QUARANTINE: Duration = Duration::from_secs(60);

/// Most quarantined messages committing at once: each holds a pool connection, and a
/// quarantined sender's burst must not take the connections the batches need.
const MAX_ALONE: usize = 2;

/// Most publishers kept publishing alone at once, so that the list holds bounded memory; past it,
/// a newly refused publisher is not set apart (its later refusals cost batches splits again).
const MAX_QUARANTINED: usize = 10_000;

/// The handle the HTTP handlers publish through.
pub struct Publisher {
    /// Where messages that commit alone go, concurrently.
    pool: DbPool,
    /// The publishing task's queue; `None` with `--publish-batch 1`, where every message
    /// commits alone.
    queue: Option<mpsc::Sender<Pending>>,
    /// Publishers who publish alone for now; the publishing task adds those it finds guilty.
    quarantine: Arc<Quarantine>,
    /// Permits for quarantined messages to commit, [`MAX_ALONE`] at a time.
    alone: Semaphore,
}

/// A message waiting for its commit, and where its outcome goes.
pub struct Pending {
    message: NewMessage,
    /// The token that sent it; its subject is quarantined if the database refuses it.
    author: Author,
    /// The request's `Idempotency-Key`, if it sent one.
    key: Option<IdempotencyKey>,
    reply: oneshot::Sender<Result<Published, Error>>,
}

impl Pending {
    fn outgoing(&self) -> Outgoing<'_> {
        Outgoing {
            message: &self.message,
            author: &self.author,
            key: self.key.as_ref(),
        }
    }
}

impl Publisher {
    /// Starts the publishing task, which commits at most `max_batch` messages per
    /// transaction; it ends once the last handle is dropped and the queue is empty.
    pub fn start(pool: DbPool, max_batch: usize) -> Publisher {
        let quarantine = Arc::new(Quarantine::default());
        let queue = (max_batch > 1).then(|| {
            let (queue, pending) = mpsc::channel(QUEUE);
            tokio::spawn(run(pool.clone(), pending, max_batch, quarantine.clone()));
            queue
        });
        Publisher {
            pool,
            queue,
            quarantine,
            alone: Semaphore::new(MAX_ALONE),
        }
    }

    /// Stores `message` from `author` (the token), once per `key`; returns what came of it,
    /// with its commit-ordered id, once it is committed.
    pub async fn publish(
        &self,
        message: NewMessage,
        author: Author,
        key: Option<IdempotencyKey>,
    ) -> Result<Published, Error> {
        let outgoing = Outgoing {
            message: &message,
            author: &author,
            key: key.as_ref(),
        };
        let Some(queue) = &self.queue else {
            return store::publish(&self.pool, outgoing).await;
        };
        if self.quarantine.holds(&author.subject) {
            let _permit = self.alone.acquire().await.map_err(|_| stopped())?;
            let id = store::publish(&self.pool, outgoing).await;
            if id.as_ref().is_err_and(Error::is_refused_data) {
                self.quarantine.add(&author.subject);
            }
            return id;
        }
        let (reply, id) = oneshot::channel();
        let pending = Pending {
            message,
            author,
            key,
            reply,
        };
        queue.send(pending).await.map_err(|_| stopped())?;
        id.await.map_err(|_| stopped())?
    }
}

/// The error of a publish the relay can no longer take, because it is stopping.
fn stopped() -> Error {
    Error::connection("the publishing task has stopped")
}

/// Publishers whose messages the database refused lately, and until when they publish alone.
#[derive(Default)]
struct Quarantine {
    /// Sender → end of its period. A std mutex: held for a map lookup or insert, never across
    /// an await.
    until: Mutex<HashMap<String, Instant>>,
}

impl Quarantine {
    /// Whether `publisher` publishes alone for now.
    fn holds(&self, publisher: &str) -> bool {
        let until = self.until.lock().unwrap();
        until
            .get(publisher)
            .is_some_and(|end| *end > Instant::now())
    }

    /// Sets `publisher` apart for [`QUARANTINE`] from now.
    fn add(&self, publisher: &str) {
        let now = Instant::now();
        let mut until = self.until.lock().unwrap();
        if until.len() >= MAX_QUARANTINED {
            until.retain(|_, end| *end > now);
        }
        if until.len() < MAX_QUARANTINED || until.contains_key(publisher) {
            until.insert(publisher.to_owned(), now + QUARANTINE);
        }
    }
}

/// Commits what is waiting, one transaction at a time.
async fn run(
    pool: DbPool,
    mut pending: mpsc::Receiver<Pending>,
    max_batch: usize,
    quarantine: Arc<Quarantine>,
) {
    let mut batch = Vec::with_capacity(max_batch);
    while pending.recv_many(&mut batch, max_batch).await > 0 {
        debug!(messages = batch.len(), "publishing");
        commit(&pool, std::mem::take(&mut batch), &quarantine).await;
    }
}

/// Commits `batch` and answers each request. When the database refuses the data of a
/// transaction of several messages, that transaction is split in halves, each committed on its
/// own, down to the guilty message alone, whose publisher is then quarantined: one refused message
/// among n costs about 2·log2(n) extra transactions, not n, and the others keep their place in
/// line. When the database fails otherwise (it is away, say), this transaction's and every
/// later part's requests get the same error at once.
async fn commit(pool: &DbPool, batch: Vec<Pending>, quarantine: &Quarantine) {
    // Parts still to commit, the next one last; the first half goes before the second, so ids
    // still follow the order of arrival.
    let mut parts = vec![batch];
    while let Some(mut part) = parts.pop() {
        let messages: Vec<Outgoing> = part.iter().map(Pending::outgoing).collect();
        match store::publish_all(pool, &messages).await {
            Ok(outcomes) => {
                for (pending, outcome) in part.into_iter().zip(outcomes) {
                    let _ = pending.reply.send(Ok(outcome));
                }
            }
            Err(error) if refused(&error) && part.len() > 1 => {
                // The SQLSTATE only: the server's message may quote the row, payload and all.
                let sqlstate = error.sqlstate().map(|state| state.code());
                debug!(
                    messages = part.len(),
                    ?sqlstate,
                    "a batch was refused; splitting it"
                );
                let second = part.split_off(part.len() / 2);
                parts.push(second);
                parts.push(part);
            }
            Err(error) if refused(&error) => {
                if let Some(pending) = part.pop() {
                    // A taken id is no fault of the sender's; refused data is.
                    if error.is_refused_data() {
                        quarantine.add(&pending.author.subject);
                    }
                    let _ = pending.reply.send(Err(error));
                }
            }
            Err(error) => {
                // The database is away or broken, not this data: the same answer for everyone.
                let cause = error.to_string();
                for pending in part.into_iter().chain(parts.drain(..).flatten()) {
                    let _ = pending.reply.send(Err(Error::connection(format!(
                        "publishing failed: {cause}"
                    ))));
                }
            }
        }
    }
}

/// Whether the database refused one row's data (which fails only that row when alone).
fn refused(error: &Error) -> bool {
    error.is_refused_data() || error.is_id_conflict()
}
