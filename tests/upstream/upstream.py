#!/usr/bin/env python3
"""upstream.py - a loopback "upstream" for the sources tests: serves a
directory over HTTP and HTTPS on 127.0.0.1 and misbehaves on request.

Usage:
    upstream.py --root DIR [--http-port N] [--https-port N] [--state-dir DIR]
                [--stall-seconds S] [--slow-rate BYTES_PER_SECOND]

Ports 0 (the default) let the kernel choose. Once both listeners are up it
prints ONE JSON line on stdout and nothing else there afterwards:
    {"ready": true, "http_port": P, "https_port": Q, "ca": "/…/ca.pem",
     "root": "/…", "pid": N}
The HTTPS certificate (127.0.0.1 and localhost) is signed by a throwaway
test CA made with the `openssl` CLI at start-up in --state-dir (default: a
fresh temp dir); give clients the "ca" file. Python 3 stdlib only.

Paths (NAME is a file under --root, URL-decoded, never outside it; the same
on both schemes; a query string is ignored):
    /f/NAME              the file: GET/HEAD, Content-Length, single Range
                         (206/416), Accept-Ranges, ETag, Last-Modified
    /404/…               404
    /status/CODE/…       answers with that status (e.g. 500, 503, 403)
    /flaky/K/NAME        503 for the first K requests of this path, then the file
    /redirect/N/NAME     302 to /redirect/N-1/NAME; /redirect/0/NAME is the file
    /redirect-loop/NAME  302 to itself, forever
    /to-http/NAME        302 to http://127.0.0.1:<http>/f/NAME   (https -> http)
    /to-https/NAME       302 to https://127.0.0.1:<https>/f/NAME (http -> https)
    /stall/NAME          headers (full length), half the body, then silence
                         for --stall-seconds (default 600); also for ranges
    /stall-once/NAME     the first request of this path stalls, later ones
                         are served (a retry or Range resume succeeds)
    /hang/NAME           accepts, reads the request, sends nothing
    /cut/NAME            without Range: headers (full length), half the
                         body, connection closed; with Range: served normally
    /mutate/NAME         the file with one byte changed (upstream changed
                         the tarball): same length, different hash
    /slow/NAME           the file at --slow-rate bytes/s (default 1 MiB/s)
    /_stats              JSON request counts: {"requests": {path: n},
                         "by_method": {"GET /f/x": n}, "total": n}
                         (/_stats itself is not counted)
    /_reset              clears the counts
    /_die                the process exits at once (tests may also just kill it)

The server exits when its stdin reaches EOF, so a test harness that dies
without cleaning up does not leave it running.
"""

import argparse
import email.utils
import http.server
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

CHUNK = 64 * 1024


