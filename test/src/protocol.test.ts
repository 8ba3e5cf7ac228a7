import { test } from 'tap'
import {
  CLOSE_CODES, ERROR_CODES, MAX_REF_LENGTH, MAX_WATCH_USERS, PONG_FRAME, ackFrame, decodeMessageFrame, encodeMessage, errorFrame,
  parseClientFrame, presenceFrame, welcomeFrame, type ParseResult
} from '../../src/protocol.js'

const MAX_CHARS = 4000
const parse = (data: string, maxChars = MAX_CHARS): ParseResult => parseClientFrame(data, { maxChars })
const json = (frame: unknown): string => JSON.stringify(frame)

/** The error code and ref of a failed parse, or 'ok'. */
function outcome (result: ParseResult): { code: string, ref?: string } {
  if (result.ok) return { code: 'ok' }
  // Every failure explains itself to the client.
  if (result.message.length === 0) throw new Error(`${result.code} came without a message`)
  return result.ref === undefined ? { code: result.code } : { code: result.code, ref: result.ref }
}

test('legacy "<id>:<text>" is a message to that id', async (t) => {
  t.strictSame(parse('2:hello'), { ok: true, frame: { type: 'message', to: 2, text: 'hello' } })
  t.strictSame(parse('9007199254740991:x'), { ok: true, frame: { type: 'message', to: Number.MAX_SAFE_INTEGER, text: 'x' } })
})

test('legacy text is everything after the first colon, as is', async (t) => {
  const text = (data: string): string | undefined => {
    const result = parse(data)
    return result.ok && result.frame.type === 'message' ? result.frame.text : undefined
  }
  t.equal(text('2:a:b:c'), 'a:b:c', 'further colons are text')
  t.equal(text('2::'), ':', 'a colon alone is text')
  t.equal(text('2:  spaced out  '), '  spaced out  ', 'leading and trailing spaces kept')
  t.equal(text('2:line one\nline two\n'), 'line one\nline two\n', 'newlines kept')
  t.equal(text('2: '), ' ', 'a space is not empty')
  t.equal(text('2:{"type":"ping"}'), '{"type":"ping"}', 'JSON-looking text is text')
})

test('every malformed legacy receiver is BAD_RECEIVER', async (t) => {
  const receivers = [
    '+2', '-2', '02', '00', '0', '0x2', '2e3', '1e1', '2.0', '2.', '.5', 'Infinity', 'NaN',
    '\u0662', '\u0661\u0662', // Arabic-Indic digits
    '\uff12', // fullwidth 2
    '9007199254740992', '99999999999999999999', '1'.repeat(400),
    '', '__proto__', 'constructor', ' 2', '2 ', '1 2', '\t2', 'abc', '2\n'
  ]
  for (const receiver of receivers) {
    t.strictSame(outcome(parse(`${receiver}:hi`)), { code: 'BAD_RECEIVER' }, `receiver ${JSON.stringify(receiver)}`)
  }
})

test('a legacy frame without a colon is BAD_FORMAT', async (t) => {
  for (const data of ['hello', '2', '', ' ', '2 hello']) {
    t.strictSame(outcome(parse(data)), { code: 'BAD_FORMAT' }, JSON.stringify(data))
  }
})

test('a legacy frame with empty text is BAD_FORMAT', async (t) => {
  t.strictSame(outcome(parse('2:')), { code: 'BAD_FORMAT' })
})

test('frames that are JSON but not an object are BAD_FORMAT', async (t) => {
  for (const data of ['[]', '[1,2]', 'null', '42', 'true', '"text"']) {
    t.strictSame(outcome(parse(data)), { code: 'BAD_FORMAT' }, data)
  }
})

test('a JSON message with and without a client id', async (t) => {
  t.strictSame(parse(json({ type: 'message', to: 2, text: 'hi' })), { ok: true, frame: { type: 'message', to: 2, text: 'hi' } })
  t.strictSame(parse(json({ type: 'message', to: 2, text: 'hi', id: 'c-1' })), { ok: true, frame: { type: 'message', to: 2, text: 'hi', ref: 'c-1' } })
  t.strictSame(parse(json({ type: 'message', to: 2, text: 'a:b\n', id: 'x'.repeat(MAX_REF_LENGTH) })),
    { ok: true, frame: { type: 'message', to: 2, text: 'a:b\n', ref: 'x'.repeat(MAX_REF_LENGTH) } }, 'an id of the maximum length')
})

