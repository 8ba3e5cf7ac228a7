/**
 * What the parent does with the servers and the generators: open sockets,
 * run one step at a rate and read what it did (deliveries, latency, CPU of
 * every process involved), and the two scenarios built from them: idle
 * memory with the connect rate, and the throughput search.
 */
import type { ChildProcess } from 'node:child_process'
import { addTallies, emptyTally, isClean } from './accounting.js'
import { mergeHistograms, summarize } from './histograms.js'
import {
  nowMicros, type BenchUser, type ConnectedReply, type DrainedReply, type GeneratorUser,
  type QuietReply, type RunReply, type ServerMemory
} from './ipc.js'
import { cpuMicros, machineBusyMicros, pidsNamed, request, nextMessage, sleep, startPinned } from './processes.js'
import {
  SERVER_LABELS, stepHeader, stepLine,
  type IdleResult, type MemoryPoint, type StepResult, type ThroughputResult
} from './report.js'
import { DIALECTS, HERE, type RunningServer } from './servers.js'
import { roundRate, searchHighest } from './step-search.js'

export const GENERATOR_CORE = 1
/** Sockets one generator holds at most (the open-file limit here is 20,000). */
export const MAX_SOCKETS_PER_GENERATOR = 18_000
export const P99_LIMIT_MS = 20
/** A step keeps up when this share of what was sent in the window also arrived in it. */
export const KEEP_UP = 0.97
/** The first message of a step leaves this long after the command, so every generator has it. */
const START_DELAY_MS = 100
/** A backlog counts as cleared once no frame has arrived for this long. */
export const QUIET_MS = 200
export const QUIET_LIMIT_MS = 20_000

export interface Profile {
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

export const FULL: Profile = {
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

export const QUICK: Profile = {
  idleLevels: [1000, 3000],
  chatUsers: 1000,
  warmupMs: 250,
  measureMs: 800,
  drainMs: 500,
  halfMeasureMs: 1200,
  startRate: 5000,
  factor: 2,
  tolerance: 0.3,
  sustainableSteps: 3,
  capacitySteps: 1,
  connectConcurrency: 100
}

/** Load generator processes, pinned to the generator core; `flags` are Node flags (--cpu-prof). */
export function startGenerators (count: number, flags: string[]): ChildProcess[] {
  return Array.from({ length: count }, () => startPinned(`${HERE}generator.js`, { core: GENERATOR_CORE, env: process.env, execArgv: flags }))
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

/** Spreads users over the generators, one after the other. */
function roundRobin (users: GeneratorUser[], generators: number): GeneratorUser[][] {
  const assignments: GeneratorUser[][] = Array.from({ length: generators }, () => [])
  users.forEach((user, index) => (assignments[index % generators] as GeneratorUser[]).push(user))
  return assignments
}

export async function idleMemory (server: RunningServer, generators: ChildProcess[], profile: Profile): Promise<IdleResult> {
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

export async function throughput (setup: string, server: RunningServer, generators: ChildProcess[], profile: Profile, rates: number[] | null): Promise<ThroughputResult> {
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
