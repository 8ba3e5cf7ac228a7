/**
 * Routing chat messages between server nodes over Redis: three designs, measured.
 *
 *   npm run bench:bus                                    # all three designs
 *   npm run bench:bus -- --design node --users 50000
 *   REDIS_URL=redis://127.0.0.1:6379/0 npm run bench:bus
 *
 * Simulates `--nodes` server nodes in this one process, each with its own
 * Redis connections, with `--users` online users spread evenly over them
 * (user u lives on node u % nodes). Sends `--messages` messages from random
 * users to random other users, `--window` of them in flight at a time, and
 * measures latency from the send call to the receiving node's handler.
 *
 *   user    every node SUBSCRIBEs to one channel per local user; a send is a
 *           PUBLISH to the recipient's channel (auto-pipelined).
 *   node    presence is a SET of node ids per user; every node SUBSCRIBEs to
 *           its own channel. The sends of one tick go in one EVALSHA that
 *           looks the recipients up and PUBLISHes one joined payload per node.
 *   stream  the same script, but XADDs to a stream per node, which the node
 *           reads with XREAD BLOCK on a connection of its own.
 *
 * Every design gets the same seeded sequence of senders and recipients. Each
 * message must reach its recipient's node exactly once; lost, duplicated or
 * misrouted messages are counted and make the exit code 1.
 *
 * Reading the numbers: with the window full, latency is mostly queueing
 * (p50 ~ window / throughput); `--window 1` shows the bare path. Redis CPU
 * comes from INFO cpu and INFO commandstats around the send phase, so it counts
 * everything the server did meanwhile, and the bench shares the machine with
 * Redis: the "other processes" column says how many cores the rest of the
 * machine took meanwhile; throughput from a run where it is not ~0 is not
 * comparable. All keys live under a random prefix and are deleted.
 */
import { randomBytes } from 'node:crypto'
import { cpus } from 'node:os'
import { parseArgs } from 'node:util'
import { Redis } from 'ioredis'

type Design = 'user' | 'node' | 'stream'

const DESIGNS: readonly Design[] = ['user', 'node', 'stream']
const DESIGN_NAMES: Record<Design, string> = {
  user: 'per-user channels',
  node: 'per-node channels + Lua',
  stream: 'per-node streams + Lua'
}
// What each design sends Redis while messages flow (a script's first call per connection is an EVAL).
const DESIGN_COMMANDS: Record<Design, readonly string[]> = {
  user: ['publish'],
  node: ['evalsha', 'eval', 'smembers', 'publish'],
  stream: ['evalsha', 'eval', 'smembers', 'xadd', 'xread']
}

interface Options {
  designs: Design[]
  nodes: number
  users: number
  messages: number
  window: number
  redisUrl: string
}

interface Traffic {
  from: Uint32Array
  to: Uint32Array
}

/** What travels over Redis; `t` is the send call's performance.now(), for latency. */
interface WireMessage {
  type: 'message'
  id: string
  from: number
  to: number
  text: string
  sentAt: string
  t: number
}

/** Where a transport reports what happened to the messages it was given. */
interface Sink {
  deliver (node: number, payload: string): void
  /** Redis found nobody to deliver `count` messages to. */
  drop (count: number): void
  fail (error: unknown): void
}

interface Transport {
  /** Makes every user reachable on its node: subscriptions or presence. */
  register (): Promise<void>
  send (fromNode: number, to: number, payload: string): void
  /** Redis commands issued to send, for messages per call. */
  sendCalls (): number
  close (): void
}

interface CommandStat {
  calls: number
  usec: number
}

interface RedisCounters {
  cpuSeconds: number
  commands: Map<string, CommandStat>
}

interface Result {
  design: Design
  registerMs: number
  registerMemoryBytes: number
  delivered: number
  lost: number
  duplicated: number
  misrouted: number
  perSecond: number
  p50: number
  p99: number
  redisCpuPer1000: number
  benchCpuPer1000: number
  messagesPerCall: number
  commands: Array<[string, CommandStat]>
  /** Commands other Redis clients ran during the send phase. */
  foreignCommands: number
  /** CPU the rest of the machine used during the send phase, in cores. */
  otherCores: number
}

