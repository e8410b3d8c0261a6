#!/usr/bin/env python3
"""ipnix add against Kubo's add of the same bytes, in the same run.

  tests/bench/add_bench.py [--size-mib 1024] [--files 20000] [--trials 3]

Builds nothing: uses $IPNIX_BIN or target/release/ipnix (cargo build --release
-p ipnix-node --bin ipnix). Run it under ../shared/peers/sandbox (Kubo starts
a loopback-only node). Prints one JSON line per measurement and a table of
medians with ratios (Kubo seconds / ipnix seconds: > 1 means ipnix is faster).
Kubo's time includes its process start, as ipnix's does.
"""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PEERS = os.environ.get("PEERS_HOME", os.path.expanduser("~/.cache/ipnix-peers"))
IPNIX = os.environ.get("IPNIX_BIN", os.path.join(ROOT, "target/release/ipnix"))


def timed(cmd, **kw):
    t = time.monotonic()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)
    return time.monotonic() - t, out.stdout


def ipnix_add(path, profile, work):
    repo = os.path.join(work, "ipnix-repo")
    shutil.rmtree(repo, ignore_errors=True)
    subprocess.run([IPNIX, "--repo", repo, "init"], check=True, capture_output=True)
    args = [IPNIX, "--repo", repo, "add", "-Q", "--profile", profile]
    if os.path.isdir(path):
        args.append("-r")
    secs, out = timed(args + [path])
    return secs, out.strip()


def kubo_add(path, work, port):
    repo = os.path.join(work, "kubo-repo")
    cmd = [f"{PEERS}/venv/bin/python", f"{PEERS}/kubo-peer.py", "--repo", repo, "--fresh",
           "--tcp-port", str(port), "--add", path, "--exit"]
    secs, out = timed(cmd)
    cid = [json.loads(l) for l in out.splitlines() if '"added"' in l][0]["cid"]
    return secs, cid


def make_random(path, mib):
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))


def make_tree(path, files):
    os.makedirs(path)
    for i in range(files):
        d = os.path.join(path, f"d{i // 200:03}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i:05}.txt"), "wb") as f:
            f.write(os.urandom(64 + (i * 37) % 4000))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--files", type=int, default=20000)
    p.add_argument("--trials", type=int, default=3)
    a = p.parse_args()
    if not os.path.exists(IPNIX):
        sys.exit(f"no ipnix binary at {IPNIX}: cargo build --release -p ipnix-node --bin ipnix")
    work = tempfile.mkdtemp(prefix="ipnix-add-bench-")
    try:
        big = os.path.join(work, "random.bin")
        tree = os.path.join(work, "tree")
        make_random(big, a.size_mib)
        make_tree(tree, a.files)
        cases = [(f"{a.size_mib} MiB random", big), (f"{a.files} small files", tree)]
        rows = []
        for name, path in cases:
            kubo, v0, v1 = [], [], []
            for trial in range(a.trials):
                ks, kcid = kubo_add(path, work, 4700 + trial)
                s0, cid0 = ipnix_add(path, "unixfs-v0-2015", work)
                s1, cid1 = ipnix_add(path, "unixfs-v1-2025", work)
                kubo.append(ks); v0.append(s0); v1.append(s1)
                print(json.dumps({"case": name, "trial": trial, "kubo_s": round(ks, 3), "ipnix_v0_s": round(s0, 3),
                                  "ipnix_v1_s": round(s1, 3), "kubo_cid": kcid, "ipnix_v0_cid": cid0,
                                  "same_cid_as_kubo": kcid == cid0}), flush=True)
            rows.append((name, statistics.median(kubo), statistics.median(v0), statistics.median(v1)))
        print("\n| what | Kubo add | ipnix add (v0, same CID) | ratio | ipnix add (v1) | ratio |")
        print("|---|---|---|---|---|---|")
        for name, k, s0, s1 in rows:
            print(f"| {name} | {k:.2f} s | {s0:.2f} s | {k / s0:.2f}x | {s1:.2f} s | {k / s1:.2f}x |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
