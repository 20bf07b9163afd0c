"""pgrelay beside a naive one-LISTEN relay, in one run, on one machine.

    python3 examples/compare/compare.py [--streams 5000] [--subscribers 1000] [--rate 1000] [--seconds 10]

Needs the release binary (`cargo build --release`), the PostgreSQL server binaries, `psql`,
Node.js and npm (it installs the `pg` package into a temporary folder). It starts `pgrelay demo`
(a throwaway PostgreSQL with pgrelay serving it) and, on the same database, the naive relay of
naive-relay.mjs (a trigger NOTIFYs each row as JSON; one LISTEN; in-process fan-out). For each
relay in turn it measures:

- memory: RSS growth per idle stream while `--streams` streams are open;
- latency: `--subscribers` streams open, `--rate` messages per second for `--seconds` (one per
  transaction, each to 3 random subscribers, fed to one psql session), each delivery timed from
  the moment its INSERT was handed to psql to the moment the event was read.

It prints a Markdown table with both relays and their ratios. Loopback only; everything it
starts is stopped at the end.
"""
import argparse, asyncio, base64, hashlib, hmac, json, os, random, re, shutil, signal
import subprocess, sys, tempfile, time

SECRET = b"compare-secret-0123456789-abcdefgh"
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def token(sub):
    enc = lambda v: base64.urlsafe_b64encode(json.dumps(v, separators=(",", ":")).encode()).rstrip(b"=").decode()
    head, body = enc({"alg": "HS256", "typ": "JWT"}), enc({"sub": sub, "exp": int(time.time()) + 3600})
    sig = hmac.new(SECRET, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}." + base64.urlsafe_b64encode(sig).rstrip(b"=").decode()


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        return int(next(line for line in status if line.startswith("VmRSS")).split()[1])


class Relay:
    """How to reach one relay: its name, port, process id and stream request."""

    def __init__(self, name, port, pid, request):
        self.name, self.port, self.pid, self.request = name, port, pid, request


async def open_stream(relay, sub, on_event=None):
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    writer.write(relay.request(sub).encode())
    await writer.drain()
    await reader.readuntil(b"event: position")
    if on_event:
        asyncio.ensure_future(read_events(reader, sub, on_event))
    return writer


async def read_events(reader, sub, on_event):
    # Both relays send chunked or plain streams; payload keys are found by pattern.
    while True:
        data = await reader.read(65536)
        if not data:
            return
        now = time.monotonic()
        for key in re.findall(rb'"k":\s*(\d+)', data):
            on_event(int(key), sub, now)


async def open_many(relay, subs, on_event=None):
    gate = asyncio.Semaphore(200)

    async def one(sub):
        async with gate:
            return await open_stream(relay, sub, on_event)

    return await asyncio.gather(*(one(sub) for sub in subs))


async def memory(relay, streams):
    before = rss_kib(relay.pid)
    writers = await open_many(relay, [f"m{n:05d}" for n in range(streams)])
    await asyncio.sleep(3)
    after = rss_kib(relay.pid)
    for writer in writers:
        writer.close()
    await asyncio.sleep(2)
    return (after - before) / streams


async def latency(relay, table, database_url, subscribers, rate, seconds):
    subs = [f"s{n:04d}" for n in range(subscribers)]
    sent, latencies = {}, []

    def on_event(key, sub, now):
        if key in sent:
            latencies.append((now - sent[key]) * 1000)

    writers = await open_many(relay, subs, on_event)
    psql = await asyncio.create_subprocess_exec(
        "psql", "-q", "-X", "-v", "ON_ERROR_STOP=1", database_url,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL)
    rng = random.Random(7)
    start = time.monotonic()
    count = int(rate * seconds)
    for key in range(count):
        due = start + key / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        recipients = "{" + ",".join(rng.sample(subs, 3)) + "}"
        psql.stdin.write(
            f"INSERT INTO {table} (participants, payload) VALUES ('{recipients}', '{{\"k\": {key}}}');\n".encode())
        sent[key] = time.monotonic()
    await psql.stdin.drain()
    psql.stdin.close()
    await psql.wait()
    await asyncio.sleep(2)
    for writer in writers:
        writer.close()
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]
    return {"delivered": len(latencies), "expected": count * 3, "p50": pick(0.5), "p99": pick(0.99)}


