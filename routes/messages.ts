import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import Type from 'typebox'
import { InvalidInputError } from '../src/errors.js'
import { isMessageId } from '../src/ids.js'
import { ErrorSchema, MessageIdSchema, MessageSchema, UserIdSchema } from '../src/schemas.js'

const DEFAULT_LIMIT = 50

export default (async function messagesRoutes (fastify) {
  const { messages } = fastify.switchboardDb

  // preParsing, like /users: the rate limiter counts refused requests first.
  fastify.addHook('preParsing', fastify.switchboardAuthenticate)

  fastify.get('/messages', {
    schema: {
      tags: ['messages'],
      summary: 'One conversation, page by page, newest page first',
      description: 'The messages between you and `with`, oldest first within a page. Pass `nextBefore` back as `before` for the page before; it is null at the start of the conversation.',
      security: [{ bearerAuth: [] }],
      querystring: Type.Object({
        with: UserIdSchema,
        before: Type.Optional(MessageIdSchema),
        limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 200, default: DEFAULT_LIMIT }))
      }, { additionalProperties: false }),
      response: {
        200: Type.Object({
          messages: Type.Array(MessageSchema),
          nextBefore: Type.Union([MessageIdSchema, Type.Null()])
        }),
        400: ErrorSchema,
        401: ErrorSchema,
        429: ErrorSchema
      }
    }
  }, async (request) => {
    // The schema's default fills `limit` in; the type cannot know that.
    const { with: peerId, before, limit = DEFAULT_LIMIT } = request.query
    // The schema's pattern admits any 20 digits; ids stop below 2^64.
    if (before !== undefined && !isMessageId(before)) throw new InvalidInputError('VALIDATION_FAILED', 'querystring/before must be a message id below 2^64')
    const userId = request.identity?.userId ?? 0
    // One more than asked: whether it comes back says if there is an older page.
    const page = await messages.history({ userId, peerId, ...(before === undefined ? {} : { before }), limit: limit + 1 })
    const more = page.length > limit
    const shown = more ? page.slice(1) : page
    return {
      messages: shown.map(({ id, from, to, text, sentAt }) => ({ id, from, to, text, sentAt })),
      nextBefore: more ? (shown[0]?.id ?? null) : null
    }
  })
}) satisfies FastifyPluginAsyncTypebox
