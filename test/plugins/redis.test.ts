import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { Redis } from 'ioredis'
import { test, type Test } from 'tap'
import { build, call, createUser, freePort, freshDatabase, freshRedisPrefix, realBackends, tcpRelay, until } from '../helper.js'

/**
 * A redis-server of this test's own, on its own port: stopping it leaves the
 * machine's shared Redis alone. Keeps nothing on disk, as a restart that
 * loses everything is the harder case.
 */
function privateRedis (t: Test, port: number) {
  let server: ChildProcess | null = null
  async function start (): Promise<void> {
    server = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' })
    const probe = new Redis({ port, lazyConnect: true, retryStrategy: () => 50, maxRetriesPerRequest: null })
    await probe.connect().catch(() => {})
    await probe.ping()
    probe.disconnect()
  }
  async function stop (): Promise<void> {
    const running = server
    server = null
    if (running === null || running.exitCode !== null) return
    running.kill('SIGKILL')
    await once(running, 'exit')
  }
  t.teardown(stop)
  return { start, stop, url: `redis://127.0.0.1:${port}/0` }
}

test('with Redis down, what needs it answers 503 at once and nothing fails open; it recovers by itself', async (t) => {
  const backends = realBackends()
  if ('skip' in backends) return t.plan(0, backends.skip)
  const redis = privateRedis(t, await freePort())
  await redis.start()
  const app = await build(t, { mysqlUrl: await freshDatabase(t, backends.mysqlUrl), redisUrl: redis.url, presenceTtl: 1 })
  const alice = await createUser(app, 'Alice')

  await redis.stop()
  const login = await call(app, { method: 'POST', url: '/auth/login', payload: { email: alice.email, password: alice.password } })
  t.equal(login.statusCode, 503, 'login: 503, not a session without its store')
  t.same(login.body, { statusCode: 503, code: 'SERVICE_UNAVAILABLE', error: 'Service Unavailable', message: 'a backend this request needs is unavailable; try again shortly' }, 'with a body that tells nothing more')
  const refresh = await call(app, { method: 'POST', url: '/auth/refresh', payload: { refresh_token: alice.refreshToken } })
  t.equal(refresh.statusCode, 503, 'refresh: 503, no tokens')
  const logout = await call(app, { method: 'POST', url: '/auth/logout', payload: { refresh_token: alice.refreshToken } })
  t.equal(logout.statusCode, 503, 'logout: 503, not a 204 that revoked nothing')
  const ready = await call<{ status: string, shared: { status: string } }>(app, { method: 'GET', url: '/ready' })
  t.equal(ready.statusCode, 503)
  t.equal(ready.body.shared.status, 'down', '/ready tells which')
  t.equal((await call(app, { method: 'GET', url: '/health' })).statusCode, 200, 'the process itself is fine')

  await redis.start()
  await until('the app finds Redis again', async () => (await call(app, { method: 'GET', url: '/ready' })).statusCode === 200, 20_000)
  const again = await call(app, { method: 'POST', url: '/auth/login', payload: { email: alice.email, password: alice.password } })
  t.equal(again.statusCode, 200, 'logins work again, with nothing restarted')
})

test('with Redis silent (connections open, no answers), requests answer 503 after the 1.5 s command timeout, not after TCP gives up', async (t) => {
  const backends = realBackends()
  if ('skip' in backends) return t.plan(0, backends.skip)
  const relay = await tcpRelay(t, backends.redisUrl, 6379)
  const app = await build(t, { mysqlUrl: await freshDatabase(t, backends.mysqlUrl), redisUrl: relay.url, redisKeyPrefix: freshRedisPrefix(t, backends.redisUrl) })
  const alice = await createUser(app, 'Alice')

  relay.silence()
  // The bound says "a timeout, not a hang"; it is loose for a busy machine.
  for (const [what, request] of [
    ['login', { method: 'POST' as const, url: '/auth/login', payload: { email: alice.email, password: alice.password } }],
    ['refresh', { method: 'POST' as const, url: '/auth/refresh', payload: { refresh_token: alice.refreshToken } }]
  ] as const) {
    const started = performance.now()
    const response = await call(app, request)
    const ms = Math.round(performance.now() - started)
    t.equal(response.statusCode, 503, `${what}: 503`)
    t.ok(ms < 4000, `${what}: answered after ${ms} ms`)
  }

  await relay.cut()
  await relay.restore()
  await until('the app finds Redis again', async () => (await call(app, { method: 'GET', url: '/ready' })).statusCode === 200, 20_000)
  const again = await call(app, { method: 'POST', url: '/auth/login', payload: { email: alice.email, password: alice.password } })
  t.equal(again.statusCode, 200, 'logins work again, with nothing restarted')
})
