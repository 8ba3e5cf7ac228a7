import { test, type Test } from 'tap'
import { build, call, createUser, freshDatabase, realBackends, tcpRelay, until } from '../helper.js'

/** An app whose database is reached through a relay the test controls, a user, and a request that needs the database (answered 200 so far). */
async function appBehindRelay (t: Test, mysqlUrl: string) {
  const relay = await tcpRelay(t, await freshDatabase(t, mysqlUrl), 3306)
  const app = await build(t, { mysqlUrl: relay.url })
  const alice = await createUser(app, 'Alice')
  const me = { method: 'GET' as const, url: '/users/me', headers: { authorization: `Bearer ${alice.accessToken}` } }
  t.equal((await call(app, me)).statusCode, 200)
  return { relay, app, alice, me }
}

test('with MySQL unreachable, what needs it answers 503 and it recovers by itself', async (t) => {
  const backends = realBackends()
  if ('skip' in backends) return t.plan(0, backends.skip)
  const { relay, app, alice, me } = await appBehindRelay(t, backends.mysqlUrl)

  await relay.cut()
  const cut = await call(app, me)
  t.equal(cut.statusCode, 503, 'a request that needs the database: 503')
  t.same(cut.body, { statusCode: 503, code: 'SERVICE_UNAVAILABLE', error: 'Service Unavailable', message: 'a backend this request needs is unavailable; try again shortly' })
  const login = await call(app, { method: 'POST', url: '/auth/login', payload: { email: alice.email, password: alice.password } })
  t.equal(login.statusCode, 503, 'login: 503, not a 401 that would say the password is wrong')
  const ready = await call<{ database: { status: string } }>(app, { method: 'GET', url: '/ready' })
  t.equal(ready.statusCode, 503)
  t.equal(ready.body.database.status, 'down', '/ready tells which')

  await relay.restore()
  await until('the app reaches the database again', async () => (await call(app, me)).statusCode === 200, 20_000)
  t.pass('requests work again, with nothing restarted')
})

/** Milliseconds `work` took. */
async function timed<T> (work: () => Promise<T>): Promise<{ result: T, ms: number }> {
  const started = performance.now()
  const result = await work()
  return { result, ms: performance.now() - started }
}

test('with MySQL silent (connections open, no answers), requests answer 503 after the 1.5 s deadline, not after TCP gives up', async (t) => {
  const backends = realBackends()
  if ('skip' in backends) return t.plan(0, backends.skip)
  const { relay, app, alice, me } = await appBehindRelay(t, backends.mysqlUrl)

  relay.silence()
  // The bound says "a deadline, not a hang" (which would be minutes); it is loose for a busy machine.
  for (const [what, request] of [
    ['/users/me', me],
    ['login', { method: 'POST' as const, url: '/auth/login', payload: { email: alice.email, password: alice.password } }]
  ] as const) {
    const { result, ms } = await timed(() => call(app, request))
    t.equal(result.statusCode, 503, `${what}: 503`)
    t.ok(ms < 4000, `${what}: answered after ${Math.round(ms)} ms`)
  }
  const ready = await timed(() => call<{ database: { status: string } }>(app, { method: 'GET', url: '/ready' }))
  t.equal(ready.result.body.database.status, 'down', `/ready tells, after ${Math.round(ready.ms)} ms`)

  // The network heals: the silent connections are dropped, new ones get through.
  await relay.cut()
  await relay.restore()
  await until('the app reaches the database again', async () => (await call(app, me)).statusCode === 200, 20_000)
  t.pass('requests work again, with nothing restarted')
})