def start_pgrelay(port):
    process = subprocess.Popen(
        [os.path.join(ROOT, "target/release/pgrelay"), "demo", "--bind", f"127.0.0.1:{port}",
         "--secret", SECRET.decode(), "--max-connections", "20000", "--publish-rate", "1000000"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in process.stdout:
        found = re.search(r"psql '([^']+)'", line)
        if found:
            return process, found.group(1)
    raise SystemExit("pgrelay demo printed no database URL")


def start_naive(port, database_url, folder):
    subprocess.run(["npm", "install", "--silent", "--prefix", folder, "pg@8"], check=True)
    shutil.copy(os.path.join(HERE, "naive-relay.mjs"), folder)
    subprocess.run(["psql", "-q", "-X", "-v", "ON_ERROR_STOP=1", database_url, "-c", """
        CREATE TABLE IF NOT EXISTS naive (id bigserial PRIMARY KEY, participants text[] NOT NULL,
                                          payload jsonb NOT NULL);
        CREATE OR REPLACE FUNCTION naive_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_notify('naive_relay', json_build_object('id', NEW.id,
              'participants', NEW.participants, 'payload', NEW.payload)::text); RETURN NULL; END $$;
        DROP TRIGGER IF EXISTS naive_notify ON naive;
        CREATE TRIGGER naive_notify AFTER INSERT ON naive FOR EACH ROW EXECUTE FUNCTION naive_notify();
    """], check=True)
    env = dict(os.environ, DATABASE_URL=database_url, PORT=str(port))
    return subprocess.Popen(["node", os.path.join(folder, "naive-relay.mjs")], cwd=folder, env=env)


def wait_port(port):
    import socket
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=5000)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="pgrelay-compare-")
    pgrelay, database_url = start_pgrelay(18090)
    naive = None
    try:
        wait_port(18090)
        naive = start_naive(18091, database_url, folder)
        wait_port(18091)
        relays = [
            (Relay("pgrelay", 18090, pgrelay.pid,
                   lambda sub: f"GET /v1/stream HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer {token(sub)}\r\n\r\n"),
             "pgrelay.messages"),
            (Relay("naive Node relay", 18091, naive.pid,
                   lambda sub: f"GET /stream?sub={sub} HTTP/1.1\r\nHost: relay\r\n\r\n"),
             "naive"),
        ]
        results = []
        for relay, table in relays:
            kib = asyncio.run(memory(relay, args.streams))
            measured = asyncio.run(latency(relay, table, database_url, args.subscribers, args.rate, args.seconds))
            results.append((relay.name, kib, measured))
            print(f"{relay.name}: {kib:.1f} KiB per idle stream; {measured}", file=sys.stderr)
        print(f"| relay | RSS per idle stream ({args.streams} streams) | delivered | "
              f"p50 / p99 ({args.rate:.0f} msg/s × 3, {args.subscribers} subscribers) |")
        print("|---|---|---|---|")
        for name, kib, m in results:
            print(f"| {name} | {kib:.1f} KiB | {m['delivered']}/{m['expected']} | {m['p50']:.2f} / {m['p99']:.2f} ms |")
        (_, kib_a, a), (_, kib_b, b) = results
        print(f"| ratio pgrelay / naive | {kib_a / kib_b:.2f} | | {a['p50'] / b['p50']:.2f} / {a['p99'] / b['p99']:.2f} |")
    finally:
        for process in (naive, pgrelay):
            if process and process.poll() is None:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
