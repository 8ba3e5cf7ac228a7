import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import Type from 'typebox'
import { withTimeout } from '../src/timeout.js'

const CHECK_TIMEOUT_MS = 2000

const BackendState = Type.Object({
  backend: Type.String({ description: 'memory, mysql or redis (local for the bus of a single node)' }),
  status: Type.Union([Type.Literal('up'), Type.Literal('down')])
})

const ReadySchema = Type.Object({
  status: Type.Union([Type.Literal('ready'), Type.Literal('unavailable')]),
  database: BackendState,
  shared: BackendState,
  bus: BackendState
})

async function probe (check: () => Promise<void>): Promise<'up' | 'down'> {
  try {
    await withTimeout(check(), CHECK_TIMEOUT_MS, 'backend check')
    return 'up'
  } catch {
    return 'down'
  }
}

export default (async function healthRoutes (fastify) {
  fastify.get('/health', {
    config: { rateLimit: false },
    schema: {
      tags: ['health'],
      summary: 'Liveness: the process answers',
      response: { 200: Type.Object({ status: Type.Literal('ok') }) }
    }
  }, async () => ({ status: 'ok' as const }))

  fastify.get('/ready', {
    config: { rateLimit: false },
    schema: {
      tags: ['health'],
      summary: 'Readiness: every configured backend answers',
      response: { 200: ReadySchema, 503: ReadySchema }
    }
  }, async (_request, reply) => {
    const { switchboardDb: db, switchboardShared: shared } = fastify
    const { cluster } = fastify.switchboardChat
    const [database, sharedState, bus] = await Promise.all([probe(db.check), probe(shared.check), probe(cluster.check)])
    const ready = database === 'up' && sharedState === 'up' && bus === 'up'
    return reply.code(ready ? 200 : 503).send({
      status: ready ? 'ready' : 'unavailable',
      database: { backend: db.backend, status: database },
      shared: { backend: shared.backend, status: sharedState },
      bus: { backend: cluster.backend, status: bus }
    })
  })
}) satisfies FastifyPluginAsyncTypebox
