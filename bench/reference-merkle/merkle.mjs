// Times the reference CAS Merkle tree on this machine, for a side-by-side figure with
// `cargo run --release -p cas-merkle --example build_bench`.
//
// It builds the tree the way the reference service does (ceramic-anchor-service v0.0.143,
// `MerkleCarFactory`): anchor-utils' `MerkleTreeFactory` with its `IpfsMerge`, whose store puts
// every inner node `[leftCID, rightCID]` into a cartonne CAR (dag-cbor, sha2-256, CIDv1); the
// leaves sorted by comparing their base32 CID strings with `localeCompare`; no metadata node,
// no depth limit. The CAR root is set as the reference does. The leaves are CIDv1
// dag-cbor/sha2-256 and are made before the timer starts.
//
// Usage: node --max-old-space-size=16384 merkle.mjs [N] [--no-sort] [--reps R] [--index-leaves]
//   N               leaf count (default 2^20)
//   --no-sort       no comparator (the "nosort" variant of the baseline)
//   --reps R        build R times in this process (default 1); the figure is the median
//   --index-leaves  leaf i is the CID of sha2-256(i as 4 big-endian bytes) instead of a random
//                   digest: the leaves `build_bench` and the Rust tests make, for comparing roots
//
// stdout: one JSON line per figure, {"name","value","unit"} plus the node and anchor-utils
// versions as extra fields: reference_merkle_<n>_build (wall ms of `factory.build`, which
// includes the sort), _build_cpu (process CPU ms over the same span), _peak_rss (MiB, whole
// process, leaves included), _heap_after_build (MiB); _root (the root CID) with --index-leaves.
// <n> is written 2^k for powers of two. stderr: progress and the root CID.

import { createHash, randomBytes } from 'node:crypto'
import { readFileSync } from 'node:fs'
import os from 'node:os'
import { createRequire } from 'node:module'
import { performance } from 'node:perf_hooks'

import { IpfsMerge, MerkleTreeFactory } from '@ceramicnetwork/anchor-utils'
import { CARFactory } from 'cartonne'
import { CID } from 'multiformats/cid'
import * as Digest from 'multiformats/hashes/digest'

const DAG_CBOR = 0x71
const SHA2_256 = 0x12

function parseArgs(argv) {
  const opts = { n: 1 << 20, sort: true, reps: 1, indexLeaves: false }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (a === '--no-sort') opts.sort = false
    else if (a === '--index-leaves') opts.indexLeaves = true
    else if (a === '--reps') opts.reps = Number(argv[++i])
    else if (/^\d+$/.test(a)) opts.n = Number(a)
    else throw new Error(`unknown argument ${JSON.stringify(a)}`)
  }
  if (!Number.isSafeInteger(opts.n) || opts.n < 1) throw new Error(`bad leaf count ${opts.n}`)
  if (!Number.isSafeInteger(opts.reps) || opts.reps < 1) throw new Error(`bad --reps ${opts.reps}`)
  return opts
}

/** `2^k` for powers of two (as the Rust figures are named), the plain number otherwise. */
function sizeLabel(n) {
  const k = Math.log2(n)
  return Number.isInteger(k) ? `2^${k}` : String(n)
}

function makeLeaves(n, indexLeaves) {
  const leaves = new Array(n)
  const random = indexLeaves ? null : randomBytes(32 * n)
  const index = Buffer.alloc(4)
  for (let i = 0; i < n; i++) {
    let digest
    if (indexLeaves) {
      index.writeUInt32BE(i)
      digest = new Uint8Array(createHash('sha256').update(index).digest())
    } else {
      digest = random.subarray(32 * i, 32 * (i + 1))
    }
    // Shaped like the reference's Candidate as far as the tree looks at it: `data.cid`.
    leaves[i] = { cid: CID.createV1(DAG_CBOR, Digest.create(SHA2_256, digest)) }
  }
  return leaves
}

// The reference's leaf comparator (its `CIDSort`), written out here.
class CidStringCompare {
  compare(left, right) {
    return left.data.cid.toString().localeCompare(right.data.cid.toString())
  }
}

// The reference's CAR-backed store for IpfsMerge (its `CARIpfsService`).
class CarStore {
  constructor(car) {
    this.car = car
  }
  async storeRecord(record) {
    return this.car.put(record)
  }
}

