/**
 * Switchboard side by side with a bare `ws` server and Socket.IO 4, same job,
 * same protocol, same load generator (issue 6).
 *
 *   npm run bench                       # full run, under ten minutes
 *   npm run bench -- --quick            # about a minute
 *   npm run bench -- --servers switchboard,ws --scenarios memory,throughput
 *   npm run bench -- --servers switchboard --scenarios throughput --rates 8000,8000,8000
 *   MYSQL_URL=mysql://root@127.0.0.1:3306/test REDIS_URL=redis://127.0.0.1:6379/0 npm run bench
 *
 * Options: --quick; --servers and --scenarios (comma lists, below);
 * --rates (measure these rates in order instead of searching);
 * --generators (processes, default 2); --cpu-prof (a CPU profile of every
 * child in scripts/bench/results/profiles/); --server-flags="--trace-gc"
 * (more Node flags for the servers; their output goes to their logs).
 *
 * Each server runs as its own process pinned to core 0 (taskset), the
 * generators to core 1. Scenarios:
 *   memory      idle sockets at two levels (5k and 15k): RSS and heap per
 *               connection after a forced GC, and the connect rate;
 *   throughput  users chatting in pairs, open-loop: a step search for the
 *               capacity (highest rate with nothing lost, whatever the
 *               latency) and the max sustainable throughput (p99 <= 20 ms,
 *               nothing lost), server CPU per message, latency at half max;
 *   mysql       the throughput search for Switchboard on MariaDB (MYSQL_URL;
 *               a scratch database, dropped after);
 *   cluster     two Switchboard nodes on MariaDB and Redis (MYSQL_URL and
 *               REDIS_URL; a fresh key prefix, deleted after), half of the
 *               pairs split across the nodes.
 * The tables go to stdout and to scripts/bench/results.md; the servers' logs
 * to scripts/bench/results/.
 */