// Snowflake-looking 19-digit ids whose last 11 digits are the message's sequence number.
const ID_PREFIX = '73998765'
const ID_DIGITS = 11
const TEXT = 'Are we still on for lunch tomorrow? I can be there by 12:30!'
const SUBSCRIBE_BATCH = 1000
const STREAM_MAXLEN = 100_000
const STREAM_READ_COUNT = 100
const STALL_MS = 5000
// Late duplicates would arrive within this after the last expected message.
const DUPLICATE_GRACE_MS = 250

// ARGV: prefix, then (recipient, payload) pairs. Returns how many recipients had no node.
const ROUTE_LOOKUP = `
local prefix = ARGV[1]
local batches, order, unroutable = {}, {}, 0
for i = 2, #ARGV, 2 do
  local nodes = redis.call('SMEMBERS', prefix .. 'p:' .. ARGV[i])
  if #nodes == 0 then unroutable = unroutable + 1 end
  for _, node in ipairs(nodes) do
    local batch = batches[node]
    if not batch then
      batch = {}
      batches[node] = batch
      order[#order + 1] = node
    end
    batch[#batch + 1] = ARGV[i + 1]
  end
end
`
const ROUTE_PUBLISH = `${ROUTE_LOOKUP}
for _, node in ipairs(order) do
  redis.call('PUBLISH', prefix .. 'n:' .. node, table.concat(batches[node], '\\n'))
end
return unroutable
`
const ROUTE_APPEND = `${ROUTE_LOOKUP}
for _, node in ipairs(order) do
  redis.call('XADD', prefix .. 's:' .. node, 'MAXLEN', '~', '${STREAM_MAXLEN}', '*', 'p', table.concat(batches[node], '\\n'))
end
return unroutable
`

interface RouteScripts {
  benchBusRoutePublish (prefix: string, ...recipientsAndPayloads: string[]): Promise<number>
  benchBusRouteAppend (prefix: string, ...recipientsAndPayloads: string[]): Promise<number>
}

function positiveInteger (name: string, value: string): number {
  const number = Number(value)
  if (!Number.isInteger(number) || number < 1) throw new Error(`--${name} must be a positive integer, not ${value}`)
  return number
}

function parseOptions (argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      design: { type: 'string', default: 'all' },
      nodes: { type: 'string', default: '3' },
      users: { type: 'string', default: '10000' },
      messages: { type: 'string', default: '200000' },
      window: { type: 'string', default: '2000' }
    }
  })
  const design = values.design
  if (design !== 'all' && !DESIGNS.includes(design as Design)) throw new Error('--design is user, node, stream or all')
  const options = {
    designs: design === 'all' ? [...DESIGNS] : [design as Design],
    nodes: positiveInteger('nodes', values.nodes),
    users: positiveInteger('users', values.users),
    messages: positiveInteger('messages', values.messages),
    window: positiveInteger('window', values.window),
    redisUrl: process.env.REDIS_URL ?? 'redis://127.0.0.1:6379'
  }
  if (options.users < 2) throw new Error('--users must be at least 2: nobody messages themselves')
  if (options.nodes > options.users) throw new Error('--nodes must not exceed --users')
  return options
}

/** The same pseudo-random senders and recipients for every design (mulberry32). */
function makeTraffic (users: number, messages: number): Traffic {
  let state = 0x5eed
  const random = (): number => {
    state = (state + 0x6d2b79f5) | 0
    let mixed = Math.imul(state ^ (state >>> 15), 1 | state)
    mixed = (mixed + Math.imul(mixed ^ (mixed >>> 7), 61 | mixed)) ^ mixed
    return ((mixed ^ (mixed >>> 14)) >>> 0) / 4294967296
  }
  const from = new Uint32Array(messages)
  const to = new Uint32Array(messages)
  for (let index = 0; index < messages; index++) {
    const sender = Math.floor(random() * users)
    const recipient = Math.floor(random() * (users - 1))
    from[index] = sender
    to[index] = recipient >= sender ? recipient + 1 : recipient
  }
  return { from, to }
}

function usersOf (node: number, { nodes, users }: Options): number[] {
  const local: number[] = []
  for (let user = node; user < users; user += nodes) local.push(user)
  return local
}

function chunks<T> (items: T[], size: number): T[][] {
  const result: T[][] = []
  for (let start = 0; start < items.length; start += size) result.push(items.slice(start, start + size))
  return result
}

function range (count: number): number[] {
  return Array.from({ length: count }, (_, index) => index)
}

