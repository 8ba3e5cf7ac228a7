import fastifySwagger from '@fastify/swagger'
import fastifySwaggerUi from '@fastify/swagger-ui'
import fp from 'fastify-plugin'

/**
 * The OpenAPI 3 document, generated from the route schemas, at /docs/json,
 * and its UI at /docs. A host app that already runs @fastify/swagger gets
 * Switchboard's routes in its own document instead.
 */
export default fp(async function swaggerPlugin (fastify) {
  if (fastify.hasDecorator('swagger')) return
  await fastify.register(fastifySwagger, {
    openapi: {
      openapi: '3.0.3',
      info: {
        title: 'Switchboard',
        description: 'Real-time direct messaging. Sign up and log in here, then open the WebSocket at /ws (see the README for the protocol).',
        version: '0.1.0'
      },
      tags: [
        { name: 'auth', description: 'Accounts and tokens' },
        { name: 'users', description: 'Profiles and presence' },
        { name: 'messages', description: 'Conversation history' },
        { name: 'health', description: 'Liveness and readiness' }
      ],
      components: {
        securitySchemes: {
          bearerAuth: { type: 'http', scheme: 'bearer', bearerFormat: 'JWT' }
        }
      }
    }
  })
  // indexPrefix: under a host's prefix, the page must link its assets with it.
  await fastify.register(fastifySwaggerUi, { routePrefix: '/docs', indexPrefix: fastify.prefix })
}, { fastify: '5.x', name: 'switchboard-swagger' })
