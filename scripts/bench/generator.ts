/**
 * A load generator process (forked by run.ts, pinned to its own core): holds
 * sockets, and on `run` sends messages open-loop at a fixed rate, each
 * stamped with its intended send time, so a server that falls behind shows
 * as latency rather than as a slower sender (no coordinated omission). Both
 * users of a pair live in the same generator, so lost, duplicated and
 * reordered messages are counted here and only the sums leave.
 */
import type { Histogram } from 'hdr-histogram-js'
import WebSocket from 'ws'
import { createSequenceTracker, emptyTally, readStamp, stampText, type DeliveryTally, type SequenceTracker } from './accounting.js'
import { clientDialect, type ClientDialect } from './dialects.js'
import { encodeHistogram, latencyHistogram, recordMicros } from './histograms.js'
import { nowMicros, type ConnectCommand, type GeneratorCommand, type GeneratorReply, type GeneratorUser, type RunCommand } from './ipc.js'

/** How often the sender wakes up to send what has fallen due. */
const TICK_MS = 1
const HANDSHAKE_TIMEOUT_MS = 15_000
/** How often the drain looks whether everything has arrived. */
const DRAIN_POLL_MS = 5

interface Peer {
  user: GeneratorUser
  dialect: ClientDialect
  socket: WebSocket | null
  ready: boolean
  /** We closed it: its close is not the server's doing. */
  closing: boolean
  ackId: number
  /** The next sequence number this user sends in the current step. */
  nextSeq: number
  /** Arrivals from the partner in the current step. */
  arrivals: SequenceTracker
  partner: Peer | null
  /** Settles the open() under way: ready, or refused. */
  settle: ((error?: Error) => void) | null
}

const peers = new Map<number, Peer>()
/** The step being counted, and its counters. */
let step = -1
let tally: DeliveryTally = emptyTally()
let acks = 0
let deliveredInWindow = 0
let latency: Histogram = latencyHistogram()
let sendLag: Histogram = latencyHistogram()
let windowStart = 0
let windowEnd = 0
let lastFrameAt = nowMicros()
/** The last step sent, until the next one starts: its arrivals are still counted. */
let finished: { step: number, senders: Peer[], total: number, sentInWindow: number, arrivedAtDrain: number } | null = null

function reply (message: GeneratorReply): void {
  process.send?.(message)
}

function onFrame (peer: Peer, data: WebSocket.RawData): void {
  const now = nowMicros()
  lastFrameAt = now
  // Every frame here is ASCII (the servers echo our ASCII texts): latin1 decodes it without UTF-8 work.
  const frame = Buffer.isBuffer(data) ? data.toString('latin1') : Buffer.concat(data as Buffer[]).toString('latin1')
  const incoming = peer.dialect.read(frame, peer.user.token)
  switch (incoming.kind) {
    case 'message': {
      const stamp = readStamp(frame, incoming.textAt)
      if (stamp === null || peer.partner === null || incoming.from !== peer.partner.user.id) {
        tally.unexpected++
        return
      }
      if (stamp.step !== step) {
        tally.stale++
        return
      }
      const arrival = peer.arrivals.receive(stamp.seq)
      if (arrival === 'duplicate') return
      if (now >= windowStart && now < windowEnd) deliveredInWindow++
      if (stamp.intendedMicros >= windowStart && stamp.intendedMicros < windowEnd) recordMicros(latency, now - stamp.intendedMicros)
      return
    }
    case 'ack':
      acks++
      return
    case 'error':
      tally.errors++
      return
    case 'ping':
    case 'handshake':
      peer.socket?.send(incoming.reply)
      return
    case 'connected':
      peer.ready = true
      peer.settle?.()
      return
    case 'refused':
      peer.settle?.(new Error(`refused: ${incoming.reason}`))
      peer.socket?.terminate()
  }
}

/** Opens one socket and resolves once it can carry messages. */
function open (peer: Peer, base: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(peer.dialect.url(base, peer.user.token), {
      headers: peer.dialect.headers(peer.user.token),
      perMessageDeflate: false,
      skipUTF8Validation: true,
      // An all-zero mask (RFC 6455 allows any): ws then skips masking a copy of each frame here,
      // while the server unmasks as it always does. It keeps the generator cheaper than the server.
      generateMask: (mask) => { mask.fill(0) },
      handshakeTimeout: HANDSHAKE_TIMEOUT_MS
    })
    peer.socket = socket
    let settled = false
    const done = (error?: Error): void => {
      if (settled) return
      settled = true
      peer.settle = null
      clearTimeout(timer)
      if (error === undefined) resolve()
      else reject(error)
    }
    const timer = setTimeout(() => done(new Error('not ready in time')), HANDSHAKE_TIMEOUT_MS)
    peer.settle = done
    socket.on('message', (data) => onFrame(peer, data))
    socket.on('open', () => {
      if (!peer.dialect.readyAtOpen) return
      peer.ready = true
      done()
    })
    socket.on('error', (error) => done(error))
    socket.on('unexpected-response', (_request, response) => {
      done(new Error(`upgrade refused: HTTP ${response.statusCode}`))
      socket.terminate()
    })
    socket.on('close', () => {
      done(new Error('closed before it was ready'))
      if (peer.ready && !peer.closing) tally.closed++
      peer.ready = false
    })
  })
}

