import fastifyWebsocket from '@fastify/websocket'
import fp from 'fastify-plugin'
import { CLOSE_CODES } from '../src/protocol.js'

/**
 * The WebSocket server. Frames larger than `wsMaxPayload` close the socket
 * with 1009; shutting down closes every socket with 1001.
 */
export default fp(async function websocketPlugin (fastify) {
  // A host app that already runs @fastify/websocket serves our route too.
  if (fastify.hasDecorator('websocketServer')) return
  await fastify.register(fastifyWebsocket, {
    options: { maxPayload: fastify.switchboardConfig.wsMaxPayload, perMessageDeflate: false },
    // A socket error (an oversize or malformed frame, a peer gone away) is the client's
    // doing: ws is already closing the socket with the right code, so let it finish.
    errorHandler (error, socket, request) {
      request.log.warn({ err: error }, 'websocket error')
      if (socket.readyState === socket.OPEN) socket.close(CLOSE_CODES.internalError, 'internal error')
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
