#!/usr/bin/env python3
"""Soak: an `ipnix daemon` under honest load and a hostile peer (issue 17 item 6).

  cargo build -p ipnix-node --bin ipnix --example hostile_peer   (or --release)
  /work/shared/peers/sandbox python3 tests/bench/soak.py [--minutes 20] [--seed 1]
      [--ipnix-bin PATH] [--hostile-bin PATH] [--closure /nix/store/...]
      [--kubo-mib 64] [--json-out FILE]

One daemon (loopback TCP, HTTP on 127.0.0.1, no mDNS, `--sign-key`) with a Nix
closure imported (`ipnix nix import --closure`) serves, all at once:
  * two `nix copy --from http://daemon` clients, each in a loop into a fresh
    chroot store; every copy is checked path by path against the source store
    (`nix store dump-path` sha256 == `nix-store --dump` sha256) and with
    `nix store verify -r` trusting only the daemon's key;
  * a Kubo peer (the shared ../shared/peers/kubo-peer.py) in a loop: it
    fetches a fresh ipnix-added file over Bitswap (compared with the file),
    and the daemon fetches a fresh Kubo-added file (`ipnix pin add`, then
    `ipnix get`, compared); each file is unpinned afterwards;
  * the hostile peer (node/examples/hostile_peer.rs): oversized frames,
    10,000-want floods, wrong blocks for the CIDs the daemon wants (and
    unsolicited ones), slow reads of real blocks, connect/disconnect churn
    with fresh identities. It learns real CIDs from a "bait" file.
Timeline: an idle baseline, the load phase (honest loops and the hostile
peer), then a settle phase with everything stopped, polling until the figures
come back to the baseline. Every few seconds the daemon's VmRSS/VmHWM,
threads, open fds and /metrics (peers, connections, Bitswap wants, per-peer
wantlist entries, queued bytes) are sampled.

Asserts (exit 1 and says which): every honest transfer had the right bytes
and at least one of each kind finished; peak RSS (VmHWM) < --rss-limit-mib
(150); after the settle phase threads, fds and the per-peer figures are back
near the baseline (so none grows without bound). Nix or Kubo missing: that
part is skipped with a printed `SKIP:` reason. Prints a table and, with
--json-out, writes every figure and sample.
"""
import argparse
import hashlib
import json
import os

# Benchmarks never reach Software Heritage's public archive (DESIGN.md I-34).
os.environ["IPNIX_NO_SWH"] = "1"
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PEERS = os.environ.get("PEERS_HOME") or os.path.expanduser("~/.cache/ipnix-peers")
KUBO = [f"{PEERS}/venv/bin/python", f"{PEERS}/kubo-peer.py"]
PROCS = []
STOP = threading.Event()
LOCK = threading.Lock()

# Figures that must come back near the idle baseline once the load stops.
METRICS = [
    "ipnix_peers",
    "ipnix_connections",
    "ipnix_bitswap_peers",
    "ipnix_bitswap_wants",
    "ipnix_bitswap_peer_wantlist_entries",
    "ipnix_bitswap_queued_bytes",
    "ipnix_block_requests_waiting",
]
# Reported only: a high-water mark, it never comes back down.
REPORTED = ["ipnix_bitswap_max_peer_queued_bytes"]
# Slack allowed over the baseline after the settle phase.
THREAD_SLACK = 4
FD_SLACK = 8

# A closure without nixpkgs: a 4 MiB random file, a directory, a reference.
SOAK_NIX = r"""
{ salt }:
let
  data = derivation {
    name = "soak-data-${salt}";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    PATH = "/usr/bin:/bin";
    args = [ "-c" ''
      mkdir -p $out/share
      head -c 4194304 /dev/urandom > $out/share/random.bin
      yes "soak ${salt}" | head -c 300000 > $out/share/text.txt
      ln -s text.txt $out/share/link
    '' ];
  };
in derivation {
  name = "soak-top-${salt}";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  PATH = "/usr/bin:/bin";
  args = [ "-c" ''
    mkdir -p $out/bin
    echo ${data} > $out/ref-data
    printf '#!/bin/sh\necho soak\n' > $out/bin/soak
    chmod +x $out/bin/soak
  '' ];
}
"""


