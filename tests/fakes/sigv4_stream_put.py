#!/usr/bin/env python3
"""S3 PutObject signed with SigV4 from the environment's key pair (run inside a sandbox, so
with the stub pair, through HTTPS_PROXY), used by tests/tests/vault_aws.rs.

  sigv4_stream_put.py URL SIZE CHUNK [tamper]

CHUNK > 0: `STREAMING-AWS4-HMAC-SHA256-PAYLOAD` (aws-chunked, every chunk signed, as in the
S3 API reference "Signature Calculation: Transfer Payload in Multiple Chunks"); botocore has
no signer for it, the AWS Java/Go SDKs do. CHUNK = 0: one body with its SHA-256 in
x-amz-content-sha256. `tamper` changes one byte of the body after signing.
Prints the HTTP status; exits 0 only on 200.
"""
import datetime, hashlib, hmac, os, sys
from urllib.parse import urlsplit

import requests

url, size, chunk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
tamper = len(sys.argv) > 4 and sys.argv[4] == "tamper"
key_id, secret = os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
region = os.environ.get("AWS_REGION", "us-east-1")
data = bytes((i * 7) % 251 for i in range(size))
u = urlsplit(url)
now = datetime.datetime.now(datetime.timezone.utc)
amz_date, date = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
scope = f"{date}/{region}/s3/aws4_request"
h = lambda k, m: hmac.new(k, m.encode(), hashlib.sha256).digest()
key = h(h(h(h(("AWS4" + secret).encode(), date), region), "s3"), "aws4_request")
EMPTY = hashlib.sha256(b"").hexdigest()

headers = {"host": u.netloc, "x-amz-date": amz_date}
if chunk:
    pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)] + [b""]
    framed_len = sum(len(f"{len(p):x};chunk-signature=") + 64 + 2 + len(p) + 2 for p in pieces)
    headers.update({
        "content-encoding": "aws-chunked",
        "content-length": str(framed_len),
        "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        "x-amz-decoded-content-length": str(len(data)),
    })
else:
    headers.update({"content-length": str(len(data)), "x-amz-content-sha256": hashlib.sha256(data).hexdigest()})
names = sorted(headers)
creq = "\n".join([
    "PUT", u.path, "",
    "".join(f"{n}:{headers[n]}\n" for n in names),
    ";".join(names), headers["x-amz-content-sha256"],
])
sts = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(creq.encode()).hexdigest()])
seed = hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()
headers["authorization"] = f"AWS4-HMAC-SHA256 Credential={key_id}/{scope}, SignedHeaders={';'.join(names)}, Signature={seed}"

if chunk:
    body, prev = bytearray(), seed
    for p in pieces:
        s = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", amz_date, scope, prev, EMPTY, hashlib.sha256(p).hexdigest()])
        prev = hmac.new(key, s.encode(), hashlib.sha256).hexdigest()
        body += f"{len(p):x};chunk-signature={prev}\r\n".encode() + p + b"\r\n"
    assert len(body) == int(headers["content-length"])
else:
    body = bytearray(data)
if tamper:
    body[len(body) // 2] ^= 1
send = {k: v for k, v in headers.items() if k != "host"}
try:
    r = requests.put(url, data=bytes(body), headers=send, timeout=60)
    print(r.status_code)
    sys.exit(0 if r.status_code == 200 else 1)
except requests.RequestException as e:
    print("error", type(e).__name__)
    sys.exit(2)
