import type { AddressInfo } from 'node:net'
import { Writable } from 'node:stream'
import Fastify, { type FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { test, type Test } from 'tap'
import WebSocket from 'ws'
import switchboard from '../../src/app.js'
import { ConfigError } from '../../src/errors.js'
import { redactUrl, serverOptions, start } from '../../src/server.js'
import { createUser, realBackends, rejection, TEST_SETTINGS } from '../helper.js'

/** An environment for a quiet, quick server on a free port. */
const BASE_ENV: NodeJS.ProcessEnv = {
  PORT: '0',
  JWT_SECRET: 'a-server-test-secret-of-32-bytes-or-more',
  BCRYPT_COST: '4',
  LOG_LEVEL: 'silent'
}

/** The process listeners close-with-grace installs. */
const GRACE_EVENTS = ['SIGTERM', 'SIGINT', 'uncaughtException', 'unhandledRejection', 'beforeExit'] as const

function listenerCounts (): number[] {
  return GRACE_EVENTS.map((event) => process.listenerCount(event))
}

/** The ConfigError `starting` rejects with; fails the test otherwise. */
async function configError (t: Test, starting: Promise<FastifyInstance>): Promise<ConfigError> {
  // Started after all: close it so the test process can end.
  return rejection(t, starting.then(async (app) => { await app.close() }), ConfigError)
}

test('start() reads the environment, listens, and closes cleanly', async (t) => {
  const before = listenerCounts()
  const app = await start(BASE_ENV)
  let closed = false
  t.teardown(async () => { if (!closed) await app.close() })

  const { address, port } = app.server.address() as AddressInfo
  t.equal(address, '127.0.0.1', 'HOST defaults to loopback')
  t.ok(port > 0, 'PORT=0 picked a free port')
  const health = await fetch(`http://127.0.0.1:${port}/health`)
  t.equal(health.status, 200)
  t.same(await health.json(), { status: 'ok' })
  t.equal(app.switchboardConfig.bcryptCost, 4, 'BCRYPT_COST reached the plugin')
  t.equal(app.switchboardConfig.jwtSecret, BASE_ENV.JWT_SECRET, 'JWT_SECRET reached the plugin')
  t.equal(app.switchboardConfig.jwtSecretGenerated, false)
  t.notSame(listenerCounts(), before, 'signal handlers are installed while it runs')

  await app.close()
  closed = true
  t.same(listenerCounts(), before, 'closing removed the signal handlers again')
  await t.rejects(fetch(`http://127.0.0.1:${port}/health`), 'nothing listens after close()')
})

test('start() fails fast on a bad variable, naming it', async (t) => {
  const before = listenerCounts()
  const notANumber = await configError(t, start({ ...BASE_ENV, BCRYPT_COST: 'abc' }))
  t.match(notANumber.message, /BCRYPT_COST/)
  t.match(notANumber.message, /abc/, 'and the value it got')

  const outOfRange = await configError(t, start({ ...BASE_ENV, BCRYPT_COST: '3' }))
  t.match(outOfRange.message, /BCRYPT_COST/, 'an out-of-range value names the variable too')

  const shortSecret = await configError(t, start({ ...BASE_ENV, JWT_SECRET: 'too-short' }))
  t.match(shortSecret.message, /JWT_SECRET/)

  const badPort = await configError(t, start({ ...BASE_ENV, PORT: '70000' }))
  t.match(badPort.message, /PORT/)
  t.same(listenerCounts(), before, 'a failed start leaves no process listeners behind')
})

test('with Redis configured, JWT_SECRET is required', async (t) => {
  const backends = realBackends()
  if ('skip' in backends) return t.plan(0, backends.skip)
  const { JWT_SECRET: _secret, ...withoutSecret } = BASE_ENV
  const error = await configError(t, start({ ...withoutSecret, REDIS_URL: backends.redisUrl }))
  t.match(error.message, /JWT_SECRET/)
})

test('redactUrl masks the token parameter, and only it', async (t) => {
  t.equal(redactUrl('/ws?token=abc.def.ghi'), '/ws?token=[redacted]')
  t.equal(redactUrl('/ws?format=text&token=abc.def.ghi'), '/ws?format=text&token=[redacted]')
  t.equal(redactUrl('/ws?token=abc&format=text'), '/ws?token=[redacted]&format=text')
  t.equal(redactUrl('/ws?TOKEN=abc'), '/ws?TOKEN=[redacted]', 'case-insensitive')
  t.equal(redactUrl('/ws?token=a&token=b'), '/ws?token=[redacted]&token=[redacted]', 'every occurrence')
  t.equal(redactUrl('/ws?token=abc#frag'), '/ws?token=[redacted]#frag')
  t.equal(redactUrl('/ws?format=text'), '/ws?format=text', 'other URLs are unchanged')
  t.equal(redactUrl('/users/me'), '/users/me')
})

/** A log stream for serverOptions, and the lines written to it. */
function capturedLog (): { lines: string[], logStream: Writable } {
  const lines: string[] = []
  const logStream = new Writable({
    write (chunk: Buffer, _encoding, done) {
      lines.push(...chunk.toString('utf8').split('\n').filter((line) => line !== ''))
      done()
    }
  })
  return { lines, logStream }
}

test('the embedded default says once, at start-up, that users and messages are not persistent', async (t) => {
  const { lines, logStream } = capturedLog()
  const app = Fastify(serverOptions({ logLevel: 'info', trustProxy: false }, { logStream }))
  await app.register(fp(switchboard), TEST_SETTINGS)
  await app.ready()
  t.teardown(() => app.close())
  const warnings = lines.filter((line) => line.includes('not persistent'))
  t.equal(warnings.length, 1, 'one line')
  t.match(warnings[0], /users and messages \(set MYSQL_URL\).*refresh tokens and rate limits \(set REDIS_URL\)/)
})

test('tokens in the query string never reach the request log', async (t) => {
  const SECRET = 'SECRETtokenValue123'
  const { lines, logStream } = capturedLog()
  const app = Fastify(serverOptions({ logLevel: 'info', trustProxy: false }, { logStream }))
  await app.register(fp(switchboard), TEST_SETTINGS)
  t.teardown(() => app.close())
  const address = await app.listen({ port: 0, host: '127.0.0.1' })
  const user = await createUser(app)

  const statuses = []
  for (const url of [`/users/me?token=${SECRET}`, `/ws?token=${SECRET}`, `/ws?format=text&token=${SECRET}`, `/nope?token=${SECRET}`]) {
    statuses.push((await fetch(`${address}${url}`)).status)
  }
  t.same(statuses, [401, 401, 401, 404], 'each request was refused')

  // A real upgrade with a valid token in the query: its URL must not be logged either.
  const socket = new WebSocket(`${address.replace(/^http/, 'ws')}/ws?token=${user.accessToken}`)
  await new Promise<void>((resolve, reject) => {
    socket.once('message', () => resolve())
    socket.once('error', reject)
  })
  const closed = new Promise((resolve) => socket.once('close', resolve))
  socket.close(1000)
  await closed
  // A refused upgrade with a bad token in the query.
  const refused = new WebSocket(`${address.replace(/^http/, 'ws')}/ws?token=${SECRET}`)
  const refusal = await new Promise<number>((resolve) => {
    refused.once('unexpected-response', (_request, response) => resolve(response.statusCode ?? 0))
    refused.once('error', () => resolve(-1))
  })
  t.equal(refusal, 401, 'the bad upgrade was refused')
  refused.terminate()

  const logged = lines.join('\n')
  t.ok(lines.some((line) => line.includes('/users/me?token=[redacted]')), 'the request log is being captured (and redacted)')
  t.notOk(logged.includes(SECRET), 'the bad token is in no log line')
  t.notOk(logged.includes(user.accessToken), 'the valid token is in no log line')
  t.notOk(logged.includes(user.accessToken.split('.')[2] ?? user.accessToken), 'not even its signature')
})
