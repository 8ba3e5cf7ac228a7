import Fastify from 'fastify'
import fp from 'fastify-plugin'
import { Redis } from 'ioredis'
import { test } from 'tap'
import switchboard from '../../src/app.js'
import { serverOptions } from '../../src/server.js'
import { TEST_SETTINGS, realBackendOptions, realBackends } from '../helper.js'

test('each node on one Redis leases its own node id, and gives it back when it closes', async (t) => {
  const backends = realBackends()
  if ('skip' in backends) return t.plan(0, backends.skip)
  const options = await realBackendOptions(t, backends)
  const prefix = options.redisKeyPrefix as string
  const redis = new Redis(backends.redisUrl)
  t.teardown(() => redis.quit())

  // Two nodes sharing one database and one Redis.
  const nodes = []
  for (let index = 0; index < 2; index++) {
    const app = Fastify(serverOptions({ logLevel: 'silent', trustProxy: false }))
    await app.register(fp(switchboard), { ...TEST_SETTINGS, ...options })
    await app.ready()
    nodes.push(app)
  }
  const leased = await redis.keys(`${prefix}node:*`)
  t.equal(leased.length, 2, 'one lease per node')
  t.not(leased[0], leased[1], 'on different ids')

  for (const app of nodes) await app.close()
  t.strictSame(await redis.keys(`${prefix}node:*`), [], 'closing leaves no lease behind')
})

test('Redis without MySQL is refused: nodes would each keep their own users under the same ids', async (t) => {
  const backends = realBackends()
  if ('skip' in backends) return t.plan(0, backends.skip)
  const options = await realBackendOptions(t, backends)
  const app = Fastify(serverOptions({ logLevel: 'silent', trustProxy: false }))
  t.teardown(() => app.close())
  await t.rejects(async () => {
    await app.register(fp(switchboard), { ...TEST_SETTINGS, redisUrl: options.redisUrl, redisKeyPrefix: options.redisKeyPrefix })
    await app.ready()
  }, { name: 'ConfigError', message: /MYSQL_URL .* is required when Redis is configured/ })
})
