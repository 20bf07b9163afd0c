var __defProp = Object.defineProperty;
var __getOwnPropDesc = Object.getOwnPropertyDescriptor;
var __getOwnPropNames = Object.getOwnPropertyNames;
var __hasOwnProp = Object.prototype.hasOwnProperty;
var __export = (target, all) => {
  for (var name in all)
    __defProp(target, name, { get: all[name], enumerable: true });
};
var __copyProps = (to, from, except, desc) => {
  if (from && typeof from === "object" || typeof from === "function") {
    for (let key of __getOwnPropNames(from))
      if (!__hasOwnProp.call(to, key) && key !== except)
        __defProp(to, key, { get: () => from[key], enumerable: !(desc = __getOwnPropDesc(from, key)) || desc.enumerable });
  }
  return to;
};
var __toCommonJS = (mod) => __copyProps(__defProp({}, "__esModule", { value: true }), mod);

// src/index.js
var index_exports = {};
__export(index_exports, {
  PgRelayClient: () => PgRelayClient,
  PgRelayError: () => PgRelayError
});
module.exports = __toCommonJS(index_exports);
var MAX_BACKOFF_MS = 3e4;
var FIRST_BACKOFF_MS = 1e3;
var TYPING_INTERVAL_MS = 2e3;
var HEARTBEAT_MS = 1e3;
var TAKEOVER_MS = 3e3;
var CURED_BY_A_NEW_TOKEN = /* @__PURE__ */ new Set(["token_expired", "token_not_yet_valid"]);
var PgRelayError = class extends Error {
  /**
   * @param {number} status the HTTP status (401 for the stream events `token_expired` and
   *   `revoked`, which stand for the answer the relay would now give that token)
   * @param {string | undefined} code the relay's error code; undefined when the answer was not
   *   the relay's JSON (a proxy's error page)
   * @param {string} [message] the relay's human-readable message
   */
  constructor(status, code, message) {
    super(message ?? `the relay answered ${status}`);
    this.name = "PgRelayError";
    this.status = status;
    this.code = code;
  }
  /** Whether retrying cannot help: a refused (401, 403) token that no new token cures. */
  get final() {
    return (this.status === 401 || this.status === 403) && !CURED_BY_A_NEW_TOKEN.has(this.code);
  }
};
var PgRelayClient = class {
  #url;
  #token;
  #sinceId;
  #rooms;
  #kinds;
  #signalKinds;
  #onMessage;
  #onOversized;
  #onSignal;
  #onPresence;
  #onStatus;
  #onReset;
  #onRooms;
  #transport;
  /** Participant-set key → when `typing()` last sent for it. */
  #typingSentAt = /* @__PURE__ */ new Map();
  /** The open stream: an `EventSource` or a `FetchSource`, both with `close()`. */
  #source = null;
  /** @type {number | null} */
  #lastId;
  #status = null;
  /** The refusal reported with the current status, if any. */
  #error = null;
  #started = false;
  #everLive = false;
  /** Consecutive failed attempts to open a stream ourselves, for the backoff. */
  #attempts = 0;
  #timer = null;
  /** Bumped by every connect and by close(), so a stale async connect does nothing. */
  #generation = 0;
  /** Whether to share the stream with this browser's other tabs: asked for, and possible. */
  #share;
  /** The tabs this one shares with (a `Tabs`), once joined; null while alone. */
  #tabs = null;
  /** Whether this tab holds the shared stream, reading it for all. */
  #holding = false;
  /** Whether this tab reads a stream of its own: it holds, or catches up to the shared one. */
  #streaming = false;
  /** Whether this follower has met the shared stream, so its events continue this tab's. */
  #synced = false;
  /** The shared stream's position: the highest id its holders broadcast as read. */
  #sharedAt = null;
  /** The token this tab joined with, until a stream uses it or another tab holds the stream. */
  #joinToken = null;
  /**
   * @param {object} options
   * @param {string} [options.url] relay base URL without trailing slash; '' = same origin
   * @param {(() => Promise<string> | string) | string} options.token returns a token for the
   *   current user; called for each (re)connect and each request
   * @param {number} [options.sinceId] resume after this id; omit to start live from now
   * @param {string[]} [options.rooms] narrow the stream to these rooms (`['#general']`): only
   *   messages that name one of them, no direct or broadcast message. Omit for everything the
   *   token's participant receives: its own messages, its rooms', and broadcasts to `*`.
   * @param {string[]} [options.kinds] message kinds to listen for (EventSource dispatches only
   *   named events someone subscribed to); default `['message']`
   * @param {string[]} [options.signalKinds] signal kinds to listen for; default `['typing']`.
   *   `presence` is always listened for.
   * @param {(data: any, kind: string) => void} [options.onMessage] a stored message (it has an
   *   id), once, in id order
   * @param {(standIn: {id: number, kind: string, sender: string | null, participants:
   *   string[], bytes: number}) => void} [options.onOversized] in a message's place, once and in
   *   id order, when the message (of one of `kinds`) is larger than the relay streams
   *   (`--max-event-bytes`): its stand-in, without the payload. Read the message with
   *   `fetchMessage(standIn.id)`. By default stand-ins are dropped (their ids still count).
   * @param {(kind: string, data: any) => void} [options.onSignal] a live-only event (no id):
   *   `{kind, sender, participants, payload}` for signals, `{participant, online, at}` for
   *   `presence`
   * @param {(data: {participant: string, online: boolean, at: string}) => void}
   *   [options.onPresence] a presence change of someone whose audience this participant is in
   * @param {(status: 'connecting'|'live'|'reconnecting'|'refused'|'closed', error?:
   *   PgRelayError) => void} [options.onStatus] the stream's state; with `'reconnecting'` and
   *   `'refused'`, the relay's refusal when there was one (`error.code`: `token_expired`,
   *   `token_revoked`, `bad_signature` …)
   * @param {(data: {reason: string, oldest_id: number}) => void} [options.onReset] the resume
   *   point was older than retained history; messages in between are gone
   * @param {(data: {added: string[], removed: string[]}) => void} [options.onRooms] the
   *   stream's rooms changed at this point of the message order: from here on it receives the
   *   added rooms' messages and none of the removed rooms'
   * @param {'eventsource'|'fetch'} [options.transport] how to read the stream; default
   *   `'eventsource'` where `EventSource` exists, else `'fetch'`
   * @param {boolean} [options.shareTabs] share one stream with this browser's tabs that follow
   *   the same stream (default true; needs Web Locks and `BroadcastChannel`, and a JWT whose
   *   `sub` names the participant); false keeps a stream of this tab's own
   */
  constructor({
    url = "",
    token,
    sinceId,
    rooms = [],
    kinds = ["message"],
    signalKinds = ["typing"],
    onMessage = () => {
    },
    onOversized = () => {
    },
    onSignal = () => {
    },
    onPresence = () => {
    },
    onStatus = () => {
    },
    onReset = () => {
    },
    onRooms = () => {
    },
    transport = typeof EventSource === "function" ? "eventsource" : "fetch",
    shareTabs = true
  } = {}) {
    if (token === void 0) throw new TypeError("PgRelayClient: `token` is required");
    this.#url = String(url).replace(/\/+$/, "");
    this.#token = typeof token === "function" ? token : () => token;
    this.#sinceId = Number.isSafeInteger(sinceId) ? sinceId : null;
    this.#lastId = this.#sinceId;
    this.#rooms = [...new Set(rooms)];
    this.#kinds = [...new Set(kinds)];
    this.#signalKinds = [.../* @__PURE__ */ new Set([...signalKinds, "presence"])];
    this.#onMessage = onMessage;
    this.#onOversized = onOversized;
    this.#onSignal = onSignal;
    this.#onPresence = onPresence;
    this.#onStatus = onStatus;
    this.#onReset = onReset;
    this.#onRooms = onRooms;
    if (transport !== "eventsource" && transport !== "fetch") {
      throw new TypeError("PgRelayClient: `transport` is 'eventsource' or 'fetch'");
    }
    this.#transport = transport;
    this.#share = shareTabs && typeof location === "object" && typeof BroadcastChannel === "function" && !!globalThis.navigator?.locks;
  }
  /** The id of the last message seen (or the stream's position), or null if unknown yet. */
  get lastId() {
    return this.#lastId;
  }
  /** The last status reported to `onStatus`. */
  get status() {
    return this.#status;
  }
  /** The refusal reported with the last status (a `PgRelayError`), or null. */
  get error() {
    return this.#error;
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
    this.#leave();
    this.#generation += 1;
    clearTimeout(this.#timer);
    this.#timer = null;
    this.#source?.close();
    this.#source = null;
    this.#setStatus("closed");
  }
  /**
   * Publishes a message as the token's participant (the token needs scope `publish`). The
   * relay adds the sender to `participants`. The message also comes back on the stream;
   * render it from there, not from here, and it shows once.
   *
   * @param {{participants: string[], payload: any, kind?: string, idempotencyKey?: string}}
   *   message with `idempotencyKey` (1 to 255 visible ASCII characters), sending it again with
   *   the same key after a failure stores it once: the relay answers the first one's id
   * @returns {Promise<number>} the new message's id
   */
  async send({ participants, payload, kind, idempotencyKey } = {}) {
    const body = { participants, payload };
    if (kind !== void 0) body.kind = kind;
    const headers = idempotencyKey === void 0 ? {} : { "Idempotency-Key": idempotencyKey };
    const answer = await this.#request("POST", "/v1/messages", body, headers);
    this.#typingSentAt.delete(setKey(participants));
    return answer.id;
  }
  /**
   * Tells `participants` that this participant is typing: a `typing` signal, sent at most once
   * every 2 s per participant set however often it is called (so call it on every input
   * event); the relay's rate limit (429) is ignored, typing indicators being forgettable.
   *
   * @param {string[]} participants the recipients (the relay adds the sender)
   * @returns {Promise<boolean>} whether a signal was sent; rejects on other errors (a token
   *   without scope `publish`, a network failure)
   */
  async typing(participants) {
    const key = setKey(participants);
    const now = Date.now();
    if (now - (this.#typingSentAt.get(key) ?? -Infinity) < TYPING_INTERVAL_MS) return false;
    for (const [other, at] of this.#typingSentAt) {
      if (now - at >= TYPING_INTERVAL_MS) this.#typingSentAt.delete(other);
    }
    this.#typingSentAt.set(key, now);
    try {
      await this.#request("POST", "/v1/signals", { participants, kind: "typing", payload: null });
      return true;
    } catch (error) {
      if (error.status === 429) return false;
      throw error;
    }
  }
  /**
   * One stored message, whole (`GET /v1/messages/{id}`): the way to read a message the stream
   * handed to `onOversized` as a stand-in. Rejects with `error.status === 404` when the message
   * is not addressed to this participant (or is gone), and with 503 `over_capacity` when the
   * relay is reading as many large messages as it may hold (retry after a moment).
   *
   * @param {number} id the message id
   * @returns {Promise<object>} the message, as `onMessage` receives one
   */
  async fetchMessage(id) {
    return this.#request("GET", `/v1/messages/${encodeURIComponent(id)}`);
  }
  /**
   * Who of `participants` is online (`GET /v1/presence`). The caller must be in each one's
   * presence audience (by default: shares a retained message with them), else it rejects with
   * `error.status === 403`.
   *
   * @param {string[]} participants at most 100 names
   * @returns {Promise<Record<string, {online: true, since: string} |
   *   {online: false, last_seen: string | null}>>} the answer's `presence` object, by name
   */
  async presence(participants) {
    const query = new URLSearchParams({ participants: participants.join(",") });
    return (await this.#request("GET", `/v1/presence?${query}`)).presence;
  }
  /** One JSON request with a fresh token; a non-2xx answer throws a `PgRelayError`. */
  async #request(method, path, body, extraHeaders = {}) {
    const token = await this.#token();
    const headers = { ...extraHeaders, Authorization: `Bearer ${token}` };
    if (body !== void 0) headers["Content-Type"] = "application/json";
    const response = await fetch(`${this.#url}${path}`, {
      method,
      headers,
      body: body === void 0 ? void 0 : JSON.stringify(body)
    });
    if (!response.ok) throw await refusal(response);
    return response.json();
  }
  async #connect() {
    const generation = ++this.#generation;
    this.#timer = null;
    if (this.#everLive || this.#attempts > 0) {
      this.#setStatus("reconnecting", this.#error);
    } else {
      this.#setStatus("connecting");
    }
    let token = this.#joinToken;
    this.#joinToken = null;
    try {
      token ??= await this.#token();
    } catch {
      if (generation === this.#generation) this.#reopen(this.#backoff());
      return;
    }
    if (!this.#started || generation !== this.#generation) return;
    if (this.#share && !this.#tabs) {
      const key = tabKey(this.#url, token, this.#rooms, this.#kinds, this.#signalKinds);
      if (key !== null) {
        this.#joinToken = token;
        this.#tabs = new Tabs(key, {
          hold: () => this.#hold(),
          lose: () => this.#follow(),
          heard: (message) => this.#heard(message),
          beat: () => this.#beat()
        });
        return;
      }
    }
    const since = this.#lastId === null ? this.#sharedAt : Math.min(this.#lastId, this.#sharedAt ?? Infinity);
    const opened = () => {
      this.#attempts = 0;
      this.#everLive = true;
      this.#setStatus("live");
    };
    const handle = (type, data, lastEventId) => this.#read(type, data, lastEventId);
    if (this.#transport === "fetch") {
      const query2 = new URLSearchParams();
      if (since !== null) query2.set("since_id", String(since));
      if (this.#rooms.length > 0) query2.set("rooms", this.#rooms.join(","));
      const source2 = new FetchSource(`${this.#url}/v1/stream?${query2}`, token, {
        open: opened,
        event: handle,
        // Refused, or ended (the relay restarted, the network failed).
        end: (refused) => source2 === this.#source && this.#lost(refused)
      });
      this.#source = source2;
      return;
    }
    const query = new URLSearchParams({ token });
    if (since !== null) query.set("since_id", String(since));
    if (this.#rooms.length > 0) query.set("rooms", this.#rooms.join(","));
    const url = `${this.#url}/v1/stream?${query}`;
    const source = new EventSource(url);
    this.#source = source;
    source.onopen = opened;
    source.onerror = () => {
      if (source !== this.#source) return;
      if (source.readyState === EventSource.CLOSED) {
        askWhy(url).then((refused) => {
          if (source === this.#source && generation === this.#generation) this.#lost(refused);
        });
      } else {
        this.#setStatus("reconnecting");
      }
    };
    const names = [
      ...this.#kinds,
      ...this.#signalKinds,
      "position",
      "reset",
      "token_expired",
      "revoked",
      "oversized",
      "rooms"
    ];
    for (const type of new Set(names)) {
      source.addEventListener(type, (event) => handle(type, event.data, event.lastEventId));
    }
  }
  /** One event of this tab's own stream: a holder hands it to the other tabs too. */
  #read(type, data, lastEventId) {
    if (this.#holding) {
      if (lastEventId) this.#sharedAt = Math.max(this.#sharedAt ?? 0, Number(lastEventId));
      this.#tabs.post({ type, data, lastEventId, at: this.#sharedAt });
    }
    this.#handle(type, data, lastEventId);
    this.#sync();
  }
  /** An event or a state the holding tab broadcast, heard by a tab that does not hold. */
  #heard({ type, data, lastEventId, at, status, error }) {
    this.#joinToken = null;
    if (at !== null && (this.#sharedAt === null || at > this.#sharedAt)) this.#sharedAt = at;
    this.#sync();
    if (type === "state") {
      if (!this.#streaming) this.#mirror(status, error);
    } else if (this.#synced) {
      this.#handle(type === "token_expired" ? "position" : type, data, lastEventId);
    }
  }
  /**
   * Meets the shared stream: a tab that starts live starts at its position; one behind it (a
   * lower `sinceId`) first catches up on a stream of its own, which it closes once it reaches
   * the position the holder last broadcast (every later event is still to come from it).
   */
  #sync() {
    if (!this.#tabs || this.#synced || this.#holding || this.#sharedAt === null) return;
    this.#lastId ??= this.#sharedAt;
    if (this.#lastId >= this.#sharedAt) {
      this.#synced = true;
      this.#unstream();
    } else if (!this.#streaming) {
      this.#streaming = true;
      this.#connect();
    }
  }
  /** This tab got the lock: it reads the stream for all (a catch-up stream becomes it). */
  #hold() {
    this.#holding = this.#synced = true;
    this.#beat();
    if (!this.#streaming) {
      this.#streaming = true;
      this.#connect();
    }
  }
  /** Another tab took the stream over (this one froze, say): close ours and follow. */
  #follow() {
    this.#holding = false;
    this.#unstream();
  }
  /** The holder's state, for tabs that join and as its heartbeat. */
  #beat() {
    const error = this.#error;
    this.#tabs.post({
      type: "state",
      at: this.#sharedAt,
      status: this.#status,
      error: error && { status: error.status, code: error.code, message: error.message }
    });
  }
  /** A follower shows the holder's status; a refusal stops it too. */
  #mirror(status, error) {
    const refused = error && new PgRelayError(error.status, error.code, error.message);
    if (status === "refused") {
      this.#stop(refused);
    } else if (status !== this.#status || error?.code !== this.#error?.code) {
      if (status === "live") this.#everLive = true;
      this.#setStatus(status, refused);
    }
  }
  /** Closes this tab's own stream, if any, and cancels its reconnects. */
  #unstream() {
    this.#streaming = false;
    this.#generation += 1;
    clearTimeout(this.#timer);
    this.#timer = null;
    this.#source?.close();
    this.#source = null;
  }
  /** Leaves the shared stream (handing it over if this tab holds it). */
  #leave() {
    this.#tabs?.close();
    this.#tabs = null;
    this.#holding = this.#streaming = this.#synced = false;
    this.#sharedAt = this.#joinToken = null;
  }
  /** One event of the stream, whichever transport read it, or whichever tab. */
  #handle(type, data, lastEventId) {
    switch (type) {
      case "position":
        this.#advance(lastEventId);
        return;
      case "reset":
        this.#advance(lastEventId);
        this.#onReset(parse(data));
        return;
      case "token_expired":
        this.#advance(lastEventId);
        this.#reopen(0, new PgRelayError(401, "token_expired", "the token expired"));
        return;
      case "revoked":
        this.#advance(lastEventId);
        this.#stop(
          new PgRelayError(401, parse(data)?.reason ?? "token_revoked", "the token was revoked")
        );
        return;
      case "rooms": {
        const id = Number(lastEventId);
        if (this.#fresh(id)) this.#onRooms(parse(data));
        return;
      }
      case "oversized": {
        const standIn = parse(data);
        if (this.#kinds.includes(standIn?.kind) && this.#fresh(standIn.id)) {
          this.#onOversized(standIn);
        }
        return;
      }
      default:
        if (this.#kinds.includes(type) || this.#signalKinds.includes(type)) {
          this.#dispatch(data, type);
        }
    }
  }
  #dispatch(text, kind) {
    const data = parse(text);
    const id = data !== null && typeof data === "object" && Number.isSafeInteger(data.id) ? data.id : null;
    if (id === null) {
      this.#onSignal(kind, data);
      if (kind === "presence") this.#onPresence(data);
      return;
    }
    if (this.#fresh(id)) this.#onMessage(data, kind);
  }
  /** Whether message `id` is new (above `lastId`), which it then becomes. */
  #fresh(id) {
    if (!Number.isSafeInteger(id)) return false;
    if (this.#lastId !== null && id <= this.#lastId) return false;
    this.#lastId = id;
    return true;
  }
  /** Moves `lastId` forward to a `lastEventId`, never back. */
  #advance(lastEventId) {
    if (!lastEventId) return;
    const id = Number(lastEventId);
    if (Number.isSafeInteger(id) && (this.#lastId === null || id > this.#lastId)) {
      this.#lastId = id;
    }
  }
  /**
   * The stream was refused (`refused`: the relay's reason) or ended without one: reconnect,
   * at once for a first expiry, else after a backoff, unless no new token can help.
   */
  #lost(refused) {
    if (refused?.final) {
      this.#stop(refused);
    } else {
      const cure = refused !== null && CURED_BY_A_NEW_TOKEN.has(refused.code);
      this.#reopen(this.#backoff(cure), refused);
    }
  }
  /** Closes the current stream and opens a new one (fresh token, since_id) after `delay`. */
  #reopen(delay, refused = null) {
    this.#source?.close();
    this.#source = null;
    if (!this.#started) return;
    this.#setStatus("reconnecting", refused);
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => this.#connect(), delay);
  }
  /** Stops for good, because the relay refused in a way no retry can cure. */
  #stop(refused) {
    this.#started = false;
    this.#unstream();
    this.#setStatus("refused", refused);
    this.#leave();
  }
  /**
   * The next wait: doubling from FIRST_BACKOFF_MS up to MAX_BACKOFF_MS, half of it random;
   * none for the first attempt when `quick` (a fresh token cures the failure).
   */
  #backoff(quick = false) {
    const attempt = this.#attempts;
    this.#attempts += 1;
    if (quick && attempt === 0) return 0;
    const ceiling = Math.min(MAX_BACKOFF_MS, FIRST_BACKOFF_MS * 2 ** attempt);
    return ceiling / 2 + Math.random() * (ceiling / 2);
  }
  #setStatus(status, error = null) {
    if (status === this.#status && error === this.#error) return;
    this.#status = status;
    this.#error = error;
    if (this.#holding) this.#beat();
    if (error === null) this.#onStatus(status);
    else this.#onStatus(status, error);
  }
};
var Tabs = class {
  #key;
  #on;
  #channel;
  /** Releases the held lock (resolves its callback's promise); null while not holding. */
  #release = null;
  /** Takes this tab out of the lock's queue. */
  #abort = null;
  /** When this tab took the lock: orders holders, so a tab can tell it was taken over. */
  #since = 0;
  /** When this tab last heard from a holder. */
  #heard = Date.now();
  /** When this tab last asked a silent holder whether it is there. */
  #asked = 0;
  #timer;
  #closed = false;
  /**
   * @param {string} key the stream's key
   * @param {{hold: () => void, lose: () => void, heard: (message: object) => void,
   *   beat: () => void}} on what to do on taking the stream, on losing it to a newer holder,
   *   on a holder's message, and when a holder should say its state
   */
  constructor(key, on) {
    this.#key = key;
    this.#on = on;
    this.#channel = new BroadcastChannel(`pgrelay ${key}`);
    this.#channel.onmessage = ({ data: message }) => {
      if (message?.key !== key) return;
      if (message.type === "hello") {
        if (this.#release) on.beat();
        return;
      }
      this.#heard = Date.now();
      if (this.#release) {
        if (!(message.since > this.#since)) return;
        this.#lost();
      }
      on.heard(message);
    };
    this.#timer = setInterval(() => {
      if (this.#release) {
        on.beat();
      } else if (Date.now() - this.#heard > TAKEOVER_MS) {
        if (this.#asked > this.#heard) {
          this.#queue(true);
        } else {
          this.#asked = Date.now();
          this.post({ type: "hello" });
        }
      }
    }, HEARTBEAT_MS);
    this.#queue(false);
    this.post({ type: "hello" });
  }
  post(message) {
    this.#channel.postMessage({ ...message, key: this.#key, since: this.#since });
  }
  /** Hands the stream over if this tab holds it, and leaves. */
  close() {
    this.#closed = true;
    clearInterval(this.#timer);
    this.#abort?.abort();
    this.#release?.();
    this.#channel.close();
  }
  /** Queues for the lock, or (`steal`) takes it from a silent holder. */
  #queue(steal) {
    this.#abort?.abort();
    const abort = this.#abort = new AbortController();
    this.#heard = Date.now();
    let release;
    navigator.locks.request(`pgrelay ${this.#key}`, steal ? { steal } : { signal: abort.signal }, () => this.#closed ? void 0 : new Promise((resolve) => {
      this.#release = release = resolve;
      this.#since = Date.now() + Math.random();
      this.#on.hold();
    })).catch(() => release && release === this.#release && this.#lost());
  }
  #lost() {
    this.#release();
    this.#release = null;
    this.#on.lose();
    this.#queue(false);
  }
};
var FetchSource = class {
  #abort = new AbortController();
  #closed = false;
  /**
   * @param {string} url the stream's URL
   * @param {string} token sent as `Authorization: Bearer …`
   * @param {{open: () => void, event: (type: string, data: string, lastEventId: string) =>
   *   void, end: () => void}} handlers
   */
  constructor(url, token, handlers) {
    this.#read(url, token, handlers).then(
      (refused) => !this.#closed && handlers.end(refused ?? null),
      () => !this.#closed && handlers.end(null)
    );
  }
  close() {
    this.#closed = true;
    this.#abort.abort();
  }
  async #read(url, token, { open, event }) {
    const response = await fetch(url, {
      headers: { Authorization: `Bearer ${token}`, Accept: "text/event-stream" },
      signal: this.#abort.signal,
      cache: "no-store"
    });
    if (response.status !== 200 || !response.body) return refusal(response);
    open();
    const decoder = new TextDecoder();
    const reader = response.body.getReader();
    let buffer = "";
    let type = "";
    let data = [];
    let lastEventId = "";
    for (; ; ) {
      const { done, value } = await reader.read();
      if (done || this.#closed) return;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.search(/\r\n|\r(?!$)|\n/)) !== -1) {
        const line = buffer.slice(0, end);
        buffer = buffer.slice(end + (buffer.startsWith("\r\n", end) ? 2 : 1));
        if (line === "") {
          if (data.length > 0) event(type || "message", data.join("\n"), lastEventId);
          type = "";
          data = [];
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon === -1 ? line : line.slice(0, colon);
        let text = colon === -1 ? "" : line.slice(colon + 1);
        if (text.startsWith(" ")) text = text.slice(1);
        if (field === "data") data.push(text);
        else if (field === "event") type = text;
        else if (field === "id" && !text.includes("\0")) lastEventId = text;
      }
    }
  }
};
async function refusal(response) {
  let answer = null;
  try {
    answer = await response.json();
  } catch {
  }
  return new PgRelayError(response.status, answer?.error, answer?.message);
}
async function askWhy(url) {
  const abort = new AbortController();
  try {
    const response = await fetch(url, {
      headers: { Accept: "text/event-stream" },
      cache: "no-store",
      signal: abort.signal
    });
    return response.status === 200 ? null : await refusal(response);
  } catch {
    return null;
  } finally {
    abort.abort();
  }
}
function tabKey(url, token, rooms, kinds, signalKinds) {
  try {
    const claims = JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
    if (typeof claims.sub !== "string") return null;
    const sorted = (list) => [...list].sort();
    return JSON.stringify([
      new URL(`${url}/`, location.href).href,
      claims.sub,
      sorted(claims.rooms ?? []),
      sorted(rooms),
      sorted(kinds),
      sorted(signalKinds)
    ]);
  } catch {
    return null;
  }
}
function setKey(participants) {
  return JSON.stringify([...new Set(participants)].sort());
}
function parse(text) {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}
// Annotate the CommonJS export names for ESM import in node:
0 && (module.exports = {
  PgRelayClient,
  PgRelayError
});