def log(msg):
    with LOCK:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def skip(part, reason):
    log(f"SKIP: {part}: {reason}")


def stop_process(p, grace=20):
    if p.poll() is not None:
        return
    p.terminate()
    try:
        p.wait(grace)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def target_dir():
    return os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")


def default_ipnix_bin():
    if os.environ.get("IPNIX_BIN"):
        return os.environ["IPNIX_BIN"]
    for profile in ("release", "debug"):
        path = os.path.join(target_dir(), profile, "ipnix")
        if os.path.exists(path):
            return path
    sys.exit("no ipnix binary: cargo build -p ipnix-node --bin ipnix, or set IPNIX_BIN")


def hostile_bin(args):
    if args.hostile_bin:
        return args.hostile_bin
    profile = "release" if "/release/" in args.ipnix_bin else "debug"
    path = os.path.join(target_dir(), profile, "examples", "hostile_peer")
    if not os.path.exists(path):
        cargo = os.environ.get("CARGO", "cargo")
        cmd = [cargo, "build", "-q", "-p", "ipnix-node", "--example", "hostile_peer"]
        if profile == "release":
            cmd.append("--release")
        log(f"building the hostile peer: {' '.join(cmd)}")
        subprocess.run(cmd, cwd=ROOT, check=True)
    return path


# ---------------------------------------------------------------- sampling
def proc_status(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "Threads"):
                    out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def open_fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def fd_kinds(pid):
    """Open fds by kind: socket, anon_inode:[eventpoll], a file's directory..."""
    kinds = {}
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            kind = re.sub(r"\[\d+\]$", "", target) if ":" in target else os.path.dirname(target)
            kinds[kind] = kinds.get(kind, 0) + 1
    except OSError:
        pass
    return kinds


def scrape(url):
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError as e:
        return {"error": str(e)}
    values = {}
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+) (\d+)$", line)
        if m:
            values[m.group(1)] = int(m.group(2))
    return values


def sample(daemon, phase):
    status = proc_status(daemon.p.pid)
    metrics = scrape(daemon.url)
    s = {
        "t": round(time.monotonic() - daemon.started, 1),
        "phase": phase,
        "rss_mib": round(status.get("VmRSS", 0) / 1024, 1),
        "hwm_mib": round(status.get("VmHWM", 0) / 1024, 1),
        "threads": status.get("Threads"),
        "fds": open_fds(daemon.p.pid),
    }
    for name in METRICS + REPORTED:
        s[name] = metrics.get(name)
    if "error" in metrics:
        s["metrics_error"] = metrics["error"]
    return s


# ---------------------------------------------------------------- the daemon
class Daemon:
    def __init__(self, bin_, work, extra):
        self.bin = bin_
        self.repo = os.path.join(work, "daemon-repo")
        self.log = os.path.join(work, "daemon.log")
        cmd = [bin_, "--repo", self.repo, "daemon", "--no-mdns", "--http", "127.0.0.1:0",
               "--listen", "/ip4/127.0.0.1/tcp/0", *extra]
        self.p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(self.log, "w"),
                                  stdin=subprocess.DEVNULL, text=True, bufsize=1)
        PROCS.append(self.p)
        self.started = time.monotonic()
        peer, addrs = None, []
        for line in self.p.stdout:
            if line.startswith("peer identity:"):
                peer = line.split(":", 1)[1].strip()
            elif line.startswith("swarm listening on "):
                addrs.append(line.split("swarm listening on ", 1)[1].strip())
            elif line.startswith("daemon is ready"):
                break
        else:
            raise RuntimeError(f"ipnix daemon exited: {open(self.log).read()[-2000:]}")
        # Keep draining stdout so the daemon never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in self.p.stdout], daemon=True).start()
        tcp = [a for a in addrs if "/tcp/" in a]
        if not peer or not tcp:
            raise RuntimeError(f"ipnix daemon printed no peer id / TCP address: {addrs}")
        self.addr = tcp[0] if "/p2p/" in tcp[0] else f"{tcp[0]}/p2p/{peer}"
        with open(os.path.join(self.repo, "api")) as f:
            self.url = f.read().strip().rstrip("/")

    def cli(self, *args, timeout=300):
        p = subprocess.run([self.bin, "--repo", self.repo, *args], capture_output=True,
                           text=True, timeout=timeout)
        if p.returncode != 0:
            raise RuntimeError(f"ipnix {' '.join(args)}: rc {p.returncode}: {p.stderr.strip()}")
        return p.stdout

    def add(self, path):
        return json.loads(self.cli("--json", "add", path))["cid"]


