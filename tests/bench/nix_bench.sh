#!/usr/bin/env bash
# nix_bench.sh - the Nix bridge against its real anchors, side by side in one
# run (ratios, never asserted times). Runs itself inside ../shared/peers/sandbox
# (a network namespace with only loopback). Needs root, Nix 2.8, nginx, curl,
# the Kubo peer (../shared/peers/setup-peers.sh) and a release ipnix:
#   cargo build --release -p ipnix-node --bin ipnix
#
#   1. import of a real tree of over 1 GiB (the stable Rust toolchain, added to
#      /nix/store once) with `ipnix nix import`, against
#      `nix-store --dump PATH | sha256sum` (reading + hashing the NAR) and
#      against Kubo 0.22 adding the same directory (kubo-peer.py --add DIR;
#      Kubo's process start is measured separately and reported);
#   2. serving: `curl -o /dev/null` of the NAR from the ipnix daemon and from
#      nginx serving a static file:// cache (compression=none) of the same
#      path, alternating, medians;
#   3. `nix copy --from` each of the two into fresh stores, alternating, medians;
#   4. dedup: the tree and a variant of it (one large file grown, two small
#      files changed, one removed, one new 3 MB file) imported into one repo:
#      block bytes and disk bytes against the sum of their NAR sizes.
# nginx is installed from Debian (apt-get) when missing, before the sandbox.
# Nix always runs with explicit (empty or loopback) substituters.
#
#   tests/bench/nix_bench.sh 2>&1 | tee nix_bench.log
#
# Env: IPNIX_BIN (default $CARGO_TARGET_DIR/release/ipnix, else target/release/ipnix), RUNS (default 3),
#      KUBO_RUNS (rounds that also run Kubo's add, default 1: it takes minutes),
#      SECTIONS (default "import copy dedup"; e.g. SECTIONS=dedup runs only that part),
#      BENCH_DIR (default /tmp/ipnix-nix-bench, wiped), TOOLCHAIN (tree to use).
set -euo pipefail
# Benchmarks never reach Software Heritage's public archive (DESIGN.md I-34).
export IPNIX_NO_SWH=1
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SHARED=${IPNIX_SHARED:-$ROOT/../shared}
if [ -z "${IPNIX_SANDBOXED:-}" ]; then
  # nginx (the Debian package) is the serving anchor; install it before the
  # sandbox cuts the network off. Idempotent: nothing happens when present.
  if ! command -v nginx >/dev/null; then
    echo "nix_bench: installing nginx (Debian package)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx >&2 \
      || { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx >&2; }
  fi
  exec "$SHARED/peers/sandbox" bash "${BASH_SOURCE[0]}" "$@"
fi
IPNIX=${IPNIX_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/ipnix}
RUNS=${RUNS:-3}
# Kubo's add of the 52,000-file tree takes minutes (about 14x ipnix): it runs
# in the first KUBO_RUNS rounds only.
KUBO_RUNS=${KUBO_RUNS:-1}
# Which parts to run (all by default): import copy dedup
SECTIONS=${SECTIONS:-import copy dedup}
want() { [[ " $SECTIONS " == *" $1 "* ]]; }
W=${BENCH_DIR:-/tmp/ipnix-nix-bench}
TOOLCHAIN=${TOOLCHAIN:-$HOME/.rustup/toolchains/stable-x86_64-unknown-linux-gnu}
PEERS_HOME=${PEERS_HOME:-$HOME/.cache/ipnix-peers}
KUBO=("$PEERS_HOME/venv/bin/python" "$PEERS_HOME/kubo-peer.py")

die() { echo "nix_bench: $*" >&2; exit 1; }
[ -x "$IPNIX" ] || die "no ipnix binary at $IPNIX (cargo build --release -p ipnix-node --bin ipnix)"
for tool in nix nix-store nginx curl python3; do command -v $tool >/dev/null || die "$tool is missing"; done
[ -x "${KUBO[0]}" ] || die "Kubo peer missing: run $SHARED/peers/setup-peers.sh"

rm -rf "$W"; mkdir -p "$W/tmp" "$W/xdg"
export TMPDIR=$W/tmp XDG_CACHE_HOME=$W/xdg
NOSUBST=(--option substituters "")

PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