import { execFileSync, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { closeSync, mkdirSync, openSync, writeFileSync } from 'node:fs'
import { availableParallelism, cpus, totalmem } from 'node:os'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { Redis } from 'ioredis'
import mysql from 'mysql2/promise'
import { addTallies, emptyTally, isClean } from './accounting.js'
import { mergeHistograms, summarize } from './histograms.js'
import {
  nowMicros, type BenchUser, type ConnectedReply, type Dialect, type DrainedReply, type GeneratorUser,
  type QuietReply, type RunReply, type ServerMemory, type ServerReady
} from './ipc.js'
import { cpuMicros, killAll, machineBusyMicros, nextMessage, pidsNamed, request, startPinned, stop } from './processes.js'
import {
  renderReport, SERVER_LABELS, stepHeader, stepLine,
  type IdleResult, type MemoryPoint, type RunResults, type ServerKind, type StepResult, type ThroughputResult
} from './report.js'
import { roundRate, searchHighest } from './step-search.js'

const SCENARIOS = ['memory', 'throughput', 'mysql', 'cluster'] as const
type Scenario = typeof SCENARIOS[number]
const SERVER_KINDS: ServerKind[] = ['switchboard', 'ws', 'socketio']

const SERVER_SCRIPTS: Record<ServerKind, string> = {
  switchboard: 'switchboard-server.js',
  ws: 'ws-baseline.js',
  socketio: 'socketio-baseline.js'
}
const DIALECTS: Record<ServerKind, Dialect> = { switchboard: 'json', ws: 'json', socketio: 'socketio' }

const SERVER_CORE = 0
const GENERATOR_CORE = 1
/** Sockets one generator holds at most (the open-file limit here is 20,000). */
const MAX_SOCKETS_PER_GENERATOR = 18_000
const P99_LIMIT_MS = 20
/** A step keeps up when this share of what was sent in the window also arrived in it. */
const KEEP_UP = 0.97
/** The first message of a step leaves this long after the command, so every generator has it. */
const START_DELAY_MS = 100
/** A backlog counts as cleared once no frame has arrived for this long. */
const QUIET_MS = 200
const QUIET_LIMIT_MS = 20_000

/** Switchboard's limits, raised so that they are not what is measured. */
const SWITCHBOARD_LIMITS: Record<string, string> = {
  WS_MAX_CONNECTIONS: '100000',
  WS_MAX_CONNECTIONS_PER_USER: '100',
  WS_MESSAGE_RATE: '1000000',
  WS_MESSAGE_BURST: '1000000',
  RATE_LIMIT_MAX: '1000000000',
  AUTH_RATE_LIMIT_MAX: '1000000',
  // No socket is closed for an expired token during the run.
  ACCESS_TOKEN_TTL: '86400'
}

interface Profile {
  /** Idle sockets at which memory is read; per connection is the slope from the first to the last. */
  idleLevels: number[]
  /** Users chatting in pairs. */
  chatUsers: number
  warmupMs: number
  measureMs: number
  drainMs: number
  /** The measured window of the half-max step. */
  halfMeasureMs: number
  startRate: number
  factor: number
  tolerance: number
  sustainableSteps: number
  capacitySteps: number
  /** Handshakes in flight per generator. */
  connectConcurrency: number
}

const FULL: Profile = {
  idleLevels: [5000, 15_000],
  chatUsers: 2000,
  warmupMs: 1000,
  measureMs: 3000,
  drainMs: 2000,
  halfMeasureMs: 8000,
  startRate: 4000,
  factor: 2,
  tolerance: 0.1,
  sustainableSteps: 8,
  capacitySteps: 5,
  connectConcurrency: 100
}

const QUICK: Profile = {
  idleLevels: [1000, 3000],
  chatUsers: 1000,
  warmupMs: 300,
  measureMs: 1000,
  drainMs: 500,
  halfMeasureMs: 1500,
  startRate: 5000,
  factor: 2,
  tolerance: 0.3,
  sustainableSteps: 3,
  capacitySteps: 1,
  connectConcurrency: 100
}

interface Options {
  quick: boolean
  servers: ServerKind[]
  scenarios: Set<Scenario>
  generators: number
  profile: Profile
  /** Measure these rates, in this order, instead of searching. */
  rates: number[] | null
  command: string
  /** Node flags for every child: --cpu-prof writes each one's CPU profile to scripts/bench/results/profiles/. */
  childFlags: string[]
  /** More Node flags for the servers only (--trace-gc, say: it goes to their logs). */
  serverFlags: string[]
}

const HERE = fileURLToPath(new URL('.', import.meta.url))
/** dist/scripts/bench/ -> scripts/bench/ in the source tree. */
const SOURCE_DIR = fileURLToPath(new URL('../../../scripts/bench/', import.meta.url))
const RESULTS_FILE = `${SOURCE_DIR}results.md`
const LOG_DIR = `${SOURCE_DIR}results/`

function list<T extends string> (text: string, allowed: readonly T[], name: string): T[] {
  const items = text.split(',').map((item) => item.trim()).filter((item) => item !== '')
  for (const item of items) if (!allowed.includes(item as T)) throw new Error(`--${name}: "${item}" is not one of ${allowed.join(', ')}`)
  return allowed.filter((item) => items.includes(item))
}

function parseOptions (argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      quick: { type: 'boolean', default: false },
      servers: { type: 'string', default: SERVER_KINDS.join(',') },
      scenarios: { type: 'string', default: SCENARIOS.join(',') },
      generators: { type: 'string', default: '2' },
      rates: { type: 'string' },
      'cpu-prof': { type: 'boolean', default: false },
      'server-flags': { type: 'string', default: '' }
    }
  })
  const rates = values.rates === undefined ? null : values.rates.split(',').map(Number)
  if (rates !== null && !rates.every((rate) => Number.isFinite(rate) && rate > 0)) throw new Error('--rates is a comma list of messages per second')
  const profile = values.quick ? QUICK : FULL
  const generators = Number(values.generators)
  if (!Number.isInteger(generators) || generators < 1) throw new Error('--generators is a whole number, 1 or more')
  return {
    quick: values.quick,
    servers: list(values.servers, SERVER_KINDS, 'servers'),
    scenarios: new Set(list(values.scenarios, SCENARIOS, 'scenarios')),
    // Enough processes for the idle sockets, whatever was asked.
    generators: Math.max(generators, Math.ceil(Math.max(...profile.idleLevels) / MAX_SOCKETS_PER_GENERATOR)),
    profile,
    rates,
    command: ['npm run bench', ...(argv.length === 0 ? [] : ['--', ...argv])].join(' '),
    childFlags: values['cpu-prof'] ? ['--cpu-prof', `--cpu-prof-dir=${LOG_DIR}profiles`] : [],
    serverFlags: values['server-flags'].split(' ').filter((flag) => flag !== '')
  }
}