# ---------------------------------------------------------------- Nix
def nix_env(home):
    os.makedirs(os.path.join(home, "tmp"), exist_ok=True)
    env = dict(os.environ)
    env.pop("NIX_REMOTE", None)
    env.update({
        "NIX_CONFIG": "substituters =\ntrusted-substituters =\nexperimental-features = nix-command",
        "TMPDIR": os.path.join(home, "tmp"),
        "XDG_CACHE_HOME": os.path.join(home, "xdg-cache"),
    })
    return env


def run(cmd, env=None, **kw):
    p = subprocess.run(cmd, env=env, capture_output=True, **kw)
    if p.returncode != 0:
        raise RuntimeError(f"{cmd[0]} {' '.join(cmd[1:4])}...: rc {p.returncode}: "
                           f"{p.stderr.decode(errors='replace').strip()[-600:]}")
    return p.stdout


def nix_missing():
    for tool in ("nix", "nix-store", "nix-build"):
        if not shutil.which(tool):
            return f"{tool} not found"
    if not os.path.isdir("/nix/store"):
        return "/nix/store missing"
    return None


def build_closure(work, env):
    salt = f"s{random.getrandbits(64):016x}"
    expr = os.path.join(work, "soak.nix")
    with open(expr, "w") as f:
        f.write(SOAK_NIX)
    out = run(["nix-build", expr, "--argstr", "salt", salt, "--no-out-link",
               "--option", "substituters", ""], env=env).decode()
    return out.strip().splitlines()[-1]


def dump_sha256(cmd, env):
    h = hashlib.sha256()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for chunk in iter(lambda: p.stdout.read(1 << 20), b""):
        h.update(chunk)
    err = p.stderr.read()
    if p.wait() != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])}: {err.decode(errors='replace').strip()[-400:]}")
    return h.hexdigest()