test('a bad JSON receiver is BAD_RECEIVER carrying the ref', async (t) => {
  const receivers: unknown[] = ['2', 0, -1, 1.5, 2 ** 53, 1e300, null, true, [2], { id: 2 }]
  for (const to of receivers) {
    t.strictSame(outcome(parse(json({ type: 'message', to, text: 'hi', id: 'r1' }))), { code: 'BAD_RECEIVER', ref: 'r1' }, `to ${JSON.stringify(to)}`)
  }
  t.strictSame(outcome(parse(json({ type: 'message', text: 'hi', id: 'r2' }))), { code: 'BAD_RECEIVER', ref: 'r2' }, 'to missing')
  t.strictSame(outcome(parse(json({ type: 'message', to: '2', text: 'hi' }))), { code: 'BAD_RECEIVER' }, 'no ref without an id')
})

test('missing, empty or non-string JSON text is BAD_FORMAT carrying the ref', async (t) => {
  for (const text of [undefined, '', 5, null, ['hi'], { text: 'hi' }]) {
    t.strictSame(outcome(parse(json({ type: 'message', to: 2, text, id: 'r' }))), { code: 'BAD_FORMAT', ref: 'r' }, `text ${JSON.stringify(text)}`)
  }
})

test('a bad client id is BAD_FORMAT', async (t) => {
  for (const id of [5, '', 'x'.repeat(MAX_REF_LENGTH + 1), null, ['a'], true]) {
    t.strictSame(outcome(parse(json({ type: 'message', to: 2, text: 'hi', id }))), { code: 'BAD_FORMAT' }, `id ${JSON.stringify(id)}`.slice(0, 60))
  }
})

test('a lone surrogate in JSON text or id is BAD_FORMAT (storage could not keep it); a pair is fine', async (t) => {
  // JSON.stringify writes lone surrogates as \\u escapes, which JSON.parse turns back into them.
  t.strictSame(outcome(parse(json({ type: 'message', to: 2, text: 'a\ud800b', id: 'r' }))), { code: 'BAD_FORMAT', ref: 'r' })
  t.strictSame(outcome(parse(json({ type: 'message', to: 2, text: '\udc00' }))), { code: 'BAD_FORMAT' })
  t.strictSame(outcome(parse(json({ type: 'message', to: 2, text: 'end\ud83d' }))), { code: 'BAD_FORMAT' })
  t.strictSame(outcome(parse(json({ type: 'message', to: 2, text: 'x', id: 'r\ud800' }))), { code: 'BAD_FORMAT' })
  t.strictSame(outcome(parse(json({ type: 'message', to: 2, text: 'ok \ud83d\ude00', id: '\ud83d\ude00' }))), { code: 'ok' })
})

test('invalid JSON is BAD_JSON', async (t) => {
  for (const data of ['{', '{"type":"ping"', "{'type':'ping'}", '{"type":"ping"}x', '{type:"ping"}']) {
    t.strictSame(outcome(parse(data)), { code: 'BAD_JSON' }, data)
  }
})

test('an unknown or missing type is UNKNOWN_TYPE', async (t) => {
  for (const frame of [{}, { type: 'shout' }, { type: 5 }, { type: null }, { type: 'toString' }, { type: '__proto__' }, { type: 'PING' }, { kind: 'ping' }]) {
    t.strictSame(outcome(parse(json(frame))), { code: 'UNKNOWN_TYPE' }, json(frame))
  }
  const result = parse(json({ type: 'x'.repeat(10_000) }))
  t.ok(!result.ok && result.message.length < 200, 'the message does not echo a huge type back')
})

