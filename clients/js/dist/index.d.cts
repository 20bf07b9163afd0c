// Made by build.mjs from index.d.ts (edit that): the declarations of dist/index.cjs.
// Type declarations for @pgrelay/client (src/index.js).

/** What `onRooms` receives: the rooms the stream gained and lost. */
export interface RoomsChange {
  added: string[];
  removed: string[];
}

/** A stored message, exactly as the relay sends it. */
export interface Message<Payload = unknown> {
  id: number;
  kind: string;
  sender: string | null;
  participants: string[];
  payload: Payload;
  created_at: string;
}

/**
 * The stand-in of a stored message larger than the relay streams (`--max-event-bytes`): in the
 * message's place, without its payload. `fetchMessage(id)` reads the message whole.
 */
export interface Oversized {
  id: number;
  kind: string;
  sender: string | null;
  participants: string[];
  /** The message's size: its payload's JSON and its participants, in bytes. */
  bytes: number;
}

/** A live-only signal (`typing`, …): it carries no id. */
export interface Signal<Payload = unknown> {
  kind: string;
  sender: string | null;
  participants: string[];
  payload: Payload;
}

/** A presence change of someone whose audience the participant is in. */
export interface PresenceChange {
  participant: string;
  online: boolean;
  at: string;
}

/** Why the stream restarted from somewhere else than asked. */
export interface Reset {
  reason: 'history_truncated' | 'unknown_position';
  oldest_id?: number;
  newest_id?: number;
}

/**
 * `'refused'`: the relay refused the token in a way no retry cures (a bad signature, a
 * revocation, a room not granted); the client has stopped until `start()` is called again.
 */
export type Status = 'connecting' | 'live' | 'reconnecting' | 'refused' | 'closed';

export type PresenceState =
  | { online: true; since: string }
  | { online: false; last_seen: string | null };

/**
 * A refusal by the relay: the HTTP status and the relay's JSON error `code` (`token_expired`,
 * `token_revoked`, `bad_signature`, `room_not_granted`, `rate_limited` …). Requests reject
 * with it; `onStatus` receives it with `'reconnecting'` and `'refused'`.
 */
export class PgRelayError extends Error {
  constructor(status: number, code: string | undefined, message?: string);
  /** The HTTP status (401 for the stream events `token_expired` and `revoked`). */
  readonly status: number;
  /** The relay's error code; undefined when the answer was not the relay's JSON. */
  readonly code: string | undefined;
  /** Whether retrying cannot help: a 401 or 403 that no new token cures. */
  readonly final: boolean;
}

/** @deprecated The earlier name of {@link PgRelayError}. */
export type RelayError = PgRelayError;

/**
 * `Payload` is the type of the stored messages' payloads the application receives and sends
 * (default `unknown`: narrow it before use). The relay does not check it: it is what the
 * application's writers agree on.
 */
export interface PgRelayClientOptions<Payload = unknown> {
  /** The relay's base URL without a trailing slash; '' is the page's own origin. */
  url?: string;
  /** A token for the current user, or a function called for every (re)connect and request. */
  token: string | (() => string | Promise<string>);
  /** Resume after this message id; omit to start live from now. */
  sinceId?: number;
  /**
   * Narrow the stream to these rooms (`['#general']`): only messages that name one of them.
   * Default: everything the participant receives (its own, its rooms', broadcasts to `*`).
   */
  rooms?: string[];
  /** Message kinds to deliver (default `['message']`). */
  kinds?: string[];
  /** Signal kinds to deliver (default `['typing']`; `presence` always). */
  signalKinds?: string[];
  /** Each stored message once, in id order. */
  onMessage?: (message: Message<Payload>, kind: string) => void;
  /**
   * In a message's place (once, in id order), when it is larger than the relay streams: its
   * stand-in. Default: dropped (its id still counts).
   */
  onOversized?: (standIn: Oversized) => void;
  /** Each signal (and presence change) as it happens. */
  onSignal?: (kind: string, data: Signal | PresenceChange) => void;
  onPresence?: (change: PresenceChange) => void;
  /**
   * The stream's state; with `'reconnecting'` and `'refused'`, the relay's refusal when there
   * was one (an `EventSource` does not say why: the client asks the relay with a request of its
   * own). An expiry (`token_expired`) reconnects with a token from `token()`; a refused or
   * revoked token (`bad_signature`, `token_revoked` …) stops the client.
   */
  onStatus?: (status: Status, error?: PgRelayError) => void;
  /** The resume point was older than retained history, or unknown to this database. */
  onReset?: (reset: Reset) => void;
  /**
   * The stream's rooms changed at this point of the message order (the participant's
   * membership changed while it was open): from here on it receives the added rooms' messages
   * and none of the removed rooms'. Once, moving `lastId`.
   */
  onRooms?: (change: RoomsChange) => void;
  /**
   * `'eventsource'` (the token in the URL; the browser retries network errors itself) or
   * `'fetch'` (the token in the `Authorization` header). Default: `'eventsource'` where
   * `EventSource` exists, else `'fetch'`.
   */
  transport?: 'eventsource' | 'fetch';
  /**
   * Share one stream with this browser's other tabs (same origin) that follow the same stream:
   * same relay, same participant (the token's `sub`), same `rooms`, `kinds` and
   * `signalKinds`. One tab holds it, the others receive through it; each still sees each
   * message once, in order. Default `true`; needs Web Locks and `BroadcastChannel` (elsewhere,
   * as in Node, each client has its own stream) and a JWT token. `false`: a stream of its own.
   */
  shareTabs?: boolean;
}

export class PgRelayClient<Payload = unknown> {
  constructor(options: PgRelayClientOptions<Payload>);
  /** The id of the last message seen, or the stream's position; null before either. */
  readonly lastId: number | null;
  /** The last status reported to `onStatus`. */
  readonly status: Status | null;
  /** The refusal reported with the last status, or null. */
  readonly error: PgRelayError | null;
  /** Opens the stream; does nothing while started. */
  start(): void;
  /** Closes the stream until `start()` is called again. */
  close(): void;
  /**
   * Publishes a message (scope `publish`) and resolves to its id. With `idempotencyKey` (1 to
   * 255 visible ASCII characters), sending it again after a failure stores it once: the relay
   * answers the first one's id.
   */
  send(message: {
    participants: string[];
    payload: Payload;
    kind?: string;
    idempotencyKey?: string;
  }): Promise<number>;
  /** Sends a throttled `typing` signal; resolves to whether one was sent. */
  typing(participants: string[]): Promise<boolean>;
  /** One stored message whole (`GET /v1/messages/{id}`), e.g. the one behind a stand-in. */
  fetchMessage<Fetched = Payload>(id: number): Promise<Message<Fetched>>;
  /** Who of `participants` is online (each must be visible to the caller). */
  presence(participants: string[]): Promise<Record<string, PresenceState>>;
}
