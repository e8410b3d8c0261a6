#!/usr/bin/env bash
# setup-sources-corpus.sh - the real registry tarballs the sources tests serve
# from a loopback upstream (tests/upstream/upstream.py, tests/src/corpus.rs).
#
# Reads tests/sources-corpus.json and makes sure every file it lists sits in
#   ${IPNIX_CORPUS:-$HOME/.cache/ipnix-corpus}/<registry>/<file>
# with the size, sha256 and published hash the manifest records:
#   pypi      `pip download --no-deps --no-binary :all: --require-hashes`
#             (pip itself checks the sdist against the published sha256);
#   npm       `npm pack NAME@VERSION` (the registry's tarball; sha512 SRI
#             from `npm view NAME@VERSION dist.integrity`);
#   crates.io `.crate` files from cargo's download cache, after
#             `cargo fetch --locked` of this workspace when one is missing
#             (checksums from Cargo.lock).
# Idempotent: files already there are only re-hashed (~6 MB, well under a
# second). Downloads go to a temp dir and are moved in only once verified.
# Any mismatch (a registry serving different bytes, a damaged cache) fails
# loudly with both hashes and removes the bad file.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export IPNIX_CORPUS="${IPNIX_CORPUS:-$HOME/.cache/ipnix-corpus}"
mkdir -p "$IPNIX_CORPUS"

exec python3 - tests/sources-corpus.json "$IPNIX_CORPUS" <<'PY'
import base64, glob, hashlib, json, os, shutil, subprocess, sys, tempfile

manifest_path, corpus = sys.argv[1], sys.argv[2]
manifest = json.load(open(manifest_path))
if manifest.get("version") != 1:
    sys.exit(f"setup-sources-corpus: {manifest_path}: unknown manifest version")
files = manifest["files"]


def say(msg):
    print(f"setup-sources-corpus: {msg}", file=sys.stderr)


def digest(path, algo):
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.digest()


def problems(path, entry):
    """Why `path` is not the manifest's file (empty when it is)."""
    out = []
    size = os.path.getsize(path)
    if size != entry["size"]:
        out.append(f"size {size}, manifest says {entry['size']}")
    got = digest(path, "sha256").hex()
    if got != entry["sha256"]:
        out.append(f"sha256 {got}, manifest says {entry['sha256']}")
    published = entry["published_hash"]
    if "-" in published:  # SRI, as npm publishes it
        algo, b64 = published.split("-", 1)
        got = f"{algo}-" + base64.b64encode(digest(path, algo)).decode()
    else:  # sha256 hex, as PyPI and Cargo.lock publish it
        got = digest(path, "sha256").hex()
    if got != published:
        out.append(f"hash {got}, the registry publishes {published}")
    return out


def target(entry):
    return os.path.join(corpus, entry["registry"], entry["file"])


def install(entry, downloaded):
    """Checks `downloaded` and moves it into place; fails loudly otherwise."""
    bad = problems(downloaded, entry)
    if bad:
        os.unlink(downloaded)
        say(f"MISMATCH {entry['registry']} {entry['name']} {entry['version']}:")
        for p in bad:
            say(f"  {p}")
        sys.exit(1)
    dest = target(entry)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    shutil.move(downloaded, dest + ".tmp")
    os.replace(dest + ".tmp", dest)


def run(cmd, **kw):
    say("running " + " ".join(cmd))
    subprocess.run(cmd, check=True, stdout=sys.stderr, **kw)


missing = []
for entry in files:
    path = target(entry)
    if os.path.exists(path):
        bad = problems(path, entry)
        if not bad:
            continue
        say(f"{path} is damaged ({'; '.join(bad)}): fetching it again")
        os.unlink(path)
    missing.append(entry)

with tempfile.TemporaryDirectory(prefix="ipnix-corpus-", dir=corpus) as tmp:
    pypi = [e for e in missing if e["registry"] == "pypi"]
    if pypi:
        req = os.path.join(tmp, "requirements.txt")
        with open(req, "w") as f:
            for e in pypi:
                f.write(f"{e['name']}=={e['version']} --hash=sha256:{e['published_hash']}\n")
        out = os.path.join(tmp, "pypi")
        run(["pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
             "--require-hashes", "-r", req, "-d", out])
        for e in pypi:
            install(e, os.path.join(out, e["file"]))

    for e in (e for e in missing if e["registry"] == "npm"):
        out = os.path.join(tmp, "npm")
        os.makedirs(out, exist_ok=True)
        run(["npm", "pack", f"{e['name']}@{e['version']}", "--pack-destination", out,
             "--ignore-scripts", "--silent"])
        install(e, os.path.join(out, e["file"]))

    crates = [e for e in missing if e["registry"] == "crates.io"]
    if crates:
        cargo_home = os.environ.get("CARGO_HOME") or os.path.expanduser("~/.cargo")

        def cached(e):
            hits = glob.glob(os.path.join(cargo_home, "registry", "cache", "*", e["file"]))
            return hits[0] if hits else None

        if any(cached(e) is None for e in crates):
            run(["cargo", "fetch", "--locked"])
        for e in crates:
            src = cached(e)
            if src is None:
                say(f"{e['file']} is not in {cargo_home}/registry/cache after `cargo fetch` "
                    "(is it still in Cargo.lock?)")
                sys.exit(1)
            copy = os.path.join(tmp, e["file"])
            shutil.copyfile(src, copy)
            install(e, copy)

total = sum(e["size"] for e in files)
say(f"{len(files)} files, {total} bytes, verified in {corpus}"
    + (f" ({len(missing)} fetched)" if missing else ""))
PY
