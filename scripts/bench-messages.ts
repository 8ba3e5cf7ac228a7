/**
 * Message throughput and ack latency, in memory and on MariaDB.
 *
 *   npm run bench:messages                                   # in-memory only
 *   MYSQL_URL=mysql://root@127.0.0.1:3306/test npm run bench:messages -- --scratch-database
 *
 * Starts the built server as a child process (so it has its own event loop
 * and core), signs up `--users` users, connects one socket each, and lets
 * every user keep `--window` messages in flight to random other users for
 * `--seconds`. Reports acknowledged messages per second, ack latency
 * percentiles and whether every acknowledged message was delivered.
 * `--scratch-database` creates a database for the run and drops it after;
 * without it the MySQL run is refused, since the benchmark writes rows.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { createServer } from 'node:net'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import mysql from 'mysql2/promise'
import WebSocket from 'ws'

interface Options {
  users: number
  window: number
  seconds: number
  backends: Array<'memory' | 'mysql'>
  scratchDatabase: boolean
}

interface Result {
  backend: string
  acked: number
  perSecond: number
  p50: number
  p99: number
  max: number
  delivered: number
}

const SERVER = fileURLToPath(new URL('../src/server.js', import.meta.url))

function parseOptions (argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      users: { type: 'string', default: '200' },
      window: { type: 'string', default: '4' },
      seconds: { type: 'string', default: '10' },
      backend: { type: 'string', default: process.env.MYSQL_URL ? 'both' : 'memory' },
      'scratch-database': { type: 'boolean', default: false }
    }
  })
  const backend = values.backend
  if (backend !== 'memory' && backend !== 'mysql' && backend !== 'both') throw new Error('--backend is memory, mysql or both')
  return {
    users: Number(values.users),
    window: Number(values.window),
    seconds: Number(values.seconds),
    backends: backend === 'both' ? ['memory', 'mysql'] : [backend],
    scratchDatabase: values['scratch-database']
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
      JWT_SECRET: randomBytes(32).toString('hex'),
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
  socket: WebSocket
}

async function connectUsers (base: string, count: number): Promise<Client[]> {
  const run = randomBytes(4).toString('hex')
  const clients: Client[] = []
  for (let index = 0; index < count; index++) {
    const email = `bench-${run}-${index}@example.com`
    const user = await post<{ id: number }>(base, '/auth/signup', { email, password: 'benchmark password', name: `Bench ${index}` })
    const tokens = await post<{ access_token: string }>(base, '/auth/login', { email, password: 'benchmark password' })
    const socket = new WebSocket(`${base.replace('http', 'ws')}/ws`, { headers: { authorization: `Bearer ${tokens.access_token}` } })
    // The welcome (and any replay) comes first; wait for it.
    await once(socket, 'message')
    clients.push({ id: user.id, socket })
  }
  return clients
}

function percentile (sorted: Float64Array, fraction: number): number {
  if (sorted.length === 0) return 0
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * fraction))] as number
}

async function load (clients: Client[], { window, seconds }: Options): Promise<Omit<Result, 'backend'>> {
  const latencies: number[] = []
  let delivered = 0
  let acked = 0
  let sending = true
  const text = 'x'.repeat(200)

  const done = clients.map(({ socket }, index) => new Promise<void>((resolve) => {
    const sentAt = new Map<string, number>()
    let next = 0
    let inFlight = 0
    const send = (): void => {
      const to = clients[(index + 1 + Math.floor(Math.random() * (clients.length - 1))) % clients.length] as Client
      const ref = String(next++)
      sentAt.set(ref, performance.now())
      inFlight++
      socket.send(JSON.stringify({ type: 'message', to: to.id, text, id: ref }))
    }
    socket.on('message', (data) => {
      const frame = JSON.parse(data.toString()) as { type: string, ref?: string }
      if (frame.type === 'message') {
        delivered++
        return
      }
      if (frame.type !== 'ack' || frame.ref === undefined) return
      const started = sentAt.get(frame.ref)
      sentAt.delete(frame.ref)
      if (started !== undefined) latencies.push(performance.now() - started)
      acked++
      inFlight--
      if (sending) send()
      else if (inFlight === 0) resolve()
    })
    for (let slot = 0; slot < window; slot++) send()
  }))

  const started = performance.now()
  await new Promise((resolve) => setTimeout(resolve, seconds * 1000))
  sending = false
  const ackedInTime = acked
  const elapsed = (performance.now() - started) / 1000
  await Promise.all(done)
  // Deliveries trail the acks slightly: give the last ones a moment to land.
  await new Promise((resolve) => setTimeout(resolve, 500))
  const sorted = Float64Array.from(latencies).sort()
  return {
    acked,
    perSecond: ackedInTime / elapsed,
    p50: percentile(sorted, 0.5),
    p99: percentile(sorted, 0.99),
    max: sorted.at(-1) ?? 0,
    delivered
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

async function runBackend (backend: 'memory' | 'mysql', options: Options): Promise<Result> {
  let env: Record<string, string> = {}
  let cleanup = async (): Promise<void> => {}
  if (backend === 'mysql') {
    const serverUrl = process.env.MYSQL_URL
    if (serverUrl === undefined || serverUrl === '') throw new Error('the mysql run needs MYSQL_URL')
    if (!options.scratchDatabase) throw new Error('the mysql run writes rows: pass --scratch-database to run it in a database made for it and dropped after')
    const database = await scratchDatabase(serverUrl)
    env = { MYSQL_URL: database.url }
    cleanup = database.drop
  }
  const { child, base } = await startServer(env)
  try {
    const clients = await connectUsers(base, options.users)
    const result = await load(clients, options)
    for (const { socket } of clients) socket.close()
    return { backend, ...result }
  } finally {
    child.kill('SIGTERM')
    await once(child, 'exit')
    await cleanup()
  }
}

async function main (): Promise<void> {
  const options = parseOptions(process.argv.slice(2))
  console.log(`${options.users} users, ${options.window} messages in flight each, ${options.seconds} s, 200-character messages`)
  const results: Result[] = []
  for (const backend of options.backends) results.push(await runBackend(backend, options))
  console.log('\n| backend | messages/s | ack p50 (ms) | ack p99 (ms) | ack max (ms) | acked | delivered |')
  console.log('|---|---|---|---|---|---|---|')
  for (const { backend, perSecond, p50, p99, max, acked, delivered } of results) {
    console.log(`| ${backend} | ${Math.round(perSecond)} | ${p50.toFixed(2)} | ${p99.toFixed(2)} | ${max.toFixed(1)} | ${acked} | ${delivered} |`)
  }
  const memory = results.find((result) => result.backend === 'memory')
  const stored = results.find((result) => result.backend === 'mysql')
  if (memory !== undefined && stored !== undefined) console.log(`\nMariaDB / memory throughput: ${(stored.perSecond / memory.perSecond).toFixed(2)}`)
  for (const { backend, acked, delivered } of results) {
    if (delivered !== acked) console.log(`WARNING: ${backend}: ${acked} acked but ${delivered} delivered`)
  }
}

main().catch((error: unknown) => {
  console.error(error)
  process.exit(1)
})
