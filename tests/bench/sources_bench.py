#!/usr/bin/env python3
"""sources_bench.py - `ipnix sources` against its anchors, side by side in one
run (ratios, never asserted times). Run it inside ../shared/peers/sandbox (a
network namespace with only loopback); it needs nginx (Debian package),
curl, sha256sum and a release ipnix:
    cargo build --release -p ipnix-node --bin ipnix
    ../shared/peers/sandbox python3 tests/bench/sources_bench.py

Sections (--sections, default all):
  pin     pin N flat sources (default 200 files, ~1 GB in all) from a loopback
          nginx with `ipnix sources pin --jobs 8`, against `xargs -P8` of
          `curl URL | tee FILE | sha256sum` (download, hash, keep), alternating
          --trials times; medians, the ratio, and ipnix's peak RSS (wait4).
  mirror  GET of one large pinned source (default 500 MB) from the daemon's
          hashed mirror with `curl -o /dev/null`, against nginx `sendfile` of
          the same file, page cache hot, alternating; medians and the ratio.
  rss     peak RSS of `sources pin --jobs 8` of a list of --rss-entries
          (default 20,000) small flat sources.
Every figure is printed with the load average; the upstream is nginx on
127.0.0.1. Files are random bytes (a flat hash does not look inside).
"""

import argparse
import hashlib
import json
import os

# Benchmarks never reach Software Heritage's public archive (DESIGN.md I-34).
os.environ["IPNIX_NO_SWH"] = "1"
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def say(msg):
    print(msg, flush=True)


def load():
    return "%.2f %.2f %.2f" % os.getloadavg()


def run_measured(cmd, env=None, stdout=subprocess.DEVNULL):
    """Runs cmd; returns (seconds, peak RSS in MiB of that process, returncode)."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=stdout, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    took = time.monotonic() - start
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        say(f"  {cmd[0]} exited {code}: {err.strip()[-2000:]}")
    return took, usage.ru_maxrss / 1024.0, code


def write_random(path, size):
    """Writes `size` random bytes; returns their sha256 hex."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left > 0:
            chunk = os.urandom(min(left, 1 << 20))
            f.write(chunk)
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


class Nginx:
    def __init__(self, root, work):
        self.dir = os.path.join(work, "nginx")
        os.makedirs(os.path.join(self.dir, "tmp"), exist_ok=True)
        os.makedirs(os.path.join(self.dir, "logs"), exist_ok=True)
        self.port = free_port()
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(
                f"""daemon off; worker_processes 2; pid {self.dir}/nginx.pid;
error_log {self.dir}/logs/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off; sendfile on; tcp_nopush on; keepalive_requests 100000;
  client_body_temp_path {self.dir}/tmp; proxy_temp_path {self.dir}/tmp;
  fastcgi_temp_path {self.dir}/tmp; uwsgi_temp_path {self.dir}/tmp; scgi_temp_path {self.dir}/tmp;
  server {{ listen 127.0.0.1:{self.port}; root {root}; }}
}}
"""
            )
        self.proc = subprocess.Popen(["nginx", "-c", conf, "-p", self.dir])
        for _ in range(100):
            if subprocess.run(["curl", "-sf", "-o", "/dev/null", self.url("/")]).returncode in (0, 22):
                return
            time.sleep(0.05)
        raise SystemExit("nginx did not start")

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self):
        self.proc.send_signal(signal.SIGQUIT)
        self.proc.wait()


def free_port():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def sources_json(nginx, names, hashes):
    return {
        "version": 1,
        "revision": "bench",
        "sources": [
            {"type": "url", "urls": [nginx.url("/" + n)], "integrity": "sha256:" + h}
            for n, h in zip(names, hashes)
        ],
    }