now() { date +%s.%N; }
# median of the numbers on stdin
median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.3f\n", (a[NR/2]+a[NR/2+1])/2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (a+0 > 0 && b+0 > 0) printf "%.2f", a/b; else printf "-"}'; }
rmstore() { chmod -R u+w "$1" 2>/dev/null || true; rm -rf "$1"; }
# timed CMD...: runs it (stdout in $W/last.out) and sets $s (seconds) and $rss (max RSS, KiB)
timed() {
  local t0 t1
  t0=$(now)
  /usr/bin/time -f "%M" -o "$W/rss" "$@" > "$W/last.out" 2> "$W/last.err" || {
    cat "$W/last.err" >&2; die "failed: $*"; }
  t1=$(now)
  s=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b-a}')
  rss=$(tail -1 "$W/rss")
}

# --- the tree -----------------------------------------------------------------
CACHE_NOTE=$HOME/.cache/ipnix-bench/toolchain-store-path
P=""
if [ -f "$CACHE_NOTE" ] && nix-store --check-validity "$(cat "$CACHE_NOTE")" 2>/dev/null; then
  P=$(cat "$CACHE_NOTE")
else
  echo "adding $TOOLCHAIN to /nix/store (once)..."
  P=$(nix-store --add "$TOOLCHAIN" "${NOSUBST[@]}")
  mkdir -p "$(dirname "$CACHE_NOTE")"; echo "$P" > "$CACHE_NOTE"
fi
NARSIZE=$(nix path-info --json "$P" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["narSize"])')
FILES=$(find "$P" -type f | wc -l)
echo "tree: $P  NAR $NARSIZE bytes, $FILES files; runs: $RUNS (Kubo add: $KUBO_RUNS); ipnix: $IPNIX"
gb() { awk -v b="$NARSIZE" -v s="$1" 'BEGIN {printf "%.2f", b/s/1e9}'; }

# --- 1. import ------------------------------------------------------------------
I=- D=- K=- CI=- CN=- PI=- PN=- BLOCKB=- SUM=-
if want import; then
echo; echo "== 1. import (load $(cut -d' ' -f1-3 /proc/loadavg); alternating: nix-store --dump|sha256sum, ipnix nix import, kubo add)"
: > "$W/dump.t"; : > "$W/ipnix.t"; : > "$W/kubo.t"; : > "$W/kubo0.t"
for i in $(seq "$RUNS"); do
  timed bash -c "nix-store --dump '$P' | sha256sum"
  echo "$s" >> "$W/dump.t"
  rm -rf "$W/repo"
  timed "$IPNIX" --repo "$W/repo" nix import "$P"
  echo "$s" >> "$W/ipnix.t"; echo "$rss" >> "$W/ipnix.rss"
  printf '  run %d: dump|sha256sum %ss, ipnix import %ss (max RSS %s KiB)' "$i" \
    "$(tail -1 "$W/dump.t")" "$s" "$rss"
  if [ "$i" -gt "$KUBO_RUNS" ]; then echo; continue; fi
  rm -rf "$W/kubo"
  timed "${KUBO[@]}" --repo "$W/kubo" --tcp-port 4971 --fresh --add "$P" --exit
  echo "$s" >> "$W/kubo.t"
  grep -q '"cid": "Qm' "$W/last.out" || die "kubo add gave no CID: $(cat "$W/last.out")"
  kubo_add=$s
  timed "${KUBO[@]}" --repo "$W/kubo" --tcp-port 4971 --exit
  s0=$s; s=$kubo_add
  echo "$s0" >> "$W/kubo0.t"
  printf ', kubo add %ss (start+stop alone %ss)\n' "$s" "$s0"
done
rm -rf "$W/kubo"
D=$(median < "$W/dump.t"); I=$(median < "$W/ipnix.t"); K=$(median < "$W/kubo.t"); K0=$(median < "$W/kubo0.t")
KNET=$(awk -v a="$K" -v b="$K0" 'BEGIN {printf "%.3f", a-b}')
echo "  median: dump|sha256sum ${D}s ($(gb "$D") GB/s), ipnix ${I}s ($(gb "$I") GB/s), kubo add ${K}s (${KNET}s without its start/stop)"
echo "  RATIO import speed (anchor time / ipnix time): vs dump|sha256sum $(ratio "$D" "$I"); vs kubo add $(ratio "$K" "$I") (without Kubo start/stop: $(ratio "$KNET" "$I"))"
"$IPNIX" --repo "$W/repo" repo stat | sed 's/^/  repo: /'
fi

