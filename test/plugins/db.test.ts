import { once } from 'node:events'
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net'
import { test, type Test } from 'tap'
import { build, call, createUser, freshDatabase, realBackends, until } from '../helper.js'

/**
 * A TCP relay to the shared MariaDB that the test can cut and restore: the
 * database goes away for this app alone, not for everyone else on the machine.
 */
async function cuttableRelay (t: Test, target: URL): Promise<{ port: number, cut: () => Promise<void>, restore: () => Promise<void> }> {
  const sockets = new Set<Socket>()
  let server: Server | null = null
  let port = 0
  async function restore (): Promise<void> {
    server = createServer((client) => {
      const upstream = connect(Number(target.port || 3306), target.hostname)
      for (const [from, to] of [[client, upstream], [upstream, client]] as const) {
        sockets.add(from)
        from.pipe(to)
        from.on('close', () => { sockets.delete(from); to.destroy() })
        from.on('error', () => {})
      }
    })
    server.listen(port, '127.0.0.1')
    await once(server, 'listening')
    port = (server.address() as AddressInfo).port
  }
  async function cut (): Promise<void> {
    const running = server
    server = null
    for (const socket of sockets) socket.destroy()
    if (running !== null) await new Promise((resolve) => running.close(resolve))
  }
  await restore()
  t.teardown(cut)
  return { port, cut, restore }
}

test('with MySQL unreachable, what needs it answers 503 and it recovers by itself', async (t) => {
  const backends = realBackends()
  if ('skip' in backends) return t.plan(0, backends.skip)
  const database = new URL(await freshDatabase(t, backends.mysqlUrl))
  const relay = await cuttableRelay(t, database)
  const viaRelay = new URL(database)
  viaRelay.host = `127.0.0.1:${relay.port}`
  const app = await build(t, { mysqlUrl: viaRelay.toString() })
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
