#!/usr/bin/env python3
"""POST /events answered per second and its latency, at a few concurrencies (BENCHMARKS.md,
"All-or-nothing ingress").

    deploy/local/bench-ingress.py http://127.0.0.1:18280 <app> [--token T] [--seconds 10]
        [--concurrency 1,8,32] [--messages 1]

Each worker thread sends requests of --messages creates back to back (keep-alive, one connection
per thread) for --seconds; every answer must be 202. Prints one line per concurrency: requests/s,
messages/s, latency p50/p99/max. The server must be running, the application registered.
"""
import argparse
import http.client
import json
import threading
import time
import urllib.parse
import uuid


def worker(base, app, token, messages, until, out):
    u = urllib.parse.urlparse(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    lat, errors = [], 0
    while time.monotonic() < until:
        body = [{"op": "create", "application_id": app,
                 "object": {"type": "task", "id": uuid.uuid4().hex, "application_id": app,
                            "context_id": "bench", "list_id": "bench", "title": "ingress bench"}}
                for _ in range(messages)]
        t0 = time.monotonic()
        conn.request("POST", "/events", body=json.dumps(body), headers=headers)
        res = conn.getresponse()
        res.read()
        lat.append(time.monotonic() - t0)
        if res.status != 202:
            errors += 1
    out.append((lat, errors))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("app")
    ap.add_argument("--token", default=None)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--messages", type=int, default=1)
    a = ap.parse_args()
    for c in [int(x) for x in a.concurrency.split(",")]:
        out, threads = [], []
        until = time.monotonic() + a.seconds
        for _ in range(c):
            t = threading.Thread(target=worker, args=(a.base, a.app, a.token, a.messages, until, out))
            t.start()
            threads.append(t)
        for t in threads:
            t.join()
        lat = sorted(x for l, _ in out for x in l)
        errors = sum(e for _, e in out)
        n = len(lat)
        pct = lambda p: lat[min(n - 1, int(n * p))] * 1000 if n else float("nan")
        print(f"concurrency {c}: {n / a.seconds:.0f} requests/s, {n * a.messages / a.seconds:.0f} messages/s, "
              f"latency p50 {pct(0.5):.1f} ms p99 {pct(0.99):.1f} ms max {lat[-1] * 1000 if n else 0:.1f} ms, "
              f"{errors} answers other than 202")


if __name__ == "__main__":
    main()