function perUserChannels (options: Options, prefix: string, sink: Sink): Transport {
  const nodes = range(options.nodes)
  const commands = nodes.map(() => new Redis(options.redisUrl, { enableAutoPipelining: true }))
  const subscribers = nodes.map(() => new Redis(options.redisUrl))
  subscribers.forEach((subscriber, node) => subscriber.on('message', (_channel, message) => sink.deliver(node, message)))
  const onPublished = (receivers: number): void => {
    if (receivers === 0) sink.drop(1)
  }
  const channelsOf = nodes.map((node) => usersOf(node, options).map((user) => `${prefix}u:${user}`))
  let calls = 0
  return {
    async register () {
      await Promise.all(nodes.map(async (node) => {
        const subscriber = subscribers[node] as Redis
        for (const batch of chunks(channelsOf[node] as string[], SUBSCRIBE_BATCH)) await subscriber.subscribe(...batch)
      }))
    },
    send (fromNode, to, payload) {
      calls++
      ;(commands[fromNode] as Redis).publish(`${prefix}u:${to}`, payload).then(onPublished, sink.fail)
    },
    sendCalls: () => calls,
    close () {
      for (const connection of [...commands, ...subscribers]) connection.disconnect()
    }
  }
}

/**
 * Designs 2 and 3: presence sets, and one script call per node per tick
 * carrying every message that node sent in that tick.
 */
function perNodeRouting (options: Options, prefix: string, sink: Sink, viaStreams: boolean): Transport {
  const nodes = range(options.nodes)
  // No auto-pipelining: a node sends one command per tick already, so it would only add a pipeline per tick.
  const commands = nodes.map(() => {
    const redis = new Redis(options.redisUrl)
    redis.defineCommand('benchBusRoutePublish', { numberOfKeys: 0, lua: ROUTE_PUBLISH })
    redis.defineCommand('benchBusRouteAppend', { numberOfKeys: 0, lua: ROUTE_APPEND })
    return redis as Redis & RouteScripts
  })
  // Pub/sub for design 2, a blocking XREAD for design 3: either way a connection of its own.
  const receivers = nodes.map(() => new Redis(options.redisUrl))
  const queues: string[][] = nodes.map(() => [])
  const flushScheduled = nodes.map(() => false)
  let calls = 0
  let closing = false

  const onRouted = (unroutable: number): void => {
    if (unroutable > 0) sink.drop(unroutable)
  }
  const flush = (node: number): void => {
    flushScheduled[node] = false
    const pairs = queues[node] as string[]
    queues[node] = []
    calls++
    const redis = commands[node] as Redis & RouteScripts
    const routed = viaStreams ? redis.benchBusRouteAppend(prefix, ...pairs) : redis.benchBusRoutePublish(prefix, ...pairs)
    routed.then(onRouted, sink.fail)
  }
  const deliverBatch = (node: number, batch: string): void => {
    for (const payload of batch.split('\n')) sink.deliver(node, payload)
  }
  const readStream = async (node: number): Promise<void> => {
    const reader = receivers[node] as Redis
    const key = `${prefix}s:${node}`
    // The stream is new (the prefix is random), so reading from the start misses nothing.
    let lastId = '0-0'
    // Ends when close() disconnects the reader, which rejects the pending XREAD.
    for (;;) {
      const reply = await reader.xread('COUNT', STREAM_READ_COUNT, 'BLOCK', 0, 'STREAMS', key, lastId)
      for (const [, entries] of reply ?? []) {
        for (const [id, fields] of entries) {
          lastId = id
          deliverBatch(node, fields[1] ?? '')
        }
      }
    }
  }

  return {
    async register () {
      if (viaStreams) {
        for (const node of nodes) readStream(node).catch((error: unknown) => { if (!closing) sink.fail(error) })
      } else {
        await Promise.all(nodes.map(async (node) => {
          const subscriber = receivers[node] as Redis
          subscriber.on('message', (_channel, message) => deliverBatch(node, message))
          await subscriber.subscribe(`${prefix}n:${node}`)
        }))
      }
      await Promise.all(nodes.flatMap((node) => usersOf(node, options).map((user) =>
        (commands[node] as Redis).sadd(`${prefix}p:${user}`, String(node)))))
    },
    send (fromNode, to, payload) {
      (queues[fromNode] as string[]).push(String(to), payload)
      if (!flushScheduled[fromNode]) {
        flushScheduled[fromNode] = true
        setImmediate(flush, fromNode)
      }
    },
    sendCalls: () => calls,
    close () {
      closing = true
      for (const connection of [...commands, ...receivers]) connection.disconnect()
    }
  }
}