def make_ca_and_cert(state_dir):
    """A test CA and a server certificate for 127.0.0.1/localhost signed by it."""
    ca_key = os.path.join(state_dir, "ca.key")
    ca_pem = os.path.join(state_dir, "ca.pem")
    key = os.path.join(state_dir, "server.key")
    csr = os.path.join(state_dir, "server.csr")
    cert = os.path.join(state_dir, "server.pem")
    ext = os.path.join(state_dir, "server.ext")

    def openssl(*args):
        subprocess.run(["openssl", *args], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", ca_key, "-out", ca_pem, "-days", "3",
            "-subj", "/CN=ipnix test CA (loopback upstream)",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl("req", "-new", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=localhost")
    with open(ext, "w") as f:
        f.write("basicConstraints=critical,CA:FALSE\n"
                "keyUsage=critical,digitalSignature\n"
                "extendedKeyUsage=serverAuth\n"
                "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", csr, "-CA", ca_pem, "-CAkey", ca_key,
            "-set_serial", str(int.from_bytes(os.urandom(8), "big")),
            "-days", "2", "-out", cert, "-extfile", ext)
    return ca_pem, cert, key


class Counters:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = {}
        self.by_method = {}
        self.total = 0

    def count(self, method, path):
        with self.lock:
            self.requests[path] = self.requests.get(path, 0) + 1
            key = f"{method} {path}"
            self.by_method[key] = self.by_method.get(key, 0) + 1
            self.total += 1
            return self.requests[path]

    def snapshot(self):
        with self.lock:
            return {"requests": dict(self.requests), "by_method": dict(self.by_method),
                    "total": self.total}

    def reset(self):
        with self.lock:
            self.requests.clear()
            self.by_method.clear()
            self.total = 0


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ipnix-test-upstream"
    sys_version = ""

    def log_message(self, fmt, *args):
        if self.server.config.verbose:
            sys.stderr.write("upstream: %s\n" % (fmt % args))

    # -- plumbing -----------------------------------------------------------

    def do_HEAD(self):
        self.route(head=True)

    def do_GET(self):
        self.route(head=False)

    def send_simple(self, code, body=b"", headers=()):
        self.send_response(code)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not self.head:
            self.wfile.write(body)

    def redirect(self, location):
        self.send_simple(302, b"redirect\n", [("Location", location)])

    def file_path(self, name):
        root = self.server.config.root
        path = os.path.realpath(os.path.join(root, name))
        if not name or not path.startswith(root + os.sep) or not os.path.isfile(path):
            return None
        return path

    def load(self, name):
        path = self.file_path(name)
        if path is None:
            self.send_simple(404, b"no such file\n")
        return path

    # -- routing ------------------------------------------------------------

    def route(self, head):
        self.head = head
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        config = self.server.config
        if path == "/_stats":
            body = json.dumps(config.counters.snapshot()).encode()
            return self.send_simple(200, body, [("Cache-Control", "no-store")])
        if path == "/_reset":
            config.counters.reset()
            return self.send_simple(200, b"reset\n")
        if path == "/_die":
            os._exit(0)
        seen = config.counters.count(self.command, path)

        parts = path.lstrip("/").split("/", 1)
        kind, rest = parts[0], parts[1] if len(parts) > 1 else ""
        if kind == "f":
            return self.serve(rest)
        if kind == "404":
            return self.send_simple(404, b"not found\n")
        if kind == "status":
            code, _, _ = rest.partition("/")
            if not code.isdigit() or not 200 <= int(code) <= 599:
                return self.send_simple(400, b"bad status\n")
            return self.send_simple(int(code), f"status {code}\n".encode())
        if kind == "flaky":
            count, _, name = rest.partition("/")
            if not count.isdigit():
                return self.send_simple(400, b"bad count\n")
            if seen <= int(count):
                return self.send_simple(503, b"try again\n", [("Retry-After", "0")])
            return self.serve(name)
        if kind == "redirect":
            hops, _, name = rest.partition("/")
            if not hops.isdigit():
                return self.send_simple(400, b"bad hop count\n")
            if int(hops) == 0:
                return self.serve(name)
            return self.redirect(f"/redirect/{int(hops) - 1}/{urllib.parse.quote(name)}")
        if kind == "redirect-loop":
            return self.redirect(f"/redirect-loop/{urllib.parse.quote(rest)}")
        if kind == "to-http":
            return self.redirect(
                f"http://127.0.0.1:{config.http_port}/f/{urllib.parse.quote(rest)}")
        if kind == "to-https":
            return self.redirect(
                f"https://127.0.0.1:{config.https_port}/f/{urllib.parse.quote(rest)}")
        if kind == "stall":
            return self.serve(rest, stall=True)
        if kind == "stall-once":
            return self.serve(rest, stall=(seen == 1))
        if kind == "hang":
            time.sleep(config.stall_seconds)
            self.close_connection = True
            return None
        if kind == "cut":
            return self.serve(rest, cut=self.headers.get("Range") is None)
        if kind == "mutate":
            return self.serve(rest, mutate=True)
        if kind == "slow":
            return self.serve(rest, rate=config.slow_rate)
        return self.send_simple(404, b"unknown route\n")

    # -- the file -----------------------------------------------------------

    def serve(self, name, stall=False, cut=False, mutate=False, rate=None):
        path = self.load(name)
        if path is None:
            return None
        size = os.path.getsize(path)
        stat = os.stat(path)
        etag = '"%x-%x"' % (stat.st_size, int(stat.st_mtime))
        if mutate:
            etag = '"mutated-%x"' % stat.st_size
        start, end = 0, size  # [start, end)
        status = 200
        range_header = self.headers.get("Range")
        if range_header is not None:
            parsed = parse_range(range_header, size)
            if parsed == "invalid":
                parsed = None  # ignore a malformed Range, as servers do
            if parsed == "unsatisfiable":
                return self.send_simple(416, b"range not satisfiable\n",
                                        [("Content-Range", f"bytes */{size}")])
            if parsed is not None:
                start, end = parsed
                status = 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", email.utils.formatdate(stat.st_mtime, usegmt=True))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        if cut:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.head:
            return None
        # Changes the middle byte of the whole file (wherever a range falls).
        flip = size // 2 if mutate and size > 0 else None
        limit = end
        if stall or cut:
            limit = start + (end - start) // 2
        with open(path, "rb") as f:
            f.seek(start)
            pos = start
            while pos < limit:
                want = min(CHUNK, limit - pos)
                if rate:
                    want = min(want, max(1, rate // 20))
                data = f.read(want)
                if not data:
                    break
                if flip is not None and pos <= flip < pos + len(data):
                    buf = bytearray(data)
                    buf[flip - pos] ^= 0x01
                    data = bytes(buf)
                self.wfile.write(data)
                pos += len(data)
                if rate:
                    self.wfile.flush()
                    time.sleep(len(data) / rate)
        self.wfile.flush()
        if stall:
            time.sleep(self.server.config.stall_seconds)
            self.close_connection = True
        if cut:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return None


def parse_range(header, size):
    """One `bytes=a-b`, `bytes=a-` or `bytes=-n` range as [start, end), or
    "invalid" (ignored) or "unsatisfiable" (416)."""
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        return "invalid"
    first, sep, last = spec.strip().partition("-")
    if not sep:
        return "invalid"
    try:
        if first == "":
            n = int(last)
            if n <= 0:
                return "unsatisfiable"
            return (max(0, size - n), size)
        start = int(first)
        end = size - 1 if last == "" else min(int(last), size - 1)
    except ValueError:
        return "invalid"
    if start >= size or end < start:
        return "unsatisfiable"
    return (start, end + 1)


class Config:
    pass


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address, config, tls=None):
        self.config = config
        self.tls = tls
        super().__init__(address, Handler)

    def finish_request(self, request, client_address):
        # The TLS handshake runs here, in the request's own thread, so a
        # client that connects and never speaks cannot block the accept loop.
        if self.tls is not None:
            try:
                request.settimeout(30)
                request = self.tls.wrap_socket(request, server_side=True)
                request.settimeout(None)
            except (ssl.SSLError, OSError):
                return
        super().finish_request(request, client_address)

    def handle_error(self, request, client_address):
        # Clients that hang up mid-body are the point of this server.
        if self.config.verbose:
            super().handle_error(request, client_address)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--http-port", type=int, default=0)
    ap.add_argument("--https-port", type=int, default=0)
    ap.add_argument("--state-dir")
    ap.add_argument("--stall-seconds", type=float, default=600.0)
    ap.add_argument("--slow-rate", type=int, default=1 << 20)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()

    config = Config()
    config.root = os.path.realpath(args.root)
    config.counters = Counters()
    config.stall_seconds = args.stall_seconds
    config.slow_rate = max(1, args.slow_rate)
    config.verbose = args.verbose
    if not os.path.isdir(config.root):
        sys.exit(f"upstream: --root {args.root} is not a directory")

    state_dir = args.state_dir or tempfile.mkdtemp(prefix="ipnix-upstream-")
    os.makedirs(state_dir, exist_ok=True)
    ca_pem, cert, key = make_ca_and_cert(state_dir)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    tls.set_alpn_protocols(["http/1.1"])

    http_server = Server(("127.0.0.1", args.http_port), config)
    https_server = Server(("127.0.0.1", args.https_port), config, tls=tls)
    config.http_port = http_server.server_address[1]
    config.https_port = https_server.server_address[1]
    for server in (http_server, https_server):
        threading.Thread(target=server.serve_forever, daemon=True).start()

    print(json.dumps({"ready": True, "http_port": config.http_port,
                      "https_port": config.https_port, "ca": ca_pem,
                      "root": config.root, "pid": os.getpid()}), flush=True)

    # Lives as long as whoever started it holds our stdin open.
    try:
        while sys.stdin.buffer.read(4096):
            pass
    except (OSError, KeyboardInterrupt):
        pass
    if args.state_dir is None:
        shutil.rmtree(state_dir, ignore_errors=True)
    os._exit(0)


if __name__ == "__main__":
    main()
