#!/usr/bin/env bash
# setup-tarball-corpus.sh - the real release tarballs the tarball-recipe test
# (tests/tests/tarball_recipes.rs) and bench (tests/bench/recipe_bench.py)
# disassemble and reassemble (issue 16).
#
# Reads tests/tarball-corpus.json and makes sure every file it lists sits in
#   ${IPNIX_TARBALL_CORPUS:-$HOME/.cache/ipnix-tarball-corpus}/<origin>/<file>
# with the size and sha256 the manifest records:
#   debian  `apt-get source --download-only NAME=VERSION` against the deb-src
#           list tests/debian-sources.list, with apt's lists and cache in a
#           private directory (…/apt) so the system's apt is left alone; apt
#           checks every file against the signed Sources index. The orig
#           tarball is kept, the .dsc and debian tarball dropped. When the
#           manifest's Debian version has left the suite (a point release
#           bumps the Debian revision), any version whose index still lists
#           the same orig file with the same sha256 is used; when none does,
#           this fails naming the file and what the suite holds now.
#   pypi    `pip download --no-deps --no-binary :all: --require-hashes`.
# The manifest also includes tests/sources-corpus.json, whose files
# tests/setup-sources-corpus.sh keeps (it is run here too; idempotent).
#
# Idempotent: files already there are only re-hashed (~45 MB, about a second)
# and nothing is downloaded. Downloads go to a temp dir and are moved in only
# once verified; a mismatch fails loudly with both hashes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash tests/setup-sources-corpus.sh
export IPNIX_TARBALL_CORPUS="${IPNIX_TARBALL_CORPUS:-$HOME/.cache/ipnix-tarball-corpus}"
mkdir -p "$IPNIX_TARBALL_CORPUS"

exec python3 - tests/tarball-corpus.json tests/debian-sources.list "$IPNIX_TARBALL_CORPUS" <<'PY'
import hashlib, json, os, shutil, subprocess, sys, tempfile

manifest_path, sources_list, corpus = sys.argv[1], os.path.abspath(sys.argv[2]), sys.argv[3]
manifest = json.load(open(manifest_path))
if manifest.get("version") != 1:
    sys.exit(f"setup-tarball-corpus: {manifest_path}: unknown manifest version")
files = manifest["files"]


def say(msg):
    print(f"setup-tarball-corpus: {msg}", file=sys.stderr)


def fail(msg):
    say(msg)
    sys.exit(1)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def problems(path, entry):
    out = []
    size = os.path.getsize(path)
    if size != entry["size"]:
        out.append(f"size {size}, manifest says {entry['size']}")
    got = sha256(path)
    if got != entry["sha256"]:
        out.append(f"sha256 {got}, manifest says {entry['sha256']}")
    return out


def target(entry):
    return os.path.join(corpus, entry["origin"], entry["file"])


def install(entry, downloaded):
    bad = problems(downloaded, entry)
    if bad:
        os.unlink(downloaded)
        fail(f"MISMATCH {entry['origin']} {entry['name']} {entry['file']}: " + "; ".join(bad))
    dest = target(entry)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    shutil.move(downloaded, dest + ".tmp")
    os.replace(dest + ".tmp", dest)


def run(cmd, **kw):
    say("running " + " ".join(cmd))
    return subprocess.run(cmd, check=True, **kw)


missing = []
for entry in files:
    if entry["origin"] not in ("debian", "pypi"):
        fail(f"unknown origin {entry['origin']!r} for {entry['file']}")
    path = target(entry)
    if os.path.exists(path):
        bad = problems(path, entry)
        if not bad:
            continue
        say(f"{path} is damaged ({'; '.join(bad)}): fetching it again")
        os.unlink(path)
    missing.append(entry)

# --- Debian: apt with a private state directory --------------------------------
apt_dir = os.path.join(corpus, "apt")
apt_opts = [
    "-q",
    "-o", f"Dir::Etc::SourceList={sources_list}",
    "-o", f"Dir::Etc::SourceParts={os.path.join(apt_dir, 'sources.list.d')}",
    "-o", f"Dir::State::Lists={os.path.join(apt_dir, 'lists')}",
    "-o", f"Dir::Cache={os.path.join(apt_dir, 'cache')}",
    "-o", "Dir::Etc::Preferences=/dev/null",
    "-o", f"Dir::Etc::PreferencesParts={os.path.join(apt_dir, 'sources.list.d')}",
    "-o", "Debug::NoLocking=1",
    "-o", "Acquire::Languages=none",
]
if os.geteuid() == 0:
    # The cache lives under root's home, which apt's _apt user cannot enter.
    apt_opts += ["-o", "APT::Sandbox::User=root"]
