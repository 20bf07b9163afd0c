// Tabs sharing one stream, played by several clients in one Node process against a real relay
// (RELAY_URL, PGRELAY_SECRET). Node has BroadcastChannel, but no `location` (nor, before 24,
// Web Locks): there each client keeps its own stream (the first test); the others lend the
// process a small in-memory `navigator.locks` and a `location`, so the clients behave as tabs of
// one browser. A holder hung for real needs a browser (tests/browser/tabs.mjs); here one is
// silenced by muting its channel.

import assert from 'node:assert/strict';
import { createHmac, randomUUID } from 'node:crypto';
import { test } from 'node:test';

import { PgRelayClient } from '@pgrelay/client';

const RELAY = process.env.RELAY_URL;
const SECRET = process.env.PGRELAY_SECRET.split(',')[0].trim();

function mint(sub, claims = {}) {
  const segment = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const body = { sub, exp: Math.floor(Date.now() / 1000) + 600, scope: 'publish', ...claims };
  // A fresh jti makes every token different, as a page's token endpoint would.
  const input = `${segment({ alg: 'HS256', typ: 'JWT' })}.${segment({ ...body, jti: randomUUID() })}`;
  return `${input}.${createHmac('sha256', SECRET).update(input).digest('base64url')}`;
}

async function until(check, what, ms = 10_000) {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Web Locks as the specification has them, for one process: exclusive locks granted in request
 * order, `signal` to leave the queue, `steal` to take a held lock (its holder's promise then
 * rejects with AbortError).
 */
function fakeLocks() {
  const held = new Map();
  const queues = new Map();
  const abortError = () => new DOMException('lock lost', 'AbortError');
  return {
    request(name, options, callback) {
      return new Promise((resolve, reject) => {
        const grant = () => {
          const lock = { reject };
          held.set(name, lock);
          const release = (settle) => (value) => {
            if (held.get(name) !== lock) return; // stolen meanwhile: already rejected
            held.delete(name);
            queues.get(name)?.shift()?.();
            settle(value);
          };
          Promise.resolve().then(() => callback({ name })).then(release(resolve), release(reject));
        };
        if (options.steal) {
          held.get(name)?.reject(abortError());
          held.delete(name);
          grant();
        } else if (!held.has(name)) {
          grant();
        } else {
          const queue = queues.get(name) ?? [];
          queues.set(name, queue);
          queue.push(grant);
          options.signal?.addEventListener('abort', () => {
            const at = queue.indexOf(grant);
            if (at === -1) return; // granted already: aborting does nothing
            queue.splice(at, 1);
            reject(abortError());
          });
        }
      });
    },
  };
}

/** Makes this process look like one browser (Web Locks, a page address) until the test ends. */
function browser(t) {
  const navigator = Object.getOwnPropertyDescriptor(globalThis, 'navigator');
  const define = (name, value) =>
    Object.defineProperty(globalThis, name, { value, configurable: true, writable: true });
  define('navigator', { locks: fakeLocks() });
  define('location', { href: 'http://app.example/page' });
  t.after(() => {
    if (navigator) Object.defineProperty(globalThis, 'navigator', navigator);
    else delete globalThis.navigator;
    delete globalThis.location;
  });
}

/**
 * Every stream request the clients make, by the token it carries: `open` while neither
 * aborted (closed by the client) nor ended.
 */
function watchStreams(t) {
  const streams = [];
  const real = globalThis.fetch;
  globalThis.fetch = (url, init = {}) => {
    if (!String(url).includes('/v1/stream')) return real(url, init);
    const stream = { token: init.headers?.Authorization?.slice(7), open: true, url: String(url) };
    streams.push(stream);
    init.signal?.addEventListener('abort', () => (stream.open = false));
    return real(url, init).then((response) => {
      if (response.status !== 200) stream.open = false;
      return response;
    });
  };
  t.after(() => (globalThis.fetch = real));
  return { all: streams, open: () => streams.filter((stream) => stream.open) };
}

/** A client of `sub` (a tab) that records what it hands over. */
function tab(sub, options = {}) {
  const seen = { ids: [], statuses: [], errors: [], rooms: [], tokens: 0 };
  const token = options.token ?? mint(sub, options.claims);
  const client = new PgRelayClient({
    url: RELAY,
    transport: 'fetch',
    token: () => {
      seen.tokens += 1;
      return token;
    },
    onMessage: (message) => seen.ids.push(message.id),
    onRooms: (change) => seen.rooms.push(change),
    onStatus: (status, error) => {
      seen.statuses.push(status);
      if (error) seen.errors.push(error.code);
    },
    ...options.client,
  });
  return { client, seen, token };
}

function startAll(t, tabs) {
  t.after(() => tabs.forEach(({ client }) => client.close()));
  for (const { client } of tabs) client.start();
}

/**
 * Publishes `count` messages to `participants` from `sender`, one after another, within the
 * relay's default publish rate (20 a second); their ids.
 */
async function publish(sender, participants, count) {
  const ids = [];
  for (let n = 0; n < count; n += 1) {
    ids.push(await sender.send({ participants, payload: { n } }));
    await pause(55);
  }
  return ids;
}

test('in Node each client keeps its own stream', async (t) => {
  const streams = watchStreams(t);
  const me = `user-${randomUUID()}`;
  const tabs = [tab(me), tab(me)];
  startAll(t, tabs);
  await until(() => tabs.every(({ client }) => client.status === 'live'), 'both live');
  assert.equal(streams.open().length, 2);
});

test('clients of one participant share one stream; each gets every message once, in order', async (t) => {
  browser(t);
  const streams = watchStreams(t);
  const me = `user-${randomUUID()}`;
  const tabs = [tab(me), tab(me), tab(me), tab(me)];
  startAll(t, tabs);
  await until(() => tabs.every(({ client }) => client.status === 'live'), 'every tab live');
  await until(() => tabs.every(({ client }) => client.lastId !== null), 'every tab positioned');
  assert.equal(streams.all.length, 1, 'one stream for four tabs');
  // One token each: the holder opens the stream with the token it joined with.
  assert.deepEqual(tabs.map(({ seen }) => seen.tokens), [1, 1, 1, 1]);
  // Sending works from any tab: from the last one, which follows.
  const ids = await publish(tabs[3].client, [me], 20);
  await until(() => tabs.every(({ seen }) => seen.ids.length >= ids.length), 'every message');
  await pause(200);
  for (const { seen } of tabs) assert.deepEqual(seen.ids, ids);
  assert.equal(streams.all.length, 1);
});

test("the holder's close() hands the stream over: no gap, no duplicate", async (t) => {
  browser(t);
  const streams = watchStreams(t);
  const me = `user-${randomUUID()}`;
  const tabs = [tab(me), tab(me), tab(me)];
  startAll(t, tabs);
  await until(() => tabs.every(({ client }) => client.lastId !== null), 'every tab positioned');
  const sender = tab(`sender-${randomUUID()}`).client;
  const sending = publish(sender, [me], 40);
  await until(() => tabs[1].seen.ids.length >= 15, 'some messages');
  const holder = tabs.find(({ token }) => token === streams.open()[0].token);
  holder.client.close();
  const ids = await sending;
  const rest = tabs.filter((other) => other !== holder);
  await until(() => rest.every(({ seen }) => seen.ids.length >= ids.length), 'every message', 15_000);
  await pause(200);
  for (const { seen } of rest) assert.deepEqual(seen.ids, ids);
  assert.deepEqual(holder.seen.ids, ids.slice(0, holder.seen.ids.length));
  assert.equal(streams.open().length, 1, 'one stream again');
  assert.notEqual(streams.open()[0].token, holder.token);
});

test('a holder gone silent is taken over, and steps down: no gap, no duplicate', async (t) => {
  browser(t);
  const streams = watchStreams(t);
  // The tabs' channels, in the order the clients join: the first to join holds.
  const channels = [];
  const Real = globalThis.BroadcastChannel;
  globalThis.BroadcastChannel = class extends Real {
    constructor(name) {
      super(name);
      channels.push(this);
    }
  };
  t.after(() => (globalThis.BroadcastChannel = Real));
  const me = `user-${randomUUID()}`;
  const tabs = [tab(me), tab(me), tab(me)];
  startAll(t, tabs);
  await until(() => tabs.every(({ client }) => client.lastId !== null), 'every tab positioned');
  const [holder] = tabs;
  assert.equal(streams.open()[0].token, holder.token);
  const sender = tab(`sender-${randomUUID()}`).client;
  const sending = publish(sender, [me], 110); // ~6 s
  await until(() => tabs[1].seen.ids.length >= 10, 'some messages');
  // The holder still reads its stream but no longer reaches the other tabs, as if hung.
  channels[0].postMessage = () => {};
  const ids = await sending;
  await until(() => tabs.every(({ seen }) => seen.ids.length >= ids.length), 'every message', 15_000);
  await pause(200);
  for (const { seen } of tabs) assert.deepEqual(seen.ids, ids);
  assert.equal(streams.open().length, 1, 'the silent holder closed its stream');
  assert.notEqual(streams.open()[0].token, holder.token);
});

test('a holder whose timers stall but who answers is not taken over', async (t) => {
  browser(t);
  const streams = watchStreams(t);
  // The first tab's heartbeat never runs, as in a hidden tab whose timers the browser wakes
  // once a minute; its messages still run at once.
  const realSetInterval = globalThis.setInterval;
  let stalled = false;
  globalThis.setInterval = (callback, ms) => {
    if (stalled) return realSetInterval(callback, ms);
    stalled = true;
    return realSetInterval(() => {}, ms);
  };
  t.after(() => (globalThis.setInterval = realSetInterval));
  const me = `user-${randomUUID()}`;
  const holder = tab(me);
  startAll(t, [holder]);
  await until(() => holder.client.lastId !== null, 'positioned');
  const others = [tab(me), tab(me)];
  startAll(t, others);
  await until(() => others.every(({ client }) => client.lastId !== null), 'the others positioned');
  await pause(7_000); // more than the silence after which a tab asks, and the next heartbeat
  assert.equal(streams.all.length, 1, 'nobody took over');
  const ids = await publish(others[0].client, [me], 3);
  await until(() => others.every(({ seen }) => seen.ids.length === 3), 'the messages');
  assert.deepEqual(holder.seen.ids, ids);
});

test('a client starting behind the shared stream catches up, then follows', async (t) => {
  browser(t);
  const streams = watchStreams(t);
  const me = `user-${randomUUID()}`;
  const first = tab(me);
  startAll(t, [first]);
  await until(() => first.client.lastId !== null, 'positioned');
  const before = await publish(first.client, [me], 5);
  await until(() => first.seen.ids.length === 5, 'the first five');
  const late = tab(me, { client: { sinceId: before[0] - 1 } });
  startAll(t, [late]);
  await until(() => late.seen.ids.length >= 5, 'the catch-up');
  const after = await publish(first.client, [me], 5);
  await until(() => late.seen.ids.length >= 10, 'the later messages');
  await until(() => streams.open().length === 1, 'the catch-up stream closed');
  await pause(200);
  assert.deepEqual(late.seen.ids, [...before, ...after]);
  assert.deepEqual(first.seen.ids, [...before, ...after]);
});

test('a live client joining a shared stream starts at its position', async (t) => {
  browser(t);
  const me = `user-${randomUUID()}`;
  const first = tab(me);
  startAll(t, [first]);
  await until(() => first.client.lastId !== null, 'positioned');
  const before = await publish(first.client, [me], 3);
  await until(() => first.seen.ids.length === 3, 'the first three');
  const late = tab(me);
  startAll(t, [late]);
  await until(() => late.client.lastId !== null, 'the late tab positioned');
  const after = await publish(late.client, [me], 3);
  await until(() => late.seen.ids.length >= 3, 'the later messages');
  await pause(200);
  assert.deepEqual(late.seen.ids, after);
  assert.deepEqual(first.seen.ids, [...before, ...after]);
});

test('other participants, other rooms, opaque tokens and shareTabs: false do not share', async (t) => {
  browser(t);
  const streams = watchStreams(t);
  const alice = `alice-${randomUUID()}`;
  const bob = `bob-${randomUUID()}`;
  const room = `#room-${randomUUID()}`;
  const tabs = [
    tab(alice),
    tab(bob),
    tab(alice, { claims: { rooms: [room] }, client: { rooms: [room] } }),
    tab(alice, { client: { kinds: ['message', 'chat'] } }),
    tab(alice, { client: { shareTabs: false } }),
  ];
  startAll(t, tabs);
  await until(() => tabs.every(({ client }) => client.status === 'live'), 'every tab live');
  assert.equal(streams.open().length, tabs.length);
  const ids = await publish(tabs[0].client, [alice], 3);
  await until(() => tabs[0].seen.ids.length === 3, "alice's messages");
  await pause(300);
  assert.deepEqual(tabs[1].seen.ids, [], "bob gets none of alice's");

  const opaque = [tab(alice, { token: 'not-a-jwt' }), tab(alice, { token: 'not-a-jwt' })];
  startAll(t, opaque);
  await until(() => opaque.every(({ client }) => client.status === 'refused'), 'both refused');
  assert.equal(streams.all.filter((s) => s.token === 'not-a-jwt').length, 2, 'each asked alone');
  assert.deepEqual(tabs[4].seen.ids, ids);
});

test('a refusal reaches every tab, with its code', async (t) => {
  browser(t);
  const me = `user-${randomUUID()}`;
  const room = `#not-granted-${randomUUID()}`;
  const tabs = [1, 2, 3].map(() => tab(me, { client: { rooms: [room] } }));
  startAll(t, tabs);
  await until(() => tabs.every(({ client }) => client.status === 'refused'), 'every tab refused');
  for (const { client } of tabs) assert.equal(client.error.code, 'room_not_granted');
});

test('a room joined while shared is announced in every tab', {
  skip: !process.env.RELAY_JOIN_KIND && 'needs a relay whose database has the join desk',
}, async (t) => {
  browser(t);
  const me = `user-${randomUUID()}`;
  const room = `#room-${randomUUID()}`;
  const tabs = [tab(me), tab(me), tab(me)];
  startAll(t, tabs);
  await until(() => tabs.every(({ client }) => client.lastId !== null), 'every tab positioned');
  await tabs[2].client.send({
    participants: [me], kind: process.env.RELAY_JOIN_KIND, payload: { room },
  });
  await until(() => tabs.every(({ seen }) => seen.rooms.length === 1), 'the change in every tab');
  for (const { seen } of tabs) assert.deepEqual(seen.rooms, [{ added: [room], removed: [] }]);
});
