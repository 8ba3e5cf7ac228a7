import { randomInt } from 'node:crypto'
import fp from 'fastify-plugin'
import { createChat, type Chat } from '../src/chat.js'
import { createConnectionRegistry } from '../src/connections.js'
import { createIdGenerator, MAX_NODE_ID } from '../src/ids.js'
import { CLOSE_CODES } from '../src/protocol.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** The live connections of this node and the router between them. */
    switchboardChat: Chat
  }
}

export default fp(async function poolPlugin (fastify) {
  const config = fastify.switchboardConfig
  const users = fastify.switchboardDb.users
  const ids = createIdGenerator({ nodeId: randomInt(MAX_NODE_ID + 1) })
  const chat = createChat({
    registry: createConnectionRegistry(),
    userExists: async (userId) => (await users.findById(userId)) !== null,
    verifyAccessToken: fastify.switchboardAuth.verifyAccessToken,
    isSessionLive: fastify.switchboardAuth.isSessionLive,
    nextMessageId: ids.next,
    limits: {
      messageMaxChars: config.messageMaxChars,
      messageRate: config.wsMessageRate,
      messageBurst: config.wsMessageBurst
    },
    onError: (error) => fastify.log.error({ err: error }, 'websocket frame failed')
  })
  fastify.decorate('switchboardChat', chat)
  fastify.switchboardAuth.onSessionRevoked((userId, sessionId) => {
    chat.registry.closeSession(userId, sessionId, CLOSE_CODES.policy, 'session ended')
  })
  // Also covers a host app's @fastify/websocket, whose own preClose does not know our codes.
  fastify.addHook('preClose', async () => {
    chat.registry.closeAll(CLOSE_CODES.goingAway, 'server shutting down')
  })
}, { fastify: '5.x', name: 'switchboard-pool', dependencies: ['switchboard-config', 'switchboard-db', 'switchboard-auth'] })