# --- 2+3. serving and nix copy ------------------------------------------------
if want copy; then
[ -d "$W/repo" ] || "$IPNIX" --repo "$W/repo" nix import "$P" > /dev/null
echo; echo "== (load $(cut -d' ' -f1-3 /proc/loadavg)) 2. serving the NAR (curl -o /dev/null), 3. nix copy --from into fresh stores"
nix copy --to "file://$W/www/cache?compression=none" "$P" "${NOSUBST[@]}"
H=$(basename "$P" | cut -c1-32)
NGINX_NAR=$(sed -n 's/^URL: //p' "$W/www/cache/$H.narinfo")
mkdir -p "$W/nginx/logs"
NGINX_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$W/nginx/nginx.conf" <<EOF
daemon off;
worker_processes 2;
pid $W/nginx/nginx.pid;
error_log $W/nginx/logs/error.log;
events { worker_connections 64; }
http {
  access_log off;
  sendfile on; tcp_nopush on;
  client_body_temp_path $W/nginx/tmp; proxy_temp_path $W/nginx/tmp;
  fastcgi_temp_path $W/nginx/tmp; uwsgi_temp_path $W/nginx/tmp; scgi_temp_path $W/nginx/tmp;
  types { text/x-nix-narinfo narinfo; }
  default_type application/octet-stream;
  server { listen 127.0.0.1:$NGINX_PORT; root $W/www/cache; }
}
EOF
mkdir -p "$W/nginx/tmp"
nginx -c "$W/nginx/nginx.conf" -p "$W/nginx" &
PIDS+=($!)
"$IPNIX" --repo "$W/repo" daemon --http 127.0.0.1:0 --listen /ip4/127.0.0.1/tcp/0 --no-mdns > "$W/daemon.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 200); do [ -f "$W/repo/api" ] && break; sleep 0.1; done
[ -f "$W/repo/api" ] || die "ipnix daemon did not start: $(cat "$W/daemon.log")"
IPNIX_URL=$(cat "$W/repo/api")
NGINX_URL=http://127.0.0.1:$NGINX_PORT
for _ in $(seq 100); do curl -sf "$NGINX_URL/nix-cache-info" >/dev/null && break; sleep 0.1; done
curl -sf "$NGINX_URL/nix-cache-info" >/dev/null || die "nginx did not start: $(cat "$W/nginx/logs/error.log")"
IPNIX_NAR=$(curl -sf "$IPNIX_URL/$H.narinfo" | sed -n 's/^URL: //p')
[ -n "$IPNIX_NAR" ] || die "ipnix serves no narinfo for $P"
echo "  nginx $NGINX_URL/$NGINX_NAR"; echo "  ipnix $IPNIX_URL/$IPNIX_NAR"
curl -s -o /dev/null "$NGINX_URL/$NGINX_NAR"   # warm the page cache for nginx's file
: > "$W/curl-nginx.t"; : > "$W/curl-ipnix.t"
for i in $(seq "$RUNS"); do
  for who in nginx ipnix; do
    if [ $who = nginx ]; then url=$NGINX_URL/$NGINX_NAR; else url=$IPNIX_URL/$IPNIX_NAR; fi
    out=$(curl -sf -o /dev/null -w '%{time_total} %{size_download}' "$url") || die "curl $url failed"
    read -r s size <<< "$out"
    [ "$size" = "$NARSIZE" ] || die "$who served $size bytes, expected $NARSIZE"
    echo "$s" >> "$W/curl-$who.t"
  done
  echo "  run $i: curl nginx $(tail -1 "$W/curl-nginx.t")s, ipnix $(tail -1 "$W/curl-ipnix.t")s"
done
CN=$(median < "$W/curl-nginx.t"); CI=$(median < "$W/curl-ipnix.t")
echo "  median: nginx ${CN}s ($(gb "$CN") GB/s), ipnix ${CI}s ($(gb "$CI") GB/s)"
echo "  RATIO serving speed (nginx time / ipnix time): $(ratio "$CN" "$CI")"
echo "  ipnix daemon max RSS so far: $(grep VmHWM /proc/"${PIDS[1]}"/status 2>/dev/null | awk '{print $2, $3}')"

: > "$W/copy-nginx.t"; : > "$W/copy-ipnix.t"
for i in $(seq "$RUNS"); do
  for who in nginx ipnix; do
    if [ $who = nginx ]; then url=$NGINX_URL; else url=$IPNIX_URL; fi
    rmstore "$W/store-copy"; rm -rf "$XDG_CACHE_HOME"; sync
    timed nix copy --no-check-sigs --from "$url" --to "$W/store-copy" "$P" "${NOSUBST[@]}"
    echo "$s" >> "$W/copy-$who.t"
  done
  echo "  run $i: nix copy from nginx $(tail -1 "$W/copy-nginx.t")s, from ipnix $(tail -1 "$W/copy-ipnix.t")s"
