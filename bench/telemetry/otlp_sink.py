#!/usr/bin/env python3
"""A minimal OTLP/HTTP sink for the telemetry benchmark: answers every POST 200 with an empty
(protobuf) ExportTraceServiceResponse and counts requests and bytes (printed on SIGTERM)."""
import http.server
import signal
import sys

stats = {"requests": 0, "bytes": 0}


class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        n = int(self.headers.get("content-length", 0))
        self.rfile.read(n)
        stats["requests"] += 1
        stats["bytes"] += n
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def stop(*_):
    print(f"OTLP sink: {stats['requests']} export requests, {stats['bytes'] / 1e6:.1f} MB", flush=True)
    sys.exit(0)


signal.signal(signal.SIGTERM, stop)
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
