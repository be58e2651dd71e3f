"""Opt-in smoke test of the packaged Lambda functions (`make package-smoke`): each
dist/lambda/tamp-<fn>/bootstrap.zip is unzipped and started the way Lambda starts it, against
a minimal Lambda Runtime API served here, with the AWS services in moto (run under
scripts/with_moto.sh). Each function gets one sample event from events/ and must answer it.
Prints init time (process start → first `next` call) and invoke time per function.
This runs the real zipped `bootstrap` binaries; `cargo lambda watch` would rebuild and run
debug builds instead."""
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3

ROOT = Path(__file__).resolve().parent.parent
CASES = [
    ("api", "apigw-v2-get-best.json", lambda r: r.get("statusCode") == 401),  # the sample's token is not a real one
    ("ingest", "sqs-ingest.json", lambda r: r == {"batchItemFailures": []}),
    ("orchestrator", "scheduled-reconcile.json", lambda r: r == {"resubmitted": 0}),
    ("report", "tamp-job-succeeded.json", lambda r: r is None),  # unknown job: nothing to report
    ("notify", "tamp-job-succeeded.json", lambda r: r == 1),  # one webhook target below
    ("export", "tamp-job-succeeded.json", lambda r: r == []),  # unknown job: nothing to convert
]


class Runtime:
    """One invocation's worth of the Lambda Runtime API."""

    def __init__(self, event: bytes):
        self.event, self.first_next, self.result, self.error, self.done = event, None, None, None, threading.Event()
        self.served = False

    def handler(rt):
        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                if self.path.endswith("/runtime/invocation/next"):
                    if rt.first_next is None:
                        rt.first_next = time.monotonic()
                    if rt.served:
                        rt.done.wait(30)
                        time.sleep(30)
                        return
                    rt.served = True
                    self.send_response(200)
                    self.send_header("Lambda-Runtime-Aws-Request-Id", "8476a536-e9f4-11e8-9739-2dfe598c3fcd")
                    self.send_header("Lambda-Runtime-Deadline-Ms", str(int(time.time() * 1000) + 30000))
                    self.send_header("Lambda-Runtime-Invoked-Function-Arn", "arn:aws:lambda:us-east-1:123456789012:function:tamp-smoke")
                    self.send_header("Lambda-Runtime-Trace-Id", "Root=1-5bef4de7-ad49b0e87f6ef6c87fc2e700;Parent=9a9197af755a6419;Sampled=1")
                    self.send_header("Content-Length", str(len(rt.event)))
                    self.end_headers()
                    self.wfile.write(rt.event)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path.endswith("/response"):
                    rt.result = (time.monotonic(), json.loads(body or b"null"))
                else:
                    rt.error = body.decode(errors="replace")
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()
                rt.done.set()

        return H


def main() -> int:
    kw = dict(endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name=os.environ.get("AWS_REGION", "us-east-1"))
    s3, ddb, sqs, events = (boto3.client(n, **kw) for n in ("s3", "dynamodb", "sqs", "events"))
    s3.create_bucket(Bucket="tamp-example-team")
    ddb.create_table(TableName="tamp-smoke", BillingMode="PAY_PER_REQUEST",
                     AttributeDefinitions=[{"AttributeName": a, "AttributeType": "S"} for a in ("PK", "SK", "GSI1PK", "GSI1SK")],
                     KeySchema=[{"AttributeName": "PK", "KeyType": "HASH"}, {"AttributeName": "SK", "KeyType": "RANGE"}],
                     GlobalSecondaryIndexes=[{"IndexName": "GSI1", "KeySchema": [{"AttributeName": "GSI1PK", "KeyType": "HASH"}, {"AttributeName": "GSI1SK", "KeyType": "RANGE"}], "Projection": {"ProjectionType": "ALL"}}])
    queue = sqs.create_queue(QueueName="tamp-smoke-orchestrator")["QueueUrl"]
    events.create_event_bus(Name="tamp-smoke")
    hook = ThreadingHTTPServer(("127.0.0.1", 0), type("Hook", (BaseHTTPRequestHandler,), {
        "log_message": lambda *a: None,
        "do_POST": lambda self: (self.rfile.read(int(self.headers.get("Content-Length", 0))), self.send_response(200), self.send_header("Content-Length", "0"), self.end_headers()),
    }))
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    env = dict(os.environ, TAMP_BUCKET="tamp-example-team", TAMP_TABLE="tamp-smoke", TAMP_QUEUE_URL=queue, TAMP_EVENT_BUS="tamp-smoke",
               TAMP_BATCH_QUEUE=os.environ.get("TAMP_TEST_BATCH_QUEUE", "tamp-test-queue"), TAMP_BATCH_JOB_DEFINITION=os.environ.get("TAMP_TEST_BATCH_JOBDEF", "tamp-test-worker"),
               TAMP_WEBHOOK_URLS=f"http://127.0.0.1:{hook.server_address[1]}/hook", TAMP_WEBHOOK_SECRET="smoke-test-secret-0123456789",
               AWS_LAMBDA_FUNCTION_MEMORY_SIZE="256", AWS_LAMBDA_FUNCTION_VERSION="$LATEST", AWS_LAMBDA_LOG_FORMAT="JSON", AWS_LAMBDA_LOG_LEVEL="WARN")
    failures = 0
    print(f"{'function':<18}{'zip bytes':>12}{'init ms':>10}{'invoke ms':>11}  answer")
    for fn, sample, ok in CASES:
        z = ROOT / "dist/lambda" / f"tamp-{fn}" / "bootstrap.zip"
        rt = Runtime((ROOT / "events" / sample).read_bytes())
        server = ThreadingHTTPServer(("127.0.0.1", 0), rt.handler())
        threading.Thread(target=server.serve_forever, daemon=True).start()
        with tempfile.TemporaryDirectory() as task:
            zipfile.ZipFile(z).extractall(task)
            os.chmod(Path(task) / "bootstrap", 0o755)
            start = time.monotonic()
            proc = subprocess.Popen([str(Path(task) / "bootstrap")], cwd=task, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    env=dict(env, AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{server.server_address[1]}", AWS_LAMBDA_FUNCTION_NAME=f"tamp-{fn}", LAMBDA_TASK_ROOT=task))
            rt.done.wait(60)
            proc.kill()
            out = proc.communicate()[0].decode(errors="replace")
        server.shutdown()
        if rt.result is None:
            failures += 1
            print(f"tamp-{fn} FAILED: {rt.error or 'no answer'}\n{out[-2000:]}")
            continue
        answer = rt.result[1]
        good = ok(answer)
        failures += not good
        init_ms = (rt.first_next - start) * 1000
        invoke_ms = (rt.result[0] - rt.first_next) * 1000
        print(f"{'tamp-' + fn:<18}{z.stat().st_size:>12}{init_ms:>10.1f}{invoke_ms:>11.1f}  {'ok' if good else 'UNEXPECTED'} {json.dumps(answer)[:70]}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
