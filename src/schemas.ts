import Type, { type Static } from 'typebox'

/**
 * Shared TypeBox pieces. Routes compose them into request and response
 * schemas (and so into the OpenAPI document); domain code takes its types
 * from them, so each shape is written once.
 */
export const UserIdSchema = Type.Integer({ minimum: 1, maximum: Number.MAX_SAFE_INTEGER, description: 'User id' })

/**
 * A server message id: a 64-bit number in decimal, as a string (JSON numbers
 * cannot hold it). The pattern admits any 20 digits; the `message-id` format
 * (plugins/validation.ts, src/ids.ts isMessageId) stops it below 2^64.
 */
export const MessageIdSchema = Type.String({ pattern: '^(0|[1-9][0-9]{0,19})$', maxLength: 20, format: 'message-id', description: 'Message id (decimal, 64-bit)' })

/**
 * A message id in a response: the server made it, so no format check. (The
 * response serializer's own ajv, which picks union branches, has no `message-id`.)
 */
export const ServerMessageIdSchema = Type.String({ pattern: '^(0|[1-9][0-9]{0,19})$', description: 'Message id (decimal, 64-bit)' })

export const DEFAULT_PAGE_LIMIT = 50

/** `?limit=` of a paged list. Routes read it with `limit = DEFAULT_PAGE_LIMIT`: the schema fills the default, but the type cannot know. */
export const PageLimitSchema = Type.Optional(Type.Integer({ minimum: 1, maximum: 200, default: DEFAULT_PAGE_LIMIT }))

export const EmailSchema = Type.String({ format: 'email', minLength: 3, maxLength: 254, description: 'Email address; compared case-insensitively' })

export const PasswordSchema = Type.String({
  minLength: 8,
  maxLength: 1024,
  description: 'At least 8 characters and at most 72 bytes of UTF-8 (the bcrypt limit; longer is refused, never truncated)'
})

export const NameSchema = Type.String({ minLength: 1, maxLength: 100, pattern: '\\S', description: 'Display name' })

export const PublicUserSchema = Type.Object({
  id: UserIdSchema,
  name: Type.String(),
  avatarUrl: Type.Union([Type.String(), Type.Null()]),
  createdAt: Type.String({ format: 'date-time' })
}, { additionalProperties: false })

export const UserSchema = Type.Object({
  id: UserIdSchema,
  email: Type.String(),
  name: Type.String(),
  avatarUrl: Type.Union([Type.String(), Type.Null()]),
  createdAt: Type.String({ format: 'date-time' })
}, { additionalProperties: false })

export const TokensSchema = Type.Object({
  access_token: Type.String(),
  refresh_token: Type.String(),
  token_type: Type.Literal('Bearer'),
  expires_in: Type.Integer({ description: 'Seconds until the access token expires' })
}, { additionalProperties: false })

export const MessageSchema = Type.Object({
  id: ServerMessageIdSchema,
  from: UserIdSchema,
  to: UserIdSchema,
  text: Type.String(),
  sentAt: Type.String({ format: 'date-time' })
}, { additionalProperties: false })

export const ErrorSchema = Type.Object({
  statusCode: Type.Integer(),
  code: Type.String(),
  error: Type.String(),
  message: Type.String()
}, { description: 'Every error has this shape' })

export type User = Static<typeof UserSchema>
export type PublicUser = Static<typeof PublicUserSchema>
export type Tokens = Static<typeof TokensSchema>
export type Message = Static<typeof MessageSchema>

export function toPublicUser ({ id, name, avatarUrl, createdAt }: User): PublicUser {
  return { id, name, avatarUrl, createdAt }
}
