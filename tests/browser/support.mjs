// What the browser scripts share: the system Chromium, started as every test wants it, and
// HS256 tokens minted as any backend's JWT code would (the relay must accept them).
import { createHmac } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

/**
 * Starts headless Chromium (`CHROMIUM_PATH`, else Debian's). Playwright gives each launch a
 * fresh profile of its own; a temporary folder, removed on every exit, keeps Chromium's crash
 * and cache files out of $HOME.
 */
export async function launchChromium() {
  const userDataDir = mkdtempSync(join(tmpdir(), 'pgrelay-chromium-'));
  process.on('exit', () => rmSync(userDataDir, { recursive: true, force: true }));
  return chromium.launch({
    executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
    headless: true,
    timeout: 20_000,
    env: { ...process.env, HOME: userDataDir, XDG_CONFIG_HOME: userDataDir, XDG_CACHE_HOME: userDataDir },
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}

/** An HS256 token with `claims` (`sub`, `exp` …) and `iat` now, signed with `secret`. */
export function mintToken(claims, secret) {
  const encode = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const iat = Math.floor(Date.now() / 1000);
  const input = `${encode({ alg: 'HS256', typ: 'JWT' })}.${encode({ iat, ...claims })}`;
  return `${input}.${createHmac('sha256', secret).update(input).digest('base64url')}`;
}
