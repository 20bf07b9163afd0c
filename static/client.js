/**
 * pgrelay browser client: one ES module, no dependencies, no build step.
 *
 * Served by every relay at `/v1/client.js`. It wraps `EventSource` with what a page needs
 * to neither lose nor repeat a message:
 *
 * - **Resume from the last id.** Every dispatched event's `lastEventId` (which includes the
 *   stream's opening, id-only position) and every message id advance `lastId`. On a network
 *   error the browser's own reconnect sends `Last-Event-ID`; when the client has to open a new
 *   `EventSource` itself it asks for `since_id=lastId`.
 * - **Fresh tokens.** `EventSource` cannot set headers, so the token travels in the URL. The
 *   `token` callback is called for every (re)connect and every `send`, so a page can mint a
 *   new one. When the relay sends `token_expired`, or answers a reconnect with a non-200
 *   status (401, 429, 503: the browser gives up for good), the client closes the stream and
 *   reopens it after a capped, jittered backoff with a fresh token.
 * - **Duplicate suppression.** A message whose id is at or below `lastId` is dropped.
 * - **Status.** `onStatus` reports `'connecting'` (first connect), `'live'` (stream open),
 *   `'reconnecting'` (lost; the browser or the client is retrying) and `'closed'`.
 *
 * Ids are JavaScript numbers: exact up to 2^53, which a relay reaches after ~285 years at a
 * million messages per second.
 *
 * @example
 * import { PgRelayClient } from 'https://relay.example.com/v1/client.js';
 *
 * const relay = new PgRelayClient({
 *   url: 'https://relay.example.com',            // '' = the page's own origin
 *   token: async () => (await fetch('/my-app/relay-token')).text(),
 *   sinceId: lastRenderedId,                     // omit for live-from-now
 *   kinds: ['message', 'typing'],
 *   onMessage: (data, kind) => render(data),
 *   onStatus: (status) => (statusDot.className = status),
 *   onReset: ({ oldest_id }) => reloadHistoryFrom(oldest_id),
 * });
 * relay.start();
 * const id = await relay.send({ participants: ['bob'], payload: { text: 'hi' } });
 */

/** Longest wait between two attempts to open a stream the browser gave up on. */
const MAX_BACKOFF_MS = 30_000;

/** First wait after the browser gave up on a stream; doubles per failed attempt. */
const FIRST_BACKOFF_MS = 1_000;

export class PgRelayClient {
  #url;
  #token;
  #sinceId;
  #kinds;
  #onMessage;
  #onStatus;
  #onReset;

  /** @type {EventSource | null} */
  #source = null;
  /** @type {number | null} */
  #lastId;
  #status = null;
  #started = false;
  #everLive = false;
  /** Consecutive failed attempts to open a stream ourselves, for the backoff. */
  #attempts = 0;
  #timer = null;
  /** Bumped by every connect and by close(), so a stale async connect does nothing. */
  #generation = 0;

  /**
   * @param {object} options
   * @param {string} [options.url] relay base URL without trailing slash; '' = same origin
   * @param {(() => Promise<string> | string) | string} options.token returns a token for the
   *   current user; called for each (re)connect and each send
   * @param {number} [options.sinceId] resume after this id; omit to start live from now
   * @param {string[]} [options.kinds] event names to listen for (EventSource dispatches only
   *   named events someone subscribed to); default `['message']`
   * @param {(data: any, kind: string) => void} [options.onMessage] a message or signal
   * @param {(status: 'connecting'|'live'|'reconnecting'|'closed') => void} [options.onStatus]
   * @param {(data: {reason: string, oldest_id: number}) => void} [options.onReset] the resume
   *   point was older than retained history; messages in between are gone
   */
  constructor({
    url = '',
    token,
    sinceId,
    kinds = ['message'],
    onMessage = () => {},
    onStatus = () => {},
    onReset = () => {},
  } = {}) {
    if (token === undefined) throw new TypeError('PgRelayClient: `token` is required');
    this.#url = String(url).replace(/\/+$/, '');
    this.#token = typeof token === 'function' ? token : () => token;
    this.#sinceId = Number.isSafeInteger(sinceId) ? sinceId : null;
    this.#lastId = this.#sinceId;
    this.#kinds = [...new Set(kinds)];
    this.#onMessage = onMessage;
    this.#onStatus = onStatus;
    this.#onReset = onReset;
  }

  /** The id of the last message seen (or the stream's position), or null if unknown yet. */
  get lastId() {
    return this.#lastId;
  }

  /** The last status reported to `onStatus`. */
  get status() {
    return this.#status;
  }

