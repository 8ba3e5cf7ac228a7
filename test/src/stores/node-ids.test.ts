import { Redis } from 'ioredis'
import { test } from 'tap'
import { MAX_NODE_ID } from '../../../src/ids.js'
import { leaseNodeId } from '../../../src/stores/node-ids-redis.js'
import { freshRedisPrefix, realBackends } from '../../helper.js'

test('node id leases on Redis', async (t) => {
  const backends = realBackends()
  if ('skip' in backends) return t.plan(0, backends.skip)
  const redis = new Redis(backends.redisUrl)
  t.teardown(() => redis.quit())

  t.test('every node gets its own id until all are taken; a released id is free again', async (t) => {
    const prefix = freshRedisPrefix(t, backends.redisUrl)
    const leases = await Promise.all(Array.from({ length: MAX_NODE_ID + 1 }, () => leaseNodeId(redis, { prefix, ttlMs: 60_000 })))
    const ids = new Set(leases.map((lease) => lease.nodeId))
    t.equal(ids.size, MAX_NODE_ID + 1, '1024 leases, 1024 distinct ids')
    await t.rejects(leaseNodeId(redis, { prefix, ttlMs: 60_000 }), /all 1024 node ids are leased/)

    const freed = leases[7]
    await freed?.release()
    const again = await leaseNodeId(redis, { prefix, ttlMs: 60_000 })
    t.equal(again.nodeId, freed?.nodeId, 'the released id is the only free one')
  })

  t.test('a lease is renewed by its holder only, and held with a TTL', async (t) => {
    const prefix = freshRedisPrefix(t, backends.redisUrl)
    const lease = await leaseNodeId(redis, { prefix, ttlMs: 60_000 })
    const key = `${prefix}node:${lease.nodeId}`
    const ttl = await redis.pttl(key)
    t.ok(ttl > 0 && ttl <= 60_000, `expires (${ttl} ms left)`)
    t.equal(await lease.renew(), true)

    // Someone else took the id after the lease lapsed: the old holder can neither renew nor free it.
    await redis.set(key, 'another node')
    t.equal(await lease.renew(), false, 'a lost lease says so')
    await lease.release()
    t.equal(await redis.get(key), 'another node', 'and releasing it leaves the new holder alone')
  })

  t.test('an expired lease frees its id, and its holder takes it again if no one else did (Redis restarted)', async (t) => {
    const prefix = freshRedisPrefix(t, backends.redisUrl)
    const lease = await leaseNodeId(redis, { prefix, ttlMs: 50 })
    const key = `${prefix}node:${lease.nodeId}`
    // Bounded wait for Redis to expire the key (it must, within a few ms of the TTL).
    for (let attempt = 0; attempt < 100 && await redis.exists(key) === 1; attempt++) await new Promise((resolve) => setTimeout(resolve, 10))
    t.equal(await redis.exists(key), 0)
    t.equal(await lease.renew(), true)
    t.ok(await redis.pttl(key) > 0, 'held again, with a TTL')
  })
})
