// Feeds nginx+Nchan from PostgreSQL, for the side-by-side benchmark (compare.py): how an app
// that keeps its messages in PostgreSQL would put Nchan in front of its browsers. A trigger
// NOTIFYs each row as JSON; this process LISTENs once and posts each notification to the
// Nchan channels of its participants (one POST to up to three channels), over keep-alive
// connections. Usage: DATABASE_URL=… NCHAN_PORT=… node nchan-feed.mjs
import http from 'node:http';
import pg from 'pg';

const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });
const client = new pg.Client({ connectionString: process.env.DATABASE_URL });
await client.connect();
await client.query('LISTEN nchan_feed');
client.on('notification', (notification) => {
  const message = JSON.parse(notification.payload);
  const channels = message.participants.map((p, n) => `${'abc'[n]}=${encodeURIComponent(p)}`);
  const body = JSON.stringify(message.payload);
  const request = http.request({
    agent, host: '127.0.0.1', port: Number(process.env.NCHAN_PORT), method: 'POST',
    path: `/pub?${channels.join('&')}`, headers: { 'Content-Length': Buffer.byteLength(body) },
  }, (response) => response.resume());
  request.on('error', (error) => console.error(error.message));
  request.end(body);
});
