import fastifyRateLimit from '@fastify/rate-limit'
import fp from 'fastify-plugin'

/**
 * HTTP rate limits: a global one per client IP, and stricter per-route ones
 * that routes declare in `config.rateLimit`. Counters live in Redis when it
 * is configured, so every node shares them.
 */
export default fp(async function rateLimitPlugin (fastify) {
  const { rateLimitMax, rateLimitWindow } = fastify.switchboardConfig
  const { redis, keyPrefix } = fastify.switchboardShared
  await fastify.register(fastifyRateLimit, {
    global: true,
    max: rateLimitMax,
    timeWindow: rateLimitWindow * 1000,
    ...(redis === null ? {} : { redis, nameSpace: `${keyPrefix}rl:` }),
    errorResponseBuilder: (_request, context) => ({
      statusCode: 429,
      code: 'RATE_LIMITED',
      error: 'Too Many Requests',
      message: `rate limit exceeded, retry in ${context.after}`
    })
  })
}, { fastify: '5.x', name: 'switchboard-rate-limit', dependencies: ['switchboard-config', 'switchboard-redis'] })
