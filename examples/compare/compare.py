"""pgrelay beside a naive one-LISTEN relay and nginx+Nchan, in one run, on one machine.

    ulimit -n 20000; python3 examples/compare/compare.py [--subscribers 10000] [--rate 1000]
        [--writers 4] [--seconds 10] [--runs 5] [--only pgrelay,naive,nchan,nchan-fed] [--split]

Needs the release binary (`cargo build --release`), the PostgreSQL server binaries, `psql`,
Node.js and npm (it installs the `pg` package into a temporary folder) and, for the third peer,
nginx with the Nchan module (Debian: `apt-get install nginx libnginx-mod-nchan`; without it
that peer is reported as not run). It starts `pgrelay demo` (a throwaway PostgreSQL with pgrelay
serving it); on the same database the naive relay of naive-relay.mjs (a trigger NOTIFYs each
row as JSON; one LISTEN; in-process fan-out; no auth, resume, catch-up or limits); and an nginx
whose Nchan publisher location posts one message to the 3 channels of its recipients, measured
twice: written to by HTTP directly (Nchan as its users run it, no database in the path), and fed
from PostgreSQL by nchan-feed.mjs (the same trigger and LISTEN as the naive relay, each
notification posted to Nchan), the path pgrelay and the naive relay take.

Each run measures every relay in turn (the order alternates between runs), alone on the machine:
`--subscribers` streams open (RSS growth per stream is taken then, only where the process
is fresh: a relay serves every run, and later runs reuse the memory the first one's streams left;
the Nchan fed from PostgreSQL shares the nginx measured just before it), `--rate` messages per second
for `--seconds`, each to 3 random subscribers, spread round-robin over `--writers` writers (one
psql session each, one INSERT per transaction, where PostgreSQL is in the path; one
keep-alive HTTP connection each posting to Nchan directly), each delivery timed from the moment its
message was handed to its writer to the moment the event was read, and the relay's CPU time per
delivered event. Where PostgreSQL is in the path it also times each message from the handoff
until its writer's psql reports the INSERT's transaction committed: that much of a delivery
belongs to the database and the load, and no relay that reads from it can take it off. The
clients are asyncio protocols in this one process (one read callback per socket read, no
per-stream task), the same for every relay.

It prints one Markdown row per run and relay, then the median of the runs. With `--split`,
for events that say when their writer's transaction began (pgrelay's `created_at`), it also
prints where each delivery's time went: from the handoff to the writer until that moment (the
load generator, psql and the writer's backend), and from there until the event was read (the
commit, the relay and the client). Loopback only; everything it starts is stopped at the end.
"""
import argparse, asyncio, base64, collections, hashlib, hmac, json, os, random, re, resource, shutil
import datetime, signal, statistics, subprocess, sys, tempfile, time

SECRET = b"compare-secret-0123456789-abcdefgh"
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
KEY = re.compile(rb'"k":\s*(\d+)')
CREATED_AT = re.compile(rb'"created_at":"([^"]+)"')
TICKS = os.sysconf("SC_CLK_TCK")


def token(sub):
    enc = lambda v: base64.urlsafe_b64encode(json.dumps(v, separators=(",", ":")).encode()).rstrip(b"=").decode()
    head, body = enc({"alg": "HS256", "typ": "JWT"}), enc({"sub": sub, "exp": int(time.time()) + 3600})
    sig = hmac.new(SECRET, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}." + base64.urlsafe_b64encode(sig).rstrip(b"=").decode()


def process_tree(pid):
    """`pid` and its children (nginx's workers), as far as /proc shows them."""
    pids = [pid]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    if int(stat.read().rsplit(")", 1)[1].split()[1]) == pid:
                        pids.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return pids


def rss_kib(pids):
    total = 0
    for one in pids:
        with open(f"/proc/{one}/status") as status:
            total += int(next(line for line in status if line.startswith("VmRSS")).split()[1])
    return total


