/**
 * Message throughput, ack and delivery latency, in memory and on MariaDB,
 * on one node or across several.
 *
 *   npm run bench:messages                                   # in-memory only
 *   MYSQL_URL=mysql://root@127.0.0.1:3306/test npm run bench:messages -- --scratch-database
 *   MYSQL_URL=... REDIS_URL=redis://127.0.0.1:6379/0 npm run bench:cluster   # 2 nodes, every message crosses
 *
 * Starts the built server as `--nodes` child processes (so each has its own
 * event loop), signs up `--users` users, connects one socket each (user i to
 * node i % nodes), and lets every user keep `--window` messages in flight to
 * random other users for `--seconds`. With several nodes the recipients are
 * on other nodes (`--no-cross`: any other user), so every message goes
 * through Redis. Reports acknowledged messages per second, ack latency,
 * delivery latency (send() to arrival at the recipient's socket, timed by
 * this one process's clock, which the text carries) and whether every
 * acknowledged message was delivered exactly once.
 * `--scratch-database` creates a database for the run and drops it after;
 * without it the MySQL run is refused, since the benchmark writes rows.
 * With REDIS_URL set, one node on MySQL uses Redis too (so a one-node run
 * differs from a cluster run only in crossing nodes); `REDIS_URL=` runs it
 * without. The memory backend never does: the server takes Redis only with a
 * database. Keys go under a fresh prefix, deleted after.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { readFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { cpus } from 'node:os'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { deleteKeysUnder } from './scratch-keys.js'
import mysql from 'mysql2/promise'
import WebSocket from 'ws'

interface Options {
  users: number
  window: number
  seconds: number
  backends: Array<'memory' | 'mysql'>
  scratchDatabase: boolean
  nodes: number
  /** Every recipient is on another node than its sender. */
  cross: boolean
  redisUrl: string | null
}

interface Result {
  nodes: number
  backend: string
  acked: number
  perSecond: number
  p50: number
  p99: number
  max: number
  delivered: number
  deliveryP50: number
  deliveryP99: number
  deliveryMax: number
  /** Acknowledged, never delivered. */
  missing: number
  /** Deliveries beyond the first of a message. */
  duplicated: number
  /** Delivered to a socket of someone else than the recipient, unreadable, or never acknowledged. */
  unexpected: number
  /** Sends answered with an error frame instead of an ack. */
  errors: number
  cpu: CpuShare
}

/** Cores busy during the load phase, on average. */
interface CpuShare {
  /** Null where /proc cannot be read. */
  machine: number | null
  generator: number
  /** Null where /proc cannot be read. */
  servers: number[] | null
}

const SERVER = fileURLToPath(new URL('../src/server.js', import.meta.url))
/** The sender's key and send time, at the start of every text: `<sender index>:<ref> t=<performance.now()> `. */
const STAMP = /^(\d+:\d+) t=(\d+\.\d+) /
const TEXT_CHARS = 200
/** /proc counts CPU time in clock ticks of 10 ms (USER_HZ is 100 on Linux). */
const TICK_MS = 10
/** How long deliveries may trail the last ack before the missing ones count as missing. */
const DELIVERY_WAIT_MS = 5000
/** After the last expected delivery, how long a duplicate has to show up. */
const DUPLICATE_GRACE_MS = 500