async function connect ({ dialect, urls, users, concurrency }: ConnectCommand): Promise<void> {
  const speaker = clientDialect(dialect)
  const fresh: Peer[] = users.map((user) => ({
    user, dialect: speaker, socket: null, ready: false, closing: false, ackId: 0, nextSeq: 1, arrivals: createSequenceTracker(), partner: null, settle: null
  }))
  for (const peer of fresh) peers.set(peer.user.id, peer)
  for (const peer of fresh) {
    if (peer.user.partner === null) continue
    const partner = peers.get(peer.user.partner)
    if (partner === undefined) throw new Error(`user ${peer.user.id}'s partner ${peer.user.partner} is not in this generator`)
    peer.partner = partner
  }
  const startedMicros = nowMicros()
  let opened = 0
  let failed = 0
  let firstError: string | null = null
  let next = 0
  const worker = async (): Promise<void> => {
    while (next < fresh.length) {
      const peer = fresh[next++] as Peer
      try {
        await open(peer, urls[peer.user.node] as string)
        opened++
      } catch (error) {
        failed++
        firstError ??= (error as Error).message
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, fresh.length) }, worker))
  reply({ type: 'connected', opened, failed, firstError, startedMicros, endedMicros: nowMicros() })
}

async function run (command: RunCommand): Promise<void> {
  const senders = [...peers.values()].filter((peer) => peer.partner !== null && peer.ready)
  finished = null
  step = command.step
  tally = emptyTally()
  acks = 0
  deliveredInWindow = 0
  latency.destroy()
  sendLag.destroy()
  latency = latencyHistogram()
  sendLag = latencyHistogram()
  for (const peer of peers.values()) {
    peer.nextSeq = 1
    peer.arrivals = createSequenceTracker()
  }
  const { startMicros, ratePerSecond } = command
  windowStart = startMicros + command.warmupMs * 1000
  windowEnd = windowStart + command.measureMs * 1000
  const total = senders.length === 0 ? 0 : Math.floor((command.warmupMs + command.measureMs) / 1000 * ratePerSecond)
  const intervalMicros = 1e6 / ratePerSecond
  let sent = 0

  await new Promise<void>((resolve) => {
    const tick = (): void => {
      const now = nowMicros()
      while (sent < total) {
        const intended = startMicros + sent * intervalMicros
        if (intended > now) break
        const peer = senders[sent % senders.length] as Peer
        const seq = peer.nextSeq++
        const text = stampText({ step: command.step, seq, intendedMicros: intended })
        // A socket the server closed still counts its message as sent: it is lost.
        if (peer.ready) peer.socket?.send(peer.dialect.send((peer.partner as Peer).user.id, text, `${command.step}-${seq}`, ++peer.ackId))
        if (intended >= windowStart && intended < windowEnd) recordMicros(sendLag, now - intended)
        sent++
      }
      if (sent >= total) {
        resolve()
        return
      }
      setTimeout(tick, TICK_MS)
    }
    setTimeout(tick, Math.max(0, (startMicros - nowMicros()) / 1000))
  })

  const arrived = (): number => senders.reduce((count, peer) => count + peer.arrivals.unique, 0)
  const deadline = nowMicros() + command.drainMs * 1000
  while (arrived() < total && nowMicros() < deadline) await new Promise((resolve) => setTimeout(resolve, DRAIN_POLL_MS))
  let sentInWindow = 0
  for (let index = 0; index < total; index++) {
    const intended = startMicros + index * intervalMicros
    if (intended >= windowStart && intended < windowEnd) sentInWindow++
  }
  finished = { step: command.step, senders, total, sentInWindow, arrivedAtDrain: arrived() }
  reply({ type: 'drained', step: command.step, unarrived: total - finished.arrivedAtDrain })
}

/**
 * The step's final counts, asked for once arrivals have stopped: a message
 * that came after the drain counts as late, and only one that never came as lost.
 */
function settle (): void {
  if (finished === null) throw new Error('settle before any run')
  const { senders, total, sentInWindow, arrivedAtDrain } = finished
  tally.sent = total
  tally.unique = 0
  tally.lost = 0
  tally.duplicated = 0
  tally.reordered = 0
  for (const peer of senders) {
    // What this peer received, against what its partner sent it.
    const partner = peer.partner as Peer
    tally.unique += peer.arrivals.unique
    tally.lost += peer.arrivals.lost(partner.nextSeq - 1)
    tally.duplicated += peer.arrivals.duplicated
    tally.reordered += peer.arrivals.reordered
  }
  tally.late = tally.unique - arrivedAtDrain
  reply({
    type: 'result',
    step: finished.step,
    tally,
    deliveredInWindow,
    sentInWindow,
    acks,
    latency: encodeHistogram(latency),
    sendLag: encodeHistogram(sendLag)
  })
}

async function closeAll (): Promise<void> {
  const closing = [...peers.values()].map((peer) => new Promise<void>((resolve) => {
    peer.closing = true
    const socket = peer.socket
    if (socket === null || socket.readyState === WebSocket.CLOSED) {
      resolve()
      return
    }
    socket.once('close', () => resolve())
    socket.close()
    // A server that does not answer the close is not waited for.
    setTimeout(() => {
      socket.terminate()
      resolve()
    }, 2000).unref()
  }))
  await Promise.all(closing)
  peers.clear()
  reply({ type: 'closed' })
}

function handle (command: GeneratorCommand): Promise<void> {
  switch (command.type) {
    case 'connect': return connect(command)
    case 'run': return run(command)
    case 'quiet':
      reply({ type: 'quiet', idleMs: (nowMicros() - lastFrameAt) / 1000 })
      return Promise.resolve()
    case 'settle':
      settle()
      return Promise.resolve()
    case 'close': return closeAll()
  }
}

process.on('message', (command: GeneratorCommand) => {
  handle(command).catch((error: unknown) => {
    console.error('generator:', error)
    process.exit(1)
  })
})
// The parent went away or asks us to stop: exit (which also writes a --cpu-prof profile).
process.on('disconnect', () => process.exit(0))
process.on('SIGTERM', () => process.exit(0))
