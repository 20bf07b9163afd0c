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
//! not one each.

use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use crate::error::Error;
use crate::message::NewMessage;
use crate::store::{self, DbPool};

/// Requests that may wait for the publishing task; more make their handlers wait too, so a
/// flood of publishers holds bounded memory.
const QUEUE: usize = 4096;

/// The handle the HTTP handlers publish through.
pub enum Publisher {
    /// Group commit: the publishing task's queue.
    Grouped(mpsc::Sender<Pending>),
    /// `--publish-batch 1`: each request commits alone, concurrently through the pool.
    OneByOne(DbPool),
}

/// A message waiting for its commit, and where its id goes.
pub struct Pending {
    message: NewMessage,
    reply: oneshot::Sender<Result<i64, Error>>,
}

impl Publisher {
    /// Starts the publishing task, which commits at most `max_batch` messages per
    /// transaction; it ends once the last handle is dropped and the queue is empty.
    pub fn start(pool: DbPool, max_batch: usize) -> Publisher {
        if max_batch <= 1 {
            return Publisher::OneByOne(pool);
        }
        let (queue, pending) = mpsc::channel(QUEUE);
        tokio::spawn(run(pool, pending, max_batch));
        Publisher::Grouped(queue)
    }

    /// Stores `message`; returns its commit-ordered id once it is committed.
    pub async fn publish(&self, message: NewMessage) -> Result<i64, Error> {
        let queue = match self {
            Publisher::Grouped(queue) => queue,
            Publisher::OneByOne(pool) => return store::publish(pool, &message).await,
        };
        let (reply, id) = oneshot::channel();
        queue
            .send(Pending { message, reply })
            .await
            .map_err(|_| Error::connection("the publishing task has stopped"))?;
        id.await
            .map_err(|_| Error::connection("the publishing task has stopped"))?
    }
}

/// Commits what is waiting, one transaction at a time.
async fn run(pool: DbPool, mut pending: mpsc::Receiver<Pending>, max_batch: usize) {
    let mut batch = Vec::with_capacity(max_batch);
    while pending.recv_many(&mut batch, max_batch).await > 0 {
        debug!(messages = batch.len(), "publishing");
        commit(&pool, std::mem::take(&mut batch)).await;
    }
}

/// Commits `batch` and answers each request. When the database refuses the data of a
/// transaction of several messages, that transaction is split in halves, each committed on its
/// own, down to the guilty message alone: one refused message among n costs about 2·log2(n)
/// extra transactions, not n, and the others keep their place in line. When the database
/// fails otherwise (it is away, say), this transaction's and every later part's requests get
/// the same error at once.
async fn commit(pool: &DbPool, batch: Vec<Pending>) {
    // Parts still to commit, the next one last; the first half goes before the second, so ids
    // still follow the order of arrival.
    let mut parts = vec![batch];
    while let Some(mut part) = parts.pop() {
        let messages: Vec<&NewMessage> = part.iter().map(|pending| &pending.message).collect();
        match store::publish_all(pool, &messages).await {
            Ok(ids) => {
                for (pending, id) in part.into_iter().zip(ids) {
                    let _ = pending.reply.send(Ok(id));
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
