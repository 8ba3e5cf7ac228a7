import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import Type from 'typebox'

export default (async function metricsRoutes (fastify) {
  const metrics = fastify.switchboardMetrics

  fastify.get('/metrics', {
    // Scraped every few seconds by Prometheus, which must never be limited out.
    config: { rateLimit: false },
    schema: {
      tags: ['health'],
      summary: 'Prometheus metrics of this node',
      // Documents the real media type instead of the default application/json.
      produces: [metrics.contentType],
      response: {
        200: Type.String({ description: 'Metrics in the Prometheus text exposition format 0.0.4' })
      }
    }
  }, async (_request, reply) => {
    const text = await metrics.render()
    // A text content type: Fastify sends the string as it is, without the JSON serializer.
    return reply.type(metrics.contentType).send(text)
  })
}) satisfies FastifyPluginAsyncTypebox
