"""Sign webhook requests with the independent `standardwebhooks` package (pip).

Usage: sign_webhook.py  (reads a JSON list of {"secret","id","timestamp","body"} on stdin)
Prints a JSON list of "v1,<base64>" signatures, one per request, so the Rust tests can
check our verifier against someone else's signer (docs/rules.md "Webhook contract").
"""
import json
import sys
from datetime import datetime, timezone

from standardwebhooks.webhooks import Webhook

out = []
for req in json.load(sys.stdin):
    ts = datetime.fromtimestamp(req["timestamp"], tz=timezone.utc)
    out.append(Webhook(req["secret"]).sign(req["id"], ts, req["body"]))
    # Round-trip through the package's own verifier too.
    Webhook(req["secret"]).verify(
        req["body"],
        {"webhook-id": req["id"], "webhook-timestamp": str(req["timestamp"]), "webhook-signature": out[-1]},
    ) if abs(req["timestamp"] - datetime.now(tz=timezone.utc).timestamp()) < 300 else None
print(json.dumps(out))
