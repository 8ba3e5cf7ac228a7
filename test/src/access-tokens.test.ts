import { createHmac } from 'node:crypto'
import { test, type Test } from 'tap'
import { INVALID_TOKEN, TOKEN_EXPIRED, createAccessTokens } from '../../src/access-tokens.js'
import { newRefreshToken } from '../../src/auth.js'
import { UnauthorizedError } from '../../src/errors.js'
import { TEST_JWT_SECRET, jwtClaims, pluginJwt } from '../helper.js'

const TTL = 900
const accessTokens = createAccessTokens({ jwt: pluginJwt({ ttlSeconds: TTL }), ttlSeconds: TTL })

const GOOD_HEADER = { alg: 'HS256', typ: 'at+jwt' }

function goodClaims (): Record<string, unknown> {
  const now = Math.floor(Date.now() / 1000)
  return { sub: '42', sid: 'session-1', iat: now, exp: now + TTL, iss: 'switchboard', aud: 'switchboard' }
}

function encode (part: object): string {
  return Buffer.from(JSON.stringify(part)).toString('base64url')
}

/** A JWT built by hand, so that every part of it can be wrong on purpose. */
function forge (header: object, claims: object, { key = TEST_JWT_SECRET, hash = 'sha256' }: { key?: string, hash?: string } = {}): string {
  const input = `${encode(header)}.${encode(claims)}`
  return `${input}.${createHmac(hash, key).update(input).digest('base64url')}`
}

/** `text` with one character in the middle changed (the last one may only hold padding bits). */
function alter (text: string): string {
  const middle = Math.floor(text.length / 2)
  return `${text.slice(0, middle)}${text[middle] === 'A' ? 'B' : 'A'}${text.slice(middle + 1)}`
}

/** The code of the UnauthorizedError that verifying `token` throws. */
function refusal (t: Test, token: string): string | undefined {
  try {
    accessTokens.verify(token)
  } catch (error) {
    t.type(error, UnauthorizedError)
    return (error as UnauthorizedError).code
  }
  t.fail('the token was accepted')
  return undefined
}

test('issue then verify gives back the user, the session and the expiry', async (t) => {
  const issued = accessTokens.issue(42, 'session-1')
  const identity = accessTokens.verify(issued.token)
  t.equal(identity.userId, 42)
  t.equal(identity.sessionId, 'session-1')
  t.equal(identity.expiresAt, (jwtClaims(issued.token).exp as number) * 1000, 'expiresAt is the exp claim, in milliseconds')
  // exp is whole seconds, so it may fall up to a second before what issue() reported.
  t.ok(issued.expiresAt - identity.expiresAt >= 0 && issued.expiresAt - identity.expiresAt < 1000, 'issue() and verify() agree on the expiry')
  t.equal(accessTokens.ttlSeconds, TTL)
})

test('an issued token carries the DESIGN\'s header and claims', async (t) => {
  const { token } = accessTokens.issue(7, 'session-x')
  const header = JSON.parse(Buffer.from(token.split('.')[0] ?? '', 'base64url').toString('utf8')) as Record<string, unknown>
  t.strictSame(header, { alg: 'HS256', typ: 'at+jwt' })
  const claims = jwtClaims(token)
  t.strictSame(Object.keys(claims).sort(), ['aud', 'exp', 'iat', 'iss', 'sid', 'sub'])
  t.equal(claims.sub, '7')
  t.equal(claims.sid, 'session-x')
  t.equal(claims.iss, 'switchboard')
  t.equal(claims.aud, 'switchboard')
  t.equal((claims.exp as number) - (claims.iat as number), TTL)
})

test('a token forged correctly by hand verifies (so the refusals below test one fault each)', async (t) => {
  t.match(accessTokens.verify(forge(GOOD_HEADER, goodClaims())), { userId: 42, sessionId: 'session-1' })
})

test('an expired token is TOKEN_EXPIRED', async (t) => {
  const now = Math.floor(Date.now() / 1000)
  t.equal(refusal(t, forge(GOOD_HEADER, { ...goodClaims(), iat: now - 2 * TTL, exp: now - TTL })), TOKEN_EXPIRED)
})

test('an expired token with a bad signature is INVALID_TOKEN, not TOKEN_EXPIRED', async (t) => {
  const now = Math.floor(Date.now() / 1000)
  const token = forge(GOOD_HEADER, { ...goodClaims(), iat: now - 2 * TTL, exp: now - TTL }, { key: 'another-key-that-is-also-32-bytes-long' })
  t.equal(refusal(t, token), INVALID_TOKEN)
})

