"""One Python SSE client library reading a relay stream the way an application would, for
tests/sse_libraries.rs. Usage: python client.py <library>; RELAY_URL and TOKEN in the
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


def httpx_sse():
    import httpx
    from httpx_sse import connect_sse

    last_id = None
    while True:
        headers = dict(AUTH, **({"Last-Event-ID": last_id} if last_id else {}))
        try:
            with httpx.Client(timeout=None) as client:
                with connect_sse(client, "GET", URL, headers=headers) as source:
                    say({"open": True})
                    for event in source.iter_sse():
                        if event.id:
                            last_id = event.id
                        say({"event": event.event, "id": event.id, "data": event.data})
        except httpx.HTTPError:
            pass
        time.sleep(0.5)


def sseclient_py():
    import requests
    import sseclient

    last_id = None
    while True:
        headers = dict(AUTH, **({"Last-Event-ID": last_id} if last_id else {}))
        try:
            response = requests.get(URL, headers=headers, stream=True)
            say({"open": True})
            for event in sseclient.SSEClient(response).events():
                if event.id:
                    last_id = event.id
                say({"event": event.event, "id": event.id, "data": event.data})
        except requests.RequestException:
            pass
        time.sleep(0.5)


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
