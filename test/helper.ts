import { spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net'
import type { JWT } from '@fastify/jwt'
import Fastify, { type FastifyInstance, type InjectOptions } from 'fastify'
import { createSigner, createVerifier } from 'fast-jwt'
import fp from 'fastify-plugin'
import { Redis } from 'ioredis'
import mysql from 'mysql2/promise'
import { test, type Test } from 'tap'
import WebSocket, { type RawData } from 'ws'
import type { JwtFunctions } from '../src/access-tokens.js'
import switchboard, { type SwitchboardOptions } from '../src/app.js'
import { serverOptions } from '../src/server.js'

export const TEST_JWT_SECRET = 'test-secret-that-is-at-least-32-bytes-long'

/** Settings that keep tests fast (cheap bcrypt) and out of their own way (loose limits). */
export const TEST_SETTINGS: SwitchboardOptions = {
  jwtSecret: TEST_JWT_SECRET,
  bcryptCost: 4,
  rateLimitMax: 100_000,
  authRateLimitMax: 100_000,
  wsMessageRate: 10_000,
  wsMessageBurst: 10_000
}

const LOG_LEVEL = (process.env.TEST_LOG_LEVEL ?? 'silent') as 'silent'

/**
 * The app as production builds it (same server options, the plugin wrapped
 * the same way), ready for `inject`; closed when the test ends.
 */
export async function build (t: Test, options: SwitchboardOptions = {}): Promise<FastifyInstance> {
  const app = Fastify(serverOptions({ logLevel: LOG_LEVEL, trustProxy: false }))
  await app.register(fp(switchboard), { ...TEST_SETTINGS, ...options })
  await app.ready()
  t.teardown(() => app.close())
  return app
}

/** The same app listening on a free loopback port, for real WebSocket clients. */
export async function listen (t: Test, options: SwitchboardOptions = {}): Promise<{ app: FastifyInstance, url: string, wsUrl: string }> {
  const app = await build(t, options)
  const url = await app.listen({ port: 0, host: '127.0.0.1' })
  return { app, url, wsUrl: url.replace(/^http/, 'ws') }
}

/** A loopback port nothing listens on right now (for a child process or server of a test's own). */
export async function freePort (): Promise<number> {
  const server = createServer()
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as AddressInfo
  server.close()
  await once(server, 'close')
  return port
}

/** The standalone server (src/server.ts) in a child process, run the way this test process runs TypeScript. */
export interface ServerProcess {
  child: ChildProcess
  url: string
  wsUrl: string
  /** What the process wrote to stdout and stderr so far. */
  output: () => string
  /** Resolves with the exit code (null after a signal) and the signal once the process has ended. */
  exited: Promise<[code: number | null, signal: NodeJS.Signals | null]>
}

/** Starts the standalone server on a free port with `env` added to this process's environment, and waits until /ready is 200. */
export async function startServerProcess (t: Test, env: NodeJS.ProcessEnv): Promise<ServerProcess> {
  const port = await freePort()
  const loader = process.execArgv.filter((arg) => arg.includes('@tapjs/typescript'))
  const child = spawn(process.execPath, [...loader, new URL('../src/server.ts', import.meta.url).pathname], {
    env: { ...process.env, LOG_LEVEL: 'warn', ...env, PORT: String(port), HOST: '127.0.0.1' },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  const exited = once(child, 'exit') as Promise<[number | null, NodeJS.Signals | null]>
  let output = ''
  child.stdout?.on('data', (chunk: Buffer) => { output += chunk.toString() })
  child.stderr?.on('data', (chunk: Buffer) => { output += chunk.toString() })
  const kill = (): void => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL') }
  // Also if this process ends without running its teardowns: an orphaned server would keep its port.
  process.once('exit', kill)
  t.teardown(() => {
    process.off('exit', kill)
    kill()
  })
  const url = `http://127.0.0.1:${port}`
  await until('the server process is ready', async () => {
    if (child.exitCode !== null) throw new Error(`the server process exited with ${child.exitCode}: ${output}`)
    return (await fetch(`${url}/ready`).catch(() => null))?.status === 200
  }, 60_000)
  return { child, url, wsUrl: url.replace(/^http/, 'ws'), output: () => output, exited }
}

/**
 * A TCP relay to a shared backend (`backendUrl`; `url` is the same URL through
 * the relay) that a test can silence (connections stay, nothing passes), cut
 * (connections drop, new ones are refused) and restore: the backend goes
 * away for that test alone, not for everyone else on the machine.
 */
export async function tcpRelay (t: Test, backendUrl: string, defaultPort: number): Promise<{ url: string, silence: () => void, cut: () => Promise<void>, restore: () => Promise<void> }> {
  const target = new URL(backendUrl)
  const sockets = new Set<Socket>()
  let server: Server | null = null
  let port = 0
  let silent = false
  async function restore (): Promise<void> {
    silent = false
    const listening = createServer((client) => {
      const upstream = connect(Number(target.port || defaultPort), target.hostname)
      for (const [from, to] of [[client, upstream], [upstream, client]] as const) {
        sockets.add(from)
        from.on('data', (data) => { if (!silent) to.write(data) })
        from.on('close', () => { sockets.delete(from); to.destroy() })
        from.on('error', () => {})
      }
    })
    server = listening
    listening.listen(port, '127.0.0.1')
    await once(listening, 'listening')
    port = (listening.address() as AddressInfo).port
  }
  async function cut (): Promise<void> {
    const running = server
    server = null
    for (const socket of sockets) socket.destroy()
    if (running !== null) await new Promise((resolve) => running.close(resolve))
  }
  await restore()
  t.teardown(cut)
  const url = new URL(backendUrl)
  url.host = `127.0.0.1:${port}`
  return { url: url.toString(), silence: () => { silent = true }, cut, restore }
}

/** Where the real backends are, or why they are not tested here. */
export function realBackends (): { mysqlUrl: string, redisUrl: string } | { skip: string } {
  const mysqlUrl = process.env.MYSQL_URL
  const redisUrl = process.env.REDIS_URL
  if (mysqlUrl !== undefined && mysqlUrl !== '' && redisUrl !== undefined && redisUrl !== '') return { mysqlUrl, redisUrl }
  const missing = [mysqlUrl ? null : 'MYSQL_URL', redisUrl ? null : 'REDIS_URL'].filter(Boolean).join(' and ')
  if (process.env.SWITCHBOARD_REQUIRE_BACKENDS === '1') {
    throw new Error(`SWITCHBOARD_REQUIRE_BACKENDS=1 but ${missing} is not set`)
  }
  return { skip: `real-backend tests skipped: ${missing} not set (set them, or run .ci/run)` }
}

function uniqueName (): string {
  return `${process.pid}_${randomBytes(4).toString('hex')}`
}

/** A fresh database on the MYSQL_URL server for this test alone, dropped afterwards. */
export async function freshDatabase (t: Test, serverUrl: string): Promise<string> {
  const name = `switchboard_test_${uniqueName()}`
  const admin = await mysql.createConnection(serverUrl)
  await admin.query(`CREATE DATABASE \`${name}\` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin`)
  await admin.end()
  t.teardown(async () => {
    const cleanup = await mysql.createConnection(serverUrl)
    await cleanup.query(`DROP DATABASE IF EXISTS \`${name}\``)
    await cleanup.end()
  })
  const url = new URL(serverUrl)
  url.pathname = `/${name}`
  return url.toString()
}

/** A key prefix on the REDIS_URL server for this test alone; its keys are deleted afterwards. */
export function freshRedisPrefix (t: Test, redisUrl: string): string {
  const prefix = `switchboard-test:${uniqueName()}:`
  t.teardown(async () => {
    const redis = new Redis(redisUrl, { lazyConnect: true })
    await redis.connect()
    const keys = await scanKeys(redis, `${prefix}*`)
    if (keys.length > 0) await redis.del(...keys)
    await redis.quit()
  })
  return prefix
}

/** Every key matching `pattern` (SCAN, so it never blocks the server). */
export async function scanKeys (redis: Redis, pattern: string): Promise<string[]> {
  const keys: string[] = []
  let cursor = '0'
  do {
    const [next, found] = await redis.scan(cursor, 'MATCH', pattern, 'COUNT', 1000)
    keys.push(...found)
    cursor = next
  } while (cursor !== '0')
  return keys
}

/**
 * Polls `condition` until it holds, for states no event announces (a node
 * reaped, a user gone from the online list); fails after `timeoutMs`.
 */
export async function until (what: string, condition: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!await condition()) {
    if (Date.now() > deadline) throw new Error(`not within ${timeoutMs} ms: ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

/** Options for an app on the real backends, each test with its own database and key prefix. */
export async function realBackendOptions (t: Test, backends: { mysqlUrl: string, redisUrl: string }): Promise<SwitchboardOptions> {
  return {
    mysqlUrl: await freshDatabase(t, backends.mysqlUrl),
    redisUrl: backends.redisUrl,
    redisKeyPrefix: freshRedisPrefix(t, backends.redisUrl)
  }
}

/** Runs one scenario as two tests: on the embedded default, and on MariaDB + Redis (skipped only as realBackends() says). */
export function onBothBackends (name: string, scenario: (t: Test, options: SwitchboardOptions) => Promise<void>): void {
  test(`${name} (embedded)`, (t) => scenario(t, {}))
  test(`${name} (MariaDB + Redis)`, async (t) => {
    const backends = realBackends()
    if ('skip' in backends) return t.plan(0, backends.skip)
    await scenario(t, await realBackendOptions(t, backends))
  })
}

type ErrorClass<E extends Error> = abstract new (...args: never[]) => E

/** The error `fn` throws, checked to be a `type`; fails the test when it throws nothing. */
export function thrown<E extends Error> (t: Test, fn: () => unknown, type: ErrorClass<E>): E {
  try {
    fn()
  } catch (error) {
    t.type(error, type)
    return error as E
  }
  t.fail(`expected a ${type.name}`)
  throw new Error(`expected a ${type.name}`)
}

/** The error `promise` rejects with, checked to be a `type`; fails the test when it resolves. */
export async function rejection<E extends Error> (t: Test, promise: Promise<unknown>, type: ErrorClass<E>): Promise<E> {
  try {
    await promise
  } catch (error) {
    t.type(error, type)
    return error as E
  }
  t.fail(`expected a ${type.name}`)
  throw new Error(`expected a ${type.name}`)
}

/** The JSON body of an injected request. */
export async function call<T = Record<string, unknown>> (app: FastifyInstance, options: InjectOptions): Promise<{ statusCode: number, body: T, headers: Record<string, unknown> }> {
  const response = await app.inject(options)
  return { statusCode: response.statusCode, body: (response.body === '' ? null : response.json()) as T, headers: response.headers }
}

export interface TestUser {
  id: number
  email: string
  password: string
  accessToken: string
  refreshToken: string
}

let counter = 0

/** Signs a new user up and logs them in. */
export async function createUser (app: FastifyInstance, name = 'Test User'): Promise<TestUser> {
  const email = `user${++counter}-${uniqueName()}@example.com`
  const password = 'correct horse battery'
  const signup = await call<{ id: number }>(app, { method: 'POST', url: '/auth/signup', payload: { email, password, name } })
  if (signup.statusCode !== 201) throw new Error(`signup failed: ${JSON.stringify(signup.body)}`)
  const login = await call<{ access_token: string, refresh_token: string }>(app, { method: 'POST', url: '/auth/login', payload: { email, password } })
  if (login.statusCode !== 200) throw new Error(`login failed: ${JSON.stringify(login.body)}`)
  return { id: signup.body.id, email, password, accessToken: login.body.access_token, refreshToken: login.body.refresh_token }
}

/**
 * An access token signed with the app's own key and settings, for tokens a
 * login cannot make: already expired (`clockTimestamp` in the past) or short-lived.
 */
export function signAccessToken (app: FastifyInstance, claims: { sub: string, sid: string }, options: { expiresIn?: number, clockTimestamp?: number } = {}): string {
  const jwt = (app.jwt as unknown as Record<string, JWT>).switchboard
  if (jwt === undefined) throw new Error('the app has no switchboard JWT namespace')
  return jwt.sign(claims, options)
}

/** The claims of a JWT, read without verifying it. */
export function jwtClaims (token: string): Record<string, unknown> {
  return JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString('utf8')) as Record<string, unknown>
}

/**
 * Signing and verification for domain tests, without a Fastify instance:
 * fast-jwt (the library under @fastify/jwt) configured exactly as
 * plugins/auth.ts configures @fastify/jwt. Keep the two in step.
 */
export function pluginJwt ({ secret = TEST_JWT_SECRET, issuer = 'switchboard', audience = 'switchboard', ttlSeconds = 900 }: {
  secret?: string, issuer?: string, audience?: string, ttlSeconds?: number
} = {}): JwtFunctions {
  const sign = createSigner({
    key: secret,
    algorithm: 'HS256',
    iss: issuer,
    aud: audience,
    expiresIn: ttlSeconds * 1000, // @fastify/jwt turns its seconds into fast-jwt's milliseconds
    header: { alg: 'HS256', typ: 'at+jwt' }
  })
  const verify = createVerifier({
    key: secret,
    algorithms: ['HS256'],
    allowedIss: issuer,
    allowedAud: audience,
    requiredClaims: ['sub', 'sid', 'iat', 'exp', 'iss', 'aud'],
    checkTyp: 'at+jwt'
  })
  return { sign: (payload) => sign(payload), verify: (token) => verify(token) }
}

/** A frame the server sent as JSON. */
export interface ServerFrame {
  type: string
  [key: string]: unknown
}

export interface WsClose {
  code: number
  reason: string
}

export interface WsConnectOptions {
  /** The access token, sent as `Authorization: Bearer` (default) or as `?token=`. */
  token?: string
  via?: 'header' | 'query'
  format?: 'json' | 'text'
  /** `?since=<message id>`: replay what came after that message first. */
  since?: string
  origin?: string
  headers?: Record<string, string>
  /** false: the client does not answer the server's pings (a peer that went silent). */
  autoPong?: boolean
}

/** How long a test waits for a frame or a close before it fails. */
const WS_WAIT_MS = 3_000

/** A real `ws` client that queues what the server sends, for tests to read in order. */
export interface WsClient {
  readonly socket: WebSocket
  /** The next frame as text; fails the test if none comes in time or the socket closes. */
  next (): Promise<string>
  /** The next frame, parsed as JSON. */
  nextJson (): Promise<ServerFrame>
  /** Skips frames until one of `type` arrives. */
  nextOfType (type: string): Promise<ServerFrame>
  send (data: string | Buffer | object): void
  /** The close code and reason the socket ended with (waits for the close, `timeoutMs` at most). */
  closed (timeoutMs?: number): Promise<WsClose>
  /** Closes from the client side, if still open, and waits for the close. */
  close (): Promise<void>
}

function wsAddress (wsUrl: string, { token, via = 'header', format, since }: WsConnectOptions): string {
  const url = new URL('/ws', wsUrl)
  if (token !== undefined && via === 'query') url.searchParams.set('token', token)
  if (format !== undefined) url.searchParams.set('format', format)
  if (since !== undefined) url.searchParams.set('since', since)
  return url.toString()
}

function wsHeaders ({ token, via = 'header', origin, headers }: WsConnectOptions): Record<string, string> {
  return {
    ...(token !== undefined && via === 'header' ? { authorization: `Bearer ${token}` } : {}),
    ...(origin !== undefined ? { origin } : {}),
    ...headers
  }
}

/** Opens `GET /ws`; the client is closed when the test ends. Rejects if the upgrade is refused. */
export async function connectWs (t: Test, wsUrl: string, options: WsConnectOptions = {}): Promise<WsClient> {
  const socket = new WebSocket(wsAddress(wsUrl, options), { headers: wsHeaders(options), autoPong: options.autoPong ?? true })
  const frames: string[] = []
  const watchers = new Set<() => void>()
  let closeInfo: WsClose | undefined
  const notify = (): void => { for (const watcher of [...watchers]) watcher() }

  // Listeners go on before the handshake ends, so the welcome frame is never missed.
  socket.on('message', (data: RawData, isBinary: boolean) => {
    const buffer = Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data as ArrayBuffer)
    frames.push(isBinary ? `<binary ${buffer.length} bytes>` : buffer.toString('utf8'))
    notify()
  })
  socket.on('close', (code: number, reason: Buffer) => {
    closeInfo = { code, reason: reason.toString('utf8') }
    notify()
  })
  // The close event reports what happened; errors (a 1009 from the server, say) need no other handling.
  socket.on('error', () => {})

  /** Resolves with the first defined `check()` result, re-checked whenever something arrives. */
  function waitFor<T> (what: string, check: () => T | undefined, timeoutMs = WS_WAIT_MS): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        watchers.delete(attempt)
        reject(new Error(`no ${what} within ${timeoutMs} ms (unread frames: ${JSON.stringify(frames)})`))
      }, timeoutMs)
      function attempt (): void {
        let value: T | undefined
        try {
          value = check()
        } catch (error) {
          clearTimeout(timer)
          watchers.delete(attempt)
          reject(error)
          return
        }
        if (value === undefined) return
        clearTimeout(timer)
        watchers.delete(attempt)
        resolve(value)
      }
      watchers.add(attempt)
      attempt()
    })
  }

  function takeFrame (what: string): string | undefined {
    const frame = frames.shift()
    if (frame !== undefined) return frame
    if (closeInfo !== undefined) throw new Error(`socket closed (${closeInfo.code} ${closeInfo.reason}) while waiting for ${what}`)
    return undefined
  }

  function parse (frame: string): ServerFrame {
    const value: unknown = JSON.parse(frame)
    if (typeof value !== 'object' || value === null || typeof (value as { type?: unknown }).type !== 'string') {
      throw new Error(`not a JSON frame with a type: ${frame}`)
    }
    return value as ServerFrame
  }

  const client: WsClient = {
    socket,
    next: () => waitFor('frame', () => takeFrame('a frame')),
    nextJson: async () => parse(await client.next()),
    nextOfType: (type) => waitFor(`"${type}" frame`, () => {
      for (let frame = takeFrame(`a "${type}" frame`); frame !== undefined; frame = takeFrame(`a "${type}" frame`)) {
        const parsed = parse(frame)
        if (parsed.type === type) return parsed
      }
      return undefined
    }),
    send (data) {
      socket.send(typeof data === 'string' || Buffer.isBuffer(data) ? data : JSON.stringify(data))
    },
    closed: (timeoutMs) => waitFor('close', () => closeInfo, timeoutMs),
    async close () {
      if (closeInfo !== undefined) return
      if (socket.readyState === WebSocket.CONNECTING) socket.terminate()
      else socket.close(1000)
      await client.closed()
    }
  }
  t.teardown(() => client.close())

  await new Promise<void>((resolve, reject) => {
    socket.once('open', () => resolve())
    socket.once('unexpected-response', (request, response) => {
      request.destroy()
      reject(new Error(`upgrade refused with HTTP ${response.statusCode ?? '?'}`))
    })
    socket.once('close', (code: number) => reject(new Error(`socket closed (${code}) before it opened`)))
  })
  return client
}

/** A chat message as tests compare it: the server's message frame without `type` and `sentAt`. */
export interface ChatLine {
  id: string
  from: number
  to: number
  text: string
}

export interface OutgoingMessage {
  to: number
  text: string
  /** The client ref (`id` of a JSON frame). */
  ref?: string
  /** Send as `<to>:<text>` (which has no ref) rather than JSON. */
  legacy?: boolean
}

/**
 * Sends messages on one socket and reads their acks (one socket's frames
 * are acknowledged in order); the socket must receive nothing else meanwhile.
 */
export async function sendMessages (client: WsClient, from: number, messages: readonly OutgoingMessage[]): Promise<ChatLine[]> {
  for (const { to, text, ref, legacy } of messages) {
    client.send(legacy === true ? `${to}:${text}` : { type: 'message', to, text, ...(ref === undefined ? {} : { id: ref }) })
  }
  const sent: ChatLine[] = []
  for (const { to, text, ref, legacy } of messages) {
    const ack = await client.nextJson()
    if (ack.type !== 'ack' || typeof ack.id !== 'string' || ack.ref !== (legacy === true ? undefined : ref)) {
      throw new Error(`expected the ack of ${JSON.stringify({ to, text, ref })}, got ${JSON.stringify(ack)}`)
    }
    sent.push({ id: ack.id, from, to, text })
  }
  return sent
}

/** Reads the next `count` frames, each of which must be a chat message. */
export async function receiveMessages (client: WsClient, count: number): Promise<ChatLine[]> {
  const received: ChatLine[] = []
  while (received.length < count) {
    const frame = await client.nextJson()
    if (frame.type !== 'message') throw new Error(`expected message ${received.length + 1} of ${count}, got ${JSON.stringify(frame)}`)
    received.push({ id: String(frame.id), from: Number(frame.from), to: Number(frame.to), text: String(frame.text) })
  }
  return received
}

/** Attempts `GET /ws` and expects it refused: the HTTP status and JSON body, with no upgrade. */
export async function refusedUpgrade (wsUrl: string, options: WsConnectOptions = {}): Promise<{ statusCode: number, body: unknown }> {
  const socket = new WebSocket(wsAddress(wsUrl, options), { headers: wsHeaders(options) })
  socket.on('error', () => {})
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { socket.terminate(); reject(new Error(`no answer to the upgrade within ${WS_WAIT_MS} ms`)) }, WS_WAIT_MS)
    socket.once('open', () => {
      clearTimeout(timer)
      socket.terminate()
      reject(new Error('the upgrade was accepted'))
    })
    socket.once('unexpected-response', (request, response) => {
      const chunks: Buffer[] = []
      response.on('data', (chunk: Buffer) => chunks.push(chunk))
      response.on('end', () => {
        clearTimeout(timer)
        request.destroy()
        const text = Buffer.concat(chunks).toString('utf8')
        let body: unknown = text
        try { body = JSON.parse(text) } catch {}
        resolve({ statusCode: response.statusCode ?? 0, body })
      })
    })
  })
}

/**
 * Loads the docs UI page at `url` (following a redirect) and every asset it
 * links to, as a browser would: their paths and statuses.
 */
export async function loadDocsUi (app: FastifyInstance, url: string): Promise<{ statusCode: number, contentType: string, body: string, assets: Array<{ url: string, statusCode: number }> }> {
  let pageUrl = new URL(url, 'http://localhost')
  let page = await app.inject({ method: 'GET', url: pageUrl.pathname })
  if (page.statusCode >= 300 && page.statusCode < 400) {
    pageUrl = new URL(String(page.headers.location), pageUrl)
    page = await app.inject({ method: 'GET', url: pageUrl.pathname })
  }
  const links = [...page.body.matchAll(/(?:href|src)="([^"]+)"/g)].map((match) => new URL(match[1] ?? '', pageUrl).pathname)
  const assets = await Promise.all(links.map(async (link) => ({ url: link, statusCode: (await app.inject({ method: 'GET', url: link })).statusCode })))
  return { statusCode: page.statusCode, contentType: String(page.headers['content-type']), body: page.body, assets }
}
