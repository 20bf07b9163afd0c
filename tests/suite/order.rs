//! Commit order: ids increase in commit order, so `id > since_id` is an exact catch-up.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use serde_json::json;

/// A transaction that inserts first but commits last gets the larger id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_insert_committed_last_gets_larger_id() {
    let db = fresh_database().await;
    let early = connect(&db).await;
    let late = connect(&db).await;
    early.batch_execute("BEGIN").await.unwrap();
    insert(&early, &["alice"], json!({"who": "early"})).await;
    late.batch_execute("BEGIN").await.unwrap();
    insert(&late, &["alice"], json!({"who": "late"})).await;
    late.batch_execute("COMMIT").await.unwrap();

    // A reader now sees the late row (once a relay numbered it), and nothing it could later
    // miss below it.
    let seen = ids_for(&late, "alice").await;
    assert_eq!(seen.len(), 1);
    early.batch_execute("COMMIT").await.unwrap();
    number_pending(&early).await;

    let rows = early
        .query(
            "SELECT id, payload->>'who' FROM pgrelay.messages ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let order: Vec<String> = rows.iter().map(|row| row.get(1)).collect();
    assert_eq!(order, ["late", "early"]);
    assert!(rows[1].get::<_, i64>(0) > seen[0]);
}

/// Under concurrent writers whose commits interleave out of insert order, a reader that
/// repeatedly asks for `id > last` loses nothing, and a live stream gets every row once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_leave_no_holes() {
    const WRITERS: usize = 8;
    const TRANSACTIONS: usize = 60;
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let setup = connect(&db).await;
    setup
        .batch_execute("CREATE SEQUENCE insert_order")
        .await
        .unwrap();
    let mut stream = relay.subscribe("all", "", None).await;
    stream.opening_position().await;

    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let db = db.clone();
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let client = connect(&db).await;
            let mut last = 0i64;
            let mut seen = Vec::new();
            loop {
                let finished = done.load(Ordering::SeqCst);
                let rows = client
                    .query(
                        "SELECT id FROM pgrelay.messages WHERE id > $1 ORDER BY id",
                        &[&last],
                    )
                    .await
                    .unwrap();
                for row in rows {
                    last = row.get(0);
                    seen.push(last);
                }
                if finished {
                    return seen;
                }
            }
        })
    };

    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let db = db.clone();
        writers.push(tokio::spawn(async move {
            let client = connect(&db).await;
            for transaction in 0..TRANSACTIONS {
                client.batch_execute("BEGIN").await.unwrap();
                for _ in 0..(1 + (writer + transaction) % 3) {
                    client
                        .execute(
                            "INSERT INTO pgrelay.messages (participants, payload) \
                             VALUES ('{all}', jsonb_build_object('insert_order', nextval('insert_order')))",
                            &[],
                        )
                        .await
                        .unwrap();
                }
                // Hold the transaction open for a varying time so commits overtake each other.
                let pause = ((writer * 7 + transaction * 13) % 5) as u64;
                tokio::time::sleep(Duration::from_millis(pause)).await;
                client.batch_execute("COMMIT").await.unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    // The relay numbers as the rows commit; make sure the last ones are numbered before the
    // reader's final look.
    number_pending(&setup).await;
    done.store(true, Ordering::SeqCst);
    let seen = reader.await.unwrap();

    let all = ids_for(&setup, "all").await;
    assert_eq!(seen, all, "the polling reader missed rows");

    // The scenario really happened: some rows inserted earlier got larger ids.
    let rows = setup
        .query(
            "SELECT (payload->>'insert_order')::int8 FROM pgrelay.messages ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let insert_order: Vec<i64> = rows.iter().map(|row| row.get(0)).collect();
    let inversions = insert_order
        .windows(2)
        .filter(|pair| pair[0] > pair[1])
        .count();
    assert!(
        inversions > 0,
        "no commit overtook another; the test proved nothing"
    );

    let mut streamed = Vec::new();
    while streamed.len() < all.len() {
        streamed.push(stream.next_message().await.0);
    }
    assert_eq!(streamed, all, "the stream lost, doubled or reordered rows");
    assert_eq!(streamed.iter().collect::<BTreeSet<_>>().len(), all.len());
}

/// A rolled-back insert is never delivered, and later messages still are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolled_back_insert_is_never_delivered() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let client = connect(&db).await;
    let mut alice = relay.subscribe("alice", "", None).await;
    alice.opening_position().await;
    client.batch_execute("BEGIN").await.unwrap();
    insert(&client, &["alice"], json!({"n": "rolled back"})).await;
    client.batch_execute("ROLLBACK").await.unwrap();
    insert(&client, &["alice"], json!({"n": "kept"})).await;
    let (_, _, data) = alice.next_message().await;
    assert_eq!(data["payload"]["n"], "kept");
    assert!(alice
        .next_within(Duration::from_millis(300))
        .await
        .is_none());
}

/// Many rows in one transaction get consecutive ids in insert order and all arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_rows_keep_insert_order() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let client = connect(&db).await;
    let mut alice = relay.subscribe("alice", "", None).await;
    alice.opening_position().await;
    client
        .batch_execute(
            "INSERT INTO pgrelay.messages (participants, payload) \
             SELECT '{alice}', jsonb_build_object('n', n) FROM generate_series(1, 500) AS n",
        )
        .await
        .unwrap();
    let mut previous = 0;
    for n in 1..=500 {
        let (id, _, data) = alice.next_message().await;
        assert_eq!(data["payload"]["n"], n);
        assert_eq!(id, previous + 1, "ids within a transaction are consecutive");
        previous = id;
    }
}

/// A transaction larger than a pass is numbered over several passes, each reading only the
/// rows it numbers: every pass sorted every pending row again, so numbering 30,000 rows 1,000 at
/// a time read 990,064 index entries (a writer's 400,000-row INSERT held every
/// other message back 15.3 s; 7.5 s now, BENCHMARKS.md). Its ids stay one run in insert order,
/// and a message committed after it comes after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_larger_than_a_pass_is_numbered_reading_each_row_once() {
    let db = fresh_database().await;
    let client = connect(&db).await;
    client
        .batch_execute(
            "INSERT INTO pgrelay.messages (participants, payload) \
             SELECT '{alice}', jsonb_build_object('n', n) FROM generate_series(1, 30000) AS n; \
             INSERT INTO pgrelay.messages (participants, payload) VALUES ('{bob}', '{\"n\": 0}')",
        )
        .await
        .unwrap();
    let read_before = pending_range_reads(&client).await;
    let mut passes = 0;
    while client
        .query_one("SELECT pgrelay.sequence(1000)", &[])
        .await
        .unwrap()
        .get::<_, i32>(0)
        > 0
    {
        passes += 1;
    }
    let read = pending_range_reads(&client).await - read_before;
    eprintln!("{read} index entries read to number 30,001 rows");
    assert_eq!(passes, 31);
    // Linear: each row is read by a pass's scan and looked up by its update, and the first
    // pass sorts them all: 119,000-125,000 reads in all. Sorting at every pass read 990,064.
    assert!(
        read < 200_000,
        "{read} index entries read to number 30,001 rows"
    );

    let rows = client
        .query(
            "SELECT id, (payload->>'n')::int FROM pgrelay.messages ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let first: i64 = rows[0].get(0);
    for (at, row) in rows.iter().enumerate() {
        assert_eq!(row.get::<_, i64>(0), first + at as i64, "one run of ids");
        let n: i32 = row.get(1);
        assert_eq!(n, (at as i32 + 1) % 30_001, "insert order, bob's last");
    }
    let left: i64 = client
        .query_one("SELECT count(*) FROM pgrelay.numbering_progress", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "nothing left to go on with");
}

/// A numbering pass of no rows, by hand, while a transaction larger than a pass is half
/// numbered, numbers nothing and fails nothing; the next pass goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_pass_leaves_a_half_numbered_transaction_to_the_next() {
    let db = fresh_database().await;
    let client = connect(&db).await;
    client
        .batch_execute(
            "INSERT INTO pgrelay.messages (participants, payload) \
             SELECT '{alice}', jsonb_build_object('n', n) FROM generate_series(1, 30) AS n",
        )
        .await
        .unwrap();
    let numbered = |rows: i32| {
        let client = &client;
        async move {
            client
                .query_one("SELECT pgrelay.sequence($1)", &[&rows])
                .await
                .unwrap()
                .get::<_, i32>(0)
        }
    };
    assert_eq!(numbered(10).await, 10);
    assert_eq!(numbered(0).await, 0);
    assert_eq!(numbered(100).await, 20);
}

/// Rows inserted after a SAVEPOINT are numbered with the rest of their transaction, in insert
/// order: PostgreSQL gives a subtransaction an id of its own, and numbering grouped rows by it,
/// so 1, then 2 in a savepoint, then 3 came out 1, 3, 2 (an outside review). A rolled-back
/// savepoint's row is never numbered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_inserted_in_savepoints_keep_their_transactions_insert_order() {
    let db = fresh_database().await;
    let client = connect(&db).await;
    let row = |n: i32| {
        format!("INSERT INTO pgrelay.messages (participants, payload) VALUES ('{{alice}}', '{n}');")
    };
    client
        .batch_execute(&format!(
            "BEGIN; {} SAVEPOINT a; {} RELEASE a; {} SAVEPOINT b; {} ROLLBACK TO b; {} \
             SAVEPOINT c; {} SAVEPOINT d; {} RELEASE d; RELEASE c; {} COMMIT; \
             SELECT pgrelay.sequence();",
            row(1),
            row(2),
            row(3),
            row(0),
            row(4),
            row(5),
            row(6),
            row(7)
        ))
        .await
        .unwrap();
    let rows = client
        .query(
            "SELECT id, payload::int FROM pgrelay.messages ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let order: Vec<i32> = rows.iter().map(|row| row.get(1)).collect();
    assert_eq!(order, [1, 2, 3, 4, 5, 6, 7]);
    let first: i64 = rows[0].get(0);
    let ids: Vec<i64> = rows.iter().map(|row| row.get(0)).collect();
    assert_eq!(
        ids,
        (first..first + 7).collect::<Vec<_>>(),
        "consecutive ids"
    );
}

/// With commit timestamps recorded, a transaction is ordered by when it committed even when
/// one of its pending rows was updated since (by the owner, say, mending a kind): each row's
/// commit time came from its own xmin, the update's, so the transaction split around one
/// that committed between the two (a third outside review). A cluster of its own, with
/// `track_commit_timestamp = on`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_with_a_row_updated_since_stays_together() {
    let (_cluster, db) = cluster_with(&[("track_commit_timestamp", "on")]).await;
    let client = connect(&db).await;
    // One transaction each (a string of statements would run as one).
    for statement in [
        "BEGIN; \
         INSERT INTO pgrelay.messages (participants, payload) VALUES ('{alice}', '\"t1\"'); \
         INSERT INTO pgrelay.messages (participants, payload) VALUES ('{alice}', '\"t2\"'); \
         COMMIT",
        "INSERT INTO pgrelay.messages (participants, payload) VALUES ('{alice}', '\"w\"')",
        "UPDATE pgrelay.messages SET kind = 'chat' WHERE payload = '\"t2\"'",
        "SELECT pgrelay.sequence()",
    ] {
        client.batch_execute(statement).await.unwrap();
    }
    let order: Vec<String> = client
        .query(
            "SELECT payload #>> '{}' FROM pgrelay.messages ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(order, ["t1", "t2", "w"]);
}

/// Index entries read so far from the messages table's primary key (its pending range is
/// where numbering looks), with this session's own reads flushed first.
async fn pending_range_reads(client: &tokio_postgres::Client) -> i64 {
    client
        .batch_execute("SELECT pg_stat_force_next_flush()")
        .await
        .unwrap();
    client.batch_execute("SELECT 1").await.unwrap();
    client
        .query_one(
            "SELECT pg_stat_clear_snapshot(), idx_tup_read FROM pg_stat_user_indexes \
              WHERE indexrelname = 'messages_pkey'",
            &[],
        )
        .await
        .unwrap()
        .get(1)
}
