// One stream per browser, in headless Chromium: many tabs of one participant share one stream.
//
// Driven by tests/suite/browser.rs (`tabs_share_one_stream_in_a_real_browser`), which starts
// the relay and passes:
//   RELAY_URL     the relay (its /metrics is on the public address)
//   TOKEN_SECRET  the relay's HS256 secret, to mint each tab a token of its own
//   CHROMIUM_PATH the browser binary (default /usr/bin/chromium)
//
// Every tab is a page of one browser context (one origin, one storage partition: what Web
// Locks and BroadcastChannel share), importing the client from the relay's /v1/client.js.
// While a publisher posts messages continuously, the tab holding the stream is closed, and
// later the next holder hangs; every remaining tab must get exactly the published ids, in order.
// The hang is the debugger's pause (CDP Debugger.pause): the tab's lock stays held, its timers
// and messages wait, and it runs them all when it resumes, as a frozen tab does when it thaws.
// (CDP's Page.setWebLifecycleState 'frozen' leaves a visible headless page running: its timers
// kept firing in Chromium 156.) Lines starting with `FIGURE` are the measurements
// BENCHMARKS.md quotes. Exit status 0 means every check passed.

import { randomUUID } from 'node:crypto';
import { launchChromium, mintToken } from './support.mjs';

const RELAY = required('RELAY_URL');
const SECRET = required('TOKEN_SECRET');

/** Tabs of the participant that share: more than HTTP/1.1's six connections per origin. */
const TABS = 7;
/** The whole script must finish within this, whatever hangs. */
const WATCHDOG_MS = 100_000;
/** How long one expected change may take. */
const PATIENCE_MS = 10_000;
/** The client's takeover of a silent holder (TAKEOVER_MS 4 s, checked every 1 s), with room. */
const TAKEOVER_PATIENCE_MS = 15_000;
/** Between two published messages. */
const PUBLISH_EVERY_MS = 20;

setTimeout(() => fail(`the tabs script did not finish within ${WATCHDOG_MS} ms`), WATCHDOG_MS).unref();

function required(name) {
  const value = process.env[name];
  if (!value) fail(`${name} is not set (run this through \`cargo test --test suite browser::\`)`);
  return value;
}

function log(...parts) {
  console.log('[tabs]', ...parts);
}

function fail(message) {
  console.log(`[tabs] FAIL: ${message}`);
  process.exit(1);
}

function check(condition, message) {
  if (!condition) throw new Error(message);
}

const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function until(condition, what, ms = PATIENCE_MS) {
  const deadline = Date.now() + ms;
  while (!(await condition())) {
    check(Date.now() < deadline, `timed out waiting for ${what}`);
    await pause(50);
  }
}

/** An HS256 token for `sub` with scope publish; each call a different one (`jti`). */
function mint(sub) {
  const exp = Math.floor(Date.now() / 1000) + 600;
  return mintToken({ sub, exp, scope: 'publish', jti: randomUUID() }, SECRET);
}

/** The relay's open-stream gauge. */
async function streamsOnRelay() {
  const text = await (await fetch(`${RELAY}/metrics`)).text();
  return Number(/^pgrelay_subscribers (\d+)$/m.exec(text)[1]);
}

/**
 * A tab: a page on the relay's origin running the client from /v1/client.js, recording each
 * message's id, arrival time and publish time. `streams` counts its open stream requests (the
 * holder has one).
 */
async function openTab(context, name, sub) {
  const page = await context.newPage();
  const tab = { name, page, streams: 0, hung: false };
  page.on('pageerror', (error) => log(`${name} page error: ${error.message}`));
  const isStream = (request) => request.url().includes('/v1/stream');
  page.on('request', (request) => isStream(request) && (tab.streams += 1));
  const ended = (request) => isStream(request) && (tab.streams -= 1);
  page.on('requestfailed', ended);
  page.on('requestfinished', ended);
  await page.goto(`${RELAY}/readyz`);
  await page.evaluate(async ({ token }) => {
    const { PgRelayClient } = await import('/v1/client.js');
    window.got = [];
    window.client = new PgRelayClient({
      url: '',
      token: () => token,
      onMessage: (message) => window.got.push([message.id, Date.now(), message.payload.sent]),
    });
    window.client.start();
  }, { token: mint(sub) });
  return tab;
}

/** What a tab received: [id, arrived at, published at] per message. */
function received(tab) {
  return tab.page.evaluate(() => window.got);
}

/** Whether the tab is live and knows its position. */
function ready(tab) {
  return tab.page.evaluate(() => window.client.status === 'live' && window.client.lastId !== null);
}

/** Posts messages to alice, one after another, until stopped; their ids, in order. */
function publisher() {
  const token = mint('publisher');
  const ids = [];
  let running = true;
  const done = (async () => {
    while (running) {
      const response = await fetch(`${RELAY}/v1/messages`, {
        method: 'POST',
        headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
        body: JSON.stringify({ participants: ['alice'], payload: { sent: Date.now() } }),
      });
      check(response.status === 201, `POST /v1/messages answered ${response.status}`);
      ids.push((await response.json()).id);
      await pause(PUBLISH_EVERY_MS);
    }
  })();
  return { ids, stop: async () => { running = false; await done; } };
}

/** The one alice tab with an open stream (waits until there is exactly one, not `except`). */
async function holder(tabs, except = null) {
  let found;
  await until(() => {
    const holding = tabs.filter((tab) => tab.streams > 0 && tab !== except && !tab.hung);
    found = holding.length === 1 ? holding[0] : null;
    return found !== null;
  }, 'one tab holding the stream', TAKEOVER_PATIENCE_MS);
  return found;
}