test('garbage is INVALID_TOKEN', async (t) => {
  const good = forge(GOOD_HEADER, goodClaims())
  const [header, payload, signature] = good.split('.')
  const cases: Record<string, string> = {
    'not a JWT': 'not-a-jwt',
    empty: '',
    'empty parts': '..',
    'random parts': 'a.b.c',
    'a refresh token': newRefreshToken(),
    'signature removed': good.slice(0, good.lastIndexOf('.') + 1),
    'signature of another payload': `${header}.${encode({ ...goodClaims(), sub: '1' })}.${signature}`,
    'signature altered': `${header}.${payload}.${alter(signature ?? '')}`
  }
  for (const [name, token] of Object.entries(cases)) t.equal(refusal(t, token), INVALID_TOKEN, name)
})

test('another algorithm is INVALID_TOKEN', async (t) => {
  const unsigned = `${encode({ alg: 'none', typ: 'at+jwt' })}.${encode(goodClaims())}.`
  t.equal(refusal(t, unsigned), INVALID_TOKEN, 'alg none')
  t.equal(refusal(t, forge({ alg: 'HS512', typ: 'at+jwt' }, goodClaims(), { hash: 'sha512' })), INVALID_TOKEN, 'HS512 with the right key')
  t.equal(refusal(t, forge({ alg: 'HS384', typ: 'at+jwt' }, goodClaims(), { hash: 'sha384' })), INVALID_TOKEN, 'HS384 with the right key')
})

test('a token signed with another key is INVALID_TOKEN', async (t) => {
  t.equal(refusal(t, forge(GOOD_HEADER, goodClaims(), { key: 'another-key-that-is-also-32-bytes-long' })), INVALID_TOKEN)
  const otherService = createAccessTokens({ jwt: pluginJwt({ secret: 'another-key-that-is-also-32-bytes-long' }), ttlSeconds: TTL })
  t.equal(refusal(t, otherService.issue(42, 'session-1').token), INVALID_TOKEN, 'issued by a service with another secret')
})

test('the wrong issuer or audience is INVALID_TOKEN', async (t) => {
  t.equal(refusal(t, forge(GOOD_HEADER, { ...goodClaims(), iss: 'someone-else' })), INVALID_TOKEN, 'wrong iss')
  t.equal(refusal(t, forge(GOOD_HEADER, { ...goodClaims(), aud: 'someone-else' })), INVALID_TOKEN, 'wrong aud')
  t.equal(refusal(t, forge(GOOD_HEADER, { ...goodClaims(), iss: undefined })), INVALID_TOKEN, 'no iss')
  t.equal(refusal(t, forge(GOOD_HEADER, { ...goodClaims(), aud: undefined })), INVALID_TOKEN, 'no aud')
  const foreign = createAccessTokens({ jwt: pluginJwt({ issuer: 'other', audience: 'other' }), ttlSeconds: TTL })
  t.equal(refusal(t, foreign.issue(42, 'session-1').token), INVALID_TOKEN, 'same key, other issuer and audience')
})

test('a token that is not typed at+jwt is INVALID_TOKEN', async (t) => {
  t.equal(refusal(t, forge({ alg: 'HS256' }, goodClaims())), INVALID_TOKEN, 'no typ')
  t.equal(refusal(t, forge({ alg: 'HS256', typ: 'JWT' }, goodClaims())), INVALID_TOKEN, 'typ JWT')
  t.equal(refusal(t, forge({ alg: 'HS256', typ: 'id+jwt' }, goodClaims())), INVALID_TOKEN, 'typ id+jwt')
})

test('a subject that is not a decimal user id is INVALID_TOKEN', async (t) => {
  for (const sub of [42, '', '0', '042', '-1', '1.5', '1e3', 'abc', ' 42', '9007199254740993', '12345678901234567', null]) {
    t.equal(refusal(t, forge(GOOD_HEADER, { ...goodClaims(), sub })), INVALID_TOKEN, `sub ${JSON.stringify(sub)}`)
  }
})

test('a missing or empty session is INVALID_TOKEN', async (t) => {
  t.equal(refusal(t, forge(GOOD_HEADER, { ...goodClaims(), sid: undefined })), INVALID_TOKEN, 'no sid')
  t.equal(refusal(t, forge(GOOD_HEADER, { ...goodClaims(), sid: '' })), INVALID_TOKEN, 'empty sid')
  t.equal(refusal(t, forge(GOOD_HEADER, { ...goodClaims(), sid: 5 })), INVALID_TOKEN, 'numeric sid')
})

test('missing or malformed time claims are INVALID_TOKEN', async (t) => {
  t.equal(refusal(t, forge(GOOD_HEADER, { ...goodClaims(), exp: undefined })), INVALID_TOKEN, 'no exp: a token must expire')
  t.equal(refusal(t, forge(GOOD_HEADER, { ...goodClaims(), iat: undefined })), INVALID_TOKEN, 'no iat')
  t.equal(refusal(t, forge(GOOD_HEADER, { ...goodClaims(), exp: 'tomorrow' })), INVALID_TOKEN, 'exp not a number')
  const now = Math.floor(Date.now() / 1000)
  t.equal(refusal(t, forge(GOOD_HEADER, { ...goodClaims(), nbf: now + 3600 })), INVALID_TOKEN, 'not valid before an hour from now')
})
