//! Catch-up.

use super::*;

pub(crate) struct CatchUp {
    pub(crate) rows: i64,
    pub(crate) fill: Duration,
    pub(crate) analyze: Duration,
    /// Stream opened with since_id until the 1,000th event, each repeat.
    pub(crate) stream_ms: Vec<f64>,
    /// Of those, until the first message event.
    pub(crate) first_event_ms: Vec<f64>,
    /// `GET /v1/messages?limit=1000`, each repeat.
    pub(crate) page_ms: Vec<f64>,
    /// EXPLAIN ANALYZE of one stream page (100 rows) and of the 1,000-row page, for the
    /// participant and for the member of 20 rooms.
    pub(crate) plans: Vec<(String, String)>,
    /// The same for a member of [`ROOMS`] rooms whose messages are spread over the table.
    pub(crate) rooms_missed: usize,
    pub(crate) rooms_stream_ms: Vec<f64>,
    pub(crate) rooms_page_ms: Vec<f64>,
}

/// Rooms the catch-up member belongs to; one row in 1,000 is addressed to one of them.
pub(crate) const ROOMS: usize = 20;

/// How many messages the catch-up participant has; also the size of the catch-up.
pub(crate) const MISSED: usize = 1_000;

/// Fills the outbox with `rows` messages for 10,000 participants (groups of 10, one message
/// per group per 1,000 rows, so every participant has 1,000 messages spread over the whole
/// table; one row in 1,000 also goes to one of [`ROOMS`] rooms), then times serving one
/// participant's 1,000 messages, and a member of the 20 rooms theirs.
pub(crate) async fn catch_up_phase(
    url: &str,
    relay_bin: &Path,
    profile: &Profile,
    logs: &LogDir,
    keys: &Keys,
    names: &Names,
) -> Res<CatchUp> {
    let rows = profile.catch_up_rows;
    let mut db = connect(url, "pgrelay-bench").await?;
    progress(format!("catch-up: filling the outbox with {rows} rows…"));
    let started = Instant::now();
    // Ten participants per row, `p` + group·10 + k, group = row mod 1,000.
    let members: Vec<String> = (0..10)
        .map(|k| format!("'p' || lpad(((g % 1000) * 10 + {k})::text, 5, '0')"))
        .collect();
    // The rows the trigger would produce (ids from the commit-order sequence, drawn under the
    // order lock as pgrelay.publish does), written without firing a trigger and NOTIFY per
    // row: that is a million notifications nobody listens to.
    let fill = format!(
        "INSERT INTO pgrelay.messages (id, participants, payload) \
         SELECT nextval('pgrelay.message_id_seq'), ARRAY[{}] \
                || CASE WHEN g % 1000 = 500 THEN ARRAY['#r' || ((g / 1000) % {ROOMS})] \
                        ELSE '{{}}'::text[] END, \
                jsonb_build_object('s', g, 'x', '{TEXT}') \
         FROM generate_series($1::int8, $2::int8) AS g ORDER BY g",
        members.join(", ")
    );
    // The participants index takes each row's entries at once (migration 0014), which for ten
    // participants a row made this fill take 64 s instead of 17; for the load it gathers them in
    // its pending list again, and the VACUUM below merges them before anything is measured.
    db.batch_execute("ALTER INDEX pgrelay.messages_participants_idx SET (fastupdate = on)")
        .await?;
    let chunk = 250_000;
    let mut first = 1;
    while first <= rows {
        let last = (first + chunk - 1).min(rows);
        let transaction = db.transaction().await?;
        transaction
            .batch_execute(
                "SET LOCAL session_replication_role = replica; \
                 LOCK TABLE pgrelay_order.id_order IN SHARE ROW EXCLUSIVE MODE",
            )
            .await?;
        transaction.execute(&fill, &[&first, &last]).await?;
        transaction.commit().await?;
        first = last + 1;
    }
    let fill_time = started.elapsed();
    let started = Instant::now();
    db.batch_execute("ALTER INDEX pgrelay.messages_participants_idx SET (fastupdate = off)")
        .await?;
    db.batch_execute("VACUUM (ANALYZE) pgrelay.messages")
        .await?;
    let analyze = started.elapsed();
    progress(format!(
        "  filled in {:.1} s, VACUUM ANALYZE {:.1} s",
        fill_time.as_secs_f64(),
        analyze.as_secs_f64()
    ));

    let participant = &names[0];
    let mut expected: Vec<i64> = db
        .query(
            "SELECT id FROM pgrelay.messages WHERE participants @> ARRAY[$1::text] \
             ORDER BY id DESC LIMIT $2",
            &[participant, &(MISSED as i64)],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    expected.reverse();
    if expected.len() != MISSED {
        return Err(format!(
            "catch-up: {participant} has {} messages, not {MISSED}",
            expected.len()
        )
        .into());
    }
    let since = expected[0] - 1;

    let rooms: Vec<String> = (0..ROOMS).map(|n| format!("#r{n}")).collect();
    let mut rooms_expected: Vec<i64> = db
        .query(
            "SELECT id FROM pgrelay.messages WHERE participants && $1 ORDER BY id DESC LIMIT $2",
            &[&rooms, &(MISSED as i64)],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    rooms_expected.reverse();
    let rooms_since = rooms_expected.first().map_or(0, |id| id - 1);

    let mut plans = Vec::new();
    let mut one = vec![participant.clone()];
    let mut member = vec!["member".to_owned()];
    member.extend(rooms.iter().cloned());
    // As the relay asks: the participant's own name, its rooms, and everyone.
    one.push("*".to_owned());
    member.push("*".to_owned());
    for (who, addresses, from) in [
        ("one participant", &one, since),
        ("a member of 20 rooms", &member, rooms_since),
    ] {
        for limit in [100i64, MISSED as i64] {
            let lines =
                pgrelay::internals::explain_messages_for(&db, addresses, from, limit).await?;
            let execution = lines
                .iter()
                .find(|line| line.starts_with("Execution Time"))
                .cloned()
                .unwrap_or_default();
            plans.push((
                format!("{who}, LIMIT {limit}: {execution}"),
                lines.join("\n"),
            ));
        }
    }

    let mut relay = RelayChild::spawn(relay_bin, url, logs.file("relay-catch-up.log"))?;
    relay.wait_ready(Duration::from_secs(20)).await?;
    // The start-up prune scans the table once; let it finish.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let token = keys.mint(participant, Duration::from_secs(3600), &[]);

    let (mut stream_ms, mut first_event_ms, mut page_ms) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..profile.catch_up_repeats {
        let (total, first) = time_catch_up_stream(relay.addr, &token, since, &expected).await?;
        stream_ms.push(total);
        first_event_ms.push(first);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for _ in 0..profile.catch_up_repeats {
        page_ms.push(time_catch_up_page(relay.addr, &token, since, &expected).await?);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let room_names: Vec<&str> = rooms.iter().map(String::as_str).collect();
    let member = keys.mint_with_rooms("member", Duration::from_secs(3600), &[], &room_names);
    let (mut rooms_stream_ms, mut rooms_page_ms) = (Vec::new(), Vec::new());
    for _ in 0..profile.catch_up_repeats {
        let (total, _) =
            time_catch_up_stream(relay.addr, &member, rooms_since, &rooms_expected).await?;
        rooms_stream_ms.push(total);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let page = time_catch_up_page(relay.addr, &member, rooms_since, &rooms_expected).await?;
        rooms_page_ms.push(page);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(relay);
    let catch_up = CatchUp {
        rows,
        fill: fill_time,
        analyze,
        stream_ms,
        first_event_ms,
        page_ms,
        plans,
        rooms_missed: rooms_expected.len(),
        rooms_stream_ms,
        rooms_page_ms,
    };
    progress(format!(
        "  stream: {} ms (median {:.2}); GET: {} ms (median {:.2})",
        list_ms(&catch_up.stream_ms),
        median(&mut catch_up.stream_ms.clone()),
        list_ms(&catch_up.page_ms),
        median(&mut catch_up.page_ms.clone())
    ));
    progress(format!(
        "  member of {ROOMS} rooms, {} messages: stream {} ms (median {:.2}); GET {} ms (median {:.2})",
        catch_up.rooms_missed,
        list_ms(&catch_up.rooms_stream_ms),
        median(&mut catch_up.rooms_stream_ms.clone()),
        list_ms(&catch_up.rooms_page_ms),
        median(&mut catch_up.rooms_page_ms.clone())
    ));
    Ok(catch_up)
}

pub(crate) fn list_ms(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| format!("{v:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Opens a stream with `since_id` and reads until the last expected event; returns the time
/// to that event and to the first one, in ms, from before the connect.
pub(crate) async fn time_catch_up_stream(
    addr: SocketAddr,
    token: &str,
    since: i64,
    expected: &[i64],
) -> Res<(f64, f64)> {
    let started = Instant::now();
    let mut stream = open_stream(addr, token, Some(since)).await?;
    if stream.position != since {
        return Err(format!("catch-up stream opened at {}", stream.position).into());
    }
    let mut got = 0usize;
    let mut first = None;
    let mut buffer = vec![0u8; 256 * 1024];
    let mut items = std::mem::take(&mut stream.items);
    let mut at = Instant::now();
    loop {
        for item in items.drain(..) {
            let SseItem::Event(event) = item else {
                continue;
            };
            if event.data.is_none() || event.is_opening() {
                continue;
            }
            let Some(id) = event_id(&event) else {
                continue; // a presence signal
            };
            if expected.get(got) != Some(&id) {
                return Err(format!("catch-up: event {got} has id {id}").into());
            }
            got += 1;
            first.get_or_insert(at);
            if got == expected.len() {
                let ms = |t: Instant| t.duration_since(started).as_secs_f64() * 1000.0;
                return Ok((ms(at), ms(first.unwrap_or(at))));
            }
        }
        let read = tokio::time::timeout(Duration::from_secs(10), stream.socket.read(&mut buffer))
            .await
            .map_err(|_| format!("catch-up: stuck after {got} events"))??;
        if read == 0 {
            return Err(format!("catch-up: the stream ended after {got} events").into());
        }
        at = Instant::now();
        stream.decoder.feed(&buffer[..read], &mut items)?;
    }
}

/// `GET /v1/messages?since_id=…&limit=1000`; returns its time in ms.
pub(crate) async fn time_catch_up_page(
    addr: SocketAddr,
    token: &str,
    since: i64,
    expected: &[i64],
) -> Res<f64> {
    let started = Instant::now();
    let target = format!("/v1/messages?since_id={since}&limit={}", expected.len());
    let (status, body) = http_get(addr, &target, Some(token)).await?;
    let elapsed = started.elapsed().as_secs_f64() * 1000.0;
    if status != 200 {
        return Err(format!("GET /v1/messages answered {status}").into());
    }
    let page: Value = serde_json::from_slice(&body)?;
    let ids: Vec<i64> = page["messages"]
        .as_array()
        .ok_or("no messages in the page")?
        .iter()
        .filter_map(|message| message["id"].as_i64())
        .collect();
    if ids != expected {
        return Err(format!("GET /v1/messages returned {} other ids", ids.len()).into());
    }
    Ok(elapsed)
}