def start_daemon(ipnix, repo):
    proc = subprocess.Popen(
        [ipnix, "--repo", repo, "daemon", "--http", "127.0.0.1:0", "--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    for line in proc.stdout:
        if "daemon is ready" in line:
            break
    with open(os.path.join(repo, "api")) as f:
        url = f.read().strip()
    return proc, url


def section_pin(args, work, nginx, ipnix):
    files_dir = nginx.root
    size = args.pin_bytes // args.pin_files
    names, hashes = [], []
    for i in range(args.pin_files):
        name = f"pkg-{i}.tar.gz"
        hashes.append(write_random(os.path.join(files_dir, name), size))
        names.append(name)
    list_path = os.path.join(work, "pin.json")
    with open(list_path, "w") as f:
        json.dump(sources_json(nginx, names, hashes), f)
    urls_path = os.path.join(work, "urls.txt")
    with open(urls_path, "w") as f:
        f.write("\n".join(nginx.url("/" + n) for n in names) + "\n")
    total = size * args.pin_files
    ours, anchor, rss = [], [], []
    for trial in range(args.trials):
        repo = tempfile.mkdtemp(prefix="ipnix-pin-", dir=work)
        took, peak, code = run_measured([ipnix, "--repo", repo, "sources", "pin", list_path, "--jobs", "8"])
        assert code == 0, "sources pin failed"
        ours.append(took)
        rss.append(peak)
        shutil.rmtree(repo)
        out = tempfile.mkdtemp(prefix="curl-", dir=work)
        script = f'cd {out} && curl -sf "$1" | tee "$(basename "$1")" | sha256sum > "$(basename "$1").sha256"'
        took, _, code = run_measured(["sh", "-c", f"xargs -P8 -n1 sh -c '{script}' _ < {urls_path}"])
        assert code == 0, "curl anchor failed"
        anchor.append(took)
        shutil.rmtree(out)
        say(f"  trial {trial + 1}: ipnix {ours[-1]:.2f} s (RSS {rss[-1]:.0f} MiB), curl|sha256sum {anchor[-1]:.2f} s; load {load()}")
    a, b = statistics.median(ours), statistics.median(anchor)
    say(
        f"pin {args.pin_files} files, {total / 1e9:.2f} GB, 8 jobs: ipnix {a:.2f} s ({total / a / 1e6:.0f} MB/s), "
        f"xargs -P8 curl|sha256sum {b:.2f} s ({total / b / 1e6:.0f} MB/s): ratio {b / a:.2f}x; "
        f"peak RSS {max(rss):.0f} MiB; medians of {args.trials}; load {load()}"
    )


def section_mirror(args, work, nginx, ipnix):
    name = "big-source.tar.gz"
    path = os.path.join(nginx.root, name)
    digest = write_random(path, args.mirror_bytes)
    repo = tempfile.mkdtemp(prefix="ipnix-mirror-", dir=work)
    subprocess.run(
        [ipnix, "--repo", repo, "sources", "add", "--file", path, "--hash", "sha256:" + digest],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    daemon, url = start_daemon(ipnix, repo)
    try:
        ours, anchor = [], []
        curl = lambda u: run_measured(["curl", "-sf", "-o", "/dev/null", u])  # noqa: E731
        curl(nginx.url("/" + name))
        curl(f"{url}/sha256/{digest}")
        for _ in range(args.trials):
            t, _, code = curl(f"{url}/sha256/{digest}")
            assert code == 0
            ours.append(t)
            t, _, code = curl(nginx.url("/" + name))
            assert code == 0
            anchor.append(t)
        a, b = statistics.median(ours), statistics.median(anchor)
        n = args.mirror_bytes
        say(
            f"hashed mirror GET of {n / 1e6:.0f} MB: ipnix {a:.2f} s ({n / a / 1e6:.0f} MB/s), "
            f"nginx sendfile {b:.2f} s ({n / b / 1e6:.0f} MB/s): ratio {b / a:.2f}x; medians of {args.trials}; load {load()}"
        )
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait()
        shutil.rmtree(repo)


def section_rss(args, work, nginx, ipnix):
    small_dir = os.path.join(nginx.root, "small")
    os.makedirs(small_dir, exist_ok=True)
    names, hashes = [], []
    for i in range(args.rss_entries):
        data = hashlib.sha256(str(i).encode()).digest() * 32
        name = f"small/s-{i}.tar.gz"
        with open(os.path.join(nginx.root, name), "wb") as f:
            f.write(data)
        names.append(name)
        hashes.append(hashlib.sha256(data).hexdigest())
    list_path = os.path.join(work, "rss.json")
    with open(list_path, "w") as f:
        json.dump(sources_json(nginx, names, hashes), f)
    repo = tempfile.mkdtemp(prefix="ipnix-rss-", dir=work)
    took, peak, code = run_measured([ipnix, "--repo", repo, "sources", "pin", list_path, "--jobs", "8"])
    assert code == 0, "sources pin failed"
    say(f"pin of a {args.rss_entries}-entry list, 8 jobs: {took:.1f} s, peak RSS {peak:.0f} MiB (goal < 150); load {load()}")
    shutil.rmtree(repo)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ipnix-bin", default=os.environ.get("IPNIX_BIN", os.path.join(ROOT, "target/release/ipnix")))
    p.add_argument("--sections", default="pin,mirror,rss")
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--pin-files", type=int, default=200)
    p.add_argument("--pin-bytes", type=int, default=1 << 30)
    p.add_argument("--mirror-bytes", type=int, default=500_000_000)
    p.add_argument("--rss-entries", type=int, default=20_000)
    p.add_argument("--work", default="/tmp/ipnix-sources-bench")
    args = p.parse_args()
    for tool in ["nginx", "curl", "sha256sum", "xargs"]:
        if shutil.which(tool) is None:
            raise SystemExit(f"sources_bench: {tool} is missing (apt-get install nginx curl)")
    ipnix = os.path.abspath(args.ipnix_bin)
    if not os.path.exists(ipnix):
        raise SystemExit(f"sources_bench: {ipnix} missing: cargo build --release -p ipnix-node --bin ipnix")
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    served = os.path.join(args.work, "served")
    os.makedirs(served)
    nginx = Nginx(served, args.work)
    nginx.root = served
    say(f"sources_bench: ipnix {ipnix}; load {load()}")
    try:
        sections = args.sections.split(",")
        if "pin" in sections:
            section_pin(args, args.work, nginx, ipnix)
        if "mirror" in sections:
            section_mirror(args, args.work, nginx, ipnix)
        if "rss" in sections:
            section_rss(args, args.work, nginx, ipnix)
    finally:
        nginx.stop()
        shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