test('ping', async (t) => {
  t.strictSame(parse('{"type":"ping"}'), { ok: true, frame: { type: 'ping' } })
  t.strictSame(parse(json({ type: 'ping', extra: 1 })), { ok: true, frame: { type: 'ping' } }, 'extra fields ignored')
})

test('refresh requires a token', async (t) => {
  t.strictSame(parse(json({ type: 'refresh', token: 'abc.def.ghi' })), { ok: true, frame: { type: 'refresh', token: 'abc.def.ghi' } })
  for (const token of [undefined, '', 5, null]) {
    t.strictSame(outcome(parse(json({ type: 'refresh', token }))), { code: 'BAD_FORMAT' }, `token ${JSON.stringify(token)}`)
  }
})

test('watch takes a list of user ids, deduplicated', async (t) => {
  t.strictSame(parse(json({ type: 'watch', users: [3, 1, 3, 2, 1] })), { ok: true, frame: { type: 'watch', users: [3, 1, 2] } })
  t.strictSame(parse(json({ type: 'watch', users: [] })), { ok: true, frame: { type: 'watch', users: [] } })
  const most = Array.from({ length: MAX_WATCH_USERS }, (_, index) => index + 1)
  t.strictSame(parse(json({ type: 'watch', users: most })), { ok: true, frame: { type: 'watch', users: most } }, `${MAX_WATCH_USERS} users`)
})

test('a bad watch list is BAD_FORMAT, a bad id in it BAD_RECEIVER', async (t) => {
  t.equal(MAX_WATCH_USERS, 1000)
  const tooMany = Array.from({ length: MAX_WATCH_USERS + 1 }, (_, index) => index + 1)
  t.strictSame(outcome(parse(json({ type: 'watch', users: tooMany }))), { code: 'BAD_FORMAT' }, 'more than 1000')
  for (const users of [undefined, null, 5, '1,2', { 0: 1 }]) {
    t.strictSame(outcome(parse(json({ type: 'watch', users }))), { code: 'BAD_FORMAT' }, `users ${JSON.stringify(users)}`)
  }
  for (const bad of [0, -1, 1.5, '1', null, 2 ** 53]) {
    t.strictSame(outcome(parse(json({ type: 'watch', users: [1, bad] }))), { code: 'BAD_RECEIVER' }, `id ${JSON.stringify(bad)}`)
  }
})

test('TOO_LONG counts code points, not UTF-16 units', async (t) => {
  const emoji = '\u{1F600}'
  t.equal(emoji.length, 2, 'the emoji is two UTF-16 units')
  t.ok(parse(`2:${emoji.repeat(MAX_CHARS)}`).ok, '4000 emoji are 4000 characters: not too long')
  t.strictSame(outcome(parse(`2:${emoji.repeat(MAX_CHARS + 1)}`)), { code: 'TOO_LONG' }, '4001 emoji are')
  t.ok(parse(`2:${'a'.repeat(MAX_CHARS)}`).ok, '4000 ASCII characters')
  t.strictSame(outcome(parse(`2:${'a'.repeat(MAX_CHARS + 1)}`)), { code: 'TOO_LONG' }, '4001 ASCII characters')
  t.ok(parse(`2:${emoji.repeat(MAX_CHARS - 1)}a`).ok, 'mixed, at the limit')
  t.strictSame(outcome(parse(`2:${'\ud800'.repeat(MAX_CHARS + 1)}`)), { code: 'BAD_FORMAT' }, 'lone surrogates are refused whatever their count')
  t.strictSame(outcome(parse(json({ type: 'message', to: 2, text: emoji.repeat(MAX_CHARS + 1), id: 'long' }))), { code: 'TOO_LONG', ref: 'long' }, 'JSON, carrying the ref')
  t.ok(parse(json({ type: 'message', to: 2, text: emoji.repeat(MAX_CHARS) })).ok, 'JSON at the limit')
  t.strictSame(outcome(parse('2:abc', 2)), { code: 'TOO_LONG' }, 'maxChars is the one given')
})