def cpu_seconds(pids):
    total = 0
    for one in pids:
        try:
            with open(f"/proc/{one}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:  # a database process that has ended since it was listed
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


class Relay:
    """How to reach one relay: its name, port, processes (the relay's own: pgrelay's children
    are its database), stream request, the bytes that say a stream is open, and how messages
    reach it."""

    def __init__(self, name, port, pids, request, ready, writers):
        self.name, self.port, self.pids, self.request = name, port, pids, request
        self.ready, self.writers = ready, writers


class Stream(asyncio.Protocol):
    """One subscriber's connection: reports every complete event's key as it is read (and, to
    split the latency, its `created_at` and the wall-clock time)."""

    def __init__(self, ready, on_key, split):
        self.ready_marker, self.on_key, self.split = ready, on_key, split
        self.opened = asyncio.get_running_loop().create_future()
        self.buffer = b""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        now = time.monotonic()
        self.buffer += data
        if not self.opened.done():
            if self.ready_marker not in self.buffer:
                return
            self.buffer = self.buffer.split(self.ready_marker, 1)[1]
            self.opened.set_result(None)
        # Only whole events count; a frame split across reads is read with its end.
        end = self.buffer.rfind(b"\n\n")
        if end >= 0:
            if self.split:
                wall = time.time()
                for event in self.buffer[:end].split(b"\n\n"):
                    key, created = KEY.search(event), CREATED_AT.search(event)
                    if key:
                        self.on_key(int(key.group(1)), now, (wall, created and created.group(1)))
            else:
                for key in KEY.findall(self.buffer, 0, end):
                    self.on_key(int(key), now, None)
            self.buffer = self.buffer[end + 2:]

    def connection_lost(self, exc):
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("the stream closed before it opened"))


async def open_streams(relay, subs, on_key, split):
    loop, gate = asyncio.get_running_loop(), asyncio.Semaphore(200)

    async def one(sub):
        async with gate:
            transport, stream = await loop.create_connection(
                lambda: Stream(relay.ready, lambda key, now, read: on_key(key, sub, now, read), split),
                "127.0.0.1", relay.port)
            transport.write(relay.request(sub).encode())
            await asyncio.wait_for(stream.opened, 30)
            return transport

    return await asyncio.gather(*(one(sub) for sub in subs))


class PsqlWriters:
    """`count` psql sessions inserting one message per transaction into `table`. Each session
    prints a statement's tag once its transaction has committed, so `on_commit` learns when
    each message was committed, or a little later: the part of a delivery's time that belongs
    to the database and the load, not to the relay."""

    def __init__(self, table, database_url, count):
        self.table, self.database_url, self.count = table, database_url, count

    async def start(self, on_commit):
        loop = asyncio.get_running_loop()
        self.sessions = [(await loop.subprocess_exec(
            lambda: PsqlTags(on_commit), "psql", "-X", "-v", "ON_ERROR_STOP=1",
            self.database_url, stderr=None))[1] for _ in range(self.count)]

    def send(self, key, recipients):
        participants = "{" + ",".join(recipients) + "}"
        self.sessions[key % self.count].send(
            key, f"INSERT INTO {self.table} (participants, payload) VALUES ('{participants}', '{{\"k\": {key}}}');\n")

    async def stop(self):
        for session in self.sessions:
            session.close_input()
        for session in self.sessions:
            try:
                await asyncio.wait_for(asyncio.shield(session.exited), 10)
            except asyncio.TimeoutError:  # a psql stuck on its server
                session.transport.kill()
                await session.exited
            session.transport.close()


class PsqlTags(asyncio.SubprocessProtocol):
    """One psql session: its statements go to its stdin, and each `INSERT` tag on its stdout
    is timed as its bytes arrive (a protocol callback, as the streams' reads are), then paired
    with the oldest key sent (psql runs and answers statements in order)."""

    def __init__(self, on_commit):
        self.on_commit, self.sent, self.buffer = on_commit, collections.deque(), b""
        self.exited = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport

    def send(self, key, statement):
        self.sent.append(key)
        self.transport.get_pipe_transport(0).write(statement.encode())

    def close_input(self):
        self.transport.get_pipe_transport(0).close()

    def pipe_data_received(self, fd, data):
        now = time.monotonic()
        *lines, self.buffer = (self.buffer + data).split(b"\n")
        for line in lines:
            if line.startswith(b"INSERT"):
                self.on_commit(self.sent.popleft(), now)

    def connection_lost(self, exc):
        # After the process has exited and both pipes are read to their end.
        self.exited.set_result(None)