done
rmstore "$W/store-copy"
PN=$(median < "$W/copy-nginx.t"); PI=$(median < "$W/copy-ipnix.t")
echo "  median: nix copy from nginx ${PN}s, from ipnix ${PI}s"
echo "  RATIO nix copy speed (nginx time / ipnix time): $(ratio "$PN" "$PI")"
echo "  ipnix daemon max RSS: $(grep VmHWM /proc/"${PIDS[1]}"/status 2>/dev/null | awk '{print $2, $3}')"
cleanup; PIDS=()
fi

# --- 4. dedup -------------------------------------------------------------------
if want dedup; then
echo; echo "== 4. dedup: the tree and a variant of it that shares most files (load $(cut -d' ' -f1-3 /proc/loadavg))"
# The variant: one large file grows at its end, two small files change, one
# file goes, one new 3 MB file appears (what a point release looks like).
mkdir -p "$W/v"; cp -a "$P" "$W/v/variant-2"; chmod -R u+w "$W/v/variant-2"
V2=$W/v/variant-2
# (sed, not head: head would close the pipe early and pipefail would stop the script)
big=$(find "$V2" -type f -size +4M | sort | sed -n 1p)
small=$(find "$V2" -type f -size -64k | sort | sed -n 1,2p)
head -c 100000 /dev/urandom >> "$big"
for f in $small; do echo "changed" >> "$f"; done
rm -f "$(find "$V2" -type f | sort | sed -n 5p)"
head -c 3000000 /dev/urandom > "$V2/new-file.bin"
P2=$(nix-store --add "$V2" "${NOSUBST[@]}")
rm -rf "$W/v"
N1=$NARSIZE
N2=$(nix path-info --json "$P2" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["narSize"])')
rm -rf "$W/repo-dedup"
"$IPNIX" --repo "$W/repo-dedup" nix import "$P" > /dev/null
STAT1=$("$IPNIX" --repo "$W/repo-dedup" --json repo stat)
"$IPNIX" --repo "$W/repo-dedup" nix import "$P2" > /dev/null
STAT=$("$IPNIX" --repo "$W/repo-dedup" --json repo stat)
echo "  repo stat, tree alone: $STAT1"
echo "  repo stat, both:       $STAT"
field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }
BLOCKB1=$(field "$STAT1" block_bytes); BLOCKB=$(field "$STAT" block_bytes); DISKB=$(field "$STAT" disk_bytes)
SUM=$((N1 + N2))
echo "  NAR sizes: $N1 + $N2 = $SUM bytes"
echo "  block bytes: tree alone $BLOCKB1, both $BLOCKB (the variant added $((BLOCKB - BLOCKB1))); disk bytes, both: $DISKB"
echo "  RATIO dedup: block bytes / sum of NARs = $(ratio "$BLOCKB" "$SUM"), disk bytes / sum of NARs = $(ratio "$DISKB" "$SUM"), block bytes / one NAR = $(ratio "$BLOCKB" "$N1")"
nix-store --delete "$P2" > /dev/null 2>&1 || true
rm -rf "$W/repo-dedup"
fi

echo; echo "== summary (load at end $(cut -d' ' -f1-3 /proc/loadavg))"
printf '  %-44s %10s %10s %7s\n' "what" "ipnix s" "anchor s" "ratio"
printf '  %-44s %10s %10s %7s\n' "import vs nix-store --dump|sha256sum (speed)" "$I" "$D" "$(ratio "$D" "$I")"
printf '  %-44s %10s %10s %7s\n' "import vs kubo add (speed)" "$I" "$K" "$(ratio "$K" "$I")"
printf '  %-44s %10s %10s %7s\n' "curl NAR vs nginx (speed)" "$CI" "$CN" "$(ratio "$CN" "$CI")"
printf '  %-44s %10s %10s %7s\n' "nix copy --from vs nginx (speed)" "$PI" "$PN" "$(ratio "$PN" "$PI")"
printf '  %-44s %10s %10s %7s\n' "dedup: block bytes / sum of NAR sizes" "$BLOCKB" "$SUM" "$(ratio "$BLOCKB" "$SUM")"
echo; echo "nix_bench: done (scratch in $W)"
