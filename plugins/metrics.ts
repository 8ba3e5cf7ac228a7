import fp from 'fastify-plugin'
import { createMetrics, type Metrics } from '../src/metrics.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** This node's Prometheus metrics, which the other plugins report to. */
    switchboardMetrics: Metrics
  }
}

/** The node's metrics registry, served at GET /metrics; its event-loop monitor stops with the app. */
export default fp(async function metricsPlugin (fastify) {
  const metrics = createMetrics()
  fastify.decorate('switchboardMetrics', metrics)
  fastify.addHook('onClose', async () => { metrics.close() })
}, { fastify: '5.x', name: 'switchboard-metrics', dependencies: ['switchboard-config'] })