function parseInfo (info: string): Map<string, string> {
  const fields = new Map<string, string>()
  for (const line of info.split('\r\n')) {
    const colon = line.indexOf(':')
    if (colon > 0) fields.set(line.slice(0, colon), line.slice(colon + 1))
  }
  return fields
}

async function redisCounters (admin: Redis): Promise<RedisCounters> {
  const info = parseInfo(await admin.info('cpu', 'commandstats'))
  const commands = new Map<string, CommandStat>()
  for (const [field, value] of info) {
    if (!field.startsWith('cmdstat_')) continue
    const stats = new Map(value.split(',').map((pair) => pair.split('=') as [string, string]))
    commands.set(field.slice('cmdstat_'.length), { calls: Number(stats.get('calls')), usec: Number(stats.get('usec')) })
  }
  return {
    cpuSeconds: Number(info.get('used_cpu_sys')) + Number(info.get('used_cpu_user')),
    commands
  }
}

async function usedMemory (admin: Redis): Promise<number> {
  return Number(parseInfo(await admin.info('memory')).get('used_memory'))
}

/** Command time spent between two snapshots, split into the design's commands and everyone else's call count. */
function commandsBetween (design: Design, before: RedisCounters, after: RedisCounters): { commands: Array<[string, CommandStat]>, foreignCommands: number } {
  const commands: Array<[string, CommandStat]> = []
  let foreignCommands = 0
  for (const [name, { calls, usec }] of after.commands) {
    const earlier = before.commands.get(name) ?? { calls: 0, usec: 0 }
    // INFO is our own snapshot, not traffic.
    if (calls === earlier.calls || name === 'info') continue
    if (DESIGN_COMMANDS[design].includes(name)) commands.push([name, { calls: calls - earlier.calls, usec: usec - earlier.usec }])
    else foreignCommands += calls - earlier.calls
  }
  return { commands: commands.sort((a, b) => b[1].usec - a[1].usec), foreignCommands }
}

/** Busy CPU time of the whole machine, all cores, in ms. */
function machineBusyMs (): number {
  return cpus().reduce((sum, { times }) => sum + times.user + times.nice + times.sys + times.irq, 0)
}

async function deleteKeys (admin: Redis, pattern: string): Promise<void> {
  let cursor = '0'
  do {
    const [next, keys] = await admin.scan(cursor, 'MATCH', pattern, 'COUNT', 1000)
    if (keys.length > 0) await admin.unlink(...keys)
    cursor = next
  } while (cursor !== '0')
}

function percentile (sorted: Float64Array, fraction: number): number {
  if (sorted.length === 0) return 0
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * fraction))] as number
}

