import type { PublicUser } from './schemas.js'
import { hasLoneSurrogate } from './unicode.js'

/** The wire protocol of `GET /ws`: parsing what clients send, formatting what they get. */

export const ERROR_CODES = [
  'BAD_FORMAT', 'BAD_JSON', 'BAD_RECEIVER', 'UNKNOWN_USER', 'USER_OFFLINE',
  'TOO_LONG', 'RATE_LIMITED', 'UNKNOWN_TYPE'
] as const
export type ProtocolErrorCode = typeof ERROR_CODES[number]

export const CLOSE_CODES = {
  goingAway: 1001,
  policy: 1008,
  tooBig: 1009,
  internalError: 1011,
  overloaded: 1013,
  tokenExpired: 4001
} as const

export type OutputFormat = 'json' | 'text'

export type ClientFrame =
  | { type: 'message', to: number, text: string, ref?: string }
  | { type: 'ping' }
  | { type: 'refresh', token: string }
  | { type: 'watch', users: number[] }

export interface ProtocolError {
  code: ProtocolErrorCode
  message: string
  ref?: string
}

export type ParseResult = { ok: true, frame: ClientFrame } | ({ ok: false } & ProtocolError)

export const MAX_REF_LENGTH = 128
export const MAX_WATCH_USERS = 1000

const DECIMAL_ID = /^[1-9]\d*$/

/** A user id as the legacy format writes it: plain positive decimal, nothing else. */
export function parseDecimalId (text: string): number | null {
  if (text.length > 16 || !DECIMAL_ID.test(text)) return null
  const id = Number(text)
  return Number.isSafeInteger(id) ? id : null
}

function isUserId (value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 1
}

/** Length in Unicode code points, without allocating for the common short case. */
export function exceedsChars (text: string, maxChars: number): boolean {
  if (text.length <= maxChars) return false
  let count = 0
  for (let index = 0; index < text.length; index++) {
    const unit = text.charCodeAt(index)
    // A high surrogate followed by a low one is a single code point.
    if (unit >= 0xd800 && unit <= 0xdbff && index + 1 < text.length) {
      const next = text.charCodeAt(index + 1)
      if (next >= 0xdc00 && next <= 0xdfff) index++
    }
    if (++count > maxChars) return true
  }
  return false
}

function fail (code: ProtocolErrorCode, message: string, ref?: string): ParseResult {
  return ref === undefined ? { ok: false, code, message } : { ok: false, code, message, ref }
}

function parseMessage (to: number | null, text: unknown, ref: string | undefined, maxChars: number): ParseResult {
  if (to === null) return fail('BAD_RECEIVER', 'receiver must be a positive integer user id', ref)
  if (typeof text !== 'string' || text.length === 0) return fail('BAD_FORMAT', 'text must be a non-empty string', ref)
  if (hasLoneSurrogate(text)) return fail('BAD_FORMAT', 'text must be valid Unicode (it has a lone surrogate)', ref)
  if (exceedsChars(text, maxChars)) return fail('TOO_LONG', `text is longer than ${maxChars} characters`, ref)
  return { ok: true, frame: ref === undefined ? { type: 'message', to, text } : { type: 'message', to, text, ref } }
}

function parseLegacy (data: string, maxChars: number): ParseResult {
  const colon = data.indexOf(':')
  if (colon === -1) return fail('BAD_FORMAT', 'expected "<receiverId>:<text>" or a JSON object')
  return parseMessage(parseDecimalId(data.slice(0, colon)), data.slice(colon + 1), undefined, maxChars)
}

function parseJson (data: string, maxChars: number): ParseResult {
  let value: unknown
  try {
    value = JSON.parse(data)
  } catch {
    return fail('BAD_JSON', 'frame is not valid JSON')
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return fail('BAD_FORMAT', 'frame must be a JSON object')
  const frame = value as Record<string, unknown>
  const type = frame.type
  switch (type) {
    case 'message': {
      const id = frame.id
      if (id !== undefined && (typeof id !== 'string' || id.length === 0 || id.length > MAX_REF_LENGTH || hasLoneSurrogate(id))) {
        return fail('BAD_FORMAT', `id must be a string of 1 to ${MAX_REF_LENGTH} characters of valid Unicode`)
      }
      return parseMessage(isUserId(frame.to) ? frame.to : null, frame.text, id, maxChars)
    }
    case 'ping':
      return { ok: true, frame: { type: 'ping' } }
    case 'refresh':
      if (typeof frame.token !== 'string' || frame.token.length === 0) return fail('BAD_FORMAT', 'token must be a non-empty string')
      return { ok: true, frame: { type: 'refresh', token: frame.token } }
    case 'watch': {
      const users = frame.users
      if (!Array.isArray(users) || users.length > MAX_WATCH_USERS) return fail('BAD_FORMAT', `users must be an array of at most ${MAX_WATCH_USERS} user ids`)
      if (!users.every(isUserId)) return fail('BAD_RECEIVER', 'users must hold positive integer user ids')
      return { ok: true, frame: { type: 'watch', users: [...new Set(users)] } }
    }
    default:
      return fail('UNKNOWN_TYPE', typeof type === 'string' ? `unknown frame type "${type.slice(0, 40)}"` : 'frame has no type')
  }
}

/** Parses one text frame. A frame that starts with `{` is JSON; anything else is the legacy format. */
export function parseClientFrame (data: string, { maxChars }: { maxChars: number }): ParseResult {
  return data.charCodeAt(0) === 0x7b ? parseJson(data, maxChars) : parseLegacy(data, maxChars)
}

export interface ChatMessage {
  id: string
  from: number
  to: number
  text: string
  sentAt: string
}

/** A message encoded once for each output format, then sent to every connection as is. */
export interface EncodedMessage {
  id: string
  from: number
  to: number
  json: string
  text: string
}

export function encodeMessage ({ id, from, to, text, sentAt }: ChatMessage): EncodedMessage {
  return {
    id,
    from,
    to,
    json: JSON.stringify({ type: 'message', id, from, to, text, sentAt }),
    text: `${from}:${text}`
  }
}

/** A message frame as another node encoded it: parsed once, its JSON reused as is. */
export function decodeMessageFrame (json: string): EncodedMessage {
  const { id, from, to, text } = JSON.parse(json) as ChatMessage
  return { id, from, to, json, text: `${from}:${text}` }
}

export function welcomeFrame (user: PublicUser, expiresAt: number): string {
  return JSON.stringify({ type: 'welcome', user, expiresAt: new Date(expiresAt).toISOString() })
}

export function ackFrame (id: string, ref: string | undefined): string {
  return JSON.stringify(ref === undefined ? { type: 'ack', id } : { type: 'ack', id, ref })
}

export function errorFrame ({ code, message, ref }: ProtocolError, format: OutputFormat): string {
  if (format === 'text') return `error:${code}`
  return JSON.stringify(ref === undefined ? { type: 'error', code, message } : { type: 'error', code, message, ref })
}

export function presenceFrame (userId: number, online: boolean): string {
  return JSON.stringify({ type: 'presence', userId, online })
}

export const PONG_FRAME = '{"type":"pong"}'
