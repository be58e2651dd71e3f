#!/usr/bin/env python3
"""`make bench-api`: latency of `tamp serve`'s API under a fixed request rate, loopback only,
bounded in time. Starts its own server in a temporary data folder, runs one real job on the
reference CNN (so GET /jobs/{id} reads a full record), then for each rate issues
GET /jobs/{id} and POST /jobs on an open-loop schedule for --seconds and prints
P50/P95/P99. POST /jobs targets an upload whose model is missing, so each request goes
through ingest (recipe validation, the job + idempotency-key transaction, events) and ends
`failed` at once without starting a worker that would load the machine.
"""
import argparse
import concurrent.futures as cf
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time


TOKEN = {}


def request(host, method, path, body=b"", headers=None):
    c = http.client.HTTPConnection(host, timeout=30)
    headers = dict(headers or {})
    if "token" in TOKEN:
        headers["Authorization"] = f"Bearer {TOKEN['token']}"
    c.request(method, path, body=body, headers=headers)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def run_rate(host, method, path_fn, body, rate_per_min, seconds):
    interval = 60.0 / rate_per_min
    n = max(1, int(seconds / interval))
    lat, errors = [], []
    lock = threading.Lock()
    start = time.perf_counter()

    def one(i):
        delay = start + i * interval - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        t0 = time.perf_counter()
        s, d = request(host, method, path_fn(i), body, {"Content-Type": "application/json", "Idempotency-Key": f"bench-{rate_per_min}-{i}-{os.getpid()}"})
        dt = (time.perf_counter() - t0) * 1000
        with lock:
            (lat if s < 300 else errors).append(dt if s < 300 else (s, d[:200]))

    with cf.ThreadPoolExecutor(32) as ex:
        list(ex.map(one, range(n)))
    return n, lat, errors


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tamp", required=True)
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--recipe", required=True)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--rates", default="500,5000")
    ap.add_argument("--jobs", default="100,500", help="batches of concurrent jobs (a fast stage on the reference CNN)")
    ap.add_argument("--concurrency", type=int, default=2, help="tamp serve's worker slots")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as data:
        srv = subprocess.Popen([a.tamp, "serve", "--data-dir", data, "--port", "0", "--rate-limit", "100000", "--concurrency", str(a.concurrency)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            line = srv.stdout.readline()
            host = line.split("API on http://")[1].split(";")[0]
            TOKEN["token"] = open(os.path.join(data, "admin-token")).read().strip()
            for f in ("model.onnx", "calib.npz", "eval.npz"):
                request(host, "PUT", f"/uploads/bench/cnn/v1/{f}", open(f"{a.model_dir}/{f}", "rb").read())
            recipe = open(a.recipe, "rb").read()
            s, d = request(host, "PUT", "/uploads/bench/cnn/v1/recipe.yaml", recipe)
            job = json.loads(d)["job"]
            while json.loads(request(host, "GET", f"/jobs/{job}")[1])["state"] not in ("succeeded", "failed"):
                time.sleep(0.2)
            request(host, "PUT", "/uploads/bench/none/v1/recipe.yaml", recipe)  # no model: ingest fails the job
            time.sleep(1)
            body = json.dumps({"project": "bench", "model": "none", "version": "v1"}).encode()
            print(f"tamp serve on {host}; {a.seconds:.0f} s per row; open-loop schedule, 32 client threads; every request authenticated (API token)\n")
            header = f"{'request':<22}{'rate/min':>9}{'sent':>7}{'errors':>7}{'P50 ms':>9}{'P95 ms':>9}{'P99 ms':>9}{'max ms':>9}"
            print(header)
            print("-" * len(header))
            for rate in [int(r) for r in a.rates.split(",")]:
                for name, method, path_fn, b in (("GET /jobs/{id}", "GET", lambda i: f"/jobs/{job}", b""), ("POST /jobs", "POST", lambda i: "/jobs", body)):
                    n, lat, err = run_rate(host, method, path_fn, b, rate, a.seconds)
                    if lat:
                        print(f"{name:<22}{rate:>9}{n:>7}{len(err):>7}{pct(lat, 50):>9.2f}{pct(lat, 95):>9.2f}{pct(lat, 99):>9.2f}{max(lat):>9.2f}")
                    else:
                        print(f"{name:<22}{rate:>9}{n:>7}{len(err):>7}  all failed: {err[:1]}")
            print("\ntargets: P50 <= 5 ms, P95 <= 20 ms (loopback).\n")
            fast = recipe.decode() + "evaluation:\n  samples: 256\n  latency_runs: 5\n"
            request(host, "POST", "/policies", json.dumps({"project": "bench", "name": "fast", "yaml": fast}).encode())
            header = f"{'concurrent jobs':<18}{'workers':>8}{'submit s':>10}{'done s':>9}{'jobs/min':>10}{'succeeded':>11}{'lost':>6}"
            print(header)
            print("-" * len(header))
            for n in [int(x) for x in a.jobs.split(",") if x]:
                t0 = time.perf_counter()
                ids = []
                for i in range(n):
                    s, d = request(host, "POST", "/jobs", json.dumps({"project": "bench", "model": "cnn", "version": "v1", "policy": "bench.fast"}).encode(),
                                   {"Content-Type": "application/json", "Idempotency-Key": f"jobs-{n}-{i}-{os.getpid()}"})
                    ids.append(json.loads(d)["job"])
                submitted = time.perf_counter() - t0
                pending = set(ids)
                succeeded = 0
                deadline = time.perf_counter() + 3600
                while pending and time.perf_counter() < deadline:
                    for j in list(pending):
                        state = json.loads(request(host, "GET", f"/jobs/{j}")[1])["state"]
                        if state in ("succeeded", "failed", "cancelled"):
                            pending.discard(j)
                            succeeded += state == "succeeded"
                    time.sleep(0.5)
                done = time.perf_counter() - t0
                print(f"{n:<18}{a.concurrency:>8}{submitted:>10.2f}{done:>9.1f}{n / done * 60:>10.1f}{succeeded:>11}{n - succeeded:>6}")
        finally:
            srv.terminate()
            srv.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