  /** Opens the stream. Calling it again while started does nothing. */
  start() {
    if (this.#started) return;
    this.#started = true;
    this.#connect();
  }

  /** Closes the stream for good (until `start()` is called again). */
  close() {
    this.#started = false;
    this.#generation += 1;
    clearTimeout(this.#timer);
    this.#timer = null;
    this.#source?.close();
    this.#source = null;
    this.#setStatus('closed');
  }

  /**
   * Publishes a message as the token's participant (the token needs scope `publish`). The
   * relay adds the sender to `participants`. The message also comes back on the stream;
   * render it from there, not from here, and it shows once.
   *
   * @param {{participants: string[], payload: any, kind?: string}} message
   * @returns {Promise<number>} the new message's id
   */
  async send({ participants, payload, kind } = {}) {
    const body = { participants, payload };
    if (kind !== undefined) body.kind = kind;
    const token = await this.#token();
    const response = await fetch(`${this.#url}/v1/messages`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
    });
    let answer = null;
    try {
      answer = await response.json();
    } catch {
      // Not JSON (a proxy's error page): reported by status below.
    }
    if (!response.ok) {
      const error = new Error(answer?.message ?? `the relay answered ${response.status}`);
      error.status = response.status;
      error.code = answer?.error;
      throw error;
    }
    return answer.id;
  }

  async #connect() {
    const generation = ++this.#generation;
    this.#timer = null;
    this.#setStatus(this.#everLive || this.#attempts > 0 ? 'reconnecting' : 'connecting');
    let token;
    try {
      token = await this.#token();
    } catch {
      if (generation === this.#generation) this.#reopen(this.#backoff());
      return;
    }
    // close() or another connect happened while the page minted the token.
    if (!this.#started || generation !== this.#generation) return;

    const query = new URLSearchParams({ token });
    if (this.#lastId !== null) query.set('since_id', String(this.#lastId));
    const source = new EventSource(`${this.#url}/v1/stream?${query}`);
    this.#source = source;

    source.onopen = () => {
      this.#attempts = 0;
      this.#everLive = true;
      this.#setStatus('live');
    };
    source.onerror = () => {
      if (source !== this.#source) return;
      if (source.readyState === EventSource.CLOSED) {
        // A non-200 answer (401 expired token, 429, 503): the browser will not retry.
        this.#reopen(this.#backoff());
      } else {
        // A network error: the browser reconnects by itself, sending Last-Event-ID.
        this.#setStatus('reconnecting');
      }
    };
    for (const kind of this.#kinds) {
      source.addEventListener(kind, (event) => this.#dispatch(event, kind));
    }
    source.addEventListener('reset', (event) => {
      this.#advance(event.lastEventId);
      this.#onReset(parse(event.data));
    });
    source.addEventListener('token_expired', (event) => {
      this.#advance(event.lastEventId);
      // The relay ends the stream; reconnect at once with a token minted now.
      this.#reopen(0);
    });
  }

  #dispatch(event, kind) {
    const data = parse(event.data);
    const id = data !== null && typeof data === 'object' && Number.isSafeInteger(data.id)
      ? data.id
      : null;
    if (id !== null) {
      if (this.#lastId !== null && id <= this.#lastId) return; // already delivered
      this.#lastId = id;
    } else {
      // A signal: no id of its own, but lastEventId still tells the stream's position.
      this.#advance(event.lastEventId);
    }
    this.#onMessage(data, kind);
  }

  /** Moves `lastId` forward to a `lastEventId`, never back. */
  #advance(lastEventId) {
    if (!lastEventId) return;
    const id = Number(lastEventId);
    if (Number.isSafeInteger(id) && (this.#lastId === null || id > this.#lastId)) {
      this.#lastId = id;
    }
  }

  /** Closes the current stream and opens a new one (fresh token, since_id) after `delay`. */
  #reopen(delay) {
    this.#source?.close();
    this.#source = null;
    if (!this.#started) return;
    this.#setStatus('reconnecting');
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => this.#connect(), delay);
  }

  /** The next wait: doubling from FIRST_BACKOFF_MS up to MAX_BACKOFF_MS, half of it random. */
  #backoff() {
    const ceiling = Math.min(MAX_BACKOFF_MS, FIRST_BACKOFF_MS * 2 ** this.#attempts);
    this.#attempts += 1;
    return ceiling / 2 + Math.random() * (ceiling / 2);
  }

  #setStatus(status) {
    if (status === this.#status) return;
    this.#status = status;
    this.#onStatus(status);
  }
}

function parse(text) {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}
