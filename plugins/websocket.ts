import fastifyWebsocket from '@fastify/websocket'
import type { FastifyBaseLogger } from 'fastify'
import fp from 'fastify-plugin'
import type { WebSocket } from 'ws'
import { CLOSE_CODES } from '../src/protocol.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** Whether Switchboard registered @fastify/websocket itself (false: the host app's serves our route). */
    switchboardOwnsWebsocket: boolean
  }
}

/**
 * A socket error (an oversize or malformed frame, a peer gone away) is the
 * client's doing: ws is already closing the socket with the right code, so
 * it is let finish.
 */
export function handleSocketError (log: FastifyBaseLogger, error: Error, socket: WebSocket): void {
  log.warn({ err: error }, 'websocket error')
  if (socket.readyState === socket.OPEN) socket.close(CLOSE_CODES.internalError, 'internal error')
}

/**
 * The WebSocket server. Frames larger than `wsMaxPayload` close the socket
 * with 1009; shutting down closes every socket with 1001.
 */
export default fp(async function websocketPlugin (fastify) {
  // A host app that already runs @fastify/websocket serves our route too.
  const hostOwned = fastify.hasDecorator('websocketServer')
  fastify.decorate('switchboardOwnsWebsocket', !hostOwned)
  if (hostOwned) return
  await fastify.register(fastifyWebsocket, {
    options: { maxPayload: fastify.switchboardConfig.wsMaxPayload, perMessageDeflate: false },
    errorHandler (error, socket, request) {
      handleSocketError(request.log, error, socket)
    },
    // Stop accepting sockets and say goodbye with 1001; switchboard-pool waits for the
    // sockets to close (dropping those that do not answer), so this does not wait.
    preClose (done) {
      for (const client of this.websocketServer.clients) client.close(CLOSE_CODES.goingAway, 'server shutting down')
      this.websocketServer.close()
      done()
    }
  })
}, { fastify: '5.x', name: 'switchboard-websocket', dependencies: ['switchboard-config'] })
