// docs/tutorial.md's browser page (step 10) in headless Chromium, as its reader opens it.
//
// Driven by tests/suite/tutorial.rs, which has run the tutorial's steps (the relay, the stand-in
// backend server.mjs serving index.html) and passes in the environment:
//   PAGE_URL       the page as the tutorial says to open it, for carol
//   CHROMIUM_PATH  the browser binary
//   TEXTS          the JSON array of the message lines carol's page must list first
//   LIVE_TEXT      the line of the message the Rust side inserts into app.messages once this
//                  script prints `LIVE`; it answers `INSERTED` on stdin
// Exit status 0: the page listed the history, said `live`, showed the new row, and logged no
// console error.

import { createInterface } from 'node:readline';
import { launchChromium } from './support.mjs';

const PATIENCE_MS = 10_000;
const expected = JSON.parse(process.env.TEXTS);
const liveText = process.env.LIVE_TEXT;
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

function fail(message) {
  console.log(`[tutorial page] FAIL: ${message}`);
  process.exit(1);
}
setTimeout(() => fail('the script took longer than 40 s'), 40_000);

const browser = await launchChromium();
try {
  const page = await browser.newPage();
  const errors = [];
  page.on('console', (message) => message.type() === 'error' && errors.push(message.text()));
  page.on('pageerror', (error) => errors.push(error.message));
  await page.goto(process.env.PAGE_URL);

  const items = () => page.$$eval('#messages li', (nodes) => nodes.map((node) => node.textContent));
  await page.waitForFunction(() => document.getElementById('status').textContent === 'live', null,
    { timeout: PATIENCE_MS }).catch(async () => fail(`the page says ${await page.textContent('#status')}`));
  await page.waitForFunction((count) => document.querySelectorAll('#messages li').length >= count,
    expected.length, { timeout: PATIENCE_MS }).catch(async () => fail(`the page lists ${JSON.stringify(await items())}`));
  if (JSON.stringify(await items()) !== JSON.stringify(expected)) {
    fail(`the page lists ${JSON.stringify(await items())}, expected ${JSON.stringify(expected)}`);
  }
  console.log('LIVE');
  const answer = await lines.next();
  if (answer.value !== 'INSERTED') fail(`the Rust side answered ${JSON.stringify(answer.value)}`);
  await page.waitForFunction((text) => [...document.querySelectorAll('#messages li')].some((li) => li.textContent === text),
    liveText, { timeout: PATIENCE_MS }).catch(async () => fail(`the new row never showed; the page lists ${JSON.stringify(await items())}`));
  if (errors.length > 0) fail(`console errors: ${errors.join('; ')}`);
  console.log('[tutorial page] passed');
} finally {
  await browser.close();
}
process.exit(0);
