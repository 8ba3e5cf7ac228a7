import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import Type from 'typebox'
import { UnauthorizedError, NotFoundError } from '../src/errors.js'
import { DEFAULT_PAGE_LIMIT, ErrorSchema, PageLimitSchema, PublicUserSchema, UserIdSchema, UserSchema, toPublicUser } from '../src/schemas.js'

export default (async function usersRoutes (fastify) {
  const users = fastify.switchboardDb.users
  // Presence is the cluster's: every node answers for all of them.
  const { cluster } = fastify.switchboardChat
  const security = [{ bearerAuth: [] }]

  // preParsing, not onRequest: the rate limiter runs in the routes' onRequest,
  // after the instance's own onRequest hooks, and must count refused requests too.
  fastify.addHook('preParsing', fastify.switchboardAuthenticate)

  fastify.get('/users/me', {
    schema: {
      tags: ['users'],
      summary: 'The account of the access token',
      security,
      response: { 200: UserSchema, 401: ErrorSchema, 429: ErrorSchema }
    }
  }, async (request) => {
    const user = await users.findById(request.identity?.userId ?? 0)
    if (user === null) throw new UnauthorizedError('INVALID_TOKEN', 'the account of this token no longer exists')
    return user
  })

  fastify.get('/users/online', {
    schema: {
      tags: ['users'],
      summary: 'Users with at least one open WebSocket, on any node',
      description: 'In ascending id order; pass `nextCursor` back as `cursor` for the next page.',
      security,
      querystring: Type.Object({
        limit: PageLimitSchema,
        cursor: Type.Optional(Type.String({ pattern: '^[1-9][0-9]{0,15}$', description: 'nextCursor of the previous page' }))
      }, { additionalProperties: false }),
      response: {
        200: Type.Object({
          count: Type.Integer({ description: 'Users online in all' }),
          users: Type.Array(PublicUserSchema),
          nextCursor: Type.Union([Type.String(), Type.Null()])
        }),
        400: ErrorSchema,
        401: ErrorSchema,
        429: ErrorSchema
      }
    }
  }, async (request) => {
    const { limit = DEFAULT_PAGE_LIMIT, cursor } = request.query
    const page = await cluster.onlineUsers({ after: cursor === undefined ? 0 : Number(cursor), limit: limit + 1 })
    const more = page.userIds.length > limit
    const userIds = more ? page.userIds.slice(0, limit) : page.userIds
    const found = await users.findByIds(userIds)
    return {
      count: page.count,
      users: found.map(toPublicUser),
      nextCursor: more ? String(userIds.at(-1)) : null
    }
  })

  fastify.get('/users/:id', {
    schema: {
      tags: ['users'],
      summary: 'A user\'s public profile and whether they are online',
      security,
      params: Type.Object({ id: UserIdSchema }),
      response: {
        // One object, not an allOf: PublicUserSchema forbids additional properties, so
        // an intersection would document every real answer (with `online`) as invalid.
        200: Type.Object({ ...PublicUserSchema.properties, online: Type.Boolean() }, { additionalProperties: false }),
        400: ErrorSchema,
        401: ErrorSchema,
        404: ErrorSchema,
        429: ErrorSchema
      }
    }
  }, async (request) => {
    const user = await users.findById(request.params.id)
    if (user === null) throw new NotFoundError('USER_NOT_FOUND', `user ${request.params.id} does not exist`)
    return { ...toPublicUser(user), online: await cluster.isOnline(user.id) }
  })
}) satisfies FastifyPluginAsyncTypebox
