import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import Type from 'typebox'
import { DEFAULT_PAGE_LIMIT, ErrorSchema, MessageIdSchema, MessageSchema, PageLimitSchema, ServerMessageIdSchema, UserIdSchema } from '../src/schemas.js'

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
        limit: PageLimitSchema
      }, { additionalProperties: false }),
      response: {
        200: Type.Object({
          messages: Type.Array(MessageSchema),
          nextBefore: Type.Union([ServerMessageIdSchema, Type.Null()])
        }),
        400: ErrorSchema,
        401: ErrorSchema,
        429: ErrorSchema
      }
    }
  }, async (request) => {
    const { with: peerId, before, limit = DEFAULT_PAGE_LIMIT } = request.query
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
