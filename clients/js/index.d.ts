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

export type Status = 'connecting' | 'live' | 'reconnecting' | 'closed';

export type PresenceState =
  | { online: true; since: string }
  | { online: false; last_seen: string | null };

/** A failed request: the relay's JSON error, with the HTTP status. */
export interface RelayError extends Error {
  status: number;
  code?: string;
}

export interface PgRelayClientOptions {
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
  onMessage?: (message: Message, kind: string) => void;
  /**
   * In a message's place (once, in id order), when it is larger than the relay streams: its
   * stand-in. Default: dropped (its id still counts).
   */
  onOversized?: (standIn: Oversized) => void;
  /** Each signal (and presence change) as it happens. */
  onSignal?: (kind: string, data: Signal | PresenceChange) => void;
  onPresence?: (change: PresenceChange) => void;
  onStatus?: (status: Status) => void;
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
}

export class PgRelayClient {
  constructor(options: PgRelayClientOptions);
  /** The id of the last message seen, or the stream's position; null before either. */
  readonly lastId: number | null;
  /** The last status reported to `onStatus`. */
  readonly status: Status | null;
  /** Opens the stream; does nothing while started. */
  start(): void;
  /** Closes the stream until `start()` is called again. */
  close(): void;
  /** Publishes a message (scope `publish`) and resolves to its id. */
  send(message: { participants: string[]; payload: unknown; kind?: string }): Promise<number>;
  /** Sends a throttled `typing` signal; resolves to whether one was sent. */
  typing(participants: string[]): Promise<boolean>;
  /** One stored message whole (`GET /v1/messages/{id}`), e.g. the one behind a stand-in. */
  fetchMessage<Payload = unknown>(id: number): Promise<Message<Payload>>;
  /** Who of `participants` is online (each must be visible to the caller). */
  presence(participants: string[]): Promise<Record<string, PresenceState>>;
}
