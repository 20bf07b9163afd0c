//! The reads every request or stream opening makes, gathered: in a reconnect storm thousands
//! of streams open within a second, and each would read its access (revocation, member rooms,
//! membership version, newest id) and, resuming, the retention bounds, one query each.
//!
//! As group commit does for publishing (`publisher`), one task per kind of read runs one query
//! at a time, and the requests that arrive while it runs go together in the next: one
//! statement reads the access of many participants (`unnest`), one read of the bounds answers
//! every opening that waits for it. Alone, a request waits for nothing (the task is idle and
//! reads at once). Exact as one query per request: every request is answered by a statement
//! that started after it was made, so it sees every commit it would have seen alone (a
//! revocation, a membership change, a prune). One participant's failing `member_rooms` (an app
//! function that raises) must not fail the others' opens: a batch the database refuses is read
//! again one request at a time, so only that request fails.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

use crate::error::Error;
use crate::store::{self, AccessNow, AccessQuery, DbPool, RetentionBounds};

/// Most participants one access statement reads (one array parameter each).
const MAX_ACCESS_BATCH: usize = 1000;

/// Most openings one read of the retention bounds answers.
const MAX_BOUNDS_BATCH: usize = 16 * 1024;

/// Requests that may wait for each task; more make their callers wait to send (backpressure).
const QUEUE: usize = 4096;

/// The handle requests and streams read through.
pub struct OpenReads {
    access: mpsc::Sender<Job<AccessQuery, AccessNow>>,
    bounds: mpsc::Sender<Job<(), RetentionBounds>>,
}

/// One request waiting for its answer.
struct Job<Q, A> {
    query: Q,
    reply: oneshot::Sender<Result<A, Error>>,
}

impl OpenReads {
    /// Starts the two reading tasks; they end when the handle is dropped.
    pub fn start(pool: DbPool) -> OpenReads {
        let (access, access_jobs) = mpsc::channel(QUEUE);
        let (bounds, bounds_jobs) = mpsc::channel(QUEUE);
        tokio::spawn(run(
            pool.clone(),
            access_jobs,
            MAX_ACCESS_BATCH,
            |pool, asked: Vec<AccessQuery>| async move { store::access_now(&pool, &asked).await },
        ));
        tokio::spawn(run(
            pool,
            bounds_jobs,
            MAX_BOUNDS_BATCH,
            |pool, asked: Vec<()>| async move {
                let bounds = store::retention_bounds(&pool).await?;
                Ok(vec![bounds; asked.len()])
            },
        ));
        OpenReads { access, bounds }
    }

    /// [`store::access_now`] for one participant, read with whoever else asks meanwhile.
    pub async fn access_now(&self, query: AccessQuery) -> Result<AccessNow, Error> {
        ask(&self.access, query).await
    }

    /// [`store::retention_bounds`], read after this call began, with whoever else asks.
    pub async fn retention_bounds(&self) -> Result<RetentionBounds, Error> {
        ask(&self.bounds, ()).await
    }
}

/// Queues `query` and waits for its answer.
async fn ask<Q, A>(queue: &mpsc::Sender<Job<Q, A>>, query: Q) -> Result<A, Error> {
    let (reply, answer) = oneshot::channel();
    queue
        .send(Job { query, reply })
        .await
        .map_err(|_| stopped())?;
    answer.await.map_err(|_| stopped())?
}

/// The error of a read the relay can no longer make, because it is stopping.
fn stopped() -> Error {
    Error::connection("the reading task has stopped")
}

/// Reads for whatever waits, `max` at a time, one statement at a time.
async fn run<Q, A, F, R>(pool: DbPool, mut jobs: mpsc::Receiver<Job<Q, A>>, max: usize, read: F)
where
    Q: Clone,
    F: Fn(DbPool, Vec<Q>) -> R,
    R: Future<Output = Result<Vec<A>, Error>>,
{
    let mut batch = Vec::with_capacity(max);
    while jobs.recv_many(&mut batch, max).await > 0 {
        let asked = batch.iter().map(|job| job.query.clone()).collect();
        match read(pool.clone(), asked).await {
            Ok(answers) => {
                for (job, answer) in batch.drain(..).zip(answers) {
                    let _ = job.reply.send(Ok(answer));
                }
            }
            // The database refused the statement (say an app's member_rooms raised for one
            // participant): each alone, so only the guilty one fails.
            Err(error) if error.sqlstate().is_some() && batch.len() > 1 => {
                for job in batch.drain(..) {
                    let answer = read(pool.clone(), vec![job.query.clone()]).await;
                    let _ = job.reply.send(answer.and_then(|mut one| {
                        one.pop()
                            .ok_or_else(|| Error::connection("a read answered nothing"))
                    }));
                }
            }
            // The database is away: the same answer for everyone.
            Err(error) => {
                let cause = error.to_string();
                let mut waiting = batch.drain(..);
                if let Some(first) = waiting.next() {
                    let _ = first.reply.send(Err(error));
                }
                for job in waiting {
                    let _ = job.reply.send(Err(Error::connection(cause.clone())));
                }
            }
        }
    }
}
