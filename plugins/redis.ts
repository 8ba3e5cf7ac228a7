import fastifyRedis from '@fastify/redis'
import fp from 'fastify-plugin'
import type { Redis } from 'ioredis'
import { createMemoryRefreshTokenStore, type RefreshTokenStore } from '../src/stores/refresh-tokens-memory.js'
import { createRedisRefreshTokenStore } from '../src/stores/refresh-tokens-redis.js'

/** State that every node shares: refresh tokens and rate-limit counters. */
export interface SharedState {
  backend: 'memory' | 'redis'
  /** The Redis client, when there is one (the rate limiter stores its counters there). */
  redis: Redis | null
  /** Prepended to every key this service writes. */
  keyPrefix: string
  refreshTokens: RefreshTokenStore
  check (): Promise<void>
}

declare module 'fastify' {
  interface FastifyInstance {
    switchboardShared: SharedState
  }
}

/** How long a Redis command may take before the request that needs it fails. */
const REDIS_COMMAND_TIMEOUT_MS = 1500

export interface RedisPluginOptions {
  /** An ioredis client the host app already owns; used instead of `redisUrl`. */
  client?: Redis
}

export default fp<RedisPluginOptions>(async function redisPlugin (fastify, { client: hostClient }) {
  const { redisUrl, redisKeyPrefix: keyPrefix } = fastify.switchboardConfig
  let redis = hostClient

  if (redis === undefined && redisUrl !== undefined) {
    // Commands of one tick share a write: rate-limit counters, token checks and presence under load.
    await fastify.register(fastifyRedis, {
      url: redisUrl,
      namespace: 'switchboard',
      connectionName: 'switchboard',
      enableAutoPipelining: true,
      // With Redis down, a request that needs it fails (503) at once, rather than waiting in a queue
      // for it to come back; with Redis silent, after the timeout.
      enableOfflineQueue: false,
      commandTimeout: REDIS_COMMAND_TIMEOUT_MS
    })
    const client = fastify.redis.switchboard as Redis
    // Fail at start-up, with the cause, rather than on the first request.
    await client.ping()
    redis = client
  }

  if (redis === undefined) {
    fastify.decorate('switchboardShared', {
      backend: 'memory',
      redis: null,
      keyPrefix,
      refreshTokens: createMemoryRefreshTokenStore(),
      check: async () => {}
    })
    return
  }

  const connected = redis
  fastify.decorate('switchboardShared', {
    backend: 'redis',
    redis: connected,
    keyPrefix,
    refreshTokens: createRedisRefreshTokenStore(connected, { prefix: keyPrefix }),
    check: async () => { await connected.ping() }
  })
}, { fastify: '5.x', name: 'switchboard-redis', dependencies: ['switchboard-config'] })
