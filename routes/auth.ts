import { createHash } from 'node:crypto'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import createError from '@fastify/error'
import type { FastifyReply, FastifyRequest } from 'fastify'
import Type from 'typebox'
import { normalizeEmail } from '../src/auth.js'
import { EmailSchema, ErrorSchema, NameSchema, PasswordSchema, TokensSchema, UserSchema } from '../src/schemas.js'

const AccountRateLimitedError = createError('RATE_LIMITED', 'too many attempts for this account, retry in %s s', 429)

function accountKey (email: string): string {
  return createHash('sha256').update(normalizeEmail(email)).digest('base64url')
}

const RefreshTokenBody = Type.Object({
  refresh_token: Type.String({ minLength: 1, maxLength: 512 })
}, { additionalProperties: false })

export default (async function authRoutes (fastify) {
  const auth = fastify.switchboardAuth
  const { authRateLimitMax, authRateLimitWindow } = fastify.switchboardConfig
  const perIp = { max: authRateLimitMax, timeWindow: authRateLimitWindow * 1000 }
  // A second, per-account limit: guessing one account's password from many
  // addresses still runs into it. It needs the parsed body, so it runs late.
  // (Not `fastify.rateLimit()`: that handler skips requests the route's own
  // per-IP limit has already counted, which is every request here.)
  const accountLimit = fastify.createRateLimit({
    ...perIp,
    // Hashed: the counters' keys (in Redis) need not hold anyone's email address.
    keyGenerator: (request: FastifyRequest) => `account:${accountKey(String((request.body as { email?: unknown })?.email ?? ''))}`
  })
  const perAccount = async (request: FastifyRequest, reply: FastifyReply) => {
    const limit = await accountLimit(request)
    if (limit.isAllowed || !limit.isExceeded) return
    reply.header('retry-after', limit.ttlInSeconds)
    throw new AccountRateLimitedError(String(limit.ttlInSeconds))
  }

  fastify.post('/auth/signup', {
    config: { rateLimit: perIp },
    preHandler: perAccount,
    schema: {
      tags: ['auth'],
      summary: 'Create an account',
      body: Type.Object({ email: EmailSchema, password: PasswordSchema, name: NameSchema }, { additionalProperties: false }),
      response: { 201: UserSchema, 400: ErrorSchema, 409: ErrorSchema, 415: ErrorSchema, 429: ErrorSchema }
    }
  }, async (request, reply) => {
    const user = await auth.signup(request.body)
    return reply.code(201).send(user)
  })

  fastify.post('/auth/login', {
    config: { rateLimit: perIp },
    preHandler: perAccount,
    schema: {
      tags: ['auth'],
      summary: 'Exchange email and password for tokens',
      description: 'An unknown email and a wrong password get the same 401.',
      body: Type.Object({
        email: Type.String({ minLength: 1, maxLength: 254 }),
        password: Type.String({ minLength: 1, maxLength: 1024 })
      }, { additionalProperties: false }),
      response: { 200: TokensSchema, 400: ErrorSchema, 401: ErrorSchema, 415: ErrorSchema, 429: ErrorSchema }
    }
  }, async (request) => auth.login(request.body))

  fastify.post('/auth/refresh', {
    schema: {
      tags: ['auth'],
      summary: 'Rotate a refresh token',
      description: 'The presented refresh token is spent. Presenting a spent one again revokes the whole session.',
      body: RefreshTokenBody,
      response: { 200: TokensSchema, 400: ErrorSchema, 401: ErrorSchema, 415: ErrorSchema, 429: ErrorSchema }
    }
  }, async (request) => auth.refresh(request.body.refresh_token))

  fastify.post('/auth/logout', {
    schema: {
      tags: ['auth'],
      summary: 'End the session of a refresh token',
      description: 'Revokes the session: its refresh tokens stop working, its access tokens no longer open WebSockets, and its open WebSockets on this node close with 1008.',
      body: RefreshTokenBody,
      response: { 204: Type.Null(), 400: ErrorSchema, 401: ErrorSchema, 415: ErrorSchema, 429: ErrorSchema }
    }
  }, async (request, reply) => {
    await auth.logout(request.body.refresh_token)
    return reply.code(204).send(null)
  })
}) satisfies FastifyPluginAsyncTypebox
