// What esm.mjs, cjs.cjs and browser.mjs each do with the build they loaded, against the relay
// at RELAY_URL: a message sent as PARTICIPANT (TOKEN) comes back on the stream, and a token
// the relay refuses (WRONG_TOKEN) rejects a request, and stops a stream, with the build's
// error class. Prints nothing: the caller prints what it returns for tests/suite/js_client.rs.

const DEADLINE_MS = 10_000;

/** Resolves once `check()` holds, polling; rejects after DEADLINE_MS. */
async function until(check, what) {
  const deadline = Date.now() + DEADLINE_MS;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

export async function scenario({ PgRelayClient, PgRelayError }) {
  const url = process.env.RELAY_URL;
  const describe = (error) => ({
    instance: error instanceof PgRelayError,
    name: error.name,
    status: error.status,
    code: error.code,
    final: error.final,
  });

  let received = null;
  const client = new PgRelayClient({
    url,
    token: process.env.TOKEN,
    transport: 'fetch',
    onMessage: (message) => (received = message),
  });
  client.start();
  try {
    await until(() => client.status === 'live', 'the stream');
    const id = await client.send({
      participants: [process.env.PARTICIPANT],
      payload: { text: 'hello' },
    });
    await until(() => received?.id === id, `message ${id} on the stream`);
  } finally {
    client.close();
  }

  const stranger = new PgRelayClient({ url, token: process.env.WRONG_TOKEN, transport: 'fetch' });
  const rejection = await stranger.send({ participants: ['anyone'], payload: {} }).then(
    () => null,
    (error) => error,
  );

  let stopped = null;
  const refused = new PgRelayClient({
    url,
    token: process.env.WRONG_TOKEN,
    transport: 'fetch',
    onStatus: (status, error) => status === 'refused' && (stopped = error),
  });
  refused.start();
  try {
    await until(() => stopped !== null, 'the refusal of the stream');
  } finally {
    refused.close();
  }

  return { received: received.payload, request: describe(rejection), stream: describe(stopped) };
}
