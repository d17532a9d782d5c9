#!/usr/bin/env python3
"""A local fake of Amazon S3 that checks AWS Signature Version 4 with the REAL key pair.

Used by tests/tests/vault_aws.rs: sandboxes sign with stub keys, the vault proxy re-signs
with the real ones, and this server accepts only what a real S3 endpoint would accept from
the real key. Written independently of the proxy's signer (another language, from the AWS
documentation, not from the proxy's code):

- "Authenticating Requests (AWS Signature Version 4)" and "Signature Calculations for the
  Authorization Header" (S3 API reference): canonical request, signed headers, S3's
  single URI encoding, x-amz-content-sha256 required and checked against the body
  (XAmzContentSHA256Mismatch), 15-minute clock skew (RequestTimeTooSkewed).
- "Authenticating Requests: Using Query Parameters": presigned URLs, UNSIGNED-PAYLOAD,
  X-Amz-Expires 1..604800 ("Request has expired" after it).
- "Signature Calculation: Transfer Payload in Multiple Chunks" (aws-chunked,
  STREAMING-AWS4-HMAC-SHA256-PAYLOAD) and "... Including Trailing Headers"
  (STREAMING-UNSIGNED-PAYLOAD-TRAILER with x-amz-checksum-crc32).
- Error bodies are S3's XML <Error><Code>…</Code><Message>…</Message></Error>
  (SignatureDoesNotMatch, InvalidAccessKeyId, AccessDenied, RequestTimeTooSkewed, …).

Operations: PutObject, GetObject (Range), HeadObject, CreateMultipartUpload, UploadPart,
CompleteMultipartUpload, AbortMultipartUpload, ListObjectsV2 (path-style addressing).
Every request is logged as one JSON line to --log (method, path, auth form, payload mode,
status, error code) for the test's assertions.

Usage: fake_s3.py --cert C --key K --access-key-id ID --secret-env VAR --log FILE
Prints the port it listens on (127.0.0.1) as the first stdout line.
"""
import argparse, binascii, datetime, hashlib, hmac, json, os, ssl, sys, threading, uuid, zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote_to_bytes
from xml.sax.saxutils import escape

UNRESERVED = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~"
EMPTY = hashlib.sha256(b"").hexdigest()


def enc(b: bytes, slash: bool) -> str:
    out = []
    for c in b:
        if c in UNRESERVED or (slash and c == ord("/")):
            out.append(chr(c))
        else:
            out.append("%%%02X" % c)
    return "".join(out)


