import { test } from 'tap'
import { build, call, realBackendOptions, realBackends } from '../helper.js'

test('GET /health answers while the process is alive', async (t) => {
  const app = await build(t)
  const { statusCode, body } = await call(app, { method: 'GET', url: '/health' })
  t.equal(statusCode, 200)
  t.same(body, { status: 'ok' })
})

test('GET /ready reports the embedded backends', async (t) => {
  const app = await build(t)
  const { statusCode, body } = await call(app, { method: 'GET', url: '/ready' })
  t.equal(statusCode, 200)
  t.same(body, { status: 'ready', database: { backend: 'memory', status: 'up' }, shared: { backend: 'memory', status: 'up' }, bus: { backend: 'local', status: 'up' } })
})

test('GET /ready on MariaDB and Redis', async (t) => {
  const backends = realBackends()
  if ('skip' in backends) return t.plan(0, backends.skip)
  const app = await build(t, await realBackendOptions(t, backends))
  const { statusCode, body } = await call(app, { method: 'GET', url: '/ready' })
  t.equal(statusCode, 200)
  t.same(body, { status: 'ready', database: { backend: 'mysql', status: 'up' }, shared: { backend: 'redis', status: 'up' }, bus: { backend: 'redis', status: 'up' } })
})
