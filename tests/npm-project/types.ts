// Type-checked with `tsc --strict` (never run): under module nodenext this file is ESM (the
// project is "type": "module"), and tsconfig.bundler.json checks it with moduleResolution
// bundler. Each @ts-expect-error is a mistake the declarations must catch: tsc fails when one
// does not.
import { PgRelayClient, PgRelayError, type Message } from '@pgrelay/client';
import * as browser from '@pgrelay/client/browser';

interface Chat {
  text: string;
}

const relay = new PgRelayClient<Chat>({
  url: 'https://relay.example.com',
  token: async () => 'a token from the app',
  onMessage: (message, kind) => {
    const text: string = message.payload.text;
    // @ts-expect-error: a Chat has no `html`
    const html = message.payload.html;
    console.log(kind, text, html);
  },
  onStatus: (status, error) => {
    if (status === 'refused' && error?.code === 'token_revoked') relay.close();
  },
});

export async function post(text: string): Promise<number> {
  try {
    return await relay.send({ participants: ['#general'], payload: { text } });
  } catch (err) {
    if (err instanceof PgRelayError && err.code === 'rate_limited') return -err.status;
    throw err;
  }
}

// @ts-expect-error: the payload must be a Chat
relay.send({ participants: ['bob'], payload: { txt: 'hi' } });

// The payload type is inferred from a typed handler as well.
const inferred = new PgRelayClient({
  token: 'a token',
  onMessage: (message: Message<Chat>) => console.log(message.payload.text),
});
// @ts-expect-error: the payload must be a Chat
inferred.send({ participants: ['bob'], payload: 42 });

// Untyped, a payload is `unknown`: it must be narrowed before use.
new PgRelayClient({
  token: 'a token',
  // @ts-expect-error: `unknown` has no `text`
  onMessage: (message) => console.log(message.payload.text),
});

const error: PgRelayError = new PgRelayError(403, 'room_not_granted', 'not a member');
const final: boolean = error.final;
const code: string | undefined = error.code;
console.log(final, code, error instanceof Error);

// The browser build has the same declarations.
const fromBrowser: browser.PgRelayClient<Chat> = relay;
console.log(fromBrowser);
