#!/usr/bin/env python3
"""Bitswap throughput over loopback TCP: ipnix against the Kubo anchor.

  /work/shared/peers/sandbox python3 tests/bench/bitswap_bench.py [--sizes 100,1024] [--trials 5]
      [--peer-bin PATH] [--quic] [--only ipnix-ipnix,kubo-ipnix,ipnix-kubo,kubo-kubo]

Per size, each scenario adds one random file at a source peer, then for every
trial starts a fresh destination peer that connects and fetches the file (DAG
into its store, then the file written out, as the Kubo peer script does). The
figure is the destination's own `seconds` (fetch + write); medians of the
trials, printed with the ratio to Kubo -> Kubo measured in the same run
(`/work/shared/peers/tools/bench.py kubo kubo SIZE TRIALS`).

ipnix runs as `node/examples/ipnix_peer` (same stdin protocol as the peer
scripts); build it first: `cargo build --release -p ipnix-node --example ipnix_peer`.
Peak RSS (VmHWM) is read from /proc for the ipnix processes: the destination
over its whole life, the source over each trial (reset through clear_refs).
ipnix -> ipnix uses ipnix's native layout (CIDv1, raw 1 MiB leaves); ipnix ->
Kubo uses Kubo's (CIDv0, 256 KiB leaves), like the Kubo -> Kubo anchor.
Goals: ipnix->ipnix >= 4x Kubo->Kubo; ipnix serving Kubo >= Kubo serving
Kubo; ipnix RSS < 100 MiB during the 1 GiB transfers.
"""
import argparse
import json
import os
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


def default_peer_bin():
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
    for profile in ("release", "debug"):
        path = os.path.join(target, profile, "examples", "ipnix_peer")
        if os.path.exists(path):
            return path
    return None


