// Drives an ipnix daemon's Kubo RPC API with the real kubo-rpc-client (npm)
// and prints one JSON object with what each call returned, for
// tests/tests/kubo_rpc.rs to check (CIDs against Kubo's, round trips).
//
// Usage: node client.mjs API_URL WORK_DIR [PEER_MULTIADDR REMOTE_CID]
//   API_URL   http://127.0.0.1:PORT (the daemon's --rpc listener)
//   WORK_DIR  holds small.bin, big.bin and tree/ (made by the Rust test)
//   PEER_MULTIADDR  another node to swarm/connect to (optional)
//   REMOTE_CID      a CID only that node holds, for routing/findprovs
// NODE_PATH must name the node_modules of tests/setup-rpc-client.sh.
import { create, globSource } from 'kubo-rpc-client'
import { readFile } from 'node:fs/promises'
import { createHash } from 'node:crypto'
import { join } from 'node:path'

const [api, work, peer, remoteCid] = process.argv.slice(2)
const ipfs = create({ url: `${api}/api/v0` })
const out = {}

async function collect (iterable) {
  const chunks = []
  for await (const chunk of iterable) chunks.push(chunk)
  return Buffer.concat(chunks)
}

async function all (iterable) {
  const items = []
  for await (const item of iterable) items.push(item)
  return items
}

const sha256 = (bytes) => createHash('sha256').update(bytes).digest('hex')

async function step (name, body) {
  try {
    out[name] = await body()
  } catch (e) {
    out[name] = { error: String(e && e.message ? e.message : e) }
  }
}

const small = await readFile(join(work, 'small.bin'))
const big = await readFile(join(work, 'big.bin'))

await step('id', async () => {
  const id = await ipfs.id()
  return { id: id.id.toString(), addresses: id.addresses.map(String), agent: id.agentVersion }
})
await step('version', async () => (await ipfs.version()).version)

// add: Kubo's defaults, then the options kubo-rpc-client passes through.
await step('add_default', async () => {
  const r = await ipfs.add({ path: 'small.bin', content: small })
  return { cid: r.cid.toString(), size: r.size, path: r.path }
})
await step('add_big_default', async () => {
  const progress = []
  const r = await ipfs.add({ path: 'big.bin', content: big }, { progress: (bytes) => progress.push(bytes) })
  return { cid: r.cid.toString(), progress_events: progress.length, progress_last: progress.at(-1) }
})
await step('add_big_v1', async () => (await ipfs.add(big, { cidVersion: 1 })).cid.toString())
await step('add_big_v1_dagpb_leaves', async () => (await ipfs.add(big, { cidVersion: 1, rawLeaves: false })).cid.toString())
await step('add_big_chunker', async () => (await ipfs.add(big, { chunker: 'size-65536', rawLeaves: true })).cid.toString())
await step('add_only_hash', async () => (await ipfs.add(Buffer.from('only-hash bytes, never stored\n'), { onlyHash: true, pin: false })).cid.toString())
await step('add_tree', async () => {
  const results = await all(ipfs.addAll(globSource(work, 'tree/**')))
  return results.map((r) => ({ path: r.path, cid: r.cid.toString(), size: r.size }))
})
await step('add_wrapped', async () => {
  const results = await all(ipfs.addAll([
    { path: 'a.txt', content: Buffer.from('a\n') },
    { path: 'sub/b.txt', content: Buffer.from('b\n') }
  ], { wrapWithDirectory: true }))
  return results.map((r) => ({ path: r.path, cid: r.cid.toString() }))
})

const bigCid = out.add_big_default.cid
await step('cat', async () => {
  const bytes = await collect(ipfs.cat(bigCid))
  return { length: bytes.length, sha256: sha256(bytes), expected: sha256(big) }
})
await step('cat_range', async () => {
  const bytes = await collect(ipfs.cat(bigCid, { offset: 1000, length: 5000 }))
  return { length: bytes.length, same: Buffer.compare(bytes, big.subarray(1000, 6000)) === 0 }
})
await step('get', async () => {
  const tree = out.add_tree.find((r) => r.path === 'tree')
  const tar = await collect(ipfs.get(tree.cid))
  // The names of the tar entries (ustar header: name at 0..100, size at 124..136).
  const names = []
  for (let offset = 0; offset + 512 <= tar.length;) {
    const header = tar.subarray(offset, offset + 512)
    if (header.every((b) => b === 0)) break
    const name = header.subarray(0, 100).toString().replace(/\0.*$/s, '')
    const size = parseInt(header.subarray(124, 136).toString().replace(/\0.*$/s, '').trim() || '0', 8)
    names.push(name)
    offset += 512 + Math.ceil(size / 512) * 512
  }
  return { names, bytes: tar.length }
})

await step('block', async () => {
  const data = Buffer.from('a raw block from kubo-rpc-client\n')
  const cid = await ipfs.block.put(data)
  const back = await ipfs.block.get(cid)
  const stat = await ipfs.block.stat(cid)
  return { cid: cid.toString(), same: Buffer.compare(Buffer.from(back), data) === 0, size: stat.size }
})
await step('dag_round_trip', async () => {
  const car = await collect(ipfs.dag.export(bigCid))
  const imported = await all(ipfs.dag.import([car], { pinRoots: true }))
  return { car_bytes: car.length, roots: imported.map((r) => r.root.cid.toString()) }
})
await step('pins', async () => {
  const blockCid = out.block.cid
  const added = await ipfs.pin.add(blockCid, { recursive: false })
  const direct = await all(ipfs.pin.ls({ paths: [blockCid] }))
  const recursive = await all(ipfs.pin.ls({ type: 'recursive' }))
  const removed = await all(ipfs.pin.rmAll([{ cid: added, recursive: false }]))
  let afterRm
  try {
    await all(ipfs.pin.ls({ paths: [blockCid] }))
    afterRm = 'still pinned'
  } catch (e) {
    afterRm = String(e.message)
  }
  return {
    added: added.toString(),
    direct: direct.map((p) => ({ cid: p.cid.toString(), type: p.type })),
    recursive: recursive.map((p) => p.cid.toString()),
    removed: removed.map(String),
    after_rm: afterRm
  }
})
await step('refs', async () => {
  const refs = await all(ipfs.refs(bigCid, { recursive: true }))
  const unique = await all(ipfs.refs(bigCid, { recursive: true, unique: true }))
  return { count: refs.length, unique: unique.length, first: refs[0] && refs[0].ref, errors: refs.filter((r) => r.err).length }
})
await step('repo_stat', async () => {
  const stat = await ipfs.repo.stat()
  return { repoSize: Number(stat.repoSize), storageMax: Number(stat.storageMax), numObjects: Number(stat.numObjects) }
})
await step('repo_gc', async () => {
  // An unpinned add, then GC: its block must be among those removed.
  const loose = await ipfs.add(Buffer.from('garbage for gc ' + Date.now()), { pin: false })
  const removed = await all(ipfs.repo.gc())
  return { loose: loose.cid.toV1().toString(), removed: removed.map((r) => r.cid && r.cid.toString()), errors: removed.filter((r) => r.err).length }
})
if (peer) {
  await step('swarm_connect', async () => {
    await ipfs.swarm.connect(peer)
    const peers = await ipfs.swarm.peers()
    return { peers: peers.map((p) => p.peer.toString()) }
  })
  await step('findprovs', async () => {
    const found = []
    for await (const event of ipfs.routing.findProvs(remoteCid || bigCid)) {
      if (event.name === 'PROVIDER') found.push(...event.providers.map((p) => p.id.toString()))
    }
    return found
  })
}
process.stdout.write(JSON.stringify(out) + '\n')