function sleep (ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

/** Cleanups that must run however the run ends (scratch database, Redis keys). */
const cleanups: Array<() => Promise<void>> = []

async function runCleanups (): Promise<void> {
  for (const cleanup of cleanups.splice(0).reverse()) {
    await cleanup().catch((error: unknown) => console.error('cleanup failed:', error))
  }
}

// ---------------------------------------------------------------- servers

interface RunningServer {
  kind: ServerKind
  /** One process per node. */
  nodes: ChildProcess[]
  urls: string[]
  users: BenchUser[]
}

let logCounter = 0
/** Node flags for every child process, and for the servers only (set from the options). */
let childFlags: string[] = []
let serverFlags: string[] = []

async function startNode (kind: ServerKind, env: Record<string, string>, seed: number, label: string): Promise<{ child: ChildProcess, url: string, users: BenchUser[] }> {
  mkdirSync(LOG_DIR, { recursive: true })
  const log = openSync(`${LOG_DIR}${String(++logCounter).padStart(2, '0')}-${label.replace(/[^a-z0-9]+/gi, '-').toLowerCase()}.log`, 'w')
  const child = startPinned(`${HERE}${SERVER_SCRIPTS[kind]}`, {
    core: SERVER_CORE,
    execArgv: ['--expose-gc', ...childFlags, ...serverFlags],
    env: { ...process.env, ...env, BENCH_USERS: String(seed) },
    stdout: log
  })
  closeSync(log)
  const ready = await nextMessage<ServerReady>(child, 'ready', 120_000)
  return { child, url: `ws://127.0.0.1:${ready.port}`, users: ready.users }
}

/** Every node gets the same secret and backends; the first seeds the users, the others share its database. */
async function startServer (kind: ServerKind, { seed, env = {}, nodes = 1, label }: { seed: number, env?: Record<string, string>, nodes?: number, label: string }): Promise<RunningServer> {
  const common: Record<string, string> = {
    JWT_SECRET: randomBytes(32).toString('hex'),
    // Set empty, not left out: the server would take them from this process's environment.
    MYSQL_URL: '',
    REDIS_URL: '',
    ...(kind === 'switchboard' ? SWITCHBOARD_LIMITS : {}),
    ...env
  }
  const running: RunningServer = { kind, nodes: [], urls: [], users: [] }
  try {
    // One after the other: each node migrates the shared database as it starts.
    for (let node = 0; node < nodes; node++) {
      const started = await startNode(kind, common, node === 0 ? seed : 0, nodes === 1 ? label : `${label} node ${node + 1}`)
      running.nodes.push(started.child)
      running.urls.push(started.url)
      if (node === 0) running.users = started.users
    }
  } catch (error) {
    await stopServer(running)
    throw error
  }
  return running
}

async function stopServer (server: RunningServer): Promise<void> {
  await Promise.all(server.nodes.map(async (child) => await stop(child)))
}

// ------------------------------------------------------------- generators

function startGenerators (count: number): ChildProcess[] {
  return Array.from({ length: count }, () => startPinned(`${HERE}generator.js`, { core: GENERATOR_CORE, env: process.env, execArgv: childFlags }))
}

interface Connected {
  opened: number
  failed: number
  firstError: string | null
  seconds: number
  /** CPU time used meanwhile, in µs (null where /proc cannot tell). */
  serverMicros: number | null
  generatorMicros: number | null
}

async function connect (server: RunningServer, generators: ChildProcess[], assignments: GeneratorUser[][], concurrency: number): Promise<Connected> {
  const before = readCpu(server.nodes, generators)
  const replies = await Promise.all(generators.map(async (generator, index) => await request<ConnectedReply>(
    generator, { type: 'connect', dialect: DIALECTS[server.kind], urls: server.urls, users: assignments[index] ?? [], concurrency }, 'connected', 300_000)))
  const after = readCpu(server.nodes, generators)
  const started = Math.min(...replies.map((reply) => reply.startedMicros))
  const ended = Math.max(...replies.map((reply) => reply.endedMicros))
  return {
    opened: replies.reduce((sum, reply) => sum + reply.opened, 0),
    failed: replies.reduce((sum, reply) => sum + reply.failed, 0),
    firstError: replies.find((reply) => reply.firstError !== null)?.firstError ?? null,
    seconds: (ended - started) / 1e6,
    serverMicros: after.server === null || before.server === null ? null : after.server - before.server,
    generatorMicros: after.generators === null || before.generators === null ? null : after.generators - before.generators
  }
}

async function disconnectAll (generators: ChildProcess[]): Promise<void> {
  await Promise.all(generators.map(async (generator) => await request(generator, { type: 'close' }, 'closed', 60_000)))
}

/** Waits until no frame has reached any generator for a moment: the previous step's backlog is gone. */
async function waitQuiet (generators: ChildProcess[]): Promise<void> {
  const deadline = Date.now() + QUIET_LIMIT_MS
  while (Date.now() < deadline) {
    const replies = await Promise.all(generators.map(async (generator) => await request<QuietReply>(generator, { type: 'quiet' }, 'quiet', 10_000)))
    const busiest = Math.min(...replies.map((reply) => reply.idleMs))
    if (busiest >= QUIET_MS) return
    await sleep(QUIET_MS - busiest)
  }
  console.log(`  (frames were still arriving ${QUIET_LIMIT_MS / 1000} s after the step: the next one starts anyway)`)
}

// ------------------------------------------------------------------ steps

interface CpuReading {
  atMicros: number
  server: number | null
  generators: number | null
  /** The machine's MariaDB and Redis servers, whether the step uses them or not. */
  backends: number | null
  machine: number | null
}

/** The shared database servers' processes, found once: their CPU is the backends' share, not foreign load. */
const BACKEND_PIDS = pidsNamed(['mariadbd', 'mysqld', 'redis-server'])

function readCpu (servers: ChildProcess[], generators: ChildProcess[]): CpuReading {
  const sum = (pids: Array<number | undefined>): number | null => {
    let total = 0
    for (const pid of pids) {
      const micros = cpuMicros(pid)
      if (micros === null) return null
      total += micros
    }
    return total
  }
  return {
    atMicros: nowMicros(),
    server: sum(servers.map((child) => child.pid)),
    generators: sum(generators.map((child) => child.pid)),
    backends: sum(BACKEND_PIDS),
    machine: machineBusyMicros()
  }
}

async function readCpuAt (micros: number, servers: ChildProcess[], generators: ChildProcess[]): Promise<CpuReading> {
  await sleep(Math.max(0, (micros - nowMicros()) / 1000))
  return readCpu(servers, generators)
}

interface Load {
  setup: string
  server: RunningServer
  generators: ChildProcess[]
  /** Each generator's share of the rate (its senders over all senders). */
  shares: number[]
}

let stepCounter = 0

async function runStep (load: Load, rate: number, profile: Profile, measureMs = profile.measureMs): Promise<StepResult> {
  const { generators, shares, server } = load
  await waitQuiet(generators)
  const step = ++stepCounter
  const startMicros = nowMicros() + START_DELAY_MS * 1000
  const windowStart = startMicros + profile.warmupMs * 1000
  const windowEnd = windowStart + measureMs * 1000
  const sendingMs = START_DELAY_MS + profile.warmupMs + measureMs
  const drained = generators.map(async (generator) => await nextMessage<DrainedReply>(generator, 'drained', sendingMs + profile.drainMs + 60_000))
  generators.forEach((generator, index) => generator.send({
    type: 'run', step, ratePerSecond: rate * (shares[index] ?? 0), startMicros, warmupMs: profile.warmupMs, measureMs, drainMs: profile.drainMs
  }))
  const before = await readCpuAt(windowStart, server.nodes, generators)
  const after = await readCpuAt(windowEnd, server.nodes, generators)
  await Promise.all(drained)
  // What arrives after the drain is late, not lost: the counts are final once nothing arrives any more.
  await waitQuiet(generators)
  const results = await Promise.all(generators.map(async (generator) => await request<RunReply>(generator, { type: 'settle' }, 'result', 30_000)))
  // Without a forced GC: what the step left the server holding (Switchboard's in-memory store keeps every message).
  const memory = await request<ServerMemory>(server.nodes[0] as ChildProcess, { type: 'memory', collect: false }, 'memory', 30_000)

  const tally = results.reduce((sum, result) => addTallies(sum, result.tally), emptyTally())
  const deliveredInWindow = results.reduce((sum, result) => sum + result.deliveredInWindow, 0)
  const sentInWindow = results.reduce((sum, result) => sum + result.sentInWindow, 0)
  const latencyHistogram = mergeHistograms(results.map((result) => result.latency))
  const lagHistogram = mergeHistograms(results.map((result) => result.sendLag))
  const latency = summarize(latencyHistogram)
  const sendLag = summarize(lagHistogram)
  latencyHistogram.destroy()
  lagHistogram.destroy()

  const elapsed = after.atMicros - before.atMicros
  const serverMicros = after.server === null || before.server === null ? null : after.server - before.server
  const generatorMicros = after.generators === null || before.generators === null ? null : after.generators - before.generators
  const serverCores = serverMicros === null ? null : serverMicros / elapsed
  const generatorCores = generatorMicros === null ? null : generatorMicros / elapsed
  const machineCores = after.machine === null || before.machine === null ? null : (after.machine - before.machine) / elapsed
  const backendCores = after.backends === null || before.backends === null ? null : (after.backends - before.backends) / elapsed
  const keptUp = sentInWindow > 0 && deliveredInWindow >= KEEP_UP * sentInWindow
  const capacityPass = keptUp && isClean(tally)
  return {
    setup: load.setup,
    rate,
    measureMs,
    tally,
    acks: results.reduce((sum, result) => sum + result.acks, 0),
    deliveredPerSecond: deliveredInWindow / (measureMs / 1000),
    keptUp,
    latency,
    sendLag,
    serverCores,
    generatorCores,
    backendCores,
    otherCores: machineCores === null || serverCores === null || generatorCores === null || backendCores === null
      ? null
      : Math.max(0, machineCores - serverCores - generatorCores - backendCores),
    serverHeapUsed: memory.heapUsed,
    // Scaled from the CPU readings' own interval to the nominal window the deliveries were counted in.
    cpuPerMessageMicros: serverCores === null || deliveredInWindow === 0 ? null : serverCores * measureMs * 1000 / deliveredInWindow,
    capacityPass,
    sustainable: capacityPass && latency.p99 <= P99_LIMIT_MS,
    generatorBusier: serverCores !== null && generatorCores !== null && generatorCores > serverCores
  }
}

// -------------------------------------------------------------- scenarios

/** Spreads users over the generators, one after the other. */
function roundRobin (users: GeneratorUser[], generators: number): GeneratorUser[][] {
  const assignments: GeneratorUser[][] = Array.from({ length: generators }, () => [])
  users.forEach((user, index) => (assignments[index % generators] as GeneratorUser[]).push(user))
  return assignments
}

async function idleMemory (server: RunningServer, generators: ChildProcess[], profile: Profile): Promise<IdleResult> {
  const node = server.nodes[0] as ChildProcess
  const measure = async (sockets: number): Promise<MemoryPoint> => {
    // Let the last handshakes' garbage and timers settle before the forced GC.
    await sleep(500)
    const memory = await request<ServerMemory>(node, { type: 'memory', collect: true }, 'memory', 60_000)
    return { sockets, rss: memory.rss, heapUsed: memory.heapUsed }
  }
  const points: MemoryPoint[] = [await measure(0)]
  let opened = 0
  let failed = 0
  let firstError: string | null = null
  let seconds = 0
  let serverMicros: number | null = 0
  let generatorMicros: number | null = 0
  let from = 0
  for (const level of profile.idleLevels) {
    const users = server.users.slice(from, level).map((user): GeneratorUser => ({ ...user, node: 0, partner: null }))
    const result = await connect(server, generators, roundRobin(users, generators.length), profile.connectConcurrency)
    opened += result.opened
    failed += result.failed
    firstError ??= result.firstError
    seconds += result.seconds
    serverMicros = serverMicros === null || result.serverMicros === null ? null : serverMicros + result.serverMicros
    generatorMicros = generatorMicros === null || result.generatorMicros === null ? null : generatorMicros + result.generatorMicros
    from = level
    points.push(await measure(opened))
    console.log(`  ${SERVER_LABELS[server.kind]}: ${opened} idle sockets, RSS ${(points.at(-1) as MemoryPoint).rss / 2 ** 20 | 0} MiB` +
      `${result.failed > 0 ? ` (${result.failed} failed: ${result.firstError ?? ''})` : ''}`)
  }
  await disconnectAll(generators)
  // The slope between the first and the last level: the fixed cost of the process drops out.
  const first = points[1] as MemoryPoint
  const last = points.at(-1) as MemoryPoint
  const span = last.sockets - first.sockets
  return {
    points,
    rssPerSocket: span > 0 ? (last.rss - first.rss) / span : Number.NaN,
    heapPerSocket: span > 0 ? (last.heapUsed - first.heapUsed) / span : Number.NaN,
    connectRate: opened / seconds,
    connectServerCores: serverMicros === null ? null : serverMicros / 1e6 / seconds,
    connectGeneratorCores: generatorMicros === null ? null : generatorMicros / 1e6 / seconds,
    failed,
    firstError
  }
}

/**
 * Users 2p and 2p+1 chat with each other, both in generator p % n. With two
 * nodes, pairs alternate between both users on one node and one on each, so
 * half the messages cross and each node holds half the users.
 */
function pairUp (users: BenchUser[], count: number, generators: number, nodes: number): GeneratorUser[][] {
  const assignments: GeneratorUser[][] = Array.from({ length: generators }, () => [])
  for (let pair = 0; pair * 2 + 1 < Math.min(count, users.length); pair++) {
    const a = users[pair * 2] as BenchUser
    const b = users[pair * 2 + 1] as BenchUser
    const aNode = nodes === 1 ? 0 : pair % 2
    const bNode = nodes === 1 ? 0 : pair % 4 < 2 ? 1 - aNode : aNode
    const target = assignments[pair % generators] as GeneratorUser[]
    target.push({ ...a, node: aNode, partner: b.id }, { ...b, node: bNode, partner: a.id })
  }
  return assignments
}

async function throughput (setup: string, server: RunningServer, generators: ChildProcess[], { profile, rates }: Options): Promise<ThroughputResult> {
  const assignments = pairUp(server.users, profile.chatUsers, generators.length, server.nodes.length)
  const connected = await connect(server, generators, assignments, profile.connectConcurrency)
  if (connected.failed > 0) throw new Error(`${setup}: ${connected.failed} chatting sockets failed to open: ${connected.firstError ?? ''}`)
  const senders = assignments.reduce((sum, users) => sum + users.length, 0)
  const load: Load = { setup, server, generators, shares: assignments.map((users) => users.length / senders) }
  console.log(`  ${setup}: ${senders} users chatting in pairs${server.nodes.length > 1 ? ` on ${server.nodes.length} nodes` : ''}`)
  console.log(stepHeader().join('\n'))

  const steps: StepResult[] = []
  const measure = async (rate: number): Promise<StepResult> => {
    const result = await runStep(load, rate, profile)
    steps.push(result)
    console.log(stepLine(result))
    return result
  }
  // Both sides' code is cold at first (JIT, buffers): one step, not counted, warms it.
  const warmup = await runStep(load, profile.startRate / 2, profile, Math.min(profile.measureMs, 1000))
  console.log(`${stepLine(warmup)} (warm-up, not counted)`)
  if (rates !== null) {
    for (const rate of rates) await measure(rate)
  } else {
    const search = { start: profile.startRate, factor: profile.factor, tolerance: profile.tolerance, minRate: 100 }
    await searchHighest({ ...search, maxSteps: profile.sustainableSteps, measure: async (rate) => (await measure(rate)).sustainable })
    await searchHighest({
      ...search,
      maxSteps: profile.capacitySteps,
      known: steps.map((step) => ({ rate: step.rate, pass: step.capacityPass })),
      measure: async (rate) => (await measure(rate)).capacityPass
    })
  }
  // The capacity search may have passed the sustainable test higher up, too.
  const highest = (passed: (step: StepResult) => boolean): StepResult | null =>
    steps.filter(passed).reduce<StepResult | null>((best, step) => best === null || step.rate > best.rate ? step : best, null)
  const sustainableStep = highest((step) => step.sustainable)
  const capacityStep = highest((step) => step.capacityPass)
  const basis = sustainableStep?.rate ?? capacityStep?.rate ?? null
  let half: StepResult | null = null
  if (basis !== null) {
    half = await runStep(load, roundRate(basis / 2), profile, profile.halfMeasureMs)
    console.log(`${stepLine(half)} (half max)`)
  }
  await disconnectAll(generators)
  return {
    sustainable: sustainableStep?.rate ?? null,
    capacity: capacityStep?.rate ?? null,
    half,
    atCapacity: capacityStep,
    steps: half === null ? steps : [...steps, half]
  }
}

async function scratchDatabase (serverUrl: string): Promise<string> {
  const name = `switchboard_bench_${randomBytes(4).toString('hex')}`
  const admin = await mysql.createConnection(serverUrl)
  await admin.query(`CREATE DATABASE \`${name}\` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin`)
  await admin.end()
  cleanups.push(async () => {
    const connection = await mysql.createConnection(serverUrl)
    await connection.query(`DROP DATABASE IF EXISTS \`${name}\``)
    await connection.end()
  })
  const url = new URL(serverUrl)
  url.pathname = `/${name}`
  return url.toString()
}

/** A fresh key prefix, every key under it deleted (SCAN + DEL) when the run ends. */
function scratchPrefix (redisUrl: string): string {
  const prefix = `bench:${randomBytes(4).toString('hex')}:`
  cleanups.push(async () => {
    const redis = new Redis(redisUrl)
    try {
      let cursor = '0'
      do {
        const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000)
        if (keys.length > 0) await redis.del(...keys)
        cursor = next
      } while (cursor !== '0')
    } finally {
      redis.disconnect()
    }
  })
  return prefix
}

