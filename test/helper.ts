import { randomBytes } from 'node:crypto'
import Fastify, { type FastifyInstance, type InjectOptions } from 'fastify'
import fp from 'fastify-plugin'
import { Redis } from 'ioredis'
import mysql from 'mysql2/promise'
import type { Test } from 'tap'
import switchboard, { type SwitchboardOptions } from '../src/app.js'
import { serverOptions } from '../src/server.js'

/** Settings that keep tests fast (cheap bcrypt) and out of their own way (loose limits). */
export const TEST_SETTINGS: SwitchboardOptions = {
  jwtSecret: 'test-secret-that-is-at-least-32-bytes-long',
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
    let cursor = '0'
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000)
      if (keys.length > 0) await redis.del(...keys)
      cursor = next
    } while (cursor !== '0')
    await redis.quit()
  })
  return prefix
}

/** Options for an app on the real backends, each test with its own database and key prefix. */
export async function realBackendOptions (t: Test, backends: { mysqlUrl: string, redisUrl: string }): Promise<SwitchboardOptions> {
  return {
    mysqlUrl: await freshDatabase(t, backends.mysqlUrl),
    redisUrl: backends.redisUrl,
    redisKeyPrefix: freshRedisPrefix(t, backends.redisUrl)
  }
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