function parseOptions (argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    allowNegative: true,
    options: {
      users: { type: 'string', default: '200' },
      window: { type: 'string', default: '4' },
      seconds: { type: 'string', default: '10' },
      backend: { type: 'string' },
      'scratch-database': { type: 'boolean', default: false },
      nodes: { type: 'string', default: '1' },
      cross: { type: 'boolean' }
    }
  })
  const nodes = Number(values.nodes)
  if (!Number.isInteger(nodes) || nodes < 1) throw new Error('--nodes is a whole number, 1 or more')
  // Several nodes must see the same users: only the database is shared.
  const backend = values.backend ?? (nodes > 1 ? 'mysql' : process.env.MYSQL_URL ? 'both' : 'memory')
  if (backend !== 'memory' && backend !== 'mysql' && backend !== 'both') throw new Error('--backend is memory, mysql or both')
  if (nodes > 1 && backend !== 'mysql') throw new Error('--nodes 2 or more needs --backend mysql: the nodes share users and messages through the database')
  const cross = values.cross ?? nodes > 1
  if (cross && nodes === 1) throw new Error('--cross needs --nodes 2 or more')
  const users = Number(values.users)
  if (!Number.isInteger(users) || users < Math.max(2, nodes)) throw new Error('--users is a whole number, at least 2 and at least --nodes')
  const redisUrl = process.env.REDIS_URL === undefined || process.env.REDIS_URL === '' ? null : process.env.REDIS_URL
  if (nodes > 1 && redisUrl === null) throw new Error('--nodes 2 or more needs REDIS_URL: messages cross nodes through Redis')
  return {
    users,
    window: Number(values.window),
    seconds: Number(values.seconds),
    backends: backend === 'both' ? ['memory', 'mysql'] : [backend],
    scratchDatabase: values['scratch-database'],
    nodes,
    cross,
    redisUrl
  }
}

async function freePort (): Promise<number> {
  const server = createServer()
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const address = server.address()
  server.close()
  if (address === null || typeof address === 'string') throw new Error('no port')
  return address.port
}