// IpfsMerge logs every node at debug level; the reference's logger runs at "important", so
// the message string is built and then dropped. A no-op logger does the same.
const quietLogger = {
  debug() {},
  verbose() {},
  imp() {},
  warn() {},
  err() {},
}

const carFactory = new CARFactory()

async function buildOnce(leaves, sort) {
  const car = carFactory.build()
  const merge = new IpfsMerge(new CarStore(car), quietLogger)
  const factory = new MerkleTreeFactory(merge, sort ? new CidStringCompare() : undefined, undefined, 0)
  const cpuBefore = process.cpuUsage()
  const started = performance.now()
  const tree = await factory.build(leaves)
  car.roots.push(tree.root.data.cid)
  const ms = performance.now() - started
  const cpu = process.cpuUsage(cpuBefore)
  return { ms, cpuMs: (cpu.user + cpu.system) / 1000, tree, car }
}

function installedVersion(pkg) {
  const require = createRequire(import.meta.url)
  // anchor-utils' exports map hides package.json; find it next to the resolved entry point.
  const entry = require.resolve(pkg)
  const dir = entry.slice(0, entry.lastIndexOf(`/node_modules/${pkg}/`) + `/node_modules/${pkg}`.length)
  return JSON.parse(readFileSync(`${dir}/package.json`, 'utf8')).version
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2
}

async function main() {
  const opts = parseArgs(process.argv.slice(2))
  const label = sizeLabel(opts.n)
  const variant = opts.sort ? '' : '_nosort'
  const versions = {
    node: process.version,
    anchor_utils: installedVersion('@ceramicnetwork/anchor-utils'),
  }
  const emit = (name, value, unit, extra = {}) =>
    console.log(JSON.stringify({ name, value, unit, ...versions, ...extra }))
  const log = (msg) => process.stderr.write(`${msg}\n`)

  let t = performance.now()
  const leaves = makeLeaves(opts.n, opts.indexLeaves)
  log(`made ${opts.n} leaves in ${(performance.now() - t).toFixed(0)} ms`)

  const loadavg = os.loadavg()[0]
  const runs = []
  const cpuRuns = []
  let last
  for (let r = 0; r < opts.reps; r++) {
    last = null // let the previous tree and CAR go before the next build
    last = await buildOnce(leaves, opts.sort)
    runs.push(last.ms)
    cpuRuns.push(last.cpuMs)
    log(`build ${r + 1}/${opts.reps}: ${last.ms.toFixed(1)} ms (cpu ${last.cpuMs.toFixed(1)} ms), root ${last.tree.root.data.cid}`)
  }
  const blocks = last.car.blocks.size
  const expectedBlocks = opts.n === 1 ? 1 : opts.n - 1
  if (blocks !== expectedBlocks) {
    throw new Error(`CAR holds ${blocks} blocks, expected ${expectedBlocks}`)
  }
  const heapAfterBuild = process.memoryUsage().heapUsed

  const round = (x) => Number(x.toFixed(1))
  // The 1-minute load average when the builds started: the figure is wall time, so a busy
  // machine inflates it. The CPU figure (all of node's threads, GC helpers included) is not
  // inflated by waiting for a core, but still is by caches and memory shared with other work.
  const extra = { loadavg_1m: round(loadavg) }
  emit(`reference_merkle_${label}${variant}_build`, round(median(runs)), 'ms',
    opts.reps > 1 ? { ...extra, runs_ms: runs.map(round) } : extra)
  emit(`reference_merkle_${label}${variant}_build_cpu`, round(median(cpuRuns)), 'ms',
    opts.reps > 1 ? { runs_ms: cpuRuns.map(round) } : {})
  emit(
    `reference_merkle_${label}${variant}_peak_rss`,
    Number((process.resourceUsage().maxRSS / 1024).toFixed(1)),
    'MiB',
  )
  emit(
    `reference_merkle_${label}${variant}_heap_after_build`,
    Number((heapAfterBuild / (1024 * 1024)).toFixed(1)),
    'MiB',
  )
  if (opts.indexLeaves) {
    emit(`reference_merkle_${label}${variant}_root`, last.tree.root.data.cid.toString(), 'cid')
  }
}

main().catch((err) => {
  process.stderr.write(`${err?.stack ?? err}\n`)
  process.exit(1)
})