/**
 * After `since`: how long until each tab got its next message (the largest), and the largest
 * delay from publishing to arrival of the messages published within `window` ms of it.
 */
async function disruption(tabs, since, window) {
  let gap = 0;
  let latency = 0;
  for (const tab of tabs) {
    const got = await received(tab);
    const next = got.find(([, arrived]) => arrived >= since);
    check(next, `${tab.name} got nothing after ${since}`);
    gap = Math.max(gap, next[1] - since);
    for (const [, arrived, sent] of got) {
      if (sent >= since - window && sent <= since + window) latency = Math.max(latency, arrived - sent);
    }
  }
  return { gap, latency };
}

async function main() {
  const browser = await launchChromium();
  try {
    await scenario(await browser.newContext());
  } finally {
    await browser.close().catch(() => {});
  }
}

async function scenario(context) {
  // Six tabs, as many as HTTP/1.1 lets a browser connect to one origin; then one more.
  const tabs = [];
  for (const count of [6, TABS]) {
    while (tabs.length < count) tabs.push(await openTab(context, `alice-${tabs.length + 1}`, 'alice'));
    for (const tab of tabs) await until(() => ready(tab), `${tab.name} live`);
    await pause(500); // a second stream, if any, would be open by now
    const shared = await streamsOnRelay();
    log(`FIGURE streams on the relay for ${count} tabs of one participant: ${shared}`);
    check(shared === 1, `${count} tabs of alice hold ${shared} streams on the relay, not 1`);
  }

  const bob = await openTab(context, 'bob', 'bob');
  await until(() => ready(bob), 'bob live');
  await until(async () => (await streamsOnRelay()) === 2, 'a stream of bob’s own');
  log('bob, in the same browser, has a stream of his own');

  const published = publisher();
  await pause(1_000);

  // The holder's tab closes: the browser releases its lock, the next tab takes over.
  const first = await holder(tabs);
  const closedAt = Date.now();
  await first.page.close();
  const open = tabs.filter((tab) => tab !== first);
  const second = await holder(open);
  await pause(1_500);
  const afterClose = await disruption(open, closedAt, 1_000);
  log(`${first.name} closed; ${second.name} took over`);
  log(`FIGURE closing the holding tab: next message in every tab within ${afterClose.gap} ms; ` +
    `largest delivery latency around it ${afterClose.latency} ms (publishing every ${PUBLISH_EVERY_MS} ms)`);

  // A follower sends: a plain request of its own.
  const fromTab = await open.at(-1).page.evaluate(
    () => window.client.send({ participants: ['alice'], payload: { sent: Date.now() } }),
  );
  published.ids.push(fromTab); // its place among the publisher's: sorted below
  log(`${open.at(-1).name} (a follower) sent message ${fromTab}`);

  // The holder hangs (a hung or frozen tab keeps its lock): a heartbeat's silence hands the
  // stream to another tab, and the hung one steps down when it runs again.
  const cdp = await context.newCDPSession(second.page);
  await cdp.send('Debugger.enable');
  const hungAt = Date.now();
  await cdp.send('Debugger.pause');
  second.hung = true;
  const others = open.filter((tab) => tab !== second);
  const third = await holder(others);
  const tookOverIn = Date.now() - hungAt;
  await pause(1_500);
  const afterFreeze = await disruption(others, hungAt, 6_000);
  log(`${second.name} hung; ${third.name} took over`);
  log(`FIGURE hanging the holding tab: takeover seen after ${tookOverIn} ms, next message in every ` +
    `other tab within ${afterFreeze.gap} ms; largest delivery latency around it ${afterFreeze.latency} ms`);
  await cdp.send('Debugger.resume');
  second.hung = false;
  await until(() => second.streams === 0, `${second.name} closing its stream once running`);
  await until(async () => (await streamsOnRelay()) === 2, 'one stream for alice again, one for bob');

  await pause(500);
  await published.stop();
  const ids = [...published.ids].sort((a, b) => a - b);
  const last = ids.at(-1);
  for (const tab of open) {
    await until(async () => (await received(tab)).some(([id]) => id === last), `${tab.name} got ${last}`);
  }
  await pause(300);
  const expected = new Set(ids);
  let totalLost = 0;
  let totalDuplicated = 0;
  for (const tab of open) {
    const got = (await received(tab)).map(([id]) => id);
    const lost = ids.filter((id) => !got.includes(id)).length;
    const duplicated = got.length - new Set(got).size;
    const ordered = got.every((id, n) => n === 0 || got[n - 1] < id);
    const strangers = got.filter((id) => !expected.has(id)).length;
    log(`FIGURE ${tab.name}: ${got.length} received of ${ids.length} published, lost ${lost}, ` +
      `duplicated ${duplicated}, in order ${ordered}`);
    check(lost === 0 && duplicated === 0 && ordered && strangers === 0,
      `${tab.name} lost ${lost}, duplicated ${duplicated}, ordered ${ordered}, strangers ${strangers}`);
    totalLost += lost;
    totalDuplicated += duplicated;
  }
  const bobGot = await received(bob);
  check(bobGot.length === 0, `bob received ${bobGot.length} of alice's messages`);
  log(`FIGURE ${ids.length} messages, ${open.length} tabs: lost ${totalLost}, duplicated ${totalDuplicated}; bob got none`);
}

main().then(
  () => {
    log('PASS');
    process.exit(0);
  },
  (error) => fail(error.stack || error.message),
);