async function startServer (env: Record<string, string>): Promise<{ child: ChildProcess, base: string }> {
  const port = await freePort()
  const child = spawn(process.execPath, [SERVER], {
    env: {
      ...process.env,
      ...env,
      PORT: String(port),
      LOG_LEVEL: 'warn',
      BCRYPT_COST: '4',
      RATE_LIMIT_MAX: '1000000',
      AUTH_RATE_LIMIT_MAX: '1000000',
      WS_MESSAGE_RATE: '1000000',
      WS_MESSAGE_BURST: '1000000'
    },
    stdio: ['ignore', 'ignore', 'inherit']
  })
  const base = `http://127.0.0.1:${port}`
  for (let attempt = 0; attempt < 200; attempt++) {
    try {
      if ((await fetch(`${base}/health`)).ok) return { child, base }
    } catch {}
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  child.kill()
  throw new Error('the server did not start')
}

async function post<T> (base: string, path: string, body: unknown): Promise<T> {
  const response = await fetch(`${base}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
  if (!response.ok) throw new Error(`${path}: ${response.status} ${await response.text()}`)
  return await response.json() as T
}

interface Client {
  id: number
  /** Index of the node the socket is connected to. */
  node: number
  socket: WebSocket
}

/** User i signs up, logs in and connects on node i % nodes. */
async function connectUsers (bases: string[], count: number): Promise<Client[]> {
  const run = randomBytes(4).toString('hex')
  const clients: Client[] = []
  for (let index = 0; index < count; index++) {
    const node = index % bases.length
    const base = bases[node] as string
    const email = `bench-${run}-${index}@example.com`
    const user = await post<{ id: number }>(base, '/auth/signup', { email, password: 'benchmark password', name: `Bench ${index}` })
    const tokens = await post<{ access_token: string }>(base, '/auth/login', { email, password: 'benchmark password' })
    const socket = new WebSocket(`${base.replace('http', 'ws')}/ws`, { headers: { authorization: `Bearer ${tokens.access_token}` } })
    // The welcome (and any replay) comes first; wait for it.
    await once(socket, 'message')
    clients.push({ id: user.id, node, socket })
  }
  return clients
}

function percentile (sorted: Float64Array, fraction: number): number {
  if (sorted.length === 0) return 0
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * fraction))] as number
}

/** Whom each client may send to: any other user, or (crossing) only users on other nodes. */
function recipientPicker (clients: Client[], cross: boolean): (index: number) => Client {
  if (!cross) return (index) => clients[(index + 1 + Math.floor(Math.random() * (clients.length - 1))) % clients.length] as Client
  const elsewhere = new Map<number, Client[]>()
  for (const { node } of clients) if (!elsewhere.has(node)) elsewhere.set(node, clients.filter((other) => other.node !== node))
  return (index) => {
    const candidates = elsewhere.get((clients[index] as Client).node) as Client[]
    return candidates[Math.floor(Math.random() * candidates.length)] as Client
  }
}

/** CPU time used so far, in ms, by a process of this machine (Linux), or null. */
function processCpuMs (pid: number | undefined): number | null {
  if (pid === undefined) return null
  try {
    // The command name, in parentheses, may hold spaces: count fields after it. utime and stime are fields 14 and 15.
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? []
    return (Number(fields[11]) + Number(fields[12])) * TICK_MS
  } catch {
    return null
  }
}

/** Busy CPU time of the whole machine, all cores, in ms (Linux), or null; softirq counts, where loopback traffic is handled. */
function machineBusyMs (): number | null {
  try {
    const [user, nice, system, , , irq, softirq] = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]?.split(/ +/).slice(1).map(Number) ?? []
    return ((user ?? 0) + (nice ?? 0) + (system ?? 0) + (irq ?? 0) + (softirq ?? 0)) * TICK_MS
  } catch {
    return null
  }
}

function cpuMeter (children: ChildProcess[]): () => CpuShare {
  const started = performance.now()
  const machine = machineBusyMs()
  const generator = process.cpuUsage()
  const servers = children.map((child) => processCpuMs(child.pid))
  return () => {
    const elapsedMs = performance.now() - started
    const { user, system } = process.cpuUsage(generator)
    const now = children.map((child) => processCpuMs(child.pid))
    const readable = servers.every((value) => value !== null) && now.every((value) => value !== null)
    const machineNow = machineBusyMs()
    return {
      machine: machine === null || machineNow === null ? null : (machineNow - machine) / elapsedMs,
      generator: (user + system) / 1000 / elapsedMs,
      servers: readable ? now.map((value, index) => ((value as number) - (servers[index] as number)) / elapsedMs) : null
    }
  }
}

async function load (clients: Client[], children: ChildProcess[], { window, seconds, cross }: Options): Promise<Omit<Result, 'backend' | 'nodes'>> {
  const latencies: number[] = []
  const deliveryLatencies: number[] = []
  /** Deliveries per message, by `<sender index>:<ref>`. */
  const deliveries = new Map<string, number>()
  const ackedKeys = new Set<string>()
  let delivered = 0
  let acked = 0
  let unexpected = 0
  let errors = 0
  let sending = true
  const pick = recipientPicker(clients, cross)

  const done = clients.map(({ id, socket }, index) => new Promise<void>((resolve) => {
    const sentAt = new Map<string, number>()
    let next = 0
    let inFlight = 0
    const send = (): void => {
      const to = pick(index)
      const ref = String(next++)
      const now = performance.now()
      sentAt.set(ref, now)
      inFlight++
      const text = `${index}:${ref} t=${now.toFixed(3)} `.padEnd(TEXT_CHARS, 'x')
      socket.send(JSON.stringify({ type: 'message', to: to.id, text, id: ref }))
    }
    const finished = (): void => {
      inFlight--
      if (sending) send()
      else if (inFlight === 0) resolve()
    }
    socket.on('message', (data) => {
      const frame = JSON.parse(data.toString()) as { type: string, ref?: string, to?: number, text?: string }
      if (frame.type === 'message') {
        const arrivedAt = performance.now()
        delivered++
        const stamp = STAMP.exec(frame.text ?? '')
        if (frame.to !== id || stamp === null) {
          unexpected++
          return
        }
        const key = stamp[1] as string
        const count = deliveries.get(key) ?? 0
        deliveries.set(key, count + 1)
        if (count === 0) deliveryLatencies.push(arrivedAt - Number(stamp[2]))
        return
      }
      if (frame.ref === undefined) return
      // A refused send frees its slot too, or the run would never end.
      if (frame.type === 'error' && sentAt.delete(frame.ref)) {
        errors++
        finished()
        return
      }
      if (frame.type !== 'ack') return
      const started = sentAt.get(frame.ref)
      sentAt.delete(frame.ref)
      if (started !== undefined) latencies.push(performance.now() - started)
      ackedKeys.add(`${index}:${frame.ref}`)
      acked++
      finished()
    })
    for (let slot = 0; slot < window; slot++) send()
  }))

  const started = performance.now()
  const cpu = cpuMeter(children)
  await new Promise((resolve) => setTimeout(resolve, seconds * 1000))
  sending = false
  const ackedInTime = acked
  const elapsed = (performance.now() - started) / 1000
  const cpuShare = cpu()
  await Promise.all(done)
  // Deliveries trail the acks (through Redis, more so): wait for the last ones, then for any duplicate.
  const deadline = performance.now() + DELIVERY_WAIT_MS
  while (deliveryLatencies.length < ackedKeys.size && performance.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20))
  await new Promise((resolve) => setTimeout(resolve, DUPLICATE_GRACE_MS))

  let missing = 0
  for (const key of ackedKeys) if (!deliveries.has(key)) missing++
  let duplicated = 0
  for (const [key, count] of deliveries) {
    duplicated += count - 1
    if (!ackedKeys.has(key)) unexpected += count
  }
  const sorted = Float64Array.from(latencies).sort()
  const sortedDeliveries = Float64Array.from(deliveryLatencies).sort()
  return {
    acked,
    perSecond: ackedInTime / elapsed,
    p50: percentile(sorted, 0.5),
    p99: percentile(sorted, 0.99),
    max: sorted.at(-1) ?? 0,
    delivered,
    deliveryP50: percentile(sortedDeliveries, 0.5),
    deliveryP99: percentile(sortedDeliveries, 0.99),
    deliveryMax: sortedDeliveries.at(-1) ?? 0,
    missing,
    duplicated,
    unexpected,
    errors,
    cpu: cpuShare
  }
}

async function scratchDatabase (serverUrl: string): Promise<{ url: string, drop: () => Promise<void> }> {
  const name = `switchboard_bench_${randomBytes(4).toString('hex')}`
  const admin = await mysql.createConnection(serverUrl)
  await admin.query(`CREATE DATABASE \`${name}\` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin`)
  await admin.end()
  const url = new URL(serverUrl)
  url.pathname = `/${name}`
  return {
    url: url.toString(),
    drop: async () => {
      const connection = await mysql.createConnection(serverUrl)
      await connection.query(`DROP DATABASE IF EXISTS \`${name}\``)
      await connection.end()
    }
  }
}

/** A fresh key prefix for the run, and deleting every key under it (SCAN + DEL) after. */
function scratchPrefix (redisUrl: string): { prefix: string, drop: () => Promise<void> } {
  const prefix = `bench:${randomBytes(4).toString('hex')}:`
  return { prefix, drop: () => deleteKeysUnder(redisUrl, prefix) }
}

function backendLabel (backend: 'memory' | 'mysql', { redisUrl }: Options): string {
  return redisUrl === null || backend === 'memory' ? backend : `${backend} + Redis`
}

async function runBackend (backend: 'memory' | 'mysql', options: Options): Promise<Result> {
  // Set empty, not left out: the server would take MYSQL_URL or REDIS_URL from this process's environment.
  const env: Record<string, string> = { MYSQL_URL: '', REDIS_URL: '', JWT_SECRET: randomBytes(32).toString('hex') }
  const cleanups: Array<() => Promise<void>> = []
  const children: ChildProcess[] = []
  try {
    if (backend === 'mysql') {
      const serverUrl = process.env.MYSQL_URL
      if (serverUrl === undefined || serverUrl === '') throw new Error('the mysql run needs MYSQL_URL')
      if (!options.scratchDatabase) throw new Error('the mysql run writes rows: pass --scratch-database to run it in a database made for it and dropped after')
      const database = await scratchDatabase(serverUrl)
      env.MYSQL_URL = database.url
      cleanups.push(database.drop)
    }
    // The server takes Redis only with a database: the memory backend runs without it.
    if (options.redisUrl !== null && backend === 'mysql') {
      const keys = scratchPrefix(options.redisUrl)
      env.REDIS_URL = options.redisUrl
      env.REDIS_KEY_PREFIX = keys.prefix
      cleanups.push(keys.drop)
    }
    const bases: string[] = []
    // One after the other: each node migrates the shared database as it starts.
    for (let node = 0; node < options.nodes; node++) {
      const { child, base } = await startServer(env)
      children.push(child)
      bases.push(base)
    }
    const clients = await connectUsers(bases, options.users)
    const result = await load(clients, children, options)
    for (const { socket } of clients) socket.close()
    return { nodes: options.nodes, backend: backendLabel(backend, options), ...result }
  } finally {
    await Promise.all(children.map(async (child) => {
      if (child.exitCode !== null || child.signalCode !== null) return
      child.kill('SIGTERM')
      await once(child, 'exit')
    }))
    // The database and the keys go only once no node uses them.
    for (const cleanup of cleanups) await cleanup()
  }
}

function ms (value: number): string {
  return value.toFixed(value < 10 ? 2 : 1)
}

function cores (value: number): string {
  return value.toFixed(2)
}

async function main (): Promise<void> {
  const options = parseOptions(process.argv.slice(2))
  console.log(`${options.users} users, ${options.window} messages in flight each, ${options.seconds} s, ${TEXT_CHARS}-character messages`)
  const traffic = options.nodes === 1 ? 'one node' : `${options.nodes} nodes, user i on node i % ${options.nodes}, ${options.cross ? 'every recipient on another node than its sender' : 'recipients on any node'}`
  const redis = options.redisUrl === null ? 'no Redis' : `the mysql run on Redis at ${options.redisUrl} under a fresh key prefix (deleted after)`
  console.log(`${traffic}; ${redis}; ${cpus().length} cores shared by the servers, the databases and this load generator`)
  const results: Result[] = []
  for (const backend of options.backends) results.push(await runBackend(backend, options))
  const nodesCell = (nodes: number): string => nodes > 1 && !options.cross ? `${nodes} (any node)` : String(nodes)
  console.log('\n| nodes | backend | messages/s | ack p50 (ms) | ack p99 (ms) | delivery p50 (ms) | delivery p99 (ms) | missing | duplicated |')
  console.log('|---|---|---|---|---|---|---|---|---|')
  for (const { nodes, backend, perSecond, p50, p99, deliveryP50, deliveryP99, missing, duplicated } of results) {
    console.log(`| ${nodesCell(nodes)} | ${backend} | ${Math.round(perSecond)} | ${ms(p50)} | ${ms(p99)} | ${ms(deliveryP50)} | ${ms(deliveryP99)} | ${missing} | ${duplicated} |`)
  }
  console.log('\n| nodes | backend | acked | delivered | ack max (ms) | delivery max (ms) | CPU busy (cores) | servers (cores) | load generator (cores) |')
  console.log('|---|---|---|---|---|---|---|---|---|')
  for (const { nodes, backend, acked, delivered, max, deliveryMax, cpu } of results) {
    const servers = cpu.servers === null ? 'n/a' : cpu.servers.map(cores).join(' + ')
    console.log(`| ${nodesCell(nodes)} | ${backend} | ${acked} | ${delivered} | ${ms(max)} | ${ms(deliveryMax)} | ${cpu.machine === null ? 'n/a' : cores(cpu.machine)} | ${servers} | ${cores(cpu.generator)} |`)
  }
  const memory = results.find((result) => result.backend.startsWith('memory'))
  const stored = results.find((result) => result.backend.startsWith('mysql'))
  if (memory !== undefined && stored !== undefined) console.log(`\nMariaDB / memory throughput: ${(stored.perSecond / memory.perSecond).toFixed(2)}`)
  for (const { backend, missing, duplicated, unexpected, errors } of results) {
    if (missing + duplicated + unexpected + errors === 0) continue
    console.log(`WARNING: ${backend}: ${missing} acked but never delivered, ${duplicated} delivered again, ${unexpected} unexpected deliveries, ${errors} sends refused`)
    process.exitCode = 1
  }
}

main().catch((error: unknown) => {
  console.error(error)
  process.exit(1)
})
