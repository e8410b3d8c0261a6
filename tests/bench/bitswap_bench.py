#!/usr/bin/env python3
"""Bitswap throughput over loopback TCP: the ipnix daemon against the Kubo anchor.

  cargo build --release -p ipnix-node --bin ipnix
  /work/shared/peers/sandbox python3 tests/bench/bitswap_bench.py \\
      [--sizes 100,1024] [--trials 5] [--trials-large N] [--ipnix-bin PATH]
      [--only kubo-kubo,ipnix-ipnix,kubo-ipnix,ipnix-kubo,helia-ipnix]

Four directions per size: ipnix -> ipnix, Kubo -> ipnix, ipnix -> Kubo and the
anchor Kubo -> Kubo, which is the shared tool run as is, one trial at a time
(`../shared/peers/tools/bench.py kubo kubo SIZE 1`). Trials are interleaved:
round r runs one trial of every direction, so load from other work on the
machine hits all of them alike; each direction's figure is the median of its
trials and is printed as a ratio to the Kubo -> Kubo median of the same run.

A source adds one random file once per size (ipnix -> ipnix uses ipnix's
native layout, CIDv1 raw 1 MiB leaves; ipnix -> Kubo uses Kubo's layout,
CIDv0 256 KiB leaves, like the anchor). Every trial starts a fresh destination
that connects and fetches the file: Kubo's `fetch CID OUT` (kubo-peer.py), or
for ipnix `ipnix pin add CID` (the DAG into the store, through the daemon)
followed by `ipnix get CID -o OUT`, both timed together like Kubo's fetch.
ipnix runs as the real `ipnix daemon` (release binary, `--ipnix-bin` or
$IPNIX_BIN, else $CARGO_TARGET_DIR/release/ipnix). Peak RSS (VmHWM from
/proc/PID/status) is recorded for the ipnix daemons: the destination over its
whole life, the source per trial (reset through /proc/PID/clear_refs).
Every output is compared with the source file (cmp).

Goals (issue 3): ipnix->ipnix >= 4x Kubo->Kubo; ipnix->Kubo >= 1x; ipnix daemon
peak RSS < 100 MiB during the 1 GiB transfers.
"""
import argparse
import json
import os

# Benchmarks never reach Software Heritage's public archive (DESIGN.md I-34).
os.environ["IPNIX_NO_SWH"] = "1"
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SHARED = os.environ.get("IPNIX_SHARED") or os.path.join(os.path.dirname(ROOT), "shared")
PEERS = os.environ.get("PEERS_HOME") or os.path.expanduser("~/.cache/ipnix-peers")
KUBO = [f"{PEERS}/venv/bin/python", f"{PEERS}/kubo-peer.py"]
PROCS = []
SCENARIOS = ["kubo-kubo", "ipnix-ipnix", "kubo-ipnix", "ipnix-kubo"]
# Opt-in (--only): Helia 7 as the source (helia-peer.mjs: CIDv1, raw leaves,
# 1 MiB chunks), fetched by an ipnix daemon exactly as from Kubo.
EXTRA_SCENARIOS = ["helia-ipnix"]
HELIA = ["node", f"{PEERS}/helia-peer.mjs"]


def default_ipnix_bin():
    if os.environ.get("IPNIX_BIN"):
        return os.environ["IPNIX_BIN"]
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
    return os.path.join(target, "release", "ipnix")


