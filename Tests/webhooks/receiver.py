"""A webhook receiver for convo's tests: checks every delivery's signature with the Standard Webhooks
reference library (standardwebhooks, from PyPI) and logs what it got, one JSON line per request.

It can misbehave on purpose:
  --refuse-every N   answer 503 to the first attempt of every Nth message (by webhook-id)
  --slow-every N     sleep --slow-seconds before answering every Nth request
  --status CODE      answer every request CODE (an endpoint that never accepts)
  --die-after-accepting N
                     take the Nth message it would answer 2xx (logging it as accepted), then exit before
                     answering: once per log, so a receiver started again on the same log stays up
A request whose signature does not verify is answered 400 and logged with "verified": false; one cut off
before its whole body came (the sender killed mid-request) is logged with "truncated": true.
"""

import argparse
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--secret", action="append", required=True, help="whsec_...; repeat to accept any of several")
parser.add_argument("--log", required=True)
parser.add_argument("--refuse-every", type=int, default=0)
parser.add_argument("--slow-every", type=int, default=0)
parser.add_argument("--slow-seconds", type=float, default=0.5)
parser.add_argument("--status", type=int, default=0)
parser.add_argument("--die-after-accepting", type=int, default=0)
args = parser.parse_args()

verifiers = [Webhook(secret) for secret in args.secret]
lock = threading.Lock()
seen_ids = {}
requests = [0]
accepted = [0]
died_marker = args.log + ".died"
log = open(args.log, "a", buffering=1)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *a):
        pass

    def do_POST(self):
        received = time.time()
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(length)
        msg_id = self.headers.get("webhook-id", "")
        if len(body) < length:
            # The sender went away mid-request (a killed instance): not a delivery, and nothing to answer.
            with lock:
                log.write(json.dumps({"id": msg_id, "verified": False, "truncated": True, "status": 0, "signatures": 0, "receivedAt": received}) + "\n")
            self.close_connection = True
            return
        headers = {k: v for k, v in self.headers.items()}
        payload, verified = None, False
        for verifier in verifiers:
            try:
                payload = verifier.verify(body, headers)
                verified = True
                break
            except WebhookVerificationError:
                continue
        with lock:
            requests[0] += 1
            number = requests[0]
            attempt = seen_ids.get(msg_id, 0) + 1
            seen_ids[msg_id] = attempt
            ordinal = len(seen_ids)
        if args.slow_every and number % args.slow_every == 0:
            time.sleep(args.slow_seconds)
        if not verified:
            status = 400
        elif args.status:
            status = args.status
        elif args.refuse_every and attempt == 1 and ordinal % args.refuse_every == 0:
            status = 503
        else:
            status = 200
        data = (payload or {}).get("data", {})
        entry = {
            "id": msg_id,
            "verified": verified,
            "status": status,
            "type": (payload or {}).get("type"),
            "conversationId": data.get("conversationId"),
            "position": data.get("position"),
            "eventType": data.get("eventType"),
            "signatures": len(self.headers.get("webhook-signature", "").split(" ")),
            "receivedAt": received,
        }
        with lock:
            log.write(json.dumps(entry) + "\n")
            if status == 200:
                accepted[0] += 1
                if args.die_after_accepting and accepted[0] == args.die_after_accepting and not os.path.exists(died_marker):
                    open(died_marker, "w").close()
                    os._exit(1)
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()


server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
server.daemon_threads = True
server.serve_forever()