class Discard(asyncio.Protocol):
    """A publisher's connection: its responses are read and dropped."""

    def data_received(self, data):
        pass


class NchanWriters:
    """`count` keep-alive HTTP connections, each posting its share of the messages to the
    channels of their recipients."""

    def __init__(self, port, count):
        self.port, self.count = port, count

    async def start(self, on_commit):
        loop = asyncio.get_running_loop()
        self.connections = [(await loop.create_connection(Discard, "127.0.0.1", self.port))[0]
                            for _ in range(self.count)]

    def send(self, key, recipients):
        body = f'{{"k": {key}}}'
        a, b, c = recipients
        self.connections[key % self.count].write(
            f"POST /pub?a={a}&b={b}&c={c} HTTP/1.1\r\nHost: relay\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode())

    async def stop(self):
        for connection in self.connections:
            connection.close()


def database_pids():
    """Every PostgreSQL process on the machine (the benchmark has it to itself)."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/comm") as comm:
                if comm.read().strip() == "postgres":
                    pids.append(int(entry))
        except (OSError, ValueError):
            pass
    return pids


async def settle(pids, most=60):
    """Waits (at least 2 s, at most `most`) until the relay and the database are idle, so what
    opening the streams set off is done before the clock starts: pgrelay announces each
    participant who comes online to everyone they corresponded with, one query per participant
    (after a gap of more than the presence debounce, 10,000 of them keep PostgreSQL busy for
    seconds)."""
    await asyncio.sleep(2)
    for _ in range(most * 2):
        watched = pids + database_pids()
        before = cpu_seconds(watched)
        await asyncio.sleep(0.5)
        if cpu_seconds(watched) - before < 0.05:  # under 10% of a core
            return


async def measure(relay, subscribers, rate, seconds, seed, fresh, split):
    subs = [f"s{n:05d}" for n in range(subscribers)]
    sent, sent_wall, latencies, parts, commits = {}, {}, [], [], []

    def on_key(key, sub, now, read):
        if key in sent:
            latencies.append((now - sent[key]) * 1000)
            if read and read[1]:
                wall, created = read
                began = datetime.datetime.fromisoformat(created.decode().replace("Z", "+00:00"))
                before_commit = (began.timestamp() - sent_wall[key]) * 1000
                parts.append((latencies[-1], before_commit, (wall - began.timestamp()) * 1000))

    before = rss_kib(relay.pids)
    streams = await open_streams(relay, subs, on_key, split)
    await settle(relay.pids)
    # Only a fresh process grows: later runs reuse the memory the first one's streams left.
    kib_per_stream = (rss_kib(relay.pids) - before) / subscribers if fresh else float("nan")
    await relay.writers.start(lambda key, now: commits.append((now - sent[key]) * 1000))
    rng = random.Random(seed)
    cpu_before = cpu_seconds(relay.pids)
    start = time.monotonic()
    count = int(rate * seconds)
    for key in range(count):
        delay = start + key / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        relay.writers.send(key, rng.sample(subs, 3))
        sent[key] = time.monotonic()
        sent_wall[key] = time.time()
    await asyncio.sleep(2)
    cpu = cpu_seconds(relay.pids) - cpu_before
    await relay.writers.stop()
    for stream in streams:
        stream.close()
    await asyncio.sleep(2)
    latencies.sort()
    commits.sort()
    if isinstance(relay.writers, PsqlWriters) and len(commits) < count:
        # A psql that stopped on an error (on stderr) times nothing after it.
        print(f"{relay.name}: only {len(commits)} of {count} commits were timed",
              file=sys.stderr, flush=True)
    return {"kib": kib_per_stream, "delivered": len(latencies), "expected": count * 3,
            "p50": quantile(latencies, 0.5), "p99": quantile(latencies, 0.99),
            "max": quantile(latencies, 1.0),
            "commit_p50": quantile(commits, 0.5), "commit_p99": quantile(commits, 0.99),
            "cpu_us": cpu / max(1, len(latencies)) * 1e6}, parts


def quantile(ordered, q):
    """The `q` quantile of the ascending list `ordered` (NaN when it is empty)."""
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def split_line(name, parts):
    """Where the time of `parts` (total, before the writer's transaction began, after) went."""
    quantiles = lambda values: "/".join(
        f"{quantile(sorted(values), q):.2f}" for q in (0.5, 0.99, 1.0))
    slowest = sorted(parts)[int(0.99 * len(parts)):]
    mean = lambda index: sum(part[index] for part in slowest) / len(slowest)
    return (f"split {name}: handoff → transaction start p50/p99/max "
            f"{quantiles([part[1] for part in parts])} ms, transaction start → read "
            f"{quantiles([part[2] for part in parts])} ms; the slowest 1% spent {mean(1):.1f} ms "
            f"before and {mean(2):.1f} ms after, on average")


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


def start_node(script, table, database_url, folder, **env):
    """Runs `script` (a Node.js process that LISTENs on channel `table`) beside `table`, whose
    trigger NOTIFYs each row as JSON on that channel."""
    if not os.path.exists(os.path.join(folder, "node_modules", "pg")):
        subprocess.run(["npm", "install", "--silent", "--prefix", folder, "pg@8"], check=True)
    shutil.copy(os.path.join(HERE, script), folder)
    subprocess.run(["psql", "-q", "-X", "-v", "ON_ERROR_STOP=1", database_url, "-c", f"""
        CREATE TABLE {table} (id bigserial PRIMARY KEY, participants text[] NOT NULL,
                              payload jsonb NOT NULL);
        CREATE FUNCTION {table}_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_notify('{table}', json_build_object('id', NEW.id,
              'participants', NEW.participants, 'payload', NEW.payload)::text); RETURN NULL; END $$;
        CREATE TRIGGER {table}_notify AFTER INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION {table}_notify();
    """], check=True)
    env = dict(os.environ, DATABASE_URL=database_url, **{k: str(v) for k, v in env.items()})
    return subprocess.Popen(["node", os.path.join(folder, script)], cwd=folder, env=env)


NCHAN_MODULE = "/usr/lib/nginx/modules/ngx_nchan_module.so"


def start_nchan(port, folder):
    """nginx with one worker per core, a publisher location that posts one message to up to
    three channels (`a`, `b`, `c`) and an EventSource subscriber location; None without it."""
    if not (shutil.which("nginx") and os.path.exists(NCHAN_MODULE)):
        return None
    config = os.path.join(folder, "nginx.conf")
    with open(config, "w") as out:
        out.write(f"""
load_module {NCHAN_MODULE};
daemon off;
worker_processes auto;
worker_rlimit_nofile 20000;
pid {folder}/nginx.pid;
error_log {folder}/nginx-error.log warn;
events {{ worker_connections 19000; }}
http {{
  access_log off;
  keepalive_requests 10000000;  # the default (1000) closes a writer's connection mid-run
  # Kept messages fill the shared memory over runs (30,000 each), and Nchan then drops new
  # ones: keep them briefly (live delivery needs none kept) in room for every run's.
  nchan_shared_memory_size 256M;
  client_body_temp_path {folder}/body;
  server {{
    listen 127.0.0.1:{port};
    location = /pub {{ nchan_publisher; nchan_channel_id $arg_a $arg_b $arg_c;
                       nchan_message_buffer_length 16; nchan_message_timeout 15s; }}
    location = /sub {{ nchan_subscriber eventsource; nchan_channel_id $arg_sub; }}
  }}
}}
""")
    return subprocess.Popen(["nginx", "-c", config, "-p", folder])


def wait_port(port):
    import socket
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def row(name, m):
    kib = "—" if m["kib"] != m["kib"] else f"{m['kib']:.1f} KiB"  # NaN: not a fresh process
    commit = ("—" if m["commit_p50"] != m["commit_p50"]  # NaN: no database in the path
              else f"{m['commit_p50']:.2f} / {m['commit_p99']:.2f} ms")
    return (f"| {name} | {kib} | {m['delivered']}/{m['expected']} | "
            f"{m['p50']:.2f} / {m['p99']:.2f} / {m['max']:.1f} ms | {commit} | "
            f"{m['cpu_us']:.1f} µs |")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--subscribers", type=int, default=10000)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", default="pgrelay,naive,nchan,nchan-fed")
    parser.add_argument("--split", action="store_true",
                        help="also say where each delivery's time went, for events with created_at")
    args = parser.parse_args()
    wanted = args.only.split(",")
    resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
    folder = tempfile.mkdtemp(prefix="pgrelay-compare-")
    pgrelay, database_url = start_pgrelay(18090)
    others = []
    try:
        wait_port(18090)
        relays = []
        if "pgrelay" in wanted:
            relays.append(Relay(
                "pgrelay", 18090, [pgrelay.pid],
                lambda sub: f"GET /v1/stream HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer {token(sub)}\r\n\r\n",
                b"event: position", PsqlWriters("pgrelay.messages", database_url, args.writers)))
        if "naive" in wanted:
            naive = start_node("naive-relay.mjs", "naive_relay", database_url, folder, PORT=18091)
            others.append(naive)
            wait_port(18091)
            relays.append(Relay(
                "naive Node relay", 18091, [naive.pid],
                lambda sub: f"GET /stream?sub={sub} HTTP/1.1\r\nHost: relay\r\n\r\n",
                b"event: position", PsqlWriters("naive_relay", database_url, args.writers)))
        if "nchan" in wanted:
            nchan = start_nchan(18092, folder)
            if nchan is None:
                print("nginx+Nchan: not run (nginx or its Nchan module is missing)", file=sys.stderr)
            else:
                others.append(nchan)
                wait_port(18092)
                subscribe = lambda sub: (f"GET /sub?sub={sub} HTTP/1.1\r\nHost: relay\r\n"
                                         "Accept: text/event-stream\r\n\r\n")
                relays.append(Relay("nginx+Nchan", 18092, process_tree(nchan.pid), subscribe,
                                    b": hi\n\n", NchanWriters(18092, args.writers)))
                if "nchan-fed" in wanted:
                    feed = start_node("nchan-feed.mjs", "nchan_feed", database_url, folder, NCHAN_PORT=18092)
                    others.append(feed)
                    relays.append(Relay("nginx+Nchan fed from PostgreSQL", 18092,
                                        process_tree(nchan.pid) + [feed.pid], subscribe,
                                        b": hi\n\n", PsqlWriters("nchan_feed", database_url, args.writers)))
        results = {relay.name: [] for relay in relays}
        print(f"| relay | RSS per stream | delivered | p50 / p99 / max ({args.rate:.0f} msg/s × 3, "
              f"{args.subscribers} streams, {args.writers} writers) | committed p50 / p99 | "
              "relay CPU per event |")
        print("|---|---|---|---|---|---|")
        served = set()  # processes that have held streams already
        for run in range(args.runs):
            for relay in (relays if run % 2 == 0 else relays[::-1]):
                fresh = served.isdisjoint(relay.pids)
                served.update(relay.pids)
                measured, parts = asyncio.run(measure(
                    relay, args.subscribers, args.rate, args.seconds, run, fresh, args.split))
                results[relay.name].append(measured)
                print(row(f"{relay.name}, run {run + 1}", measured), flush=True)
                if parts:
                    print(split_line(f"{relay.name}, run {run + 1}", parts), flush=True)
        for name, runs in results.items():
            median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
            median["kib"] = next((run["kib"] for run in runs if run["kib"] == run["kib"]), float("nan"))
            print(row(f"**{name}, median of {len(runs)}**", median))
        for key in ("p50", "p99"):
            print(f"{key} ranges: " + "; ".join(
                f"{name} {min(r[key] for r in runs):.2f}–{max(r[key] for r in runs):.2f} ms"
                for name, runs in results.items()))
    finally:
        for process in others + [pgrelay]:
            if process.poll() is None:
                process.send_signal(signal.SIGINT if process is pgrelay else signal.SIGTERM)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
        pgrelay.stdout.close()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
