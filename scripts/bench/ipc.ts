/**
 * What the benchmark's processes say to each other over their IPC channels:
 * the parent (run.ts) with each server wrapper and each load generator.
 */
import type { DeliveryTally } from './accounting.js'

/** How a client talks to the server: Switchboard and the bare ws server share one JSON protocol. */
export type Dialect = 'json' | 'socketio'

export interface BenchUser {
  id: number
  /** A valid access token for `id`, accepted by the server at connect. */
  token: string
}

// Server -> parent.

export interface ServerReady {
  type: 'ready'
  port: number
  /** The users the server seeded (none on a node that joins another's database). */
  users: BenchUser[]
}

export interface ServerMemory {
  type: 'memory'
  rss: number
  heapUsed: number
  heapTotal: number
  external: number
  arrayBuffers: number
}

// Parent -> server.

/** Reports `process.memoryUsage()`, after a full garbage collection when `collect`. */
export interface MemoryRequest {
  type: 'memory'
  collect: boolean
}

// Parent -> generator.

export interface GeneratorUser extends BenchUser {
  /** Which of the `urls` this user connects to. */
  node: number
  /** The user this one chats with (both are in the same generator), or null for an idle socket. */
  partner: number | null
}

export interface ConnectCommand {
  type: 'connect'
  dialect: Dialect
  /** Base `ws://host:port` of each node. */
  urls: string[]
  users: GeneratorUser[]
  /** Handshakes in flight at once, in this process. */
  concurrency: number
}

export interface RunCommand {
  type: 'run'
  step: number
  /** This process's share of the total rate, messages per second. */
  ratePerSecond: number
  /** When the first message is meant to leave, in `process.hrtime` microseconds. */
  startMicros: number
  warmupMs: number
  measureMs: number
  /** How long after the last send the arrivals may trail before the rest counts as late. */
  drainMs: number
}

/** Answered with the last step's final counts (RunReply), once arrivals have stopped. */
export interface SettleCommand {
  type: 'settle'
}

/** Answered with the time since the last frame arrived, so the parent can wait for a backlog to clear. */
export interface QuietCommand {
  type: 'quiet'
}

export interface CloseCommand {
  type: 'close'
}

export type GeneratorCommand = ConnectCommand | RunCommand | SettleCommand | QuietCommand | CloseCommand

// Generator -> parent.

export interface ConnectedReply {
  type: 'connected'
  opened: number
  failed: number
  firstError: string | null
  startedMicros: number
  endedMicros: number
}

/** The step's messages are all sent, and all arrived or the drain time is over. */
export interface DrainedReply {
  type: 'drained'
  step: number
  /** Messages not arrived yet. */
  unarrived: number
}

export interface RunReply {
  type: 'result'
  step: number
  tally: DeliveryTally
  /** First arrivals whose arrival fell in the measured window. */
  deliveredInWindow: number
  /** Messages whose intended send time fell in the measured window. */
  sentInWindow: number
  acks: number
  /** Encoded HDR histogram of the one-way latency (µs) of messages meant to leave in the window. */
  latency: string
  /** Encoded HDR histogram of how late (µs) this process sent each message of the window. */
  sendLag: string
}

export interface QuietReply {
  type: 'quiet'
  idleMs: number
}

export interface ClosedReply {
  type: 'closed'
}

export type GeneratorReply = ConnectedReply | DrainedReply | RunReply | QuietReply | ClosedReply

/** `process.hrtime` in microseconds: one clock for every process on the machine. */
export function nowMicros (): number {
  return Number(process.hrtime.bigint()) / 1000
}
