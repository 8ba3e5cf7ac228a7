import fastifyJwt, { type JWT } from '@fastify/jwt'
import type { FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { createAccessTokens, INVALID_TOKEN, type AccessTokenIdentity } from '../src/access-tokens.js'
import { createAuthService, type AuthService } from '../src/auth.js'
import { UnauthorizedError } from '../src/errors.js'
import { createPasswordHasher } from '../src/passwords.js'

declare module 'fastify' {
  interface FastifyInstance {
    switchboardAuth: AuthService
    /** onRequest hook: requires a valid access token and sets `request.identity`. */
    switchboardAuthenticate: (request: FastifyRequest) => Promise<void>
  }
  interface FastifyRequest {
    identity: AccessTokenIdentity | null
  }
}

const BEARER = /^Bearer ([A-Za-z0-9\-_.~+/]+=*)$/i

/** The access token of a request: the Bearer header, or `?token=` where `allowQuery`. */
export function requestToken (request: FastifyRequest, { allowQuery }: { allowQuery: boolean }): string | null {
  const header = request.headers.authorization
  if (header !== undefined) return BEARER.exec(header)?.[1] ?? null
  if (!allowQuery) return null
  const { token } = request.query as { token?: unknown }
  return typeof token === 'string' && token.length > 0 ? token : null
}

export default fp(async function authPlugin (fastify) {
  const config = fastify.switchboardConfig
  await fastify.register(fastifyJwt, {
    namespace: 'switchboard',
    secret: config.jwtSecret,
    sign: {
      algorithm: 'HS256',
      iss: config.jwtIssuer,
      aud: config.jwtAudience,
      expiresIn: config.accessTokenTtl,
      header: { alg: 'HS256', typ: 'at+jwt' }
    },
    verify: {
      algorithms: ['HS256'],
      allowedIss: config.jwtIssuer,
      allowedAud: config.jwtAudience,
      requiredClaims: ['sub', 'sid', 'iat', 'exp', 'iss', 'aud'],
      checkTyp: 'at+jwt'
    }
  })
  // Registered under a namespace so a host app's own @fastify/jwt stays untouched.
  const jwt = (fastify.jwt as unknown as Record<string, JWT>).switchboard as JWT

  const auth = createAuthService({
    users: fastify.switchboardDb.users,
    refreshTokens: fastify.switchboardShared.refreshTokens,
    passwords: createPasswordHasher({ cost: config.bcryptCost }),
    accessTokens: createAccessTokens({
      jwt: { sign: (payload) => jwt.sign(payload), verify: (token) => jwt.verify(token) },
      ttlSeconds: config.accessTokenTtl
    }),
    refreshTokenTtlSeconds: config.refreshTokenTtl
  })

  fastify.decorate('switchboardAuth', auth)
  fastify.decorateRequest('identity', null)
  fastify.decorate('switchboardAuthenticate', async function authenticate (request: FastifyRequest) {
    const token = requestToken(request, { allowQuery: false })
    if (token === null) throw new UnauthorizedError(INVALID_TOKEN, 'an access token is required: Authorization: Bearer <token>')
    const identity = auth.verifyAccessToken(token)
    // Logout ends a session at once, here as on the sockets: one store lookup per request.
    if (!await auth.isSessionLive(identity.sessionId)) throw new UnauthorizedError(INVALID_TOKEN, 'the session of this token has ended')
    request.identity = identity
  })
}, { fastify: '5.x', name: 'switchboard-auth', dependencies: ['switchboard-config', 'switchboard-db', 'switchboard-redis'] })
