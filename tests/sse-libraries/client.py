"""One Python SSE client library reading a relay stream the way an application would, for
tests/suite/sse_libraries.rs. Usage: python client.py <library>; RELAY_URL and TOKEN in the
environment. Prints one JSON line per thing the library hands the application, as client.mjs:
{"open": true} on each (re)connect, {"event", "id", "data"} per event. Where the library does not
resume by itself, the loop here reconnects with the last id the library reported, as its
documentation tells applications to.
"""

import json
import os
import sys
import time

RELAY, TOKEN = os.environ["RELAY_URL"], os.environ["TOKEN"]
URL = f"{RELAY}/v1/stream"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def say(line):
    print(json.dumps(line), flush=True)


def reconnecting(read, errors):
    """The loop an application writes around a library that does not reconnect: `read(headers)`
    yields the library's events; on an end or one of `errors` it connects again with the last id
    the library reported."""
    last_id = None
    while True:
        headers = dict(AUTH, **({"Last-Event-ID": last_id} if last_id else {}))
        try:
            for name, event_id, data in read(headers):
                if event_id:
                    last_id = event_id
                say({"event": name, "id": event_id, "data": data})
        except errors:
            pass
        time.sleep(0.5)


def httpx_sse():
    import httpx
    from httpx_sse import connect_sse

    def read(headers):
        with httpx.Client(timeout=None) as client:
            with connect_sse(client, "GET", URL, headers=headers) as source:
                say({"open": True})
                for event in source.iter_sse():
                    yield event.event, event.id, event.data

    reconnecting(read, httpx.HTTPError)


def sseclient_py():
    import requests
    import sseclient

    def read(headers):
        response = requests.get(URL, headers=headers, stream=True)
        say({"open": True})
        for event in sseclient.SSEClient(response).events():
            yield event.event, event.id, event.data

    reconnecting(read, requests.RequestException)


def requests_sse():
    from requests_sse import EventSource

    # It reconnects by itself, sending Last-Event-ID.
    with EventSource(URL, headers=AUTH, max_connect_retry=1000,
                     on_open=lambda: say({"open": True})) as source:
        for event in source:
            say({"event": event.type, "id": event.last_event_id, "data": event.data})


LIBRARIES = {"httpx-sse": httpx_sse, "sseclient-py": sseclient_py, "requests-sse": requests_sse}

if __name__ == "__main__":
    LIBRARIES[sys.argv[1]]()
