#!/usr/bin/env python3
"""LAN sharing benchmark (issue 5): a signed closure of at least 500 MiB on
host A, substituted on host B through B's own ipnix (which finds A by mDNS),
against `nix copy` from A's nginx static cache over the same veth link; and
narinfo latency on B for a path held by A (hit) and for a path nobody has
(miss).

Hosts are network namespaces joined by a bridge, made and deleted here; run
as root inside ../shared/peers/sandbox so nothing leaves the machine:

    sandbox python3 tests/bench/lan_bench.py [--mib 512] [--trials 3]

IPNIX_BIN selects the binary (default target/release/ipnix);
LAN_BENCH_PERF=FILE records a `perf` profile of both daemons during each
ipnix copy (the last one stays in FILE). Needs Nix
(../shared/peers/setup-nix.sh) and nginx (installed here from Debian if
missing). Prints a table with medians and the ratio ipnix / static cache.
"""

import argparse
import json
import os

# Benchmarks never reach Software Heritage's public archive (DESIGN.md I-34).
os.environ["IPNIX_NO_SWH"] = "1"
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TAG = f"ipb{os.getpid() % 100000}"
SUBNET = "10.213.7"
NGINX_PORT = 8080

CLOSURE_NIX = r"""{ salt, files, fileMib, blobs }:
let
  blob = i: derivation {
    name = "lan-bench-blob-${toString i}-${salt}";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    PATH = "/usr/bin:/bin";
    args = [ "-c" ''
      mkdir -p $out/data
      i=0
      while [ $i -lt ${toString files} ]; do
        head -c $(( ${toString fileMib} * 1048576 + i * 4097 )) /dev/urandom > $out/data/f$i
        i=$((i + 1))
      done
      echo ${salt} > $out/salt
    '' ];
  };
  deps = builtins.genList blob blobs;
in derivation {
  name = "lan-bench-top-${salt}";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  PATH = "/usr/bin:/bin";
  args = [ "-c" "mkdir $out; for d in ${toString deps}; do echo $d >> $out/refs; done" ];
}
"""


def run(cmd, check=True, **kw):
    out = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if check and out.returncode != 0:
        sys.exit(f"lan_bench: {' '.join(map(str, cmd))} failed: {out.stderr.strip()}")
    return out


def ns_cmd(ns, *cmd):
    return ["ip", "netns", "exec", ns, *cmd]


