#!/usr/bin/env python3
"""recipe_bench.py - tarballs as trees (issue 16): `ipnix sources
disassemble`/`reassemble` against Debian's `pristine-tar` (gendelta/gentar),
side by side in one run on the same real corpus (tests/tarball-corpus.json and
the sources corpus it includes; fetch it with tests/setup-tarball-corpus.sh).
Ratios are printed, never asserted. Needs a release ipnix and pristine-tar
(installed here with apt-get when missing and run as root):
    cargo build --release -p ipnix-node --bin ipnix
    tests/setup-tarball-corpus.sh
    ../shared/peers/sandbox python3 tests/bench/recipe_bench.py

Sections (--sections, default recipes,storage):
  recipes  per file: ours exact / pristine-tar exact, recipe bytes against
           pristine-tar's delta (`pristine-tar gendelta`), time to disassemble
           (ours: tree stored in the repo + recipe) against gendelta, time to
           reassemble (ours: from the repo, verified, to a file) against
           `pristine-tar gentar` (in the unpacked tree); then the summary and
           the issue's goal lines. Each time is the median of --trials runs.
  storage  two neighbouring releases of one project (docutils 0.20 and
           0.20.1, PyPI sdists) disassembled as flat tarballs, plus the
           recursive twin of 0.20.1 (`sources add --file … --unpack`, its NAR
           hash computed here): bytes on disk of the repo against the three
           files' sizes, and against today's storage (both tarballs as plain
           files via `sources add --file`, same twin).
  mirror   the largest corpus tarball added with `sources add --file`
           (kept as tree + recipe, DESIGN.md I-35): the daemon's GET
           /sha256/<hex> the first time (a rebuild) and again (from the
           bounded cache of rebuilt tarballs), against the same GET of a
           plain file of the same size (random bytes, kept as bytes).
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
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TESTS = os.path.join(ROOT, "tests")


def say(msg=""):
    print(msg, flush=True)


def load():
    return "%.2f %.2f %.2f" % os.getloadavg()


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def timed(cmd, cwd=None):
    """Runs cmd; returns (seconds, CompletedProcess)."""
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True)
    return time.monotonic() - start, proc


def err_text(proc):
    return proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["(no message)"]


# --- corpus ------------------------------------------------------------------------


def corpus_files():
    """[(label dict)] for every corpus file present; exits naming what is missing."""
    tarball_dir = os.environ.get("IPNIX_TARBALL_CORPUS") or os.path.expanduser("~/.cache/ipnix-tarball-corpus")
    sources_dir = os.environ.get("IPNIX_CORPUS") or os.path.expanduser("~/.cache/ipnix-corpus")
    manifest = json.load(open(os.path.join(TESTS, "tarball-corpus.json")))
    files = []
    for e in manifest["files"]:
        files.append(dict(e, path=os.path.join(tarball_dir, e["origin"], e["file"])))
    if "sources-corpus.json" in manifest.get("include", []):
        for e in json.load(open(os.path.join(TESTS, "sources-corpus.json")))["files"]:
            name = e["file"]
            fmt = "zip" if name.endswith(".zip") else "tar.gz"
            made_by = {"pypi": "setuptools", "npm": "npm-pack"}.get(e["registry"], "cargo-package")
            files.append(
                dict(
                    origin=e["registry"],
                    name=e["name"],
                    version=e["version"],
                    file=name,
                    format=fmt,
                    made_by=made_by,
                    size=e["size"],
                    sha256=e["sha256"],
                    path=os.path.join(sources_dir, e["registry"], name),
                )
            )
    missing = [f["path"] for f in files if not os.path.exists(f["path"])]
    if missing:
        raise SystemExit(f"recipe_bench: {len(missing)} corpus files missing (first {missing[0]}): run tests/setup-tarball-corpus.sh")
    return files


# --- ours --------------------------------------------------------------------------


def ipnix_json(ipnix, repo, args):
    t, proc = timed([ipnix, "--repo", repo, "--json", *args])
    if proc.returncode != 0:
        return t, None, " ".join(err_text(proc))
    return t, json.loads(proc.stdout.decode().strip().splitlines()[-1]), None


def ours(ipnix, repo, f, work, trials):
    """Disassemble + reassemble f; returns a result dict."""
    copy = os.path.join(work, f["file"])
    shutil.copyfile(f["path"], copy)
    took, made, err = ipnix_json(ipnix, repo, ["sources", "disassemble", copy])
    os.unlink(copy)
    if made is None:
        return dict(ok=False, error=f"disassemble: {err}")
    res = dict(
        disassemble=took,
        recipe=made["recipe"],
        recipe_bytes=made["recipe_bytes"],
        fallbacks=made.get("fallbacks", []),
        format=made.get("format", "?"),
    )
    times, exact = [], True
    for _ in range(trials):
        out = os.path.join(work, "ours.out")
        took, done, err = ipnix_json(ipnix, repo, ["sources", "reassemble", made["recipe"], "-o", out])
        if done is None:
            return dict(res, ok=False, error=f"reassemble: {err}")
        times.append(took)
        exact = exact and os.path.exists(out) and sha256_file(out) == f["sha256"]
        if os.path.exists(out):
            os.unlink(out)
    return dict(res, ok=exact, reassemble=statistics.median(times), error=None if exact else "bytes differ")


# --- pristine-tar -------------------------------------------------------------------


def ensure_pristine_tar():
    if shutil.which("pristine-tar"):
        return
    if os.geteuid() != 0:
        raise SystemExit("recipe_bench: pristine-tar is missing (apt-get install pristine-tar)")
    say("recipe_bench: installing pristine-tar (Debian package)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "pristine-tar"]
    if subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL, check=True)
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, check=True)


def pristine(f, work, trials):
    """gendelta + gentar of f; returns a result dict (ok False with why when it cannot)."""
    if f["format"] == "zip":
        return dict(ok=False, error="pristine-tar handles tarballs only")
    d = tempfile.mkdtemp(prefix="pt-", dir=work)
    try:
        tarball = os.path.join(d, f["file"])
        shutil.copyfile(f["path"], tarball)
        delta = os.path.join(d, "delta")
        took, proc = timed(["pristine-tar", "gendelta", tarball, delta], cwd=d)
        if proc.returncode != 0:
            return dict(ok=False, error="gendelta: " + " ".join(err_text(proc)))
        res = dict(gendelta=took, delta_bytes=os.path.getsize(delta))
        tree = os.path.join(d, "tree")
        os.makedirs(tree)
        subprocess.run(["tar", "-xf", tarball, "-C", tree], check=True, stderr=subprocess.DEVNULL)
        os.unlink(tarball)
        top = os.listdir(tree)
        cwd = os.path.join(tree, top[0]) if len(top) == 1 and os.path.isdir(os.path.join(tree, top[0])) else tree
        times, exact = [], True
        for _ in range(trials):
            out = os.path.join(d, "pt.out")
            took, proc = timed(["pristine-tar", "gentar", delta, out], cwd=cwd)
            if proc.returncode != 0:
                return dict(res, ok=False, error="gentar: " + " ".join(err_text(proc)))
            times.append(took)
            exact = exact and sha256_file(out) == f["sha256"]
            os.unlink(out)
        return dict(res, ok=exact, gentar=statistics.median(times), error=None if exact else "bytes differ")
    finally:
        shutil.rmtree(d, ignore_errors=True)


# --- sections ------------------------------------------------------------------------


def fmt_s(x):
    return "-" if x is None else f"{x:.2f}"


def section_recipes(args, work, ipnix, files):
    ensure_pristine_tar()
    repo = os.path.join(work, "repo")
    subprocess.run([ipnix, "--repo", repo, "init"], check=True, stdout=subprocess.DEVNULL)
    say(
        f"{'file':<34} {'format':<7} {'bytes':>9} | {'ours':<5} {'recipe':>7} {'pt':<5} {'delta':>7} {'d/r':>5} | "
        f"{'disasm':>6} {'gendlt':>6} | {'reasm':>6} {'gentar':>6} {'x':>5} | fallbacks / errors"
    )
    rows = []
    for f in files:
        o = ours(ipnix, repo, f, work, args.trials)
        p = pristine(f, work, args.trials) if not args.no_pristine_tar else dict(ok=False, error="skipped")
        rows.append((f, o, p))
        ratio = f"{p['delta_bytes'] / o['recipe_bytes']:.1f}" if o.get("recipe_bytes") and p.get("delta_bytes") else "-"
        speed = f"{p['gentar'] / o['reassemble']:.1f}" if o.get("reassemble") and p.get("gentar") else "-"
        notes = ",".join(o.get("fallbacks") or []) or "-"
        for who, r in (("ours", o), ("pt", p)):
            if r.get("error"):
                notes += f"; {who}: {r['error'][:120]}"
        say(
            f"{f['file'][:34]:<34} {f['format']:<7} {f['size']:>9} | {'yes' if o['ok'] else 'NO':<5} "
            f"{o.get('recipe_bytes', '-'):>7} {'yes' if p['ok'] else 'NO':<5} {p.get('delta_bytes', '-'):>7} {ratio:>5} | "
            f"{fmt_s(o.get('disassemble')):>6} {fmt_s(p.get('gendelta')):>6} | {fmt_s(o.get('reassemble')):>6} "
            f"{fmt_s(p.get('gentar')):>6} {speed:>5} | {notes}"
        )
    n = len(rows)
    ours_exact = sum(1 for _, o, _ in rows if o["ok"])
    pt_exact = sum(1 for _, _, p in rows if p["ok"])
    pt_tried = sum(1 for f, _, _ in rows if f["format"] != "zip")
    recipes = [o["recipe_bytes"] for _, o, _ in rows if o["ok"]]
    deltas = [p["delta_bytes"] for _, _, p in rows if p["ok"]]
    both = [(f, o, p) for f, o, p in rows if o["ok"] and p["ok"]]
    total_bytes = sum(f["size"] for f, _, _ in both)
    say()
    say(f"recipes: {n} files ({total_bytes / 1e6:.1f} MB where both are exact); load {load()}")
    say(f"  exact: ipnix {ours_exact}/{n}, pristine-tar {pt_exact}/{pt_tried} (it does not handle zip)")
    if both:
        mr = statistics.median(o["recipe_bytes"] for _, o, _ in both)
        md = statistics.median(p["delta_bytes"] for _, _, p in both)
        tr = sum(o["recipe_bytes"] for _, o, _ in both)
        td = sum(p["delta_bytes"] for _, _, p in both)
        say(
            f"  on the {len(both)} files both rebuild: median recipe {mr:.0f} B vs median delta {md:.0f} B "
            f"(ratio {md / max(mr, 1):.1f}x); total {tr} B ({100 * tr / total_bytes:.2f}% of the tarballs) "
            f"vs {td} B ({100 * td / total_bytes:.2f}%)"
        )
        dis = sum(o["disassemble"] for _, o, _ in both)
        gd = sum(p["gendelta"] for _, _, p in both)
        ra = sum(o["reassemble"] for _, o, _ in both)
        gt = sum(p["gentar"] for _, _, p in both)
        say(
            f"  time, total: disassemble {dis:.1f} s vs gendelta {gd:.1f} s ({gd / dis:.1f}x); "
            f"reassemble {ra:.1f} s ({total_bytes / ra / 1e6:.1f} MB/s) vs gentar {gt:.1f} s "
            f"({total_bytes / gt / 1e6:.1f} MB/s; {gt / ra:.1f}x)"
        )
        speedups = sorted(p["gentar"] / o["reassemble"] for _, o, p in both)
        say(
            f"  reassemble speed-up over gentar per file: min {speedups[0]:.1f}x, "
            f"median {statistics.median(speedups):.1f}x, max {speedups[-1]:.1f}x"
        )
        slower = [f["file"] for f, o, p in both if o["reassemble"] >= p["gentar"]]
        say("goals (issue 16):")
        tars = [o for f, o, _ in rows if f["format"] != "zip"]
        tar_exact = sum(1 for o in tars if o["ok"])
        say(
            f"  every file exact: {'MET' if ours_exact == n else 'NOT MET'} ({ours_exact}/{n}; "
            f"tarballs {tar_exact}/{len(tars)}, zip {ours_exact - tar_exact}/{n - len(tars)})"
        )
        say(
            f"  median recipe <= half of pristine-tar's median delta: "
            f"{'MET' if mr <= md / 2 else 'NOT MET'} ({mr:.0f} B vs {md / 2:.0f} B)"
        )
        say(
            f"  reassembly faster than gentar on every file: {'MET' if not slower else 'NOT MET'}"
            + (f" (slower on {', '.join(slower)})" if slower else f" ({len(both)}/{len(both)})")
        )
    fallbacks = {}
    for _, o, _ in rows:
        for layer in o.get("fallbacks") or []:
            fallbacks[layer] = fallbacks.get(layer, 0) + 1
    say(f"  fallbacks by layer: {fallbacks or 'none'}")
    shutil.rmtree(repo, ignore_errors=True)


def nar_sha256(path):
    """sha256 of the NAR serialisation of `path` (what a recursive fixed-output hash covers)."""
    h = hashlib.sha256()

    def s(data):
        if isinstance(data, str):
            data = data.encode()
        h.update(struct.pack("<Q", len(data)))
        h.update(data)
        h.update(b"\0" * (-len(data) % 8))

    def node(p):
        st = os.lstat(p)
        s("(")
        s("type")
        if os.path.islink(p):
            s("symlink")
            s("target")
            s(os.fsencode(os.readlink(p)))
        elif os.path.isdir(p):
            s("directory")
            for name in sorted(os.listdir(os.fsencode(p))):
                s("entry")
                s("(")
                s("name")
                s(name)
                s("node")
                node(os.path.join(os.fsencode(p), name))
                s(")")
        else:
            s("regular")
            if st.st_mode & 0o100:
                s("executable")
                s("")
            s("contents")
            size = st.st_size
            h.update(struct.pack("<Q", size))
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            h.update(b"\0" * (-size % 8))
        s(")")

    s("nix-archive-1")
    node(os.fsencode(path))
    return h.hexdigest()


def stripped_root(tarball, work):
    """A temp dir with the tarball unpacked, its root (fetchzip's stripRoot) and unpacked size."""
    d = tempfile.mkdtemp(prefix="unpacked-", dir=work)
    subprocess.run(["tar", "-xf", tarball, "-C", d], check=True)
    top = os.listdir(d)
    root = os.path.join(d, top[0]) if len(top) == 1 and os.path.isdir(os.path.join(d, top[0])) else d
    size = sum(os.lstat(os.path.join(dp, n)).st_size for dp, _, ns in os.walk(root) for n in ns)
    return d, root, size


def disk_bytes(path):
    """Bytes the directory takes on disk (allocated blocks), and its apparent size."""
    alloc = apparent = 0
    for dp, _, names in os.walk(path):
        for n in names:
            st = os.lstat(os.path.join(dp, n))
            alloc += st.st_blocks * 512
            apparent += st.st_size
    return alloc, apparent


def section_storage(args, work, ipnix, files):
    by_name = {f["file"]: f for f in files}
    a, b = by_name.get(args.storage_old), by_name.get(args.storage_new)
    if a is None or b is None:
        say(f"storage: {args.storage_old} or {args.storage_new} is not in the corpus; skipped")
        return
    unpack_dir, root, unpacked = stripped_root(b["path"], work)
    nar = nar_sha256(root)
    shutil.rmtree(unpack_dir, ignore_errors=True)

    def twin(repo):
        t, proc = timed(
            [ipnix, "--repo", repo, "sources", "add", "--file", b["path"], "--unpack", "--hash", "sha256:" + nar, "--name", "twin"]
        )
        if proc.returncode != 0:
            raise SystemExit("storage: sources add --unpack failed: " + " ".join(err_text(proc)))

    def measure(label, flat):
        repo = tempfile.mkdtemp(prefix="ipnix-storage-", dir=work)
        subprocess.run([ipnix, "--repo", repo, "init"], check=True, stdout=subprocess.DEVNULL)
        base, _ = disk_bytes(repo)
        steps = []
        for f in (a, b):
            flat(repo, f)
            steps.append(disk_bytes(repo)[0] - base - sum(steps))
        twin(repo)
        steps.append(disk_bytes(repo)[0] - base - sum(steps))
        subprocess.run([ipnix, "--repo", repo, "gc"], check=True, stdout=subprocess.DEVNULL)
        alloc, apparent = disk_bytes(repo)
        shutil.rmtree(repo, ignore_errors=True)
        return alloc - base, apparent, steps

    def disassembled(repo, f):
        t, made, err = ipnix_json(ipnix, repo, ["sources", "disassemble", f["path"]])
        if made is None:
            raise SystemExit(f"storage: disassemble {f['file']}: {err}")

    def plain(repo, f):
        t, proc = timed([ipnix, "--repo", repo, "sources", "add", "--file", f["path"], "--hash", "sha256:" + f["sha256"], "--name", "flat"])
        if proc.returncode != 0:
            raise SystemExit(f"storage: sources add --file {f['file']}: " + " ".join(err_text(proc)))

    three = a["size"] + 2 * b["size"]
    ours_total, ours_apparent, ours_steps = measure("trees", disassembled)
    flat_total, flat_apparent, flat_steps = measure("plain", plain)
    say()
    say(
        f"storage: {a['file']} ({a['size']} B) and {b['file']} ({b['size']} B) as flat sources, plus the "
        f"recursive twin of {b['name']} {b['version']} (unpacked {unpacked} B, NAR sha256:{nar[:12]}…); "
        f"the three files: {three} B"
    )
    say(
        f"  trees + recipes (sources disassemble): {ours_total} B on disk ({ours_total / three:.2f}x the three files; "
        f"apparent {ours_apparent} B); added per step: {', '.join(str(s) for s in ours_steps)} B"
    )
    say(
        f"  plain files (sources add --file):      {flat_total} B on disk ({flat_total / three:.2f}x; "
        f"apparent {flat_apparent} B); added per step: {', '.join(str(s) for s in flat_steps)} B"
    )
    say(
        f"  ratio: {flat_total / max(ours_total, 1):.2f}x less disk with trees; the twin added "
        f"{ours_steps[2]} B to the trees repo vs {flat_steps[2]} B to the plain one"
        + ("" if ours_steps[2] < flat_steps[2] / 2 else " (the twin does NOT share the disassembled tree's blobs)")
    )


def section_mirror(args, work, ipnix, files):
    # A corpus tarball added with `sources add --file` is kept as tree +
    # recipe; the daemon's GET /sha256/<hex> twice (first: reassembly;
    # second: from the cache of recent rebuilds), against the same GET of a
    # plain file of the same size (random bytes, which stay a UnixFS file).
    f = max((f for f in files if f["format"] != "zip"), key=lambda f: f["size"])
    repo = tempfile.mkdtemp(prefix="ipnix-mirror-", dir=work)
    plain_path = os.path.join(work, "plain.bin")
    with open(plain_path, "wb") as out:
        out.write(os.urandom(f["size"]))
    plain_sha = sha256_file(plain_path)
    for path, digest in ((f["path"], f["sha256"]), (plain_path, plain_sha)):
        subprocess.run(
            [ipnix, "--repo", repo, "sources", "add", "--file", path, "--hash", "sha256:" + digest],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    proc = subprocess.Popen(
        [ipnix, "--repo", repo, "daemon", "--http", "127.0.0.1:0", "--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        url = None
        for line in proc.stdout:
            if line.startswith("HTTP (") and " on " in line:
                url = line.rsplit(" on ", 1)[1].strip()
            if "daemon is ready" in line:
                break
        if url is None:
            raise SystemExit("mirror: the daemon printed no HTTP address")

        def get(digest):
            t, p = timed(["curl", "--noproxy", "*", "-sf", "-o", "/dev/null", f"{url}/sha256/{digest}"])
            if p.returncode != 0:
                raise SystemExit(f"mirror: GET /sha256/{digest} failed ({p.returncode})")
            return t

        first = get(f["sha256"])
        second = statistics.median(get(f["sha256"]) for _ in range(args.trials))
        get(plain_sha)
        plain = statistics.median(get(plain_sha) for _ in range(args.trials))
        say()
        say(
            f"mirror ({f['file']}, tree + recipe): "
            f"GET of {f['size']} B: first {first * 1000:.0f} ms, second {second * 1000:.0f} ms, "
            f"plain file {plain * 1000:.0f} ms: ratio second/plain {second / plain:.2f}"
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        shutil.rmtree(repo, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ipnix-bin", default=os.environ.get("IPNIX_BIN", os.path.join(ROOT, "target/release/ipnix")))
    p.add_argument("--sections", default="recipes,storage")
    p.add_argument("--trials", type=int, default=1, help="reassembly runs per file (median)")
    p.add_argument("--only", default="", help="comma-separated substrings of file names to keep")
    p.add_argument("--no-pristine-tar", action="store_true", help="ours only")
    p.add_argument("--storage-old", default="docutils-0.20.tar.gz")
    p.add_argument("--storage-new", default="docutils-0.20.1.tar.gz")
    p.add_argument("--work", default="/tmp/ipnix-recipe-bench")
    args = p.parse_args()
    ipnix = os.path.abspath(args.ipnix_bin)
    if not os.path.exists(ipnix):
        raise SystemExit(f"recipe_bench: {ipnix} missing: cargo build --release -p ipnix-node --bin ipnix")
    files = corpus_files()
    if args.only:
        keep = args.only.split(",")
        files = [f for f in files if any(k in f["file"] for k in keep)]
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    say(f"recipe_bench: ipnix {ipnix}; {len(files)} files, {sum(f['size'] for f in files) / 1e6:.1f} MB; load {load()}")
    try:
        sections = args.sections.split(",")
        if "recipes" in sections:
            section_recipes(args, args.work, ipnix, files)
        if "storage" in sections:
            section_storage(args, args.work, ipnix, files)
        if "mirror" in sections:
            section_mirror(args, args.work, ipnix, files)
    finally:
        shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
