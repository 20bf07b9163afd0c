// The package against a real relay: RELAY_URL, and PGRELAY_SECRET to mint tokens.
// Run by `npm test`, and by the relay's tests/suite/js_client.rs on the packed package.

import assert from 'node:assert/strict';
import { createHmac, randomUUID } from 'node:crypto';
import { createServer } from 'node:http';
import { test } from 'node:test';

import { PgRelayClient, PgRelayError } from '@pgrelay/client';

const RELAY = process.env.RELAY_URL;
const SECRET = process.env.PGRELAY_SECRET.split(',')[0].trim();

/**
 * An HS256 token for `sub`, valid for `seconds`, with scope `publish` unless told otherwise,
 * and membership of `rooms`.
 */
function mint(sub, seconds = 600, scope = 'publish', rooms = [], secret = SECRET) {
  const segment = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const claims = { sub, exp: Math.floor(Date.now() / 1000) + seconds };
  if (scope) claims.scope = scope;
  if (rooms.length > 0) claims.rooms = rooms;
  const input = `${segment({ alg: 'HS256', typ: 'JWT' })}.${segment(claims)}`;
  return `${input}.${createHmac('sha256', secret).update(input).digest('base64url')}`;
}

/** Resolves once `check()` holds, polling; rejects after `ms`. */
async function until(check, what, ms = 10_000) {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** A client for a fresh participant (a member of `options.rooms`) that records what it hands over. */
function recorder(options = {}) {
  const me = `user-${randomUUID()}`;
  const seen = { messages: [], statuses: [], tokens: 0 };
  const client = new PgRelayClient({
    url: RELAY,
    transport: 'fetch',
    token: () => {
      seen.tokens += 1;
      return mint(me, options.lifetime, 'publish', options.rooms);
    },
    onMessage: (message) => seen.messages.push(message),
    onStatus: (status) => seen.statuses.push(status),
    ...options.client,
  });
  return { me, seen, client };
}

test('a sent message comes back once, and the position is known before any message', async (t) => {
  const { me, seen, client } = recorder();
  t.after(() => client.close());
  client.start();
  await until(() => client.status === 'live', 'live');
  await until(() => client.lastId !== null, 'the opening position');
  const id = await client.send({ participants: [me], payload: { text: 'hi' } });
  await until(() => seen.messages.length === 1, 'the message');
  await new Promise((resolve) => setTimeout(resolve, 300));
  assert.deepEqual(seen.messages.map((m) => m.id), [id]);
  assert.equal(seen.messages[0].payload.text, 'hi');
  assert.equal(seen.messages[0].sender, me);
  assert.equal(client.lastId, id);
  client.close();
  assert.deepEqual(seen.statuses, ['connecting', 'live', 'closed']);
});

test('an expiring token is replaced and the stream resumes exactly', async (t) => {
  const { me, seen, client } = recorder({ lifetime: 2 });
  t.after(() => client.close());
  client.start();
  await until(() => client.status === 'live', 'live');
  const before = await client.send({ participants: [me], payload: { n: 1 } });
  await until(() => seen.tokens >= 3, 'a reconnect with a fresh token', 15_000);
  const after = await client.send({ participants: [me], payload: { n: 2 } });
  await until(() => seen.messages.length === 2, 'both messages', 15_000);
  assert.deepEqual(seen.messages.map((m) => m.id), [before, after]);
  client.close();
});

test('sinceId resumes after that id and skips what came before', async (t) => {
  const sender = recorder();
  const first = await sender.client.send({ participants: [sender.me], payload: { n: 1 } });
  const second = await sender.client.send({ participants: [sender.me], payload: { n: 2 } });
  const { seen, client } = recorder({ client: { token: () => mint(sender.me), sinceId: first } });
  t.after(() => client.close());
  client.start();
  await until(() => seen.messages.length === 1, 'the later message');
  assert.deepEqual(seen.messages.map((m) => m.id), [second]);
  client.close();
});

test('signals and presence', async (t) => {
  const alice = recorder();
  const signals = [];
  const bob = recorder({ client: { onSignal: (kind, data) => signals.push([kind, data]) } });
  t.after(() => bob.client.close());
  bob.client.start();
  await until(() => bob.client.status === 'live', 'live');
  assert.equal(await alice.client.typing([bob.me]), true);
  assert.equal(await alice.client.typing([bob.me]), false, 'throttled');
  await until(() => signals.some(([kind]) => kind === 'typing'), 'the typing signal');
  const typing = signals.find(([kind]) => kind === 'typing')[1];
  assert.equal(typing.sender, alice.me);
  // The relay records who is online a moment after the stream opens.
  let online = false;
  for (let tries = 0; !online && tries < 100; tries += 1) {
    online = (await bob.client.presence([bob.me]))[bob.me].online;
    if (!online) await new Promise((resolve) => setTimeout(resolve, 100));
  }
  assert.equal(online, true);
});

test('a room reaches its members, and `rooms` narrows a stream to it', async (t) => {
  const room = `#room-${randomUUID()}`;
  const alice = recorder({ rooms: [room] });
  const bob = recorder({ rooms: [room], client: { rooms: [room] } });
  t.after(() => {
    alice.client.close();
    bob.client.close();
  });
  alice.client.start();
  bob.client.start();
  await until(() => alice.client.status === 'live' && bob.client.status === 'live', 'live');
  await alice.client.send({ participants: [bob.me], payload: { n: 1 } });
  const id = await alice.client.send({ participants: [room], payload: { n: 2 } });
  await until(() => alice.seen.messages.length === 2, "alice's copies of both");
  await until(() => bob.seen.messages.length === 1, 'the room message');
  await new Promise((resolve) => setTimeout(resolve, 300));
  assert.deepEqual(bob.seen.messages.map((m) => m.id), [id], 'the direct message is not in the room');
});

// The relay's tests/suite/js_client.rs sets RELAY_JOIN_KIND: its database then backs
// member_rooms with a watched table, and a message of that kind (payload `{room}`) makes its
// sender a member of the room, as an app's own "join" action would.
test('a room joined while the stream is open is announced and heard without reconnecting', {
  skip: !process.env.RELAY_JOIN_KIND && 'needs a relay whose database has the join desk',
}, async (t) => {
  const room = `#room-${randomUUID()}`;
  const changes = [];
  const { me, seen, client } = recorder({ client: { onRooms: (change) => changes.push(change) } });
  t.after(() => client.close());
  client.start();
  await until(() => client.status === 'live', 'live');
  const tokens = seen.tokens;
  const join = await client.send({
    participants: [me], kind: process.env.RELAY_JOIN_KIND, payload: { room },
  });
  await until(() => changes.length === 1, 'the rooms event');
  assert.deepEqual(changes, [{ added: [room], removed: [] }]);
  assert.ok(client.lastId > join, 'the change has its own position');
  const id = await client.send({ participants: [room], payload: { n: 1 } });
  await until(() => seen.messages.length === 1, "the new room's message");
  assert.deepEqual(seen.messages.map((m) => m.id), [id]);
  assert.equal(seen.tokens, tokens + 2, 'no reconnect: one token per send only');
});

test('a refused request rejects with the relay status and code', async () => {
  const me = `user-${randomUUID()}`;
  const client = new PgRelayClient({ url: RELAY, transport: 'fetch', token: mint(me, 600, '') });
  await assert.rejects(client.send({ participants: ['bob'], payload: {} }), (error) => {
    assert.equal(error.status, 403);
    assert.equal(error.code, 'insufficient_scope');
    return true;
  });
});

// The relay's suite starts its relay with a small --max-event-bytes and says so here.
const MAX_EVENT_BYTES = Number(process.env.RELAY_MAX_EVENT_BYTES);

test('a message too large to stream comes as a stand-in, in order, and is fetched whole', {
  skip: Number.isSafeInteger(MAX_EVENT_BYTES) ? false : 'set RELAY_MAX_EVENT_BYTES to the relay\'s --max-event-bytes',
}, async (t) => {
  const standIns = [];
  const order = [];
  const { me, seen, client } = recorder({
    client: {
      onMessage: (message) => order.push(['message', message.id]),
      onOversized: (standIn) => {
        standIns.push(standIn);
        order.push(['oversized', standIn.id]);
      },
    },
  });
  t.after(() => client.close());
  client.start();
  await until(() => client.status === 'live', 'live');
  const big = 'x'.repeat(MAX_EVENT_BYTES + 1);
  const ids = [];
  for (const payload of [{ n: 1 }, { big }, { n: 3 }]) {
    ids.push(await client.send({ participants: [me], payload }));
  }
  await until(() => order.length === 3, 'the two messages and the stand-in');
  assert.deepEqual(order, [['message', ids[0]], ['oversized', ids[1]], ['message', ids[2]]]);
  assert.equal(client.lastId, ids[2]);
  assert.equal(seen.messages.length, 0, 'onMessage was replaced');
  const [standIn] = standIns;
  assert.deepEqual(Object.keys(standIn).sort(), ['bytes', 'id', 'kind', 'participants', 'sender']);
  assert.ok(standIn.bytes > MAX_EVENT_BYTES);
  const whole = await client.fetchMessage(standIn.id);
  assert.equal(whole.payload.big, big);
  assert.equal(whole.id, ids[1]);
  await assert.rejects(client.fetchMessage(ids[1] + 1000), (error) => error.status === 404);
});

/**
 * Just enough of a browser's `EventSource` for the client's failure paths. Like a browser's,
 * it never tells why a stream was refused: a non-200 answer is an `error` event and CLOSED. It
 * dispatches the events of a stream only once the stream has ended (the stubs' streams end).
 */
class FakeEventSource {
  static CONNECTING = 0;
  static OPEN = 1;
  static CLOSED = 2;
  readyState = FakeEventSource.CONNECTING;
  onopen = null;
  onerror = null;
  #listeners = new Map();
  #abort = new AbortController();

  constructor(url) {
    this.#run(url).catch(() => {});
  }

  addEventListener(type, listener) {
    this.#listeners.set(type, [...(this.#listeners.get(type) ?? []), listener]);
  }

  close() {
    this.readyState = FakeEventSource.CLOSED;
    this.#abort.abort();
  }

  async #run(url) {
    const response = await fetch(url, { signal: this.#abort.signal });
    if (response.status !== 200) {
      await response.body?.cancel();
      this.readyState = FakeEventSource.CLOSED;
      this.onerror?.({});
      return;
    }
    this.readyState = FakeEventSource.OPEN;
    this.onopen?.({});
    let lastEventId = '';
    for (const block of (await response.text()).split('\n\n')) {
      const fields = Object.fromEntries(block.split('\n').map((line) => line.split(/: ?(.*)/s)));
      if (fields.id !== undefined) lastEventId = fields.id;
      if (this.readyState === FakeEventSource.CLOSED || fields.data === undefined) continue;
      const event = { data: fields.data, lastEventId };
      for (const listener of this.#listeners.get(fields.event ?? 'message') ?? []) listener(event);
    }
    if (this.readyState !== FakeEventSource.CLOSED) {
      // A browser would reconnect by itself after a stream ends.
      this.readyState = FakeEventSource.CONNECTING;
      this.onerror?.({});
    }
  }
}
globalThis.EventSource = FakeEventSource;

/** A client of `transport` whose every status (with its error) is recorded. */
function watched(transport, token, url = RELAY) {
  const seen = { statuses: [], tokens: 0 };
  const client = new PgRelayClient({
    url,
    transport,
    token: () => {
      seen.tokens += 1;
      return token(seen.tokens);
    },
    onStatus: (status, error) => seen.statuses.push([status, error?.code]),
  });
  return { seen, client };
}

/** Resolves after `ms`: time for a client that should not retry to have retried. */
const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

for (const transport of ['fetch', 'eventsource']) {
  test(`${transport}: a token the relay refuses is reported with its code, and not retried`, async (t) => {
    const { seen, client } = watched(transport, () =>
      mint(`user-${randomUUID()}`, 600, 'publish', [], 'not-the-relay-secret'),
    );
    t.after(() => client.close());
    client.start();
    await until(() => client.status === 'refused', 'refused');
    assert.ok(client.error instanceof PgRelayError);
    assert.equal(client.error.status, 401);
    assert.equal(client.error.code, 'bad_signature');
    await pause(1_500); // more than the first backoff
    assert.deepEqual(seen.statuses, [['connecting', undefined], ['refused', 'bad_signature']]);
    assert.equal(seen.tokens, 1, 'no new token was asked for');
  });

  test(`${transport}: an expired token is reported, and token() is asked again`, async (t) => {
    const me = `user-${randomUUID()}`;
    const { seen, client } = watched(transport, (n) => mint(me, n === 1 ? -10 : 600));
    t.after(() => client.close());
    client.start();
    await until(() => client.status === 'live', 'live with a fresh token');
    assert.deepEqual(seen.statuses, [
      ['connecting', undefined],
      ['reconnecting', 'token_expired'],
      ['live', undefined],
    ]);
    assert.equal(seen.tokens, 2);
  });
}

/**
 * A stub relay whose `GET /v1/stream` gives `answer(response)`, counting the requests: for what
 * a relay without revocation cannot produce.
 */
async function stubRelay(answer) {
  const stub = { requests: 0 };
  const server = createServer((request, response) => {
    stub.requests += 1;
    answer(response);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  stub.url = `http://127.0.0.1:${server.address().port}`;
  stub.close = () => server.close();
  return stub;
}

for (const transport of ['fetch', 'eventsource']) {
  test(`${transport}: a revoked stream stops the client with token_revoked`, async (t) => {
    const stub = await stubRelay((response) => {
      response.writeHead(200, { 'Content-Type': 'text/event-stream' });
      response.end(
        'event: position\nid: 7\ndata: {"position":7}\n\n' +
          'event: revoked\ndata: {"reason":"token_revoked"}\n\n',
      );
    });
    const { seen, client } = watched(transport, () => mint('mallory'), stub.url);
    t.after(() => {
      client.close();
      stub.close();
    });
    client.start();
    await until(() => client.status === 'refused', 'refused');
    await pause(1_500);
    assert.deepEqual(seen.statuses.at(-1), ['refused', 'token_revoked']);
    assert.equal(client.lastId, 7);
    assert.equal(stub.requests, 1, 'no reconnect');
  });

  test(`${transport}: a 401 token_revoked answer stops the client`, async (t) => {
    const stub = await stubRelay((response) => {
      response.writeHead(401, { 'Content-Type': 'application/json' });
      response.end('{"error":"token_revoked","message":"the token was revoked"}');
    });
    const { seen, client } = watched(transport, () => mint('mallory'), stub.url);
    t.after(() => {
      client.close();
      stub.close();
    });
    client.start();
    await until(() => client.status === 'refused', 'refused');
    await pause(1_500);
    assert.deepEqual(seen.statuses, [['connecting', undefined], ['refused', 'token_revoked']]);
    assert.equal(client.error.message, 'the token was revoked');
    // The stream, and for an EventSource the request that asks why.
    assert.equal(stub.requests, transport === 'fetch' ? 1 : 2);
  });
}

test('a message sent twice with one idempotency key is stored once', async () => {
  const { me, client } = recorder();
  const idempotencyKey = randomUUID();
  const message = { participants: [me], payload: { n: 1 }, idempotencyKey };
  const first = await client.send(message);
  assert.equal(await client.send(message), first);
});