class Counters:
    def __init__(self):
        self.ok = 0
        self.bad = 0
        self.errors = []
        self.seconds = []

    def record(self, ok, seconds, error=None):
        with LOCK:
            if ok:
                self.ok += 1
                self.seconds.append(seconds)
            else:
                self.bad += 1
                if len(self.errors) < 10:
                    self.errors.append(error)

    def figures(self):
        s = sorted(self.seconds)
        return {"ok": self.ok, "failed": self.bad, "errors": self.errors,
                "median_s": round(s[len(s) // 2], 2) if s else None,
                "max_s": round(s[-1], 2) if s else None}


def nix_client(k, work, url, top, expected, public_key, counters):
    home = os.path.join(work, f"nix-client-{k}")
    i = 0
    while not STOP.is_set():
        i += 1
        store = os.path.join(home, f"store-{i}")
        shutil.rmtree(os.path.join(home, "xdg-cache"), ignore_errors=True)
        env = nix_env(home)
        t = time.monotonic()
        try:
            run(["nix", "copy", "--from", url, "--to", store, top,
                 "--option", "substituters", "", "--option", "trusted-public-keys", public_key],
                env=env, timeout=600)
            for path, digest in expected.items():
                got = dump_sha256(["nix", "store", "dump-path", "--store", store, path], env)
                if got != digest:
                    raise RuntimeError(f"{path}: NAR sha256 {got} != {digest}")
            run(["nix", "store", "verify", "--store", store, "-r", top,
                 "--option", "trusted-public-keys", public_key], env=env, timeout=600)
            counters.record(True, time.monotonic() - t)
        except Exception as e:  # noqa: BLE001 - every failure is a finding
            counters.record(False, 0, f"nix client {k} copy {i}: {e}")
            log(f"nix client {k} copy {i} FAILED: {e}")
        finally:
            subprocess.run(["chmod", "-R", "u+w", store], capture_output=True)
            shutil.rmtree(store, ignore_errors=True)


# ---------------------------------------------------------------- Kubo
def kubo_missing():
    if not os.path.exists(KUBO[0]) or not os.path.exists(KUBO[1]):
        return f"Kubo peer missing ({KUBO[1]}): run ../shared/peers/setup-peers.sh"
    return None


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class KuboPeer:
    def __init__(self, work):
        self.repo = os.path.join(work, "kubo-repo")
        cmd = KUBO + ["--repo", self.repo, "--fresh", "--tcp-port", str(free_port())]
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=open(os.path.join(work, "kubo.log"), "w"),
                                  text=True, bufsize=1)
        PROCS.append(self.p)
        self.ready = self._wait("ready")
        if self.ready.get("event") != "ready":
            raise RuntimeError(f"kubo did not start: {self.ready}")

    def _wait(self, event):
        for line in self.p.stdout:
            try:
                v = json.loads(line)
            except ValueError:
                continue
            if v.get("event") in (event, "error"):
                return v
        raise RuntimeError("kubo peer exited")

    def send(self, line, event):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        return self._wait(event)

    def stop(self):
        try:
            self.p.stdin.write("quit\n")
            self.p.stdin.flush()
            self.p.wait(30)
        except (BrokenPipeError, ValueError, subprocess.TimeoutExpired):
            stop_process(self.p)


def write_random(path, size, seed):
    rng = random.Random(seed)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 1 << 20)
            f.write(rng.randbytes(n))
            left -= n


def same_file(a, b):
    return subprocess.run(["cmp", "-s", a, b]).returncode == 0


def collect_garbage(daemon):
    """Unpinned files go, and with them their packs (and the fds reading them)."""
    try:
        daemon.cli("gc", timeout=600)
    except Exception as e:  # noqa: BLE001
        log(f"gc: {e}")