function configured (name: string): string | null {
  const value = process.env[name]
  return value === undefined || value === '' ? null : value
}

/** Runs `work` against a server started for it, stopped however it ends. */
async function withServer<T> (kind: ServerKind, start: Parameters<typeof startServer>[1], work: (server: RunningServer) => Promise<T>): Promise<T> {
  const server = await startServer(kind, start)
  try {
    return await work(server)
  } finally {
    await stopServer(server)
  }
}

// ------------------------------------------------------------------- main

/** The commit measured, and whether the server's code had uncommitted changes (it runs from the working tree's build). */
function revision (): string {
  try {
    const git = (...args: string[]): string => execFileSync('git', args, { cwd: SOURCE_DIR, encoding: 'utf8' })
    // Porcelain lines are "XY path": the status letters may start with a space, so no trimming.
    const changed = git('status', '--porcelain', '--', '../../src', '../../plugins', '../../routes').split('\n')
      .filter((line) => line !== '').map((line) => line.slice(3))
    return `${git('rev-parse', '--short', 'HEAD').trim()}${changed.length === 0 ? '' : ` with uncommitted changes in ${changed.join(', ')}`}`
  } catch {
    return 'unknown (not a git checkout)'
  }
}

function settings (options: Options): string[] {
  const { profile } = options
  return [
    `mode: ${options.quick ? 'quick' : 'full'}; servers pinned to core ${SERVER_CORE}, ${options.generators} generator processes pinned to core ${GENERATOR_CORE} (taskset); MariaDB and Redis unpinned`,
    `idle sockets at ${profile.idleLevels.join(' and ')}; ${profile.chatUsers} users chatting in pairs, open-loop, ${256}-byte message texts, each acknowledged`,
    `steps: ${profile.warmupMs} ms warm-up, ${profile.measureMs} ms measured (${profile.halfMeasureMs} ms at half max); a message counts as lost only if it never arrives ` +
      `(counted once nothing has arrived for ${QUIET_MS} ms, ${QUIET_LIMIT_MS / 1000} s at most), as late if it arrives over ${profile.drainMs} ms after the last send; ` +
      `step search ×${profile.factor} up, then halving the gap to ${profile.tolerance * 100}%`,
    `capacity: highest rate where ≥ ${KEEP_UP * 100}% of the window's messages arrived within it and nothing was lost, doubled, reordered or refused; ` +
      `sustainable: that and p99 ≤ ${P99_LIMIT_MS} ms; latency is one-way, from each message's intended send time (no coordinated omission)`,
    `Switchboard limits raised so they are not what is measured: ${Object.entries(SWITCHBOARD_LIMITS).map(([name, value]) => `${name}=${value}`).join(', ')}; LOG_LEVEL info (its default), logs in scripts/bench/results/`
  ]
}