async function runDesign (design: Design, options: Options, traffic: Traffic, admin: Redis, runPrefix: string): Promise<Result> {
  const { nodes, messages, window } = options
  const prefix = `${runPrefix}${design}:`
  const seen = new Uint8Array(messages)
  const latencies = new Float64Array(messages)
  let delivered = 0
  let dropped = 0
  let duplicated = 0
  let misrouted = 0
  let sent = 0
  let lastDeliveryAt = 0
  let failure: unknown
  let finish = (): void => {}
  let abort = (_error: unknown): void => {}
  const fail = (error: unknown): void => {
    failure ??= error
    abort(error)
  }

  const sendNext = (): void => {
    const seq = sent++
    const from = traffic.from[seq] as number
    const to = traffic.to[seq] as number
    const message: WireMessage = {
      type: 'message',
      id: ID_PREFIX + String(seq).padStart(ID_DIGITS, '0'),
      from,
      to,
      text: TEXT,
      sentAt: new Date().toISOString(),
      t: performance.now()
    }
    transport.send(from % nodes, to, JSON.stringify(message))
  }

  const deliver = (node: number, payload: string): void => {
    const receivedAt = performance.now()
    const message = JSON.parse(payload) as WireMessage
    const seq = Number(message.id.slice(ID_PREFIX.length))
    // Anything unrecognisable counts as misrouted too: it reached a node it was not meant for.
    if (message.to % nodes !== node || !(seq >= 0 && seq < messages)) {
      misrouted++
      return
    }
    if (seen[seq] === 1) {
      duplicated++
      return
    }
    seen[seq] = 1
    latencies[delivered++] = receivedAt - message.t
    lastDeliveryAt = receivedAt
    settled(1)
  }
  const drop = (count: number): void => {
    dropped += count
    settled(count)
  }
  // Each message delivered or dropped frees a slot in the window.
  const settled = (count: number): void => {
    if (delivered + dropped >= messages) finish()
    const refills = Math.min(count, messages - sent)
    for (let slot = 0; slot < refills; slot++) sendNext()
  }

  const sink = { deliver, drop, fail }
  const transport = design === 'user' ? perUserChannels(options, prefix, sink) : perNodeRouting(options, prefix, sink, design === 'stream')

  try {
    const memoryBefore = await usedMemory(admin)
    const registerStarted = performance.now()
    await transport.register()
    const registerMs = performance.now() - registerStarted
    const registerMemoryBytes = await usedMemory(admin) - memoryBefore

    const redisBefore = await redisCounters(admin)
    const cpuBefore = process.cpuUsage()
    const machineBefore = machineBusyMs()
    const started = performance.now()
    lastDeliveryAt = started
    await new Promise<void>((resolve, reject) => {
      const watchdog = setInterval(() => {
        // A message lost without Redis saying so never settles: stop once nothing has arrived for a while.
        if (performance.now() - lastDeliveryAt > STALL_MS) finish()
      }, 250)
      finish = () => {
        clearInterval(watchdog)
        resolve()
      }
      abort = (error) => {
        clearInterval(watchdog)
        reject(error)
      }
      if (failure !== undefined) abort(failure)
      for (let slot = 0; slot < Math.min(window, messages); slot++) sendNext()
    })
    const elapsed = (lastDeliveryAt - started) / 1000
    const sendPhaseMs = performance.now() - started
    const cpu = process.cpuUsage(cpuBefore)
    const machineMs = machineBusyMs() - machineBefore
    const redisAfter = await redisCounters(admin)
    await new Promise((resolve) => setTimeout(resolve, DUPLICATE_GRACE_MS))
    if (failure !== undefined) throw failure

    const sorted = latencies.subarray(0, delivered).sort()
    const thousands = messages / 1000
    const benchCpuMs = (cpu.user + cpu.system) / 1000
    const redisCpuMs = (redisAfter.cpuSeconds - redisBefore.cpuSeconds) * 1000
    return {
      design,
      registerMs,
      registerMemoryBytes,
      delivered,
      lost: messages - delivered,
      duplicated,
      misrouted,
      perSecond: delivered / elapsed,
      p50: percentile(sorted, 0.5),
      p99: percentile(sorted, 0.99),
      redisCpuPer1000: redisCpuMs / thousands,
      benchCpuPer1000: benchCpuMs / thousands,
      messagesPerCall: sent / Math.max(1, transport.sendCalls()),
      ...commandsBetween(design, redisBefore, redisAfter),
      otherCores: Math.max(0, machineMs - benchCpuMs - redisCpuMs) / sendPhaseMs
    }
  } finally {
    transport.close()
    await deleteKeys(admin, `${prefix}*`)
  }
}

interface StormResult {
  variant: string
  ms: number
  redisCpuMs: number
}

/** A node (re)starting with every user online: one subscriber connection subscribes them all. */
async function connectStorm (options: Options, admin: Redis, runPrefix: string): Promise<StormResult[]> {
  const channels = range(options.users).map((user) => `${runPrefix}storm:u:${user}`)
  const variants: Array<[string, (subscriber: Redis) => Promise<void>]> = [
    ['one SUBSCRIBE per user, each awaited', async (subscriber) => {
      for (const channel of channels) await subscriber.subscribe(channel)
    }],
    ['one SUBSCRIBE per user, all at once', async (subscriber) => {
      await Promise.all(channels.map((channel) => subscriber.subscribe(channel)))
    }],
    [`batched, ${SUBSCRIBE_BATCH} channels per SUBSCRIBE`, async (subscriber) => {
      for (const batch of chunks(channels, SUBSCRIBE_BATCH)) await subscriber.subscribe(...batch)
    }]
  ]
  const results: StormResult[] = []
  for (const [variant, subscribeAll] of variants) {
    const subscriber = new Redis(options.redisUrl)
    try {
      await subscriber.ping()
      const cpuBefore = (await redisCounters(admin)).cpuSeconds
      const started = performance.now()
      await subscribeAll(subscriber)
      const ms = performance.now() - started
      const redisCpuMs = ((await redisCounters(admin)).cpuSeconds - cpuBefore) * 1000
      results.push({ variant, ms, redisCpuMs })
    } finally {
      subscriber.disconnect()
    }
  }
  return results
}