test('encodeMessage encodes once per format', async (t) => {
  const message = { id: '123456789', from: 1, to: 2, text: 'a:b\n"c"', sentAt: '2025-06-01T12:00:00.000Z' }
  const encoded = encodeMessage(message)
  t.strictSame(Object.keys(encoded).sort(), ['from', 'id', 'json', 'text', 'to'])
  t.equal(encoded.id, '123456789', 'the server id, for replay and cursors')
  t.strictSame([encoded.from, encoded.to], [1, 2], 'the two users it is routed to')
  t.strictSame(JSON.parse(encoded.json), { type: 'message', ...message })
  t.equal(encoded.text, '1:a:b\n"c"')
})

test('decodeMessageFrame reads back what another node encoded, reusing its JSON', async (t) => {
  const encoded = encodeMessage({ id: '987654321', from: 5, to: 6, text: 'über:\n"x"', sentAt: '2025-06-01T12:00:00.000Z' })
  t.strictSame(decodeMessageFrame(encoded.json), encoded)
  t.throws(() => decodeMessageFrame('{"type":'), SyntaxError)
})

test('encodeMessage takes only the wire fields of a stored message', async (t) => {
  const stored = { id: '18446744073709551615', from: 3, to: 4, text: 'x', sentAt: '2025-06-01T12:00:00.000Z', ref: 'client-ref' }
  const encoded = encodeMessage(stored)
  t.equal(encoded.id, '18446744073709551615', 'a large id stays a string, digit for digit')
  t.strictSame(JSON.parse(encoded.json), { type: 'message', id: '18446744073709551615', from: 3, to: 4, text: 'x', sentAt: '2025-06-01T12:00:00.000Z' },
    'the client ref is never sent to the recipient')
})

test('ackFrame with and without a ref', async (t) => {
  t.strictSame(JSON.parse(ackFrame('42', 'c-1')), { type: 'ack', id: '42', ref: 'c-1' })
  t.strictSame(JSON.parse(ackFrame('42', undefined)), { type: 'ack', id: '42' })
})

test('errorFrame in JSON and text', async (t) => {
  t.strictSame(JSON.parse(errorFrame({ code: 'BAD_JSON', message: 'frame is not valid JSON' }, 'json')),
    { type: 'error', code: 'BAD_JSON', message: 'frame is not valid JSON' })
  t.strictSame(JSON.parse(errorFrame({ code: 'USER_OFFLINE', message: 'offline', ref: 'r' }, 'json')),
    { type: 'error', code: 'USER_OFFLINE', message: 'offline', ref: 'r' })
  t.equal(errorFrame({ code: 'USER_OFFLINE', message: 'offline', ref: 'r' }, 'text'), 'error:USER_OFFLINE')
  t.equal(errorFrame({ code: 'RATE_LIMITED', message: 'slow down' }, 'text'), 'error:RATE_LIMITED')
})

test('welcomeFrame carries the user and expiresAt in ISO 8601', async (t) => {
  const user = { id: 7, name: 'Ada', avatarUrl: null, createdAt: '2025-01-01T00:00:00.000Z' }
  const expiresAt = Date.UTC(2025, 5, 1, 12, 15, 0)
  t.strictSame(JSON.parse(welcomeFrame(user, expiresAt)), { type: 'welcome', user, expiresAt: '2025-06-01T12:15:00.000Z' })
})

test('presenceFrame and PONG_FRAME', async (t) => {
  t.strictSame(JSON.parse(presenceFrame(3, true)), { type: 'presence', userId: 3, online: true })
  t.strictSame(JSON.parse(presenceFrame(3, false)), { type: 'presence', userId: 3, online: false })
  t.strictSame(JSON.parse(PONG_FRAME), { type: 'pong' })
})

test('error and close codes are the ones the DESIGN lists', async (t) => {
  t.strictSame([...ERROR_CODES].sort(), ['BAD_FORMAT', 'BAD_JSON', 'BAD_RECEIVER', 'RATE_LIMITED', 'TOO_LONG', 'UNKNOWN_TYPE', 'UNKNOWN_USER', 'USER_OFFLINE'])
  t.strictSame(CLOSE_CODES, { goingAway: 1001, policy: 1008, tooBig: 1009, internalError: 1011, overloaded: 1013, tokenExpired: 4001 })
})