/** Cores the machine keeps busy before the run starts: anything above zero competes with what is measured. */
async function backgroundCores (): Promise<number | null> {
  const before = machineBusyMicros()
  const started = nowMicros()
  await sleep(1000)
  const after = machineBusyMicros()
  return before === null || after === null ? null : (after - before) / (nowMicros() - started)
}

async function main (): Promise<void> {
  const options = parseOptions(process.argv.slice(2))
  const { profile } = options
  childFlags = options.childFlags
  serverFlags = options.serverFlags
  const startedAt = new Date()
  const began = nowMicros()
  const results: RunResults = {
    startedAt,
    command: options.command,
    revision: revision(),
    machine: { cores: availableParallelism(), cpu: cpus()[0]?.model ?? 'unknown', memoryGiB: Math.round(totalmem() / 2 ** 30), node: process.version },
    settings: settings(options),
    servers: options.servers,
    idle: {},
    throughput: {},
    mysql: null,
    cluster: null,
    p99LimitMs: P99_LIMIT_MS,
    elapsedSeconds: 0
  }
  const background = await backgroundCores()
  results.settings.push(background === null
    ? 'machine load before the run: unknown (no /proc/stat)'
    : `machine load before the run: ${background.toFixed(2)} cores busy${background > 0.1 ? ' (other work on the machine: the figures are noisier than they would be on a quiet one; see "other cores" in every step)' : ''}`)
  for (const line of results.settings) console.log(line)
  const generators = startGenerators(options.generators)
  try {
    for (const kind of options.servers) {
      const idle = options.scenarios.has('memory')
      const load = options.scenarios.has('throughput')
      if (!idle && !load) continue
      const seed = Math.max(load ? profile.chatUsers : 0, idle ? Math.max(...profile.idleLevels) : 0)
      console.log(`\n${SERVER_LABELS[kind]}`)
      await withServer(kind, { seed, label: kind }, async (server) => {
        if (idle) results.idle[kind] = await idleMemory(server, generators, profile)
        if (load) results.throughput[kind] = await throughput(SERVER_LABELS[kind], server, generators, options)
      })
    }

    const mysqlUrl = configured('MYSQL_URL')
    const redisUrl = configured('REDIS_URL')
    const switchboard = options.servers.includes('switchboard')
    if (options.scenarios.has('mysql') && switchboard) {
      if (mysqlUrl === null) {
        results.mysql = 'MYSQL_URL is not set'
        console.log('\nSwitchboard on MariaDB: skipped, MYSQL_URL is not set')
      } else {
        console.log('\nSwitchboard on MariaDB (scratch database, dropped after)')
        const database = await scratchDatabase(mysqlUrl)
        results.mysql = await withServer('switchboard', { seed: profile.chatUsers, env: { MYSQL_URL: database }, label: 'switchboard-mariadb' },
          async (server) => await throughput('Switchboard on MariaDB', server, generators, options))
        await runCleanups()
      }
    }
    if (options.scenarios.has('cluster') && switchboard) {
      if (mysqlUrl === null || redisUrl === null) {
        results.cluster = `${[mysqlUrl === null ? 'MYSQL_URL' : null, redisUrl === null ? 'REDIS_URL' : null].filter((name) => name !== null).join(' and ')} not set`
        console.log(`\nTwo Switchboard nodes: skipped, ${results.cluster}`)
      } else {
        console.log('\nTwo Switchboard nodes on MariaDB and Redis (scratch database and key prefix, removed after)')
        const database = await scratchDatabase(mysqlUrl)
        const prefix = scratchPrefix(redisUrl)
        results.cluster = await withServer('switchboard', { seed: profile.chatUsers, nodes: 2, env: { MYSQL_URL: database, REDIS_URL: redisUrl, REDIS_KEY_PREFIX: prefix }, label: 'switchboard-cluster' },
          async (server) => await throughput('Switchboard, 2 nodes', server, generators, options))
        await runCleanups()
      }
    }
  } finally {
    await Promise.all(generators.map(async (generator) => await stop(generator)))
    await runCleanups()
  }
  results.elapsedSeconds = (nowMicros() - began) / 1e6
  const report = renderReport(results)
  console.log(`\n${report}`)
  writeFileSync(RESULTS_FILE, report)
  console.log(`written to ${RESULTS_FILE}`)
}

process.on('exit', killAll)
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => {
    killAll()
    runCleanups().finally(() => process.exit(130))
  })
}

main().catch(async (error: unknown) => {
  console.error(error)
  killAll()
  await runCleanups()
  process.exit(1)
})