class Peer:
    def __init__(self, cmd, log):
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=open(log, "w"), text=True, bufsize=1)
        PROCS.append(self.p)
        self.ready = self.wait(lambda v: v.get("event") == "ready")

    def wait(self, pred):
        for line in self.p.stdout:
            try:
                v = json.loads(line)
            except ValueError:
                continue
            if pred(v) or v.get("event") == "error":
                return v
        raise RuntimeError(f"peer exited: {self.p.args}")

    def send(self, line, event):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        return self.wait(lambda v: v.get("event") == event)

    def addr(self, quic=False):
        pid = self.ready["peer_id"]
        for a in self.ready["addrs"]:
            if ("/quic-v1" in a) == quic and (quic or "/tcp/" in a):
                return a if "/p2p/" in a else f"{a}/p2p/{pid}"
        raise RuntimeError("no address for that transport")

    def pid(self):
        return self.ready.get("pid") or self.p.pid

    def peak_rss_mib(self):
        try:
            with open(f"/proc/{self.pid()}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return None

    def reset_peak_rss(self):
        try:
            with open(f"/proc/{self.pid()}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass

    def stop(self):
        try:
            self.p.stdin.write("quit\n")
            self.p.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass
        try:
            self.p.wait(30)
        except subprocess.TimeoutExpired:
            self.p.terminate()
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()


def ipnix(bin_, work, name, quic, profile="unixfs-v1-2025"):
    cmd = [bin_, "--repo", os.path.join(work, name), "--profile", profile]
    if quic:
        cmd += ["--quic-port", "0"]
    return Peer(cmd, os.path.join(work, f"{name}.log"))


def kubo(work, name, port, quic):
    cmd = KUBO + ["--repo", os.path.join(work, name), "--fresh", "--tcp-port", str(port)]
    if quic:
        cmd += ["--quic-port", str(port)]
    return Peer(cmd, os.path.join(work, f"{name}.log"))


def run_scenario(kind, args, work, path, size_mib):
    src_kind, dst_kind = kind.split("-")
    port = 4400
    if src_kind == "ipnix":
        profile = "unixfs-v1-2025" if dst_kind == "ipnix" else "unixfs-v0-2015"
        src = ipnix(args.peer_bin, work, "src", args.quic, profile)
    else:
        src = kubo(work, "src", port, args.quic)
    t = time.monotonic()
    added = src.send(f"add {path}", "added")
    if not added.get("cid"):
        raise RuntimeError(f"add failed: {added}")
    print(json.dumps({"scenario": kind, "size_MiB": size_mib, "added": added["cid"],
                      "add_s": round(time.monotonic() - t, 2)}), flush=True)
    results = []
    for i in range(args.trials):
        name = f"dst{i}"
        if dst_kind == "ipnix":
            dst = ipnix(args.peer_bin, work, name, args.quic)
        else:
            dst = kubo(work, name, port + 10 + i, args.quic)
        connected = dst.send(f"connect {src.addr(args.quic)}", "connected")
        if not (connected.get("ok") or connected.get("rc") == 0):
            raise RuntimeError(f"connect failed: {connected}")
        if src_kind == "ipnix":
            src.reset_peak_rss()
        out = os.path.join(work, f"out-{i}")
        t = time.monotonic()
        fetched = dst.send(f"fetch {added['cid']} {out}", "fetched")
        wall = time.monotonic() - t
        if fetched.get("event") != "fetched" or fetched.get("rc", 0) != 0:
            raise RuntimeError(f"fetch failed: {fetched}")
        same = subprocess.run(["cmp", "-s", path, out]).returncode == 0
        row = {"scenario": kind, "size_MiB": size_mib, "trial": i, "seconds": fetched["seconds"],
               "MiB_per_s": round(size_mib / fetched["seconds"], 1), "wall_s": round(wall, 2),
               "identical": same}
        if dst_kind == "ipnix":
            row["dst_peak_rss_MiB"] = dst.peak_rss_mib()
        if src_kind == "ipnix":
            row["src_peak_rss_MiB"] = src.peak_rss_mib()
        print(json.dumps(row), flush=True)
        if not same:
            raise RuntimeError(f"{kind}: output differs from the source file")
        results.append(row)
        dst.stop()
        os.remove(out)
        shutil.rmtree(os.path.join(work, name), ignore_errors=True)
    src.stop()
    shutil.rmtree(os.path.join(work, "src"), ignore_errors=True)
    return results


def kubo_anchor(size_mib, trials, quic):
    """The shared anchor script, run as is; its dst-reported MiB/s per trial."""
    cmd = [sys.executable, os.path.join(SHARED, "peers", "tools", "bench.py"),
           "kubo", "kubo", str(size_mib), str(trials)] + (["--quic"] if quic else [])
    rows = []
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    for line in p.stdout.splitlines():
        try:
            v = json.loads(line)
        except ValueError:
            continue
        if "trial" in v:
            fetched = v["fetched"]
            row = {"scenario": "kubo-kubo", "size_MiB": size_mib, "trial": v["trial"],
                   "seconds": fetched.get("seconds"), "MiB_per_s": round(size_mib / fetched["seconds"], 1),
                   "wall_s": v["wall_s"], "identical": v["identical"]}
            print(json.dumps(row), flush=True)
            rows.append(row)
    if not rows:
        raise RuntimeError(f"anchor produced nothing: {p.stderr[-2000:]}")
    return rows


def median(rows, key):
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100,1024", help="MiB, comma separated")
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--peer-bin", default=default_peer_bin())
    ap.add_argument("--quic", action="store_true")
    ap.add_argument("--only", default="kubo-kubo,ipnix-ipnix,kubo-ipnix,ipnix-kubo")
    args = ap.parse_args()
    if os.environ.get("IPNIX_SANDBOXED") != "1":
        sys.exit("run me under /work/shared/peers/sandbox (loopback only)")
    if not args.peer_bin or not os.path.exists(args.peer_bin):
        sys.exit("no ipnix_peer binary: cargo build --release -p ipnix-node --example ipnix_peer")
    scenarios = args.only.split(",")
    summary = []
    for size in [int(s) for s in args.sizes.split(",")]:
        work = tempfile.mkdtemp(prefix=f"ipnix-bench-{size}-", dir=os.environ.get("BENCH_DIR"))
        path = os.path.join(work, "data.bin")
        with open(path, "wb") as f:
            for _ in range(size):
                f.write(os.urandom(1 << 20))
        per = {}
        try:
            for kind in scenarios:
                per[kind] = kubo_anchor(size, args.trials, args.quic) if kind == "kubo-kubo" \
                    else run_scenario(kind, args, work, path, size)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        anchor = median(per.get("kubo-kubo", []), "MiB_per_s")
        for kind, rows in per.items():
            med = median(rows, "MiB_per_s")
            line = {"summary": kind, "size_MiB": size, "trials": len(rows),
                    "median_MiB_per_s": med,
                    "ratio_vs_kubo_kubo": round(med / anchor, 2) if anchor and med else None,
                    "max_dst_peak_rss_MiB": max((r["dst_peak_rss_MiB"] for r in rows
                                                 if r.get("dst_peak_rss_MiB")), default=None),
                    "max_src_peak_rss_MiB": max((r["src_peak_rss_MiB"] for r in rows
                                                 if r.get("src_peak_rss_MiB")), default=None)}
            summary.append(line)
            print(json.dumps(line), flush=True)
    print("\n%-12s %6s %10s %8s %9s %9s" % ("scenario", "MiB", "MiB/s", "ratio", "dstRSS", "srcRSS"))
    for s in summary:
        fmt = lambda v: "-" if v is None else (f"{v:.1f}" if isinstance(v, float) else str(v))
        print("%-12s %6d %10s %8s %9s %9s" % (s["summary"], s["size_MiB"], fmt(s["median_MiB_per_s"]),
              fmt(s["ratio_vs_kubo_kubo"]), fmt(s["max_dst_peak_rss_MiB"]), fmt(s["max_src_peak_rss_MiB"])))


if __name__ == "__main__":
    try:
        main()
    finally:
        for p in PROCS:
            if p.poll() is None:
                p.kill()