def kubo_loop(work, daemon, kubo, mib, seed, to_kubo, to_ipnix):
    """Kubo fetches what the daemon added; the daemon fetches what Kubo added."""
    files = os.path.join(work, "kubo-files")
    os.makedirs(files, exist_ok=True)
    i = 0
    while not STOP.is_set():
        i += 1
        src = os.path.join(files, f"to-kubo-{i}")
        out = os.path.join(files, f"to-kubo-{i}.out")
        write_random(src, mib << 20, seed * 1_000_003 + i)
        t = time.monotonic()
        cid = None
        try:
            cid = daemon.add(src)
            c = kubo.send(f"connect {daemon.addr}", "connected")
            if c.get("event") == "error":
                raise RuntimeError(f"kubo connect: {c}")
            r = kubo.send(f"fetch {cid} {out}", "fetched")
            if r.get("event") != "fetched" or r.get("rc", 0) != 0:
                raise RuntimeError(f"kubo fetch: {r}")
            if not same_file(src, out):
                raise RuntimeError(f"kubo fetched other bytes for {cid}")
            to_kubo.record(True, time.monotonic() - t)
        except Exception as e:  # noqa: BLE001
            to_kubo.record(False, 0, f"ipnix->kubo {i}: {e}")
            log(f"ipnix->kubo {i} FAILED: {e}")
        finally:
            if cid:
                try:
                    daemon.cli("pin", "rm", cid)
                except Exception as e:  # noqa: BLE001
                    log(f"pin rm {cid}: {e}")
            for p in (src, out):
                if os.path.exists(p):
                    os.remove(p)
        if i % 8 == 0:
            collect_garbage(daemon)
        if STOP.is_set():
            break
        # The other way round: the daemon wants blocks, which the hostile
        # peer answers with wrong ones; Kubo's must win.
        src = os.path.join(files, f"to-ipnix-{i}")
        out = os.path.join(files, f"to-ipnix-{i}.out")
        write_random(src, max(1, mib // 4) << 20, seed * 7_000_003 + i)
        t = time.monotonic()
        cid = None
        try:
            added = kubo.send(f"add {src}", "added")
            cid = added.get("cid")
            if not cid:
                raise RuntimeError(f"kubo add: {added}")
            daemon.cli("connect", kubo.ready["addrs"][0] if "/p2p/" in kubo.ready["addrs"][0]
                       else f"{kubo.ready['addrs'][0]}/p2p/{kubo.ready['peer_id']}")
            daemon.cli("pin", "add", cid, timeout=600)
            daemon.cli("get", cid, "-o", out, timeout=600)
            if not same_file(src, out):
                raise RuntimeError(f"ipnix fetched other bytes for {cid}")
            to_ipnix.record(True, time.monotonic() - t)
        except Exception as e:  # noqa: BLE001
            to_ipnix.record(False, 0, f"kubo->ipnix {i}: {e}")
            log(f"kubo->ipnix {i} FAILED: {e}")
        finally:
            if cid:
                try:
                    daemon.cli("pin", "rm", cid)
                except Exception:  # noqa: BLE001 - not pinned if the fetch failed
                    pass
            for p in (src, out):
                if os.path.exists(p):
                    os.remove(p)


# ---------------------------------------------------------------- main
def summarize(samples, phase, key):
    values = [s[key] for s in samples if s["phase"] == phase and s.get(key) is not None]
    return max(values) if values else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--ipnix-bin")
    ap.add_argument("--hostile-bin")
    ap.add_argument("--closure", help="a store path to import (default: build a fresh one)")
    ap.add_argument("--kubo-mib", type=int, default=64, help="size of each file Kubo fetches")
    ap.add_argument("--sample-secs", type=float, default=3.0)
    ap.add_argument("--rss-limit-mib", type=float, default=150.0)
    ap.add_argument("--json-out")
    args = ap.parse_args()
    if not (os.environ.get("IPNIX_SANDBOXED") or os.environ.get("IPNIX_ALLOW_LOOPBACK")):
        sys.exit("run under /work/shared/peers/sandbox (or set IPNIX_ALLOW_LOOPBACK=1)")
    args.ipnix_bin = args.ipnix_bin or default_ipnix_bin()
    hostile = hostile_bin(args)
    total = args.minutes * 60
    baseline_s = min(10.0, total * 0.05)
    settle_max = min(60.0, max(20.0, total * 0.1))
    load_s = max(10.0, total - baseline_s - settle_max)

    work = tempfile.mkdtemp(prefix="ipnix-soak-")
    # Private copies: a cargo build elsewhere may replace the binaries mid-run.
    for name, path in (("ipnix", args.ipnix_bin), ("hostile_peer", hostile)):
        shutil.copy2(path, os.path.join(work, name))
    args.ipnix_bin, hostile = os.path.join(work, "ipnix"), os.path.join(work, "hostile_peer")
    log(f"work dir {work}; ipnix {args.ipnix_bin}; load {load_s:.0f} s, seed {args.seed}")
    report = {"seed": args.seed, "minutes": args.minutes, "skipped": []}
    failures = []
    threads = []
    nix_counters = [Counters(), Counters()]
    to_kubo, to_ipnix = Counters(), Counters()
    kubo = None
    daemon = None
    samples = []
    try:
        # Nix: a closure and a key, imported before the daemon starts.
        extra = []
        nix_reason = nix_missing()
        top, expected, public_key = None, {}, None
        lab = os.path.join(work, "nix-lab")
        env = nix_env(lab)
        repo = os.path.join(work, "daemon-repo")
        if nix_reason:
            skip("nix copy clients", nix_reason)
            report["skipped"].append(f"nix: {nix_reason}")
        else:
            top = args.closure or build_closure(work, env)
            paths = run(["nix-store", "-qR", top], env=env).decode().split()
            expected = {p: dump_sha256(["nix-store", "--dump", p], env) for p in paths}
            secret = os.path.join(work, "soak.secret")
            public = os.path.join(work, "soak.public")
            run(["nix-store", "--generate-binary-cache-key", "ipnix-soak-1", secret, public],
                env=env)
            public_key = open(public).read().strip()
            run([args.ipnix_bin, "--repo", repo, "nix", "import", "--closure", top], env=env,
                timeout=600)
            extra = ["--sign-key", secret]
            log(f"imported {len(paths)} paths of {top}")
        daemon = Daemon(args.ipnix_bin, work, extra)
        log(f"daemon {daemon.p.pid} at {daemon.addr}, {daemon.url}")
        # The bait: real blocks the hostile peer learns and slow-reads.
        bait = os.path.join(work, "bait.bin")
        write_random(bait, 16 << 20, args.seed)
        bait_cid = daemon.add(bait)

        # Idle baseline.
        end = time.monotonic() + baseline_s
        while time.monotonic() < end:
            samples.append(sample(daemon, "baseline"))
            time.sleep(min(args.sample_secs, 2.0))
        base = samples[-1]
        base_fds = fd_kinds(daemon.p.pid)

        # Load: honest clients and the hostile peer.
        if top:
            for k in range(2):
                t = threading.Thread(target=nix_client, daemon=True, args=(
                    k, work, daemon.url, top, expected, public_key, nix_counters[k]))
                t.start()
                threads.append(t)
        kubo_reason = kubo_missing()
        if kubo_reason:
            skip("Kubo over Bitswap", kubo_reason)
            report["skipped"].append(f"kubo: {kubo_reason}")
        else:
            kubo = KuboPeer(work)
            t = threading.Thread(target=kubo_loop, daemon=True, args=(
                work, daemon, kubo, args.kubo_mib, args.seed, to_kubo, to_ipnix))
            t.start()
            threads.append(t)
        hostile_out = open(os.path.join(work, "hostile.json"), "w")
        hostile_p = subprocess.Popen(
            [hostile, "--connect", daemon.addr, "--seconds", str(int(load_s)),
             "--seed", str(args.seed), "--want", bait_cid],
            stdout=hostile_out, stderr=open(os.path.join(work, "hostile.log"), "w"))
        PROCS.append(hostile_p)
        end = time.monotonic() + load_s
        while time.monotonic() < end and daemon.p.poll() is None:
            samples.append(sample(daemon, "load"))
            time.sleep(args.sample_secs)
        try:
            hostile_p.wait(120)
        except subprocess.TimeoutExpired:
            failures.append("the hostile peer did not stop at its deadline")
            stop_process(hostile_p)
        hostile_out.close()
        with open(os.path.join(work, "hostile.log")) as f:
            report["hostile_log_tail"] = f.read().splitlines()[-12:]
        try:
            report["hostile"] = json.loads(open(os.path.join(work, "hostile.json")).read())
        except ValueError:
            report["hostile"] = {"error": open(os.path.join(work, "hostile.log")).read()[-1000:]}
            failures.append("the hostile peer printed no summary")

        # Stop the honest load; let each loop finish its transfer.
        STOP.set()
        for t in threads:
            t.join(600)
        if kubo:
            kubo.stop()
        collect_garbage(daemon)
        if daemon.p.poll() is not None:
            failures.append(f"the daemon exited ({daemon.p.returncode})")

        # Settle: poll until the figures are back near the baseline.
        end = time.monotonic() + settle_max
        after = None
        while time.monotonic() < end and daemon.p.poll() is None:
            after = sample(daemon, "settle")
            samples.append(after)
            if back_to_baseline(base, after):
                break
            time.sleep(2.0)

        # Verdict.
        report["transfers"] = {
            "nix_copy_client_0": nix_counters[0].figures(),
            "nix_copy_client_1": nix_counters[1].figures(),
            "ipnix_to_kubo": to_kubo.figures(),
            "kubo_to_ipnix": to_ipnix.figures(),
        }
        for name, c in (("nix copy client 0", nix_counters[0]),
                        ("nix copy client 1", nix_counters[1]),
                        ("ipnix -> Kubo", to_kubo), ("Kubo -> ipnix", to_ipnix)):
            skipped = (name.startswith("nix") and not top) or (("Kubo" in name) and not kubo)
            if skipped:
                continue
            if c.bad:
                failures.append(f"{name}: {c.bad} transfers failed: {c.errors[:3]}")
            if c.ok == 0:
                failures.append(f"{name}: no transfer finished")
        peak_hwm = max((s["hwm_mib"] for s in samples), default=0)
        if peak_hwm >= args.rss_limit_mib:
            failures.append(f"peak RSS {peak_hwm} MiB >= {args.rss_limit_mib} MiB")
        if after is None:
            failures.append("no sample after the load")
        else:
            failures.extend(not_back(base, after))
        load = [s for s in samples if s["phase"] == "load"]
        half = len(load) // 2
        report["figures"] = {
            "peak_rss_mib (VmHWM)": peak_hwm,
            "baseline": base,
            "after_settle": after,
            "load_peak": {k: summarize(samples, "load", k) for k in
                          ["rss_mib", "threads", "fds"] + METRICS + REPORTED},
            "fd_kinds_baseline": base_fds,
            "fd_kinds_after": fd_kinds(daemon.p.pid),
            "load_first_half_max": {k: max((s[k] or 0 for s in load[:half]), default=None)
                                    for k in ("rss_mib", "threads", "fds")},
            "load_second_half_max": {k: max((s[k] or 0 for s in load[half:]), default=None)
                                     for k in ("rss_mib", "threads", "fds")},
        }
        report["samples"] = samples
    finally:
        STOP.set()
        if daemon:
            stop_process(daemon.p)
        for p in PROCS:
            stop_process(p, grace=5)
    print_table(report, failures)
    report["failures"] = failures
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(report, f, indent=1)
    if failures:
        log(f"work dir kept: {work}")
        print("SOAK FAILED:\n  " + "\n  ".join(failures), flush=True)
        sys.exit(1)
    shutil.rmtree(work, ignore_errors=True)
    print("SOAK PASSED", flush=True)


def near(base, after, key, slack):
    b, a = base.get(key), after.get(key)
    return b is None or a is None or a <= b + slack


def back_to_baseline(base, after):
    return not not_back(base, after)


def not_back(base, after):
    out = []
    if not near(base, after, "threads", THREAD_SLACK):
        out.append(f"threads {after['threads']} > baseline {base['threads']} + {THREAD_SLACK}")
    if not near(base, after, "fds", FD_SLACK):
        out.append(f"open fds {after['fds']} > baseline {base['fds']} + {FD_SLACK}")
    for key in METRICS:
        if not near(base, after, key, 0):
            out.append(f"{key} {after[key]} > baseline {base[key]}")
    return out


def print_table(report, failures):
    print()
    print("== transfers ==")
    for name, f in report.get("transfers", {}).items():
        print(f"  {name:<20} ok {f['ok']:>5}  failed {f['failed']:>3}  "
              f"median {f['median_s']} s  max {f['max_s']} s")
    for s in report.get("skipped", []):
        print(f"  SKIPPED {s}")
    print("== hostile peer log (tail) ==")
    for line in report.get("hostile_log_tail", []):
        print(f"  {line}")
    print("== hostile peer sent ==")
    for k, v in sorted(report.get("hostile", {}).items()):
        print(f"  {k:<22} {v}")
    fig = report.get("figures")
    if fig:
        keys = ["rss_mib", "threads", "fds"] + METRICS + REPORTED
        print("== daemon ==")
        print(f"  {'figure':<38} {'baseline':>10} {'load peak':>10} {'after':>10}")
        for k in keys:
            b = fig["baseline"].get(k)
            p = fig["load_peak"].get(k)
            a = (fig["after_settle"] or {}).get(k)
            print(f"  {k:<38} {str(b):>10} {str(p):>10} {str(a):>10}")
        print(f"  peak RSS (VmHWM) {fig['peak_rss_mib (VmHWM)']} MiB")
        print(f"  load 1st half max {fig['load_first_half_max']}")
        print(f"  load 2nd half max {fig['load_second_half_max']}")
        print(f"  fds by kind: baseline {fig['fd_kinds_baseline']}")
        print(f"               after    {fig['fd_kinds_after']}")
    print(flush=True)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    main()