class Lan:
    def __init__(self, n):
        self.switch = f"{TAG}-sw"
        self.hosts = [f"{TAG}-h{i}" for i in range(n)]
        run(["ip", "netns", "add", self.switch])
        run(["ip", "-n", self.switch, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"])
        run(["ip", "-n", self.switch, "link", "set", "br0", "up"])
        for i, host in enumerate(self.hosts):
            run(["ip", "netns", "add", host])
            run(["ip", "-n", host, "link", "add", "eth0", "type", "veth", "peer", "name", f"p{i}", "netns", self.switch])
            run(["ip", "-n", self.switch, "link", "set", f"p{i}", "master", "br0", "up"])
            run(["ip", "-n", host, "addr", "add", f"{SUBNET}.{i + 1}/24", "dev", "eth0"])
            run(["ip", "-n", host, "link", "set", "eth0", "up"])
            run(["ip", "-n", host, "link", "set", "lo", "up"])

    def addr(self, i):
        return f"{SUBNET}.{i + 1}"

    def close(self):
        for ns in self.hosts + [self.switch]:
            pids = run(["ip", "netns", "pids", ns], check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            run(["ip", "netns", "del", ns], check=False)


LISTEN = {
    "both": [],
    "tcp": ["--listen", "/ip4/0.0.0.0/tcp/4801"],
    "quic": ["--listen", "/ip4/0.0.0.0/udp/4801/quic-v1"],
}


class Daemon:
    transport = "both"

    def __init__(self, bin_path, ns, repo):
        self.bin, self.ns, self.repo = bin_path, ns, repo
        self.log = open(repo.parent / f"{repo.name}.log", "w")
        self.proc = subprocess.Popen(
            # --share-paths: A answers B's path-info questions (off by default
            # without a swarm key).
            ns_cmd(ns, str(bin_path), "--repo", str(repo), "daemon", "--share-paths",
                   *LISTEN[self.transport]),
            stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.peer_id = None
        for line in self.proc.stdout:
            if line.startswith("peer identity: "):
                self.peer_id = line.split(": ", 1)[1].strip()
            if "daemon is ready" in line:
                break
        else:
            sys.exit(f"lan_bench: daemon in {ns} did not start; see {self.log.name}")
        self.port = int((repo / "api").read_text().strip().rsplit(":", 1)[1])

    def cli(self, *args):
        return run(ns_cmd(self.ns, str(self.bin), "--repo", str(self.repo), *args))

    def wait_for_peer(self, peer_id, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            peers = json.loads(self.cli("peers", "--json").stdout or "{}").get("peers", [])
            if any(p.get("peer_id") == peer_id for p in peers):
                return
            time.sleep(0.2)
        sys.exit(f"lan_bench: {self.ns} did not find {peer_id} by mDNS")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def nix_env(work):
    env = dict(os.environ)
    env["TMPDIR"] = str(work / "tmp")
    env["XDG_CACHE_HOME"] = str(work / "xdg")
    # No substituter unless a command names one (`--option` wins over this).
    env["NIX_CONFIG"] = "substituters =\ntrusted-substituters ="
    env.pop("NIX_REMOTE", None)
    return env


def fresh_nix_cache(work):
    shutil.rmtree(work / "xdg", ignore_errors=True)
    (work / "xdg").mkdir()


def cpu_seconds(pid):
    """User + system CPU seconds a live process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed_copy(ns, url, store, top, pubkey, env, work, daemons=()):
    """Seconds for one `nix copy`, and CPU seconds spent by Nix and by each
    of `daemons` while it ran."""
    fresh_nix_cache(work)
    cmd = ns_cmd(ns, "nix", "copy", "--from", url, "--to", str(store), top,
                 "--option", "substituters", "", "--option", "trusted-public-keys", pubkey)
    before = [cpu_seconds(d.proc.pid) for d in daemons]
    perf = None
    if daemons and os.environ.get("LAN_BENCH_PERF"):
        # A CPU profile of the daemons during this copy, for `perf report -i`.
        perf = subprocess.Popen(["perf", "record", "-F", "999", "-o", os.environ["LAN_BENCH_PERF"],
                                 "-p", ",".join(str(d.proc.pid) for d in daemons)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
    children = os.times()
    started = time.monotonic()
    run(cmd, env=env)
    elapsed = time.monotonic() - started
    if perf:
        perf.send_signal(signal.SIGINT)
        perf.wait()
    after = os.times()
    nix_cpu = (after.children_user - children.children_user) + (after.children_system - children.children_system)
    cpu = [cpu_seconds(d.proc.pid) - b for d, b in zip(daemons, before)]
    shutil.rmtree(store, ignore_errors=True)
    return elapsed, nix_cpu, cpu


def curl_time(ns, url):
    out = run(ns_cmd(ns, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{time_total}", url))
    code, seconds = out.stdout.split()
    return int(code), float(seconds)


def nix32_random():
    return "".join(random.choice("0123456789abcdfghijklmnpqrsvwxyz") for _ in range(32))


def start_nginx(lan, cache_dir, work):
    if not shutil.which("nginx") and not Path("/usr/sbin/nginx").exists():
        run(["apt-get", "install", "-y", "-q", "nginx"], env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    conf = work / "nginx.conf"
    conf.write_text(f"""
user root; daemon off; worker_processes 2; pid {work}/nginx.pid; error_log {work}/nginx.err;
events {{ worker_connections 256; }}
http {{
  access_log off; sendfile on; tcp_nopush on;
  types {{ text/x-nix-narinfo narinfo; application/x-nix-nar nar; }}
  client_body_temp_path {work}/ngx-body; proxy_temp_path {work}/ngx-proxy;
  fastcgi_temp_path {work}/ngx-fcgi; uwsgi_temp_path {work}/ngx-uwsgi; scgi_temp_path {work}/ngx-scgi;
  server {{ listen {lan.addr(0)}:{NGINX_PORT}; root {cache_dir}; }}
}}
""")
    proc = subprocess.Popen(ns_cmd(lan.hosts[0], "nginx", "-c", str(conf)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return proc


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=512, help="closure size (MiB, at least 500 for the issue)")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--narinfo-samples", type=int, default=20)
    parser.add_argument("--transport", choices=sorted(LISTEN), default="both",
                        help="what the daemons listen on (default: TCP and QUIC, as shipped)")
    args = parser.parse_args()
    Daemon.transport = args.transport
    if os.geteuid() != 0:
        sys.exit("lan_bench: needs root (network namespaces)")
    bin_path = Path(os.environ.get("IPNIX_BIN", ROOT / "target/release/ipnix")).resolve()
    if not bin_path.exists():
        sys.exit(f"lan_bench: no ipnix binary at {bin_path} (cargo build --release -p ipnix-node)")

    work = Path(tempfile.mkdtemp(prefix="ipnix-lan-bench-"))
    for sub in ["tmp", "xdg"]:
        (work / sub).mkdir()
    env = nix_env(work)
    blobs, files = 4, 8
    file_mib = max(1, args.mib // (blobs * files))
    (work / "closure.nix").write_text(CLOSURE_NIX)
    salt = f"s{random.getrandbits(64):016x}"
    print(f"building a {blobs * files * file_mib} MiB closure ({blobs} paths of {files} files) ...", flush=True)
    top = run(["nix-build", str(work / "closure.nix"), "--argstr", "salt", salt,
               "--arg", "files", str(files), "--arg", "fileMib", str(file_mib), "--arg", "blobs", str(blobs),
               "--no-out-link", "--option", "substituters", ""], env=env).stdout.split()[-1]
    closure = run(["nix-store", "-qR", top], env=env).stdout.split()
    nar_bytes = sum(json.loads(run(["nix", "path-info", "--json", p], env=env).stdout)[0]["narSize"] for p in closure)
    run(["nix-store", "--generate-binary-cache-key", "lan-bench-1", str(work / "sk"), str(work / "pk")], env=env)
    pubkey = (work / "pk").read_text().strip()
    run(["nix", "store", "sign", "-r", "--key-file", str(work / "sk"), top], env=env)
    cache_dir = work / "cache"
    run(["nix", "copy", "--to", f"file://{cache_dir}?compression=none", top,
         "--option", "substituters", ""], env=env)

    lan = Lan(2)
    daemons = []
    try:
        nginx = start_nginx(lan, cache_dir, work)
        a = Daemon(bin_path, lan.hosts[0], work / "repo-a")
        daemons.append(a)
        a.cli("nix", "import", "--closure", top)
        static_times, ipnix_times, hits, misses = [], [], [], []
        for trial in range(args.trials):
            seconds, static_nix_cpu, _ = timed_copy(lan.hosts[1], f"http://{lan.addr(0)}:{NGINX_PORT}",
                                                   work / f"store-static-{trial}", top, pubkey, env, work)
            static_times.append(seconds)
            # A fresh B each time: nothing of the closure is local to it.
            repo_b = work / f"repo-b-{trial}"
            b = Daemon(bin_path, lan.hosts[1], repo_b)
            daemons.append(b)
            b.wait_for_peer(a.peer_id)
            seconds, nix_cpu, (a_cpu, b_cpu) = timed_copy(lan.hosts[1], f"http://127.0.0.1:{b.port}",
                                                          work / f"store-ipnix-{trial}", top, pubkey, env, work,
                                                          daemons=(a, b))
            ipnix_times.append(seconds)
            b.stop()
            daemons.remove(b)
            shutil.rmtree(repo_b, ignore_errors=True)
            print(f"trial {trial + 1}: static {static_times[-1]:.2f} s (nix {static_nix_cpu:.2f} cpu-s), "
                  f"ipnix {ipnix_times[-1]:.2f} s (nix {nix_cpu:.2f}, A {a_cpu:.2f}, B {b_cpu:.2f} cpu-s)", flush=True)
        # narinfo latency on a fresh B: first requests for paths A holds, and misses.
        b = Daemon(bin_path, lan.hosts[1], work / "repo-b-latency")
        daemons.append(b)
        b.wait_for_peer(a.peer_id)
        for path in closure:
            code, seconds = curl_time(lan.hosts[1], f"http://127.0.0.1:{b.port}/{Path(path).name[:32]}.narinfo")
            assert code == 200, f"narinfo hit: HTTP {code}"
            hits.append(seconds)
        for _ in range(args.narinfo_samples):
            code, seconds = curl_time(lan.hosts[1], f"http://127.0.0.1:{b.port}/{nix32_random()}.narinfo")
            assert code == 404, f"narinfo miss: HTTP {code}"
            misses.append(seconds)
        nginx.terminate()
    finally:
        for d in daemons:
            d.stop()
        lan.close()

    mib = nar_bytes / 2**20
    static, ours = statistics.median(static_times), statistics.median(ipnix_times)
    print()
    print(f"closure: {len(closure)} paths, {mib:.0f} MiB of NARs; {args.trials} trials (medians); "
          f"transport {args.transport}; load {os.getloadavg()[0]:.1f}")
    print(f"| nix copy A -> B over veth | seconds | MiB/s | ratio |")
    print(f"|---|---|---|---|")
    print(f"| nginx static cache on A | {static:.2f} | {mib / static:.0f} | 1.00 |")
    print(f"| B's ipnix (fetching from A) | {ours:.2f} | {mib / ours:.0f} | {static / ours:.2f}x |")
    print(f"narinfo on B, hit held by A (first request): median {statistics.median(hits) * 1000:.1f} ms, max {max(hits) * 1000:.1f} ms")
    print(f"narinfo on B, miss: median {statistics.median(misses) * 1000:.1f} ms, max {max(misses) * 1000:.1f} ms (goal: within 100 ms)")
    if not os.environ.get("LAN_BENCH_KEEP"):
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"kept {work}")


if __name__ == "__main__":
    main()
