// A naive one-LISTEN relay, written for the side-by-side benchmark (compare.py): what an app
// would write in an afternoon. A trigger NOTIFYs each row as JSON; this process LISTENs once
// and writes each notification to the open streams of its participants. No auth, no resume,
// no catch-up, no limits. Usage: DATABASE_URL=… PORT=… node naive-relay.mjs
import http from 'node:http';
import pg from 'pg';

const streams = new Map(); // participant → Set of responses
const client = new pg.Client({ connectionString: process.env.DATABASE_URL });
await client.connect();
await client.query('LISTEN naive_relay');
client.on('notification', (notification) => {
  const message = JSON.parse(notification.payload);
  const frame = `id: ${message.id}\nevent: message\ndata: ${JSON.stringify(message)}\n\n`;
  for (const participant of message.participants) {
    for (const response of streams.get(participant) ?? []) response.write(frame);
  }
});

http
  .createServer((request, response) => {
    const url = new URL(request.url, 'http://relay');
    const sub = url.searchParams.get('sub');
    if (url.pathname !== '/stream' || !sub) {
      response.writeHead(404).end();
      return;
    }
    response.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache' });
    response.write('event: position\ndata: {}\n\n');
    if (!streams.has(sub)) streams.set(sub, new Set());
    streams.get(sub).add(response);
    request.on('close', () => streams.get(sub)?.delete(response));
  })
  .listen(Number(process.env.PORT), '127.0.0.1');
