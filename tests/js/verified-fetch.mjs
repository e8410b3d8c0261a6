#!/usr/bin/env node
// Reads ipfs://CID with the real @helia/verified-fetch client through one
// trustless gateway, with no delegated routers, no libp2p and no DNS, and
// writes the body to OUT. Used by node/tests/net_gateway.rs, which copies this
// file next to the npm install ($PEERS_HOME/verified-fetch) so the imports
// resolve there.
//
//   node verified-fetch.mjs http://127.0.0.1:PORT CID OUT
//
// stdout: one JSON line {"status":..,"bytes":..,"content_type":..}.

// Node 20 shim (the Helia 7 stack calls Promise.withResolvers, Node 22+).
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function () {
    let resolve, reject
    const promise = new this((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}
// undici 8 (pulled in by @libp2p/http, unused here) binds zlib's zstd at load
// time, which Node 20 lacks; a stub that refuses keeps the import working.
{
  const { createRequire } = await import('node:module')
  const zlib = createRequire(import.meta.url)('node:zlib')
  if (typeof zlib.createZstdDecompress !== 'function') {
    zlib.createZstdDecompress = () => { throw new Error('zstd is not available in this Node') }
  }
}
const { createHeliaLight } = await import('helia')
const { withHTTP } = await import('@helia/http')
const { createVerifiedFetchWithHelia } = await import('@helia/verified-fetch')
const { dns } = await import('@multiformats/dns')
const fs = await import('node:fs')

const [gateway, cid, out] = process.argv.slice(2)
if (out == null) {
  console.error('usage: verified-fetch.mjs GATEWAY_URL CID OUT')
  process.exit(2)
}
const noDns = dns({ resolvers: { '.': async (fqdn) => { throw new Error(`DNS disabled (${fqdn})`) } } })
const helia = withHTTP(createHeliaLight({ dns: noDns, routers: [] }), {
  delegatedRouters: [],
  recursiveGateways: [gateway],
  allowInsecure: true,
  allowLocal: true
})
// Helia 7.1's routing waits forever when only fallback routers exist (its
// queue of regular routers never drains when there are none): give it one
// regular router that knows no providers, so it moves on to the gateway.
helia.addRouter({ name: 'no-providers', async * findProviders () {} })
await helia.start()
const verifiedFetch = await createVerifiedFetchWithHelia(helia)
let code = 0
try {
  const res = await verifiedFetch(`ipfs://${cid}`, { signal: AbortSignal.timeout(60000) })
  const body = Buffer.from(await res.arrayBuffer())
  fs.writeFileSync(out, body)
  console.log(JSON.stringify({ status: res.status, bytes: body.length, content_type: res.headers.get('content-type') }))
  if (res.status !== 200) code = 1
} catch (e) {
  console.log(JSON.stringify({ status: null, error: String(e) }))
  code = 1
}
await verifiedFetch.stop()
await helia.stop()
process.exit(code)
