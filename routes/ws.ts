import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifyRequest, LogLevel } from 'fastify'
import Type from 'typebox'
import { INVALID_TOKEN } from '../src/access-tokens.js'
import { ForbiddenError, OverloadedError, TooManyError, UnauthorizedError, UpgradeRequiredError } from '../src/errors.js'
import { MessageIdSchema, toPublicUser, type PublicUser } from '../src/schemas.js'
import type { WebSocket } from 'ws'
import { requestToken } from '../plugins/auth.js'
import { handleSocketError } from '../plugins/websocket.js'

/** Whether a browser page at `origin` may open a socket here. */
export function isOriginAllowed (origin: string | undefined, host: string | undefined, allowed: readonly string[]): boolean {
  if (origin === undefined) return true
  if (allowed.includes(origin)) return true
  try {
    return host !== undefined && new URL(origin).host === host
  } catch {
    return false
  }
}

/** The part of ws's WebSocket that holds on to the upgrade's raw response. */
type UpgradedSocket = WebSocket & {
  _socket?: { _httpMessage?: { detachSocket: (socket: unknown) => void } | null }
}

export default (async function wsRoutes (fastify) {
  /**
   * @fastify/websocket keeps the upgrade's request and reply for as long as
   * the socket lives: the raw response stays assigned to the TCP socket, and
   * its 'error' listener (the last one, added just before our handler runs)
   * closes over both. That is most of the memory an idle socket costs. The
   * response is let go always; the listener only when the plugin is ours,
   * since a host's own errorHandler must keep hearing of errors.
   */
  function forgetUpgradeRequest (socket: UpgradedSocket): void {
    const transport = socket._socket
    transport?._httpMessage?.detachSocket(transport)
    if (!fastify.switchboardOwnsWebsocket) return
    const library = socket.listeners('error').at(-1) as ((error: Error) => void) | undefined
    if (library !== undefined) socket.removeListener('error', library)
    socket.on('error', (error: Error) => { handleSocketError(fastify.log, error, socket) })
  }

  const { wsAllowedOrigins, wsMaxConnectionsPerUser, wsMaxConnections } = fastify.switchboardConfig
  const auth = fastify.switchboardAuth
  const users = fastify.switchboardDb.users
  const chat = fastify.switchboardChat
  // The profile loaded before the upgrade, so the handler can start synchronously.
  const profiles = new WeakMap<FastifyRequest, PublicUser>()
  // Quieter than the server for this route, never louder (a server at error or silent stays so).
  const logLevel = ['error', 'fatal', 'silent'].includes(fastify.log.level) ? fastify.log.level as LogLevel : 'warn'

  fastify.route({
    method: 'GET',
    url: '/ws',
    // Requests here may carry ?token=: keep the URL out of the info-level request logs.
    logLevel,
    schema: {
      hide: true,
      querystring: Type.Object({
        token: Type.Optional(Type.String()),
        format: Type.Union([Type.Literal('json'), Type.Literal('text')], { default: 'json' }),
        since: Type.Optional(MessageIdSchema)
      })
    },
    // The limiter runs first, so refused upgrades (bad tokens, reconnect storms) count too.
    config: { rateLimit: false },
    onRequest: [fastify.rateLimit(), async (request) => {
      if (!isOriginAllowed(request.headers.origin, request.headers.host, wsAllowedOrigins)) {
        throw new ForbiddenError('ORIGIN_NOT_ALLOWED', 'this origin may not open a WebSocket here')
      }
      const token = requestToken(request, { allowQuery: true })
      if (token === null) throw new UnauthorizedError(INVALID_TOKEN, 'an access token is required: Authorization: Bearer <token> or ?token=')
      const identity = auth.verifyAccessToken(token)
      const [user, sessionLive] = await Promise.all([users.findById(identity.userId), auth.isSessionLive(identity.sessionId)])
      if (user === null) throw new UnauthorizedError(INVALID_TOKEN, 'the account of this token no longer exists')
      // A socket outlives its token's checks by hours: a logged-out session must not open new ones.
      if (!sessionLive) throw new UnauthorizedError(INVALID_TOKEN, 'the session of this token has ended')
      // Checked before the upgrade, so a refused socket costs no handshake; upgrades racing each other may pass one or two over.
      if ((chat.registry.connectionsOf(identity.userId)?.size ?? 0) >= wsMaxConnectionsPerUser) {
        throw new TooManyError('TOO_MANY_CONNECTIONS', `at most ${wsMaxConnectionsPerUser} open WebSockets per user on one node; close one first`)
      }
      if (chat.registry.connectionCount >= wsMaxConnections) {
        throw new OverloadedError('SERVER_FULL', 'this node holds as many WebSockets as it may; try again, or another node')
      }
      request.identity = identity
      profiles.set(request, toPublicUser(user))
    }],
    // A plain GET (no Upgrade header) that got past the checks.
    handler: async () => {
      throw new UpgradeRequiredError('UPGRADE_REQUIRED', 'this is a WebSocket endpoint: send Connection: Upgrade and Upgrade: websocket')
    },
    wsHandler: (socket, request) => {
      const user = profiles.get(request)
      const identity = request.identity
      if (user === undefined || identity === null) {
        socket.close(1011, 'internal error')
        return
      }
      forgetUpgradeRequest(socket)
      // All of this runs synchronously, so no frame can arrive before the listeners are on.
      const { format, since } = request.query
      const session = chat.open(socket, since === undefined ? { user, identity, format } : { user, identity, format, since })
      socket.on('message', session.receive)
      socket.on('pong', session.pong)
      socket.on('close', session.closed)
    }
  })
}) satisfies FastifyPluginAsyncTypebox
