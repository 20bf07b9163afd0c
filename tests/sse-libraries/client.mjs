// One SSE client library reading a relay stream the way an application would, for
// tests/suite/sse_libraries.rs. Usage: node client.mjs <library>; RELAY_URL and TOKEN in the
// environment. Prints one JSON line per thing the library hands the application:
//   {"open": true}                                   the stream is (re)connected
//   {"event": "<name>", "id": "<last id>", "data": "<data>"}   an event
// Resuming after a disconnect is left to the library's own mechanism wherever it has one.

import { EventSource as EventSource5 } from 'eventsource';
import { EventSource as EventSource4 } from 'eventsource4';
import fetchEventSourcePackage from '@microsoft/fetch-event-source';

const { RELAY_URL: relay, TOKEN: token } = process.env;
const url = `${relay}/v1/stream`;
const print = (line) => process.stdout.write(`${JSON.stringify(line)}\n`);

/** The `eventsource` package (4.x and 5.x): a spec EventSource with a custom fetch for the header. */
function eventSource(EventSource) {
  const source = new EventSource(url, {
    fetch: (input, init) =>
      fetch(input, { ...init, headers: { ...init.headers, Authorization: `Bearer ${token}` } }),
  });
  source.onopen = () => print({ open: true });
  // What an application listens to: its message kinds (here `message`), as with the browser's.
  source.onmessage = (event) => print({ event: event.type, id: event.lastEventId, data: event.data });
}

/** `@microsoft/fetch-event-source`: every event goes to `onmessage`; the app retries on close. */
function fetchEventSource() {
  globalThis.window ??= globalThis; // it calls window.setTimeout and window.fetch
  fetchEventSourcePackage.fetchEventSource(url, {
    headers: { Authorization: `Bearer ${token}` },
    openWhenHidden: true,
    onopen: async () => print({ open: true }),
    onmessage: (event) => print({ event: event.event, id: event.id, data: event.data }),
    onclose: () => {
      throw new Error('the stream ended'); // retry: the library then sends Last-Event-ID
    },
    onerror: () => 500,
  });
}

const library = process.argv[2];
const clients = {
  'eventsource@5': () => eventSource(EventSource5),
  'eventsource@4': () => eventSource(EventSource4),
  '@microsoft/fetch-event-source': fetchEventSource,
};
if (!clients[library]) {
  console.error(`unknown library ${library}; one of ${Object.keys(clients).join(', ')}`);
  process.exit(2);
}
clients[library]();
// An application has a server or a UI keeping it alive; eventsource unrefs its reconnect timer.
setInterval(() => {}, 1 << 30);
