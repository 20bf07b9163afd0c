// Type-checked with `tsc --strict` under module nodenext (never run): a CommonJS file, so its
// import compiles to `require` and resolves through the package's "require" condition.
import { PgRelayClient, PgRelayError } from '@pgrelay/client';

interface Chat {
  text: string;
}

const relay = new PgRelayClient<Chat>({
  token: () => 'a token from the app',
  onMessage: (message) => console.log(message.payload.text),
});

export async function post(text: string): Promise<number | string | undefined> {
  try {
    return await relay.send({ participants: ['bob'], payload: { text } });
  } catch (err) {
    if (err instanceof PgRelayError) return err.code;
    throw err;
  }
}

// @ts-expect-error: the payload must be a Chat
relay.send({ participants: ['bob'], payload: { txt: 'hi' } });
