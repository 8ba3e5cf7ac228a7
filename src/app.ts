import type { FastifyPluginAsync } from 'fastify'
import type { Redis } from 'ioredis'
import type { Pool } from 'mysql2/promise'
import authPlugin from '../plugins/auth.js'
import configPlugin from '../plugins/config.js'
import dbPlugin from '../plugins/db.js'
import errorHandlerPlugin from '../plugins/error-handler.js'
import metricsPlugin from '../plugins/metrics.js'
import poolPlugin from '../plugins/pool.js'
import rateLimitPlugin from '../plugins/rate-limit.js'
import redisPlugin from '../plugins/redis.js'
import swaggerPlugin from '../plugins/swagger.js'
import validationPlugin from '../plugins/validation.js'
import websocketPlugin from '../plugins/websocket.js'
import authRoutes from '../routes/auth.js'
import healthRoutes from '../routes/health.js'
import messagesRoutes from '../routes/messages.js'
import metricsRoutes from '../routes/metrics.js'
import usersRoutes from '../routes/users.js'
import wsRoutes from '../routes/ws.js'
import type { ConfigInput } from './config.js'
import { NotFoundError } from './errors.js'

export interface SwitchboardOptions extends ConfigInput {
  /** A mysql2 promise pool the host app owns, used instead of `mysqlUrl`. */
  mysql?: Pool
  /** An ioredis client the host app owns, used instead of `redisUrl`. */
  redis?: Redis
}

/** Options Fastify itself adds to a plugin's options; they are not settings. */
interface RegisterOptions {
  prefix?: string
  logLevel?: string
  logSerializers?: unknown
}

/**
 * The whole service as one Fastify plugin. It is deliberately not wrapped
 * with fastify-plugin: registered in a host app, everything it adds stays
 * inside its own context (and under the host's prefix).
 */
const switchboard: FastifyPluginAsync<SwitchboardOptions> = async function switchboard (fastify, options) {
  const { mysql, redis, prefix, logLevel, logSerializers, ...settings } = options as SwitchboardOptions & RegisterOptions

  await fastify.register(errorHandlerPlugin)
  await fastify.register(validationPlugin)
  await fastify.register(configPlugin, { settings, sharedState: redis !== undefined || settings.redisUrl !== undefined })
  await fastify.register(dbPlugin, { pool: mysql })
  await fastify.register(redisPlugin, { client: redis })
  await fastify.register(authPlugin)
  await fastify.register(rateLimitPlugin)
  await fastify.register(swaggerPlugin)
  await fastify.register(websocketPlugin)
  await fastify.register(metricsPlugin)
  await fastify.register(poolPlugin)

  const volatile = [
    fastify.switchboardDb.backend === 'memory' ? 'users and messages (set MYSQL_URL)' : null,
    fastify.switchboardShared.backend === 'memory' ? 'refresh tokens and rate limits (set REDIS_URL)' : null
  ].filter((part) => part !== null)
  if (volatile.length > 0) fastify.log.warn(`data is not persistent: ${volatile.join(' and ')} are kept in memory and lost when the process exits`)

  await fastify.register(healthRoutes)
  await fastify.register(metricsRoutes)
  await fastify.register(authRoutes)
  await fastify.register(usersRoutes)
  await fastify.register(messagesRoutes)
  await fastify.register(wsRoutes)

  fastify.setNotFoundHandler({ preHandler: fastify.rateLimit() }, (request) => {
    throw new NotFoundError('NOT_FOUND', `no route ${request.method} ${request.url.split('?')[0]}`)
  })
}

export default switchboard
export { switchboard }
export type { ConfigInput } from './config.js'