def hm(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    k = hm(("AWS4" + secret).encode(), date)
    k = hm(k, region)
    k = hm(k, service)
    return hm(k, "aws4_request")


class S3Error(Exception):
    def __init__(self, status, code, message):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class State:
    def __init__(self, key_id, secret, log):
        self.key_id, self.secret, self.log_path = key_id, secret, log
        self.objects = {}  # (bucket, key) -> bytes
        self.uploads = {}  # upload id -> {part number: bytes}
        self.lock = threading.Lock()

    def log(self, rec):
        with self.lock, open(self.log_path, "a") as f:
            f.write(json.dumps(rec) + "\n")


def parse_query(raw: str):
    pairs = []
    for kv in raw.split("&"):
        if not kv:
            continue
        k, _, v = kv.partition("=")
        pairs.append((unquote_to_bytes(k), unquote_to_bytes(v)))
    return pairs


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: State = None

    def log_message(self, *a):
        pass

    # --- SigV4 (server side) ---
    def verify(self, body_for_hash):
        """Returns (form, payload_mode, seed signature, key, scope, amz_date)."""
        st = self.state
        path, _, query = self.path.partition("?")
        qp = parse_query(query)
        qd = {k.decode(): v.decode() for k, v in qp}
        auth = self.headers.get("Authorization")
        now = datetime.datetime.now(datetime.timezone.utc)
        if auth is not None:
            form = "header"
            alg, _, rest = auth.partition(" ")
            if alg != "AWS4-HMAC-SHA256":
                raise S3Error(400, "InvalidArgument", "Unsupported Authorization Type")
            fields = dict(p.strip().split("=", 1) for p in rest.split(","))
            cred, signed, sig = fields["Credential"], fields["SignedHeaders"], fields["Signature"]
            amz_date = self.headers.get("x-amz-date")
            if amz_date is None:
                raise S3Error(403, "AccessDenied", "AWS authentication requires a valid Date or x-amz-date header")
            payload = self.headers.get("x-amz-content-sha256")
            if payload is None:
                raise S3Error(400, "InvalidRequest", "Missing required header for this request: x-amz-content-sha256")
            t = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
            if abs((now - t).total_seconds()) > 900:
                raise S3Error(403, "RequestTimeTooSkewed", "The difference between the request time and the current time is too large.")
        elif "X-Amz-Signature" in qd:
            form = "presigned"
            if qd.get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256":
                raise S3Error(400, "AuthorizationQueryParametersError", "X-Amz-Algorithm only supports \"AWS4-HMAC-SHA256\"")
            cred, signed, sig = qd["X-Amz-Credential"], qd["X-Amz-SignedHeaders"], qd["X-Amz-Signature"]
            amz_date = qd["X-Amz-Date"]
            expires = int(qd["X-Amz-Expires"])
            if not 1 <= expires <= 604800:
                raise S3Error(400, "AuthorizationQueryParametersError", "X-Amz-Expires must be less than a week (in seconds)")
            t = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
            if now > t + datetime.timedelta(seconds=expires):
                raise S3Error(403, "AccessDenied", "Request has expired")
            payload = "UNSIGNED-PAYLOAD"
        else:
            raise S3Error(403, "AccessDenied", "Access Denied")
        key_id, date, region, service, term = cred.split("/")
        if key_id != st.key_id:
            raise S3Error(403, "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.")
        if service != "s3" or term != "aws4_request" or date != amz_date[:8]:
            raise S3Error(403, "SignatureDoesNotMatch", "credential scope")
        names = signed.split(";")
        if "host" not in names:
            raise S3Error(403, "AccessDenied", "host must be signed")
        # Canonical request (S3: the path encoded once, not normalised).
        canon_uri = enc(unquote_to_bytes(path), True)
        cq = sorted(
            (enc(k, False), enc(v, False)) for k, v in qp if not (form == "presigned" and k == b"X-Amz-Signature")
        )
        canon_query = "&".join(f"{k}={v}" for k, v in cq)
        lines = []
        for n in names:
            vals = self.headers.get_all(n)
            if vals is None:
                raise S3Error(403, "SignatureDoesNotMatch", f"signed header {n} missing")
            lines.append(n + ":" + ",".join(" ".join(v.split()) for v in vals))
        creq = "\n".join([self.command, canon_uri, canon_query, "\n".join(lines) + "\n", signed, payload])
        scope = f"{date}/{region}/{service}/aws4_request"
        sts = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(creq.encode()).hexdigest()])
        key = signing_key(st.secret, date, region, service)
        want = hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(want, sig):
            raise S3Error(403, "SignatureDoesNotMatch", "The request signature we calculated does not match the signature you provided. Check your key and signing method.")
        return form, payload, sig, key, scope, amz_date

    def read_body(self):
        n = int(self.headers.get("Content-Length", "0") or 0)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(n)

    def decode_payload(self, raw, payload, seed, key, scope, amz_date):
        """The object bytes of a verified request, checking what the payload mode binds."""
        if payload == "UNSIGNED-PAYLOAD":
            return raw
        if len(payload) == 64:
            if hashlib.sha256(raw).hexdigest() != payload:
                raise S3Error(400, "XAmzContentSHA256Mismatch", "The provided 'x-amz-content-sha256' header does not match what was computed.")
            return raw
        if payload in ("STREAMING-AWS4-HMAC-SHA256-PAYLOAD", "STREAMING-UNSIGNED-PAYLOAD-TRAILER"):
            signed = payload == "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
            out, pos, prev = b"", 0, seed
            while True:
                nl = raw.index(b"\r\n", pos)
                header = raw[pos:nl].decode()
                size_hex, _, ext = header.partition(";")
                size = int(size_hex, 16)
                data = raw[nl + 2 : nl + 2 + size]
                if len(data) != size:
                    raise S3Error(400, "IncompleteBody", "You did not provide the number of bytes specified by the Content-Length HTTP header")
                if signed:
                    if not ext.startswith("chunk-signature="):
                        raise S3Error(403, "SignatureDoesNotMatch", "chunk without signature")
                    sts = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", amz_date, scope, prev, EMPTY, hashlib.sha256(data).hexdigest()])
                    want = hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()
                    if not hmac.compare_digest(want, ext[len("chunk-signature="):]):
                        raise S3Error(403, "SignatureDoesNotMatch", "The request signature we calculated does not match the signature you provided.")
                    prev = want
                out += data
                if size == 0:
                    rest = raw[nl + 2 :]
                    if signed:
                        if rest != b"\r\n":
                            raise S3Error(400, "IncompleteBody", "bytes after the final chunk")
                    else:
                        trailer = rest.split(b"\r\n")
                        checks = dict(l.decode().split(":", 1) for l in trailer if b":" in l)
                        c = checks.get("x-amz-checksum-crc32")
                        if c is not None:
                            got = binascii.b2a_base64(zlib.crc32(out).to_bytes(4, "big"), newline=False).decode()
                            if got != c.strip():
                                raise S3Error(400, "BadDigest", "The CRC32 you specified did not match the calculated checksum.")
                    break
                pos = nl + 2 + size + 2
            dl = self.headers.get("x-amz-decoded-content-length")
            if dl is not None and int(dl) != len(out):
                raise S3Error(400, "IncompleteBody", "x-amz-decoded-content-length")
            return out
        raise S3Error(400, "InvalidArgument", "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-…, or a valid sha256 value.")

    # --- S3 operations ---
    def handle_any(self):
        st = self.state
        rec = {"method": self.command, "path": self.path.split("?")[0]}
        raw = self.read_body() if self.command in ("PUT", "POST") else b""
        try:
            form, payload, seed, key, scope, amz_date = self.verify(raw)
            rec.update(form=form, payload=payload)
            body = self.decode_payload(raw, payload, seed, key, scope, amz_date)
            status, headers, out = self.operate(body)
        except S3Error as e:
            rec.update(status=e.status, code=e.code)
            st.log(rec)
            xml = f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{e.code}</Code><Message>{escape(e.message)}</Message><RequestId>{uuid.uuid4().hex[:16]}</RequestId></Error>'.encode()
            self.reply(e.status, {"Content-Type": "application/xml"}, xml)
            return
        rec["status"] = status
        st.log(rec)
        self.reply(status, headers, out)

    def reply(self, status, headers, body):
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def operate(self, body):
        st = self.state
        path, _, query = self.path.partition("?")
        q = {k.decode(): v.decode() for k, v in parse_query(query)}
        parts = unquote_to_bytes(path).decode().lstrip("/").split("/", 1)
        bucket, key = parts[0], (parts[1] if len(parts) > 1 else "")
        etag = lambda b: '"%s"' % hashlib.md5(b).hexdigest()
        if self.command == "GET" and not key:
            objs = sorted(k for (b, k) in st.objects if b == bucket and k.startswith(q.get("prefix", "")))
            items = "".join(f"<Contents><Key>{escape(k)}</Key><Size>{len(st.objects[(bucket, k)])}</Size><ETag>{escape(etag(st.objects[(bucket, k)]))}</ETag><LastModified>2026-01-01T00:00:00.000Z</LastModified><StorageClass>STANDARD</StorageClass></Contents>" for k in objs)
            xml = f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>{bucket}</Name><Prefix></Prefix><KeyCount>{len(objs)}</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>{items}</ListBucketResult>'
            return 200, {"Content-Type": "application/xml"}, xml.encode()
        if self.command == "PUT" and "uploadId" in q:
            with st.lock:
                if q["uploadId"] not in st.uploads:
                    raise S3Error(404, "NoSuchUpload", "The specified upload does not exist.")
                st.uploads[q["uploadId"]][int(q["partNumber"])] = body
            return 200, {"ETag": etag(body)}, b""
        if self.command == "PUT":
            with st.lock:
                st.objects[(bucket, key)] = body
            return 200, {"ETag": etag(body)}, b""
        if self.command == "POST" and "uploads" in q:
            uid = uuid.uuid4().hex
            with st.lock:
                st.uploads[uid] = {}
            xml = f'<?xml version="1.0" encoding="UTF-8"?><InitiateMultipartUploadResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Bucket>{bucket}</Bucket><Key>{escape(key)}</Key><UploadId>{uid}</UploadId></InitiateMultipartUploadResult>'
            return 200, {"Content-Type": "application/xml"}, xml.encode()
        if self.command == "POST" and "uploadId" in q:
            with st.lock:
                parts = st.uploads.pop(q["uploadId"], None)
                if parts is None:
                    raise S3Error(404, "NoSuchUpload", "The specified upload does not exist.")
                data = b"".join(parts[n] for n in sorted(parts))
                st.objects[(bucket, key)] = data
            md5s = b"".join(hashlib.md5(parts[n]).digest() for n in sorted(parts))
            xml = f'<?xml version="1.0" encoding="UTF-8"?><CompleteMultipartUploadResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Bucket>{bucket}</Bucket><Key>{escape(key)}</Key><ETag>"{hashlib.md5(md5s).hexdigest()}-{len(parts)}"</ETag></CompleteMultipartUploadResult>'
            return 200, {"Content-Type": "application/xml"}, xml.encode()
        if self.command == "DELETE" and "uploadId" in q:
            with st.lock:
                st.uploads.pop(q["uploadId"], None)
            return 204, {}, b""
        if self.command in ("GET", "HEAD"):
            data = st.objects.get((bucket, key))
            if data is None:
                raise S3Error(404, "NoSuchKey", "The specified key does not exist.")
            h = {"ETag": etag(data), "Last-Modified": "Thu, 01 Jan 2026 00:00:00 GMT", "Content-Type": "binary/octet-stream", "Accept-Ranges": "bytes"}
            rng = self.headers.get("Range")
            if rng and rng.startswith("bytes="):
                a, _, b = rng[6:].partition("-")
                a, b = int(a), min(int(b) if b else len(data) - 1, len(data) - 1)
                h["Content-Range"] = f"bytes {a}-{b}/{len(data)}"
                h["Content-Length"] = str(b - a + 1)
                return 206, h, data[a : b + 1]
            h["Content-Length"] = str(len(data))
            return 200, h, data
        raise S3Error(405, "MethodNotAllowed", "The specified method is not allowed against this resource.")

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = handle_any


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--access-key-id", required=True)
    ap.add_argument("--secret-env", required=True)
    ap.add_argument("--log", required=True)
    a = ap.parse_args()
    Handler.state = State(a.access_key_id, os.environ[a.secret_env], a.log)
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    print(srv.server_address[1], flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
