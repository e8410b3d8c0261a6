#!/usr/bin/env python3
"""swh_server.py - a loopback Software Heritage Web API for the SWH tests.

Implements the endpoints of ../shared/SWH-API.md (content, content raw,
ExtID, known, vault flat cooking and the cooked bundle) over objects computed
by the real `swh.model` library (PyPI swh.model, tests/setup-swh.sh) from
real files and tarballs on disk. Binds 127.0.0.1 (the API) and 127.0.0.2
(the "signed URL" host the bundle redirects to) only; dials nothing.

Usage:
    swh_server.py [--tarball FILE]... [--content FILE]... [--contents-list F]
                  [--cook-polls N] [--state-dir DIR]

  --tarball FILE   unpacked (tar, tar.gz/tgz/crate, zip) with its top-level
                   folder kept, as SWH's tarball-directory loader does; every
                   content and directory is archived; ExtIDs (version 1):
                   checksum-sha1/-sha256/-sha512 of the tarball's bytes and
                   nar-sha256 of the tree (one top-level folder stripped, as
                   Nix does) -> the swh:1:dir: of the unpacked tarball.
  --content FILE   archived as a content; ExtIDs checksum-sha1/-sha256/
                   -sha512 of its bytes -> its swh:1:cnt:.
  --contents-list F  more --content files, one path per line.
  --cook-polls N   a cooking task goes new -> pending -> done after N status
                   GETs (default 3).

Prints ONE JSON line on stdout once listening:
    {"ready": true, "port": P, "url": "http://127.0.0.1:P",
     "redirect_host": "127.0.0.2:Q", "objects": {...}, "pid": N}
where "objects" maps every --tarball/--content path to its SWHIDs.

API (always with the trailing slash; without it a 301 adds it; upper-case
hex is 301'd to lower case; errors are {"exception", "reason"}):
    GET  /api/1/content/<algo>:<hex>/         metadata (algo sha1, sha1_git,
                                              sha256, blake2s256)
    GET  /api/1/content/<algo>:<hex>/raw/     the bytes
    GET  /api/1/extid/<type>/hex:<hex>/?extid_version=1
    POST /api/1/known/                        JSON array of SWHIDs (<= 1000,
                                              413 above)
    POST /api/1/vault/flat/<swhid>/           start cooking a directory
    GET  /api/1/vault/flat/<swhid>/           status (404 before any POST)
    GET  /api/1/vault/flat/<swhid>/raw/       302 to http://127.0.0.2:Q/...
    GET  http://127.0.0.2:Q/bundle/<hex>.tar.gz   the bundle (application/gzip)
Every API answer carries X-RateLimit-Limit/-Remaining/-Reset; over the
limit: 429 without Retry-After, {"exception": "Throttled", ...}.

Test control (not rate-limited, not logged):
    POST /_control  JSON, any of: {"rate_limit": N, "rate_window": S,
                    "throttle_next": N (the next N API requests get a 429,
                    as if another client used the budget up),
                    "fail_cook": [swhid], "bad_bundle": [swhid],
                    "cook_polls": N, "reset": true (forget cooking tasks
                    and the log)}
    GET  /_log      {"requests": [{"method", "path", "host", "authorization"}]}

The server exits when its stdin reaches EOF.
"""

import argparse
import gzip
import hashlib
import http.server
import io
import json
import os
import shutil
import stat
import sys
import tarfile
import tempfile
import threading
import time
import urllib.parse
import zipfile

from swh.model.from_disk import Content, Directory
from swh.model.hashutil import MultiHash

API = "/api/1/"


# -- NAR (Nix archive) hash, for the nar-sha256 ExtIDs ----------------------

def _nar_str(out, data):
    out.update(len(data).to_bytes(8, "little"))
    out.update(data)
    pad = (8 - len(data) % 8) % 8
    out.update(b"\0" * pad)


def _nar_node(out, path):
    st = os.lstat(path)
    _nar_str(out, b"(")
    _nar_str(out, b"type")
    if stat.S_ISLNK(st.st_mode):
        _nar_str(out, b"symlink")
        _nar_str(out, b"target")
        _nar_str(out, os.readlink(path))
    elif stat.S_ISREG(st.st_mode):
        _nar_str(out, b"regular")
        if st.st_mode & 0o100:
            _nar_str(out, b"executable")
            _nar_str(out, b"")
        _nar_str(out, b"contents")
        with open(path, "rb") as f:
            data = f.read()
        _nar_str(out, data)
    elif stat.S_ISDIR(st.st_mode):
        _nar_str(out, b"directory")
        for name in sorted(os.listdir(path)):
            _nar_str(out, b"entry")
            _nar_str(out, b"(")
            _nar_str(out, b"name")
            _nar_str(out, name)
            _nar_str(out, b"node")
            _nar_node(out, os.path.join(path, name))
            _nar_str(out, b")")
    else:
        raise ValueError("not in a NAR: %r" % path)
    _nar_str(out, b")")