function printResults (results: Result[], storm: StormResult[]): void {
  console.log('\n| design | messages/s | p50 (ms) | p99 (ms) | Redis CPU ms / 1000 msgs | bench CPU ms / 1000 msgs | other processes (cores) | msgs per Redis call | register users (ms) | register memory (KB) | lost | duplicated | misrouted |')
  console.log('|---|---|---|---|---|---|---|---|---|---|---|---|---|')
  for (const result of results) {
    console.log(`| ${DESIGN_NAMES[result.design]} | ${Math.round(result.perSecond)} | ${result.p50.toFixed(2)} | ${result.p99.toFixed(2)} | ` +
      `${result.redisCpuPer1000.toFixed(1)} | ${result.benchCpuPer1000.toFixed(1)} | ${result.otherCores.toFixed(2)} | ${result.messagesPerCall.toFixed(1)} | ` +
      `${Math.round(result.registerMs)} | ${Math.round(result.registerMemoryBytes / 1024)} | ${result.lost} | ${result.duplicated} | ${result.misrouted} |`)
  }

  console.log('\nRedis command time during the send phase (INFO commandstats; commands run by a script count on their own line too):\n')
  console.log('| design | command | calls | µs per call | Redis µs per 1000 msgs |')
  console.log('|---|---|---|---|---|')
  for (const { design, commands, delivered } of results) {
    for (const [name, { calls, usec }] of commands) {
      console.log(`| ${DESIGN_NAMES[design]} | ${name} | ${calls} | ${(usec / calls).toFixed(2)} | ${Math.round(usec * 1000 / Math.max(1, delivered))} |`)
    }
  }
  const disturbed = results.filter(({ foreignCommands }) => foreignCommands > 0)
  if (disturbed.length > 0) console.log('')
  for (const { design, foreignCommands } of disturbed) {
    console.log(`Note: other clients ran ${foreignCommands} Redis commands during the ${DESIGN_NAMES[design]} send phase; its Redis CPU includes them.`)
  }

  if (storm.length > 0) {
    console.log('\nConnect storm, per-user channels: one connection subscribes every user\n')
    console.log('| variant | time (ms) | Redis CPU (ms) |')
    console.log('|---|---|---|')
    for (const { variant, ms, redisCpuMs } of storm) console.log(`| ${variant} | ${Math.round(ms)} | ${Math.round(redisCpuMs)} |`)
  }
}

async function main (): Promise<void> {
  const options = parseOptions(process.argv.slice(2))
  const runPrefix = `bench-bus:${randomBytes(4).toString('hex')}:`
  const admin = new Redis(options.redisUrl)
  try {
    const version = parseInfo(await admin.info('server')).get('redis_version') ?? 'unknown'
    console.log(`${options.nodes} nodes, ${options.users} users, ${options.messages} messages, ${options.window} in flight, ` +
      `${TEXT.length}-character texts, Redis ${version} at ${options.redisUrl}`)
    const traffic = makeTraffic(options.users, options.messages)
    const results: Result[] = []
    for (const design of options.designs) {
      console.error(`${DESIGN_NAMES[design]}...`)
      results.push(await runDesign(design, options, traffic, admin, runPrefix))
    }
    const storm = options.designs.includes('user') ? await connectStorm(options, admin, runPrefix) : []
    printResults(results, storm)
    for (const { design, lost, duplicated, misrouted } of results) {
      if (lost + duplicated + misrouted === 0) continue
      console.log(`WARNING: ${DESIGN_NAMES[design]}: ${lost} lost, ${duplicated} duplicated, ${misrouted} misrouted`)
      process.exitCode = 1
    }
  } finally {
    await deleteKeys(admin, `${runPrefix}*`)
    admin.disconnect()
  }
}

main().catch((error: unknown) => {
  console.error(error)
  process.exit(1)
})
