import { test } from 'tap'
import { build, call, createUser, freshDatabase, realBackends, tcpRelay, until } from '../helper.js'

test('with MySQL unreachable, what needs it answers 503 and it recovers by itself', async (t) => {
  const backends = realBackends()
  if ('skip' in backends) return t.plan(0, backends.skip)
  const relay = await tcpRelay(t, await freshDatabase(t, backends.mysqlUrl), 3306)
  const app = await build(t, { mysqlUrl: relay.url })
  const alice = await createUser(app, 'Alice')
  const me = { method: 'GET' as const, url: '/users/me', headers: { authorization: `Bearer ${alice.accessToken}` } }
  t.equal((await call(app, me)).statusCode, 200)

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
