import fp from 'fastify-plugin'
import { resolveConfig, type Config, type ConfigInput } from '../src/config.js'

declare module 'fastify' {
  interface FastifyInstance {
    switchboardConfig: Config
  }
}

export interface ConfigPluginOptions {
  settings: ConfigInput
  /** Several nodes may share state (Redis is configured or provided). */
  sharedState: boolean
}

/** Validates the service's settings once, up front, and exposes the result. */
export default fp<ConfigPluginOptions>(async function configPlugin (fastify, { settings, sharedState }) {
  const config = resolveConfig(settings, { sharedState })
  fastify.decorate('switchboardConfig', config)
  if (config.jwtSecretGenerated) {
    fastify.log.warn('JWT_SECRET is not set: using a random secret for this process; tokens stop working when it exits')
  }
}, { fastify: '5.x', name: 'switchboard-config' })
