#!/usr/bin/env bash
# curl.sh - the Kubo RPC API of a running ipnix daemon, as a script written
# for Kubo would call it with curl: answers, status codes and Kubo's error
# shape, including bad input. Loopback only.
#
# Usage: tests/rpc/curl.sh http://127.0.0.1:PORT WORK_DIR MAX_BODY
#   WORK_DIR  a scratch directory; MAX_BODY the daemon's --rpc-max-body
# Prints "ok: ..." or "FAIL: ..." per check and "N passed, M failed" last;
# exits non-zero on any failure. Needs curl and python3 (JSON checks).
set -uo pipefail
API="$1"; WORK="$2"; MAX_BODY="$3"
passed=0; failed=0
ok() { echo "ok: $*"; passed=$((passed + 1)); }
fail() { echo "FAIL: $*"; failed=$((failed + 1)); }
# curl to loopback only, never through a proxy.
rpc() { curl --noproxy '*' -s -o "$WORK/body" -w '%{http_code}' "$@"; }
json_get() { python3 -c "import json,sys; d=json.load(open('$WORK/body')); print($1)" 2>/dev/null; }
expect() { # name, wanted status, got status
  if [ "$3" = "$2" ]; then ok "$1 ($3)"; else fail "$1: status $3, wanted $2: $(head -c 300 "$WORK/body")"; fi
}
expect_error_shape() { # name, wanted Code
  local shape
  shape=$(json_get "d['Type'], d['Code'], bool(d['Message'])")
  if [ "$shape" = "error $2 True" ]; then ok "$1: Kubo error shape, Code $2"; else fail "$1: body is not Kubo's error shape with Code $2: $(head -c 300 "$WORK/body")"; fi
}

code=$(rpc -X POST "$API/api/v0/version"); expect "version" 200 "$code"
v=$(json_get "d['Version']"); [ -n "$v" ] && ok "version names itself ($v)" || fail "version has no Version"

code=$(rpc -X GET "$API/api/v0/version"); expect "GET instead of POST" 405 "$code"
expect_error_shape "GET instead of POST" 0

code=$(rpc -X POST "$API/api/v0/no/such/command"); expect "unknown command" 404 "$code"
expect_error_shape "unknown command" 0

code=$(rpc -X POST "$API/api/v0/cat"); expect "missing argument" 400 "$code"
expect_error_shape "missing argument" 1

code=$(rpc -X POST "$API/api/v0/block/get?arg=notacid"); expect "malformed CID" 500 "$code"
expect_error_shape "malformed CID" 0

code=$(rpc -X POST "$API/api/v0/add?cid-version=7" -F "file=@/dev/null"); expect "bad option value" 400 "$code"

code=$(rpc -X POST -H 'Origin: http://evil.example' "$API/api/v0/version"); expect "foreign Origin" 403 "$code"
code=$(rpc -X POST -H 'Host: evil.example:5001' "$API/api/v0/version"); expect "foreign Host (DNS rebinding)" 403 "$code"
code=$(rpc -X POST -H 'Sec-Fetch-Site: cross-site' "$API/api/v0/id"); expect "cross-site fetch" 403 "$code"

# add and cat with curl's multipart, Kubo's default options.
printf 'hello from curl\n' > "$WORK/hello.txt"
code=$(rpc -X POST -F "file=@$WORK/hello.txt" "$API/api/v0/add"); expect "add (multipart)" 200 "$code"
cid=$(json_get "d['Hash']"); name=$(json_get "d['Name']"); size=$(json_get "d['Size']")
[ "$name" = "hello.txt" ] && ok "add names the file" || fail "add Name is $name"
# WORK/expected-hello-cid: the CID of Kubo's default layout (CIDv0, 256 KiB,
# UnixFS leaves) for these bytes, written by the Rust test.
[ "$cid" = "$(cat "$WORK/expected-hello-cid" 2>/dev/null || echo "$cid")" ] && ok "add CID $cid" || fail "add CID $cid"
[ -n "$size" ] && ok "add Size is a string ($size)" || fail "add has no Size"
code=$(rpc -X POST "$API/api/v0/cat?arg=$cid"); expect "cat" 200 "$code"
cmp -s "$WORK/body" "$WORK/hello.txt" && ok "cat returns the bytes" || fail "cat returned other bytes"
code=$(rpc -X POST "$API/api/v0/pin/ls?arg=$cid&type=recursive"); expect "pin/ls of the add" 200 "$code"
t=$(json_get "d['Keys']['$cid']['Type']"); [ "$t" = "recursive" ] && ok "pin/ls keys the pin by the CID as added" || fail "pin/ls: $(cat "$WORK/body")"
code=$(rpc -X POST "$API/api/v0/pin/ls?arg=QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"); expect "pin/ls of an unpinned CID" 500 "$code"

# A body over --rpc-max-body is refused with a clear error, and nothing is pinned.
pins_before=$(rpc -X POST "$API/api/v0/pin/ls?type=recursive" >/dev/null; json_get "len(d['Keys'])")
head -c $((MAX_BODY + 4096)) /dev/zero > "$WORK/too-big.bin"
code=$(rpc -X POST -F "file=@$WORK/too-big.bin" "$API/api/v0/add"); expect "oversized multipart" 413 "$code"
expect_error_shape "oversized multipart" 1
grep -q "at most $MAX_BODY bytes" "$WORK/body" && ok "oversized multipart names the limit" || fail "oversized: $(cat "$WORK/body")"
# Chunked upload (no Content-Length): cut when it passes the limit.
code=$(rpc -X POST -H 'Transfer-Encoding: chunked' -F "file=@$WORK/too-big.bin" "$API/api/v0/add")
if [ "$code" = 413 ] || grep -q "at most $MAX_BODY bytes" "$WORK/body"; then ok "oversized chunked multipart refused ($code)"; else fail "oversized chunked: $code $(head -c 300 "$WORK/body")"; fi
pins_after=$(rpc -X POST "$API/api/v0/pin/ls?type=recursive" >/dev/null; json_get "len(d['Keys'])")
[ "$pins_before" = "$pins_after" ] && ok "nothing pinned by the refused uploads" || fail "pins went from $pins_before to $pins_after"

code=$(rpc -X POST "$API/api/v0/add" -H 'Content-Type: multipart/form-data; boundary=xyz' --data-binary $'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nabc')
if [ "$code" = 400 ] || { [ "$code" = 200 ] && grep -q '"Type":"error"' "$WORK/body"; }; then ok "truncated multipart is an error ($code)"; else fail "truncated multipart: $code $(head -c 300 "$WORK/body")"; fi

code=$(rpc -X POST "$API/api/v0/repo/stat?size-only=true"); expect "repo/stat" 200 "$code"
[ -n "$(json_get "d['RepoSize'], d['StorageMax']")" ] && ok "repo/stat has RepoSize and StorageMax" || fail "repo/stat: $(cat "$WORK/body")"

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