apt_updated = False


def apt_update():
    global apt_updated
    for d in ("sources.list.d", "lists/partial", "cache/archives/partial"):
        os.makedirs(os.path.join(apt_dir, d), exist_ok=True)
    run(["apt-get", *apt_opts, "update"], stdout=sys.stderr)
    apt_updated = True


def source_records(name):
    """[(version, {file: sha256})] of source package `name` in the index."""
    out = subprocess.run(["apt-cache", *apt_opts, "showsrc", name],
                         capture_output=True, text=True)
    records, version, files_, in_sums = [], None, {}, False
    for line in out.stdout.splitlines() + [""]:
        if not line.strip():
            if version is not None:
                records.append((version, files_))
            version, files_, in_sums = None, {}, False
        elif line.startswith("Package:") and line.split()[1] != name:
            version = None  # a binary package's name matched another source
        elif line.startswith("Version:"):
            version = line.split()[1]
        elif line.startswith("Checksums-Sha256:"):
            in_sums = True
        elif in_sums and line.startswith(" "):
            digest, _size, fname = line.split()
            files_[fname] = digest
        else:
            in_sums = False
    return records


def pick_version(entry):
    """A version of entry's package whose index lists its orig file and sha256."""
    records = source_records(entry["name"])
    good = [v for v, fs in records if fs.get(entry["file"]) == entry["sha256"]]
    if entry["version"] in good:
        return entry["version"], records
    return (good[0] if good else None), records


debian = [e for e in missing if e["origin"] == "debian"]
if debian:
    if shutil.which("apt-get") is None:
        fail("apt-get is missing: the Debian part of the corpus needs a Debian-family machine")
    if not os.path.isdir(os.path.join(apt_dir, "lists")) or not any(
        n.endswith("Sources") or "Sources." in n for n in os.listdir(os.path.join(apt_dir, "lists"))
    ):
        apt_update()
    with tempfile.TemporaryDirectory(prefix="apt-source-", dir=corpus) as tmp:
        for e in debian:
            version, records = pick_version(e)
            if version is None and not apt_updated:
                apt_update()
                version, records = pick_version(e)
            if version is None:
                now = ", ".join(
                    f"{v} ({', '.join(f for f in fs if '.orig.' in f and not f.endswith('.asc'))})"
                    for v, fs in records
                ) or "no such source package"
                fail(f"debian {e['name']}: {e['file']} (sha256 {e['sha256']}) is no longer "
                     f"in the suite of {sources_list}; it now holds {e['name']} {now}. "
                     f"Pick a version it holds in {manifest_path} (file, size, sha256).")
            if version != e["version"]:
                say(f"debian {e['name']}: {e['version']} left the suite; {version} has the same "
                    f"{e['file']}: using it (update the version in {manifest_path})")
            try:
                run(["apt-get", *apt_opts, "source", "--download-only", f"{e['name']}={version}"],
                    cwd=tmp, stdout=sys.stderr)
            except subprocess.CalledProcessError as err:
                fail(f"debian {e['name']}={version}: `apt-get source` failed ({err.returncode}) "
                     f"fetching {e['file']} from the mirror of {sources_list} (see apt's message above)")
            got = os.path.join(tmp, e["file"])
            if not os.path.exists(got):
                fail(f"apt-get source {e['name']}={version} did not download {e['file']}")
            install(e, got)
            for leftover in os.listdir(tmp):
                os.unlink(os.path.join(tmp, leftover))

# --- PyPI -------------------------------------------------------------------------
pypi = [e for e in missing if e["origin"] == "pypi"]
if pypi:
    with tempfile.TemporaryDirectory(prefix="pip-", dir=corpus) as tmp:
        req = os.path.join(tmp, "requirements.txt")
        with open(req, "w") as f:
            for e in pypi:
                f.write(f"{e['name']}=={e['version']} --hash=sha256:{e['sha256']}\n")
        out = os.path.join(tmp, "dl")
        run(["pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
             "--require-hashes", "-r", req, "-d", out], stdout=sys.stderr)
        for e in pypi:
            install(e, os.path.join(out, e["file"]))

total = sum(e["size"] for e in files)
say(f"{len(files)} files, {total} bytes, verified in {corpus}"
    + (f" ({len(missing)} fetched)" if missing else "")
    + f"; with {', '.join(manifest.get('include', []))}")
PY