def nar_sha256(path):
    h = hashlib.sha256()
    _nar_str(h, b"nix-archive-1")
    _nar_node(h, os.fsencode(path))
    return h.hexdigest()


# -- the archive's objects ---------------------------------------------------

def unpack(archive, dest):
    os.makedirs(dest)
    with open(archive, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK"):
        with zipfile.ZipFile(archive) as z:
            z.extractall(dest)
            for info in z.infolist():
                mode = (info.external_attr >> 16) & 0o777
                target = os.path.join(dest, info.filename)
                if mode and not info.is_dir() and os.path.isfile(target):
                    os.chmod(target, mode)
    else:
        with tarfile.open(archive) as t:
            t.extractall(dest, filter="data")


class Archive:
    def __init__(self):
        self.contents = {}     # sha256 hex -> {"path", "hashes", "length"}
        self.by_algo = {}      # (algo, hex) -> sha256 hex
        self.known = set()     # core SWHIDs
        self.dirs = {}         # dir hex -> path on disk (cookable)
        self.extids = {}       # (type, hex) -> swhid
        self.objects = {}      # input path -> description

    def add_content_node(self, node):
        data = node.data
        if data.get("status") != "visible":
            return
        sha256 = data["sha256"].hex()
        if sha256 not in self.contents:
            path = data.get("path")
            if path is None:  # a symlink: its bytes are its target
                blob = data["data"]
            else:
                blob = None
            self.contents[sha256] = {
                "path": path, "data": blob, "length": data["length"],
                "hashes": {a: data[a].hex() for a in
                           ("sha1", "sha1_git", "sha256", "blake2s256")},
            }
            for algo, value in self.contents[sha256]["hashes"].items():
                self.by_algo[(algo, value)] = sha256
        self.known.add(str(node.swhid()))

    def add_tree(self, root):
        directory = Directory.from_disk(path=os.fsencode(root), max_content_length=None)
        for node in directory.iter_tree():
            if isinstance(node, Content):
                self.add_content_node(node)
            else:
                self.known.add(str(node.swhid()))
        self.dirs[directory.hash.hex()] = root
        return directory

    def add_checksums(self, path, swhid):
        out = {}
        with open(path, "rb") as f:
            blob = f.read()
        for algo in ("sha1", "sha256", "sha512"):
            digest = hashlib.new(algo, blob).hexdigest()
            self.extids[("checksum-" + algo, digest)] = swhid
            out[algo] = digest
        return out

    def add_tarball(self, path, work):
        dest = os.path.join(work, "t%d" % len(self.objects))
        unpack(path, dest)
        directory = self.add_tree(dest)
        swhid = str(directory.swhid())
        names = os.listdir(dest)
        nar_root = dest
        if len(names) == 1 and os.path.isdir(os.path.join(dest, names[0])) \
                and not os.path.islink(os.path.join(dest, names[0])):
            nar_root = os.path.join(dest, names[0])
        nar = nar_sha256(nar_root)
        self.extids[("nar-sha256", nar)] = swhid
        checksums = self.add_checksums(path, swhid)
        self.objects[path] = {"kind": "tarball", "swhid": swhid,
                              "nar_sha256": nar, "checksums": checksums}

    def add_content(self, path):
        node = Content.from_file(path=os.fsencode(path), max_content_length=None)
        self.add_content_node(node)
        swhid = str(node.swhid())
        checksums = self.add_checksums(path, swhid)
        self.objects[path] = {"kind": "content", "swhid": swhid,
                              "checksums": checksums}

    def content_bytes(self, sha256):
        entry = self.contents[sha256]
        if entry["data"] is not None:
            return entry["data"]
        with open(entry["path"], "rb") as f:
            return f.read()


def make_bundle(root, swhid, corrupt):
    """The vault's flat bundle: a tar.gz under `swh:1:dir:<hex>/`, root 0700,
    only the executable bit and symlinks kept."""
    top = swhid
    buf = io.BytesIO()
    corrupted = [False]

    def add_dir(tar, name, mode):
        info = tarfile.TarInfo(name)
        info.type = tarfile.DIRTYPE
        info.mode = mode
        info.mtime = 0
        tar.addfile(info)

    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        add_dir(tar, top, 0o700)
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel = os.path.relpath(dirpath, root)
            for name in sorted(dirnames + filenames):
                full = os.path.join(dirpath, name)
                arc = top + "/" + (name if rel == "." else rel + "/" + name)
                st = os.lstat(full)
                if stat.S_ISDIR(st.st_mode):
                    add_dir(tar, arc, 0o755)
                elif stat.S_ISLNK(st.st_mode):
                    info = tarfile.TarInfo(arc)
                    info.type = tarfile.SYMTYPE
                    info.linkname = os.readlink(full)
                    info.mode = 0o777
                    tar.addfile(info)
                elif stat.S_ISREG(st.st_mode):
                    with open(full, "rb") as f:
                        data = f.read()
                    if corrupt and not corrupted[0]:
                        data = data + b"\nnot what was archived\n"
                        corrupted[0] = True
                    info = tarfile.TarInfo(arc)
                    info.size = len(data)
                    info.mode = 0o755 if st.st_mode & 0o100 else 0o644
                    info.mtime = 0
                    tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# -- the server ----------------------------------------------------------------

class State:
    def __init__(self, archive, cook_polls):
        self.lock = threading.Lock()
        self.archive = archive
        self.cook_polls = cook_polls
        self.tasks = {}          # swhid -> {"status", "polls", "id"}
        self.next_task = 1
        self.fail_cook = set()
        self.bad_bundle = set()
        self.rate_limit = None   # requests per window, None = unlimited
        self.rate_window = 2
        self.rate_used = 0
        self.rate_reset = 0
        self.throttle_next = 0   # the next N API requests get a 429
        self.log = []
        self.redirect_host = None

    def take_rate(self):
        """(allowed, limit, remaining, reset) for one API request."""
        with self.lock:
            now = time.time()
            if self.throttle_next > 0:
                self.throttle_next -= 1
                return False, self.rate_limit or 1200, 0, int(now) + 2
            if self.rate_limit is None:
                return True, 1200, 1199, int(now) + 3600
            if now >= self.rate_reset:
                self.rate_used = 0
                self.rate_reset = int(now) + self.rate_window + 1
            if self.rate_used >= self.rate_limit:
                return False, self.rate_limit, 0, self.rate_reset
            self.rate_used += 1
            return True, self.rate_limit, self.rate_limit - self.rate_used, self.rate_reset


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ipnix-test-swh"
    sys_version = ""

    def log_message(self, fmt, *args):
        pass

    @property
    def state(self):
        return self.server.state

    def do_GET(self):
        self.route("GET")

    def do_HEAD(self):
        self.route("HEAD")

    def do_POST(self):
        self.route("POST")

    def body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def send(self, code, body=b"", ctype="application/json", headers=(), rate=None):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if rate is not None:
            _, limit, remaining, reset = rate
            self.send_header("X-RateLimit-Limit", str(limit))
            self.send_header("X-RateLimit-Remaining", str(remaining))
            self.send_header("X-RateLimit-Reset", str(reset))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def json(self, code, value, rate=None, headers=()):
        self.send(code, json.dumps(value).encode(), rate=rate, headers=headers)

    def error(self, code, exception, reason, rate=None):
        self.json(code, {"exception": exception, "reason": reason}, rate=rate)

    def route(self, method):
        parsed = urllib.parse.urlsplit(self.path)
        path, query = parsed.path, urllib.parse.parse_qs(parsed.query)
        local = self.server.server_address[0]
        if path == "/_control" and method == "POST":
            return self.control(json.loads(self.body() or b"{}"))
        if path == "/_log":
            with self.state.lock:
                return self.json(200, {"requests": list(self.state.log)})
        payload = self.body() if method == "POST" else b""
        with self.state.lock:
            self.state.log.append({
                "method": method, "path": self.path, "host": "%s:%d" % (local, self.server.server_address[1]),
                "authorization": self.headers.get("Authorization"),
            })
        if local != "127.0.0.1":
            return self.bundle_host(method, path)
        if not path.startswith(API):
            return self.error(404, "NotFoundExc", "no such endpoint: %s" % path)
        rate = self.state.take_rate()
        if not rate[0]:
            wait = max(0, rate[3] - int(time.time()))
            return self.error(429, "Throttled",
                              "Request was throttled. Expected available in %d seconds." % wait,
                              rate=rate)
        if not path.endswith("/"):
            target = path + "/" + (("?" + parsed.query) if parsed.query else "")
            return self.send(301, b"", headers=[("Location", target)], rate=rate)
        parts = path[len(API):].strip("/").split("/")
        try:
            return self.api(method, parts, query, payload, rate, parsed)
        except KeyError as e:
            return self.error(404, "NotFoundExc", "not found: %s" % e, rate=rate)

    def redirect_lower(self, parsed, rate):
        lowered = parsed.path.lower()
        if lowered != parsed.path:
            target = lowered + (("?" + parsed.query) if parsed.query else "")
            self.send(301, b"", headers=[("Location", target)], rate=rate)
            return True
        return False

    def api(self, method, parts, query, payload, rate, parsed):
        archive = self.state.archive
        if parts[0] == "content" and len(parts) in (2, 3) and method in ("GET", "HEAD"):
            algo, _, value = parts[1].partition(":")
            if algo not in ("sha1", "sha1_git", "sha256", "blake2s256") or not value:
                return self.error(400, "BadInputExc", "bad content query %r" % parts[1], rate=rate)
            if value != value.lower():
                return self.send(301, b"", headers=[("Location", parsed.path.replace(value, value.lower()))], rate=rate)
            sha256 = archive.by_algo.get((algo, value))
            if sha256 is None:
                return self.error(404, "NotFoundExc",
                                  "Content with %s checksum equals to %s not found!" % (algo, value), rate=rate)
            entry = archive.contents[sha256]
            if len(parts) == 3 and parts[2] == "raw":
                return self.send(200, archive.content_bytes(sha256), ctype="application/octet-stream",
                                 headers=[("Content-Disposition", "attachment;filename=content_%s_%s_raw" % (algo, value))],
                                 rate=rate)
            if len(parts) == 3:
                raise KeyError(parts[2])
            return self.json(200, {
                "checksums": entry["hashes"], "length": entry["length"], "status": "visible",
                "swhid": "swh:1:cnt:" + entry["hashes"]["sha1_git"],
                "data_url": "%s%scontent/sha256:%s/raw/" % (self.base(), API, sha256),
            }, rate=rate)
        if parts[0] == "extid" and len(parts) == 3 and method in ("GET", "HEAD"):
            extid_type, encoded = parts[1], parts[2]
            fmt, _, value = encoded.partition(":")
            if fmt != "hex" or not value:
                return self.error(400, "BadInputExc", "only hex: ExtIDs here: %r" % encoded, rate=rate)
            if value != value.lower():
                if self.redirect_lower(parsed, rate):
                    return
            version = query.get("extid_version", ["0"])[0]
            target = archive.extids.get((extid_type, value)) if version == "1" else None
            if target is None:
                return self.error(404, "NotFoundExc",
                                  "ExtID of type %s and value %s not found." % (extid_type, value), rate=rate)
            kind = "directory" if target.startswith("swh:1:dir:") else "content"
            return self.json(200, {
                "extid_type": extid_type, "extid": value, "extid_version": 1,
                "target": target,
                "target_url": "%s%s%s/%s/" % (self.base(), API, kind, target.split(":")[3]),
            }, rate=rate)
        if parts == ["known"] and method == "POST":
            try:
                swhids = json.loads(payload)
                assert isinstance(swhids, list)
            except Exception:
                return self.error(400, "BadInputExc", "a JSON array of SWHIDs", rate=rate)
            if len(swhids) > 1000:
                return self.error(413, "LargePayloadExc",
                                  "The maximum number of SWHIDs this endpoint can receive is 1000", rate=rate)
            for s in swhids:
                if not isinstance(s, str) or not s.startswith("swh:1:") or len(s) != 50:
                    return self.error(400, "BadInputExc", "Invalid SWHID: %r" % (s,), rate=rate)
            return self.json(200, {s: {"known": s in archive.known} for s in swhids}, rate=rate)
        if parts[:2] == ["vault", "flat"] and len(parts) in (3, 4):
            swhid = parts[2]
            if not swhid.startswith("swh:1:dir:"):
                return self.error(400, "BadInputExc", "only directories here: %r" % swhid, rate=rate)
            if swhid != swhid.lower():
                if self.redirect_lower(parsed, rate):
                    return
            hexid = swhid.split(":")[3]
            if hexid not in archive.dirs:
                return self.error(404, "NotFoundExc", "Cannot find directory %s." % swhid, rate=rate)
            if len(parts) == 4:
                if parts[3] != "raw" or method not in ("GET", "HEAD"):
                    raise KeyError(parts[3])
                with self.state.lock:
                    task = self.state.tasks.get(swhid)
                    done = task is not None and task["status"] == "done"
                if not done:
                    return self.error(404, "NotFoundExc", "Cooked archive for %s not found." % swhid, rate=rate)
                location = "http://%s/bundle/%s.tar.gz?signature=test" % (self.state.redirect_host, hexid)
                return self.send(302, b"", headers=[("Location", location)], rate=rate)
            with self.state.lock:
                task = self.state.tasks.get(swhid)
                if method == "POST":
                    if task is None or task["status"] == "failed":
                        task = {"status": "new", "polls": 0, "id": self.state.next_task}
                        self.state.next_task += 1
                        self.state.tasks[swhid] = task
                elif task is None:
                    return self.error(404, "NotFoundExc", "Cooking of %s was never requested." % swhid, rate=rate)
                else:
                    task["polls"] += 1
                    if task["status"] in ("new", "pending"):
                        if task["polls"] >= self.state.cook_polls:
                            task["status"] = "failed" if swhid in self.state.fail_cook else "done"
                        else:
                            task["status"] = "pending"
                answer = {
                    "fetch_url": "%s%svault/flat/%s/raw/" % (self.base(), API, swhid),
                    "progress_message": {"new": None, "pending": "Processing...",
                                         "done": None,
                                         "failed": "Internal Server Error. This incident will be reported."}[task["status"]],
                    "id": task["id"], "status": task["status"], "swhid": swhid,
                }
            return self.json(200, answer, rate=rate)
        return self.error(404, "NotFoundExc", "no such endpoint: /%s/" % "/".join(parts), rate=rate)

    def bundle_host(self, method, path):
        prefix = "/bundle/"
        if not (path.startswith(prefix) and path.endswith(".tar.gz")):
            return self.send(404, b"not here\n", ctype="text/plain")
        hexid = path[len(prefix):-len(".tar.gz")]
        root = self.state.archive.dirs.get(hexid)
        if root is None:
            return self.send(404, b"not here\n", ctype="text/plain")
        swhid = "swh:1:dir:" + hexid
        with self.state.lock:
            corrupt = swhid in self.state.bad_bundle
        body = make_bundle(root, swhid, corrupt)
        return self.send(200, body, ctype="application/gzip")

    def base(self):
        host, port = self.server.server_address[:2]
        return "http://%s:%d" % (host, port)

    def control(self, cfg):
        s = self.state
        with s.lock:
            if "rate_limit" in cfg:
                s.rate_limit = cfg["rate_limit"]
                s.rate_used = 0
                s.rate_reset = 0
            if "rate_window" in cfg:
                s.rate_window = cfg["rate_window"]
            if "fail_cook" in cfg:
                s.fail_cook = set(cfg["fail_cook"])
            if "bad_bundle" in cfg:
                s.bad_bundle = set(cfg["bad_bundle"])
            if "throttle_next" in cfg:
                s.throttle_next = cfg["throttle_next"]
            if "cook_polls" in cfg:
                s.cook_polls = cfg["cook_polls"]
            if cfg.get("reset"):
                s.tasks.clear()
                s.log.clear()
        self.json(200, {"ok": True})


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tarball", action="append", default=[])
    ap.add_argument("--content", action="append", default=[])
    ap.add_argument("--contents-list")
    ap.add_argument("--cook-polls", type=int, default=3)
    ap.add_argument("--state-dir")
    args = ap.parse_args()
    work = args.state_dir or tempfile.mkdtemp(prefix="swh-server-")
    archive = Archive()
    for path in args.tarball:
        archive.add_tarball(os.path.abspath(path), work)
    contents = list(args.content)
    if args.contents_list:
        with open(args.contents_list) as f:
            contents.extend(line.strip() for line in f if line.strip())
    for path in contents:
        archive.add_content(os.path.abspath(path))
    state = State(archive, args.cook_polls)
    api = Server(("127.0.0.1", 0), Handler)
    api.state = state
    bundles = Server(("127.0.0.2", 0), Handler)
    bundles.state = state
    state.redirect_host = "127.0.0.2:%d" % bundles.server_address[1]
    for srv in (api, bundles):
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    port = api.server_address[1]
    print(json.dumps({"ready": True, "port": port, "url": "http://127.0.0.1:%d" % port,
                      "redirect_host": state.redirect_host, "objects": archive.objects,
                      "pid": os.getpid()}), flush=True)
    try:
        while sys.stdin.buffer.read(4096):
            pass
    finally:
        if not args.state_dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
