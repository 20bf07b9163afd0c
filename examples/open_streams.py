"""Opens N idle pgrelay streams on 127.0.0.1:PORT and holds them, for heap profiles.

Usage: python3 examples/open_streams.py PORT N SECONDS   (the relay must run with --secret heap-secret-0123456789-0123456789)
Each stream is a raw socket: GET /v1/stream with a fresh HS256 token for p00000, p00001, ...,
read up to the opening position event, then kept open; 200 opens at a time. BENCHMARKS.md
("Memory per idle stream") uses it under heaptrack.
"""
import asyncio, base64, hashlib, hmac, json, sys, time
SECRET = b"heap-secret-0123456789-0123456789"
def mint(sub):
    enc = lambda v: base64.urlsafe_b64encode(json.dumps(v, separators=(',', ':')).encode()).rstrip(b'=').decode()
    head = enc({"alg": "HS256", "typ": "JWT"}); body = enc({"sub": sub, "exp": int(time.time()) + 3600})
    sig = base64.urlsafe_b64encode(hmac.new(SECRET, f"{head}.{body}".encode(), hashlib.sha256).digest()).rstrip(b'=').decode()
    return f"{head}.{body}.{sig}"
async def one(port, n, conns):
    r, w = await asyncio.open_connection('127.0.0.1', port)
    w.write(f"GET /v1/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {mint(f'p{n:05d}')}\r\n\r\n".encode())
    await w.drain()
    await r.readuntil(b"event: position")
    conns.append((r, w))
async def main(port, count, hold):
    conns = []
    sem = asyncio.Semaphore(200)
    async def guarded(n):
        async with sem: await one(port, n, conns)
    await asyncio.gather(*(guarded(n) for n in range(count)))
    print(f"open {len(conns)}", flush=True)
    await asyncio.sleep(hold)
asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])))
