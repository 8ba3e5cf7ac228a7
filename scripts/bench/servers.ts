/**
 * The servers under test, as the parent starts them: each node a process
 * pinned to the server core, with its log in scripts/bench/results/, the
 * shared JWT secret and backends, Switchboard's limits raised; and the
 * scratch database and Redis key prefix that the MariaDB and cluster runs
 * use, removed however the run ends.
 */
import type { ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { closeSync, mkdirSync, openSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { deleteKeysUnder } from '../scratch-keys.js'
import mysql from 'mysql2/promise'
import type { BenchUser, Dialect, ServerReady } from './ipc.js'
import { nextMessage, startPinned, stop } from './processes.js'
import type { ServerKind } from './report.js'

const SERVER_SCRIPTS: Record<ServerKind, string> = {
  switchboard: 'switchboard-server.js',
  ws: 'ws-baseline.js',
  socketio: 'socketio-baseline.js'
}
export const DIALECTS: Record<ServerKind, Dialect> = { switchboard: 'json', ws: 'json', socketio: 'socketio' }

export const SERVER_CORE = 0
/** Switchboard's limits, raised so that they are not what is measured. */
export const SWITCHBOARD_LIMITS: Record<string, string> = {
  WS_MAX_CONNECTIONS: '100000',
  WS_MAX_CONNECTIONS_PER_USER: '100',
  WS_MESSAGE_RATE: '1000000',
  WS_MESSAGE_BURST: '1000000',
  RATE_LIMIT_MAX: '1000000000',
  AUTH_RATE_LIMIT_MAX: '1000000',
  // No socket is closed for an expired token during the run.
  ACCESS_TOKEN_TTL: '86400'
}

/** The compiled scripts, beside this one in dist/scripts/bench/. */
export const HERE = fileURLToPath(new URL('.', import.meta.url))
/** dist/scripts/bench/ -> scripts/bench/ in the source tree. */
export const SOURCE_DIR = fileURLToPath(new URL('../../../scripts/bench/', import.meta.url))
export const LOG_DIR = `${SOURCE_DIR}results/`

/** Cleanups that must run however the run ends (scratch database, Redis keys). */
const cleanups: Array<() => Promise<void>> = []

export async function runCleanups (): Promise<void> {
  for (const cleanup of cleanups.splice(0).reverse()) {
    await cleanup().catch((error: unknown) => console.error('cleanup failed:', error))
  }
}

export interface RunningServer {
  kind: ServerKind
  /** One process per node. */
  nodes: ChildProcess[]
  urls: string[]
  users: BenchUser[]
}

let logCounter = 0

async function startNode (kind: ServerKind, env: Record<string, string>, seed: number, label: string, flags: string[]): Promise<{ child: ChildProcess, url: string, users: BenchUser[] }> {
  mkdirSync(LOG_DIR, { recursive: true })
  const log = openSync(`${LOG_DIR}${String(++logCounter).padStart(2, '0')}-${label.replace(/[^a-z0-9]+/gi, '-').toLowerCase()}.log`, 'w')
  const child = startPinned(`${HERE}${SERVER_SCRIPTS[kind]}`, {
    core: SERVER_CORE,
    execArgv: ['--expose-gc', ...flags],
    env: { ...process.env, ...env, BENCH_USERS: String(seed) },
    stdout: log
  })
  closeSync(log)
  const ready = await nextMessage<ServerReady>(child, 'ready', 120_000)
  return { child, url: `ws://127.0.0.1:${ready.port}`, users: ready.users }
}

export interface ServerStart {
  /** Users the first node makes. */
  seed: number
  env?: Record<string, string>
  nodes?: number
  /** Names the log files. */
  label: string
  /** Node flags (--cpu-prof, --trace-gc). */
  flags?: string[]
}

/** Every node gets the same secret and backends; the first seeds the users, the others share its database. */
export async function startServer (kind: ServerKind, { seed, env = {}, nodes = 1, label, flags = [] }: ServerStart): Promise<RunningServer> {
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
      const started = await startNode(kind, common, node === 0 ? seed : 0, nodes === 1 ? label : `${label} node ${node + 1}`, flags)
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

export async function stopServer (server: RunningServer): Promise<void> {
  await Promise.all(server.nodes.map(async (child) => await stop(child)))
}

/** Runs `work` against a server started for it, stopped however it ends. */
export async function withServer<T> (kind: ServerKind, start: ServerStart, work: (server: RunningServer) => Promise<T>): Promise<T> {
  const server = await startServer(kind, start)
  try {
    return await work(server)
  } finally {
    await stopServer(server)
  }
}

export async function scratchDatabase (serverUrl: string): Promise<string> {
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

/**
 * What the database server does at each commit: with
 * innodb_flush_log_at_trx_commit=1 every commit waits for the disk, so the
 * disk's flush latency sets the tail of every figure on MariaDB.
 */
export async function databaseDurability (serverUrl: string): Promise<string> {
  const connection = await mysql.createConnection(serverUrl)
  try {
    const [rows] = await connection.query<Array<mysql.RowDataPacket & { version: string, flush: number }>>(
      'SELECT VERSION() AS version, @@innodb_flush_log_at_trx_commit AS flush')
    const { version, flush } = rows[0] ?? { version: 'unknown', flush: Number.NaN }
    const meaning = Number(flush) === 1 ? 'each commit waits for its redo log to reach the disk' : 'commits do not wait for the redo log to reach the disk'
    return `database ${String(version)}, innodb_flush_log_at_trx_commit=${String(flush)} (${meaning})`
  } finally {
    await connection.end()
  }
}

/** A fresh key prefix, every key under it deleted (SCAN + DEL) when the run ends. */
export function scratchPrefix (redisUrl: string): string {
  const prefix = `bench:${randomBytes(4).toString('hex')}:`
  cleanups.push(() => deleteKeysUnder(redisUrl, prefix))
  return prefix
}