def stop_process(p, grace=30):
    if p.poll() is not None:
        return
    p.terminate()
    try:
        p.wait(grace)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """User + system CPU time of a process so far (threads included)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def proc_status_kib(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class KuboPeer:
    """kubo-peer.py: JSON lines on stdout, commands on stdin."""

    def __init__(self, work, name, port):
        self.repo = os.path.join(work, name)
        cmd = KUBO + ["--repo", self.repo, "--fresh", "--tcp-port", str(port)]
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=open(os.path.join(work, f"{name}.log"), "w"),
                                  text=True, bufsize=1)
        PROCS.append(self.p)
        self.ready = self._wait("ready")
        pid = self.ready["peer_id"]
        tcp = [a for a in self.ready["addrs"] if "/tcp/" in a and "/quic" not in a]
        self.addr = tcp[0] if "/p2p/" in tcp[0] else f"{tcp[0]}/p2p/{pid}"

    def _wait(self, event):
        for line in self.p.stdout:
            try:
                v = json.loads(line)
            except ValueError:
                continue
            if v.get("event") in (event, "error"):
                return v
        raise RuntimeError(f"kubo peer exited: {self.p.args}")

    def _send(self, line, event):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        return self._wait(event)

    def add(self, path, _profile):
        added = self._send(f"add {path}", "added")
        if not added.get("cid"):
            raise RuntimeError(f"kubo add failed: {added}")
        return added["cid"]

    def connect(self, addr):
        c = self._send(f"connect {addr}", "connected")
        if not (c.get("ok") or c.get("rc") == 0):
            raise RuntimeError(f"kubo connect failed: {c}")

    def fetch(self, cid, out):
        r = self._send(f"fetch {cid} {out}", "fetched")
        if r.get("event") != "fetched" or r.get("rc", 0) != 0:
            raise RuntimeError(f"kubo fetch failed: {r}")
        return r["seconds"], {}

    def cpu(self):
        return cpu_seconds(self.p.pid)

    def stop(self):
        try:
            self.p.stdin.write("quit\n")
            self.p.stdin.flush()
            self.p.wait(30)
        except (BrokenPipeError, ValueError, subprocess.TimeoutExpired):
            stop_process(self.p)
        shutil.rmtree(self.repo, ignore_errors=True)


class HeliaPeer(KuboPeer):
    """helia-peer.mjs as a source: the same JSON-lines protocol as kubo-peer.py."""

    def __init__(self, work, name, port):
        self.repo = os.path.join(work, name)
        self.p = subprocess.Popen(HELIA + ["--tcp-port", str(port)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE,
                                  stderr=open(os.path.join(work, f"{name}.log"), "w"),
                                  text=True, bufsize=1)
        PROCS.append(self.p)
        self.ready = self._wait("ready")
        pid = self.ready["peer_id"]
        tcp = [a for a in self.ready["addrs"] if "/tcp/" in a]
        self.addr = tcp[0] if "/p2p/" in tcp[0] else f"{tcp[0]}/p2p/{pid}"


class IpnixDaemon:
    """`ipnix daemon` on its own repo; commands through the `ipnix` CLI, which
    forwards them to the daemon over its loopback control API."""

    def __init__(self, bin_, work, name, port):
        self.bin = bin_
        self.repo = os.path.join(work, name)
        cmd = [bin_, "--repo", self.repo, "daemon", "--no-mdns", "--http", "127.0.0.1:0",
               "--listen", f"/ip4/127.0.0.1/tcp/{port}"]
        self.log = os.path.join(work, f"{name}.log")
        self.p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(self.log, "w"),
                                  text=True, bufsize=1)
        PROCS.append(self.p)
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
        tcp = [a for a in addrs if "/tcp/" in a]
        if not peer or not tcp:
            raise RuntimeError(f"ipnix daemon printed no peer id / TCP address: {addrs}")
        self.addr = tcp[0] if "/p2p/" in tcp[0] else f"{tcp[0]}/p2p/{peer}"

    def cli(self, *args):
        p = subprocess.run([self.bin, "--repo", self.repo, *args], capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"ipnix {' '.join(args)}: rc {p.returncode}: {p.stderr.strip()}")
        return p.stdout

    def add(self, path, profile):
        return json.loads(self.cli("--json", "add", "--profile", profile, path))["cid"]

    def connect(self, addr):
        self.cli("connect", addr)

    def fetch(self, cid, out):
        t = time.monotonic()
        self.cli("pin", "add", cid)
        fetched = time.monotonic()
        self.cli("get", cid, "-o", out)
        done = time.monotonic()
        return done - t, {"pin_add_s": round(fetched - t, 3), "get_s": round(done - fetched, 3)}

    def cpu(self):
        return cpu_seconds(self.p.pid)

    def peak_rss_mib(self):
        kib = proc_status_kib(self.p.pid, "VmHWM")
        return None if kib is None else round(kib / 1024, 1)

    def reset_peak_rss(self):
        try:
            with open(f"/proc/{self.p.pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass

    def stop(self):
        stop_process(self.p)
        shutil.rmtree(self.repo, ignore_errors=True)


def anchor_trial(size_mib):
    """One trial of the shared Kubo -> Kubo tool, run as is."""
    cmd = [sys.executable, os.path.join(SHARED, "peers", "tools", "bench.py"),
           "kubo", "kubo", str(size_mib), "1"]
    env = dict(os.environ, PEERS_HOME=PEERS)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, env=env)
    for line in p.stdout.splitlines():
        try:
            v = json.loads(line)
        except ValueError:
            continue
        if "trial" in v:
            if not v.get("identical"):
                raise RuntimeError(f"kubo-kubo: output differs: {v}")
            return v["fetched"]["seconds"], {}
    raise RuntimeError(f"anchor produced nothing: {p.stdout[-1000:]} {p.stderr[-2000:]}")


class Direction:
    """One of ipnix-ipnix, kubo-ipnix, ipnix-kubo: a long-lived source and a
    fresh destination per trial."""

    def __init__(self, kind, args, work, path, port):
        self.kind, self.args, self.work, self.path, self.port = kind, args, work, path, port
        src_kind, self.dst_kind = kind.split("-")
        profile = "unixfs-v1-2025" if self.dst_kind == "ipnix" else "unixfs-v0-2015"
        if src_kind == "ipnix":
            self.src = IpnixDaemon(args.ipnix_bin, work, f"{kind}-src", port)
        elif src_kind == "helia":
            self.src = HeliaPeer(work, f"{kind}-src", port)
        else:
            self.src = KuboPeer(work, f"{kind}-src", port)
        t = time.monotonic()
        self.cid = self.src.add(path, profile)
        print(json.dumps({"scenario": kind, "added": self.cid,
                          "add_s": round(time.monotonic() - t, 2)}), flush=True)

    def trial(self, i):
        name = f"{self.kind}-dst{i}"
        if self.dst_kind == "ipnix":
            dst = IpnixDaemon(self.args.ipnix_bin, self.work, name, self.port + 1 + i)
        else:
            dst = KuboPeer(self.work, name, self.port + 1 + i)
        extra = {}
        try:
            dst.connect(self.src.addr)
            if isinstance(self.src, IpnixDaemon):
                self.src.reset_peak_rss()
            out = os.path.join(self.work, f"out-{name}")
            src_cpu, dst_cpu = self.src.cpu(), dst.cpu()
            seconds, extra = dst.fetch(self.cid, out)
            # CPU seconds each process spent on this transfer: under load,
            # whoever needs more CPU per byte loses more speed.
            if src_cpu is not None and dst_cpu is not None:
                extra["src_cpu_s"] = round(self.src.cpu() - src_cpu, 2)
                extra["dst_cpu_s"] = round(dst.cpu() - dst_cpu, 2)
            if subprocess.run(["cmp", "-s", self.path, out]).returncode != 0:
                raise RuntimeError(f"{self.kind}: output differs from the source file")
            os.remove(out)
            if isinstance(dst, IpnixDaemon):
                extra["dst_peak_rss_MiB"] = dst.peak_rss_mib()
            if isinstance(self.src, IpnixDaemon):
                extra["src_peak_rss_MiB"] = self.src.peak_rss_mib()
        finally:
            dst.stop()
        return seconds, extra

    def close(self):
        self.src.stop()


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def load():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100,1024", help="MiB, comma separated")
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--trials-large", type=int, default=None,
                    help="trials for sizes of 1024 MiB and more (default: --trials)")
    ap.add_argument("--ipnix-bin", default=default_ipnix_bin())
    ap.add_argument("--only", default=",".join(SCENARIOS))
    args = ap.parse_args()
    if os.environ.get("IPNIX_SANDBOXED") != "1":
        sys.exit("run me under /work/shared/peers/sandbox (loopback only)")
    if not os.access(args.ipnix_bin, os.X_OK):
        sys.exit(f"no ipnix binary at {args.ipnix_bin}: cargo build --release -p ipnix-node --bin ipnix")
    if not os.access(KUBO[0], os.X_OK):
        sys.exit(f"Kubo peer missing ({KUBO[0]}): run {SHARED}/peers/setup-peers.sh")
    scenarios = args.only.split(",")
    unknown = set(scenarios) - set(SCENARIOS) - set(EXTRA_SCENARIOS)
    if unknown:
        sys.exit(f"unknown scenarios {sorted(unknown)}; known: {SCENARIOS + EXTRA_SCENARIOS}")
    print(json.dumps({"ipnix": args.ipnix_bin, "load_at_start": load()}), flush=True)
    summary = []
    for size in [int(s) for s in args.sizes.split(",")]:
        trials = args.trials_large if (args.trials_large and size >= 1024) else args.trials
        work = tempfile.mkdtemp(prefix=f"ipnix-bench-{size}-", dir=os.environ.get("BENCH_DIR"))
        path = os.path.join(work, "data.bin")
        with open(path, "wb") as f:
            for _ in range(size):
                f.write(os.urandom(1 << 20))
        directions = {}
        rows = {kind: [] for kind in scenarios}
        loads = []
        try:
            for n, kind in enumerate(k for k in scenarios if k != "kubo-kubo"):
                directions[kind] = Direction(kind, args, work, path, 4400 + 100 * n)
            for i in range(trials):
                loads.append(load())
                for kind in scenarios:
                    if kind == "kubo-kubo":
                        seconds, extra = anchor_trial(size)
                    else:
                        seconds, extra = directions[kind].trial(i)
                    row = {"scenario": kind, "size_MiB": size, "trial": i,
                           "seconds": round(seconds, 3), "MiB_per_s": round(size / seconds, 1),
                           "load": load(), **extra}
                    print(json.dumps(row), flush=True)
                    rows[kind].append(row)
        finally:
            for d in directions.values():
                d.close()
            shutil.rmtree(work, ignore_errors=True)
        anchor = median(r["MiB_per_s"] for r in rows.get("kubo-kubo", []))
        for kind in scenarios:
            med = median(r["MiB_per_s"] for r in rows[kind])
            line = {"summary": kind, "size_MiB": size, "trials": len(rows[kind]),
                    "median_MiB_per_s": med,
                    "min_MiB_per_s": min((r["MiB_per_s"] for r in rows[kind]), default=None),
                    "max_MiB_per_s": max((r["MiB_per_s"] for r in rows[kind]), default=None),
                    "ratio_vs_kubo_kubo": round(med / anchor, 2) if anchor and med else None,
                    "max_dst_peak_rss_MiB": max((r["dst_peak_rss_MiB"] for r in rows[kind]
                                                 if r.get("dst_peak_rss_MiB")), default=None),
                    "max_src_peak_rss_MiB": max((r["src_peak_rss_MiB"] for r in rows[kind]
                                                 if r.get("src_peak_rss_MiB")), default=None),
                    "median_src_cpu_s": median(r.get("src_cpu_s") for r in rows[kind]),
                    "median_dst_cpu_s": median(r.get("dst_cpu_s") for r in rows[kind]),
                    "load_per_round": loads}
            summary.append(line)
            print(json.dumps(line), flush=True)
    print("\n%-12s %6s %6s %10s %16s %8s %9s %9s %8s %8s" % (
        "scenario", "MiB", "trials", "med MiB/s", "min-max", "ratio", "dstRSS", "srcRSS",
        "srcCPU", "dstCPU"))
    fmt = lambda v: "-" if v is None else (f"{v:.1f}" if isinstance(v, float) else str(v))
    for s in summary:
        print("%-12s %6d %6d %10s %16s %8s %9s %9s %8s %8s" % (
            s["summary"], s["size_MiB"], s["trials"], fmt(s["median_MiB_per_s"]),
            f"{fmt(s['min_MiB_per_s'])}-{fmt(s['max_MiB_per_s'])}", fmt(s["ratio_vs_kubo_kubo"]),
            fmt(s["max_dst_peak_rss_MiB"]), fmt(s["max_src_peak_rss_MiB"]),
            fmt(s["median_src_cpu_s"]), fmt(s["median_dst_cpu_s"])))
    print("ratio: median MiB/s / Kubo->Kubo median MiB/s of the same run; RSS: max VmHWM of the\n"
          "ipnix daemons (MiB); CPU: median CPU seconds of source / destination process per trial")
    print(f"load at end: {load()}")


if __name__ == "__main__":
    try:
        main()
    finally:
        for p in PROCS:
            if p.poll() is None:
                p.kill()
