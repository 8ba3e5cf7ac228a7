import { randomBytes, randomInt } from 'node:crypto'
import type { Redis } from 'ioredis'
import { MAX_NODE_ID } from '../ids.js'

/*
 * Nodes sharing a Redis each lease a distinct node id (0..1023), so the
 * message ids they make never collide. A lease is the key `node:<id>`
 * holding the node's random token, expiring unless renewed.
 */

/** Extends the lease, or takes it again if it vanished (Redis restarted): 0 only if another node holds it. */
const RENEW = `
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if holder == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
`

const RELEASE = `
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`

export interface NodeIdLease {
  nodeId: number
  /** Extends the lease (taking it again if Redis forgot it); false when another node holds it now. */
  renew (): Promise<boolean>
  release (): Promise<void>
}

/** Leases a free node id, starting the search at a random one; fails when all 1024 are taken. */
export async function leaseNodeId (redis: Redis, { prefix, ttlMs }: { prefix: string, ttlMs: number }): Promise<NodeIdLease> {
  const token = randomBytes(16).toString('hex')
  const start = randomInt(MAX_NODE_ID + 1)
  for (let offset = 0; offset <= MAX_NODE_ID; offset++) {
    const nodeId = (start + offset) % (MAX_NODE_ID + 1)
    const key = `${prefix}node:${nodeId}`
    if (await redis.set(key, token, 'PX', ttlMs, 'NX') !== 'OK') continue
    return {
      nodeId,
      renew: async () => (await redis.eval(RENEW, 1, key, token, ttlMs)) === 1,
      release: async () => { await redis.eval(RELEASE, 1, key, token) }
    }
  }
  throw new Error(`all ${MAX_NODE_ID + 1} node ids are leased under "${prefix}node:"; is something leaking leases?`)
}
