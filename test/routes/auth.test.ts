import type { FastifyInstance, InjectOptions } from 'fastify'
import { test, type Test } from 'tap'
import type { SwitchboardOptions } from '../../src/app.js'
import { build, call, createUser, realBackendOptions, realBackends } from '../helper.js'

interface Tokens {
  access_token: string
  refresh_token: string
  token_type: string
  expires_in: number
}

interface ErrorBody {
  statusCode: number
  code: string
  error: string
  message: string
}

const PASSWORD = 'correct horse battery'

let emailCounter = 0
function uniqueEmail (): string {
  return `auth${++emailCounter}-${process.pid}-${Date.now()}@example.com`
}

/** The raw text of a response too, to look for secrets in what goes over the wire. */
async function raw (app: FastifyInstance, options: InjectOptions): Promise<{ statusCode: number, text: string }> {
  const response = await app.inject(options)
  return { statusCode: response.statusCode, text: response.body }
}

/** A bcrypt hash starts with $2a$/$2b$/$2y$; no response may carry one, nor a password field. */
function assertNoSecrets (t: Test, text: string, what: string): void {
  t.notOk(text.includes('$2'), `${what}: no bcrypt hash in the body`)
  t.notOk(/password/i.test(text), `${what}: no password field in the body`)
}

function assertErrorShape (t: Test, body: ErrorBody, statusCode: number, code?: string): void {
  t.equal(body.statusCode, statusCode)
  t.type(body.code, 'string')
  t.type(body.error, 'string')
  t.type(body.message, 'string')
  t.same(Object.keys(body).sort(), ['code', 'error', 'message', 'statusCode'])
  if (code !== undefined) t.equal(body.code, code)
}

function assertTokens (t: Test, body: Tokens): void {
  t.same(Object.keys(body).sort(), ['access_token', 'expires_in', 'refresh_token', 'token_type'])
  t.equal(body.token_type, 'Bearer')
  t.ok(Number.isInteger(body.expires_in) && body.expires_in > 0, 'expires_in is a positive integer')
  t.match(body.access_token, /^[\w-]+\.[\w-]+\.[\w-]+$/, 'access token is a JWT')
  t.notMatch(body.refresh_token, /\./, 'refresh token is opaque, not a JWT')
  t.ok(Buffer.from(body.refresh_token, 'base64url').length >= 32, 'refresh token carries at least 256 bits')
}

const post = (url: string, payload: unknown): InjectOptions => ({ method: 'POST', url, payload: payload as InjectOptions['payload'] })

/**
 * Signup, login, refresh (rotation and reuse), logout, and token confusion:
 * the whole account flow, run on each backend.
 */
async function authFlow (t: Test, options: SwitchboardOptions): Promise<void> {
  const app = await build(t, options)
  const email = uniqueEmail()

  const signup = await raw(app, post('/auth/signup', { email, password: PASSWORD, name: 'Ada' }))
  t.equal(signup.statusCode, 201)
  assertNoSecrets(t, signup.text, 'signup')
  const user = JSON.parse(signup.text) as Record<string, unknown>
  t.same(Object.keys(user).sort(), ['avatarUrl', 'createdAt', 'email', 'id', 'name'])
  t.ok(Number.isSafeInteger(user.id) && (user.id as number) > 0, 'id is a positive integer')
  t.equal(user.email, email)
  t.equal(user.name, 'Ada')
  t.equal(user.avatarUrl, null)
  t.ok(!Number.isNaN(Date.parse(user.createdAt as string)), 'createdAt is a date')

  const taken = await call<ErrorBody>(app, post('/auth/signup', { email: email.toUpperCase(), password: PASSWORD, name: 'Ada again' }))
  t.equal(taken.statusCode, 409, 'the same email in other case is taken')
  assertErrorShape(t, taken.body, 409, 'EMAIL_TAKEN')

  const login = await raw(app, post('/auth/login', { email, password: PASSWORD }))
  t.equal(login.statusCode, 200)
  assertNoSecrets(t, login.text, 'login')
  const first = JSON.parse(login.text) as Tokens
  assertTokens(t, first)

  const loginOtherCase = await call<Tokens>(app, post('/auth/login', { email: email.toUpperCase(), password: PASSWORD }))
  t.equal(loginOtherCase.statusCode, 200, 'login compares emails case-insensitively')

  const me = await raw(app, { method: 'GET', url: '/users/me', headers: { authorization: `Bearer ${first.access_token}` } })
  t.equal(me.statusCode, 200)
  assertNoSecrets(t, me.text, '/users/me')
  t.same(JSON.parse(me.text), user, 'the access token names the new account')

  const wrongPassword = await call<ErrorBody>(app, post('/auth/login', { email, password: 'not the password' }))
  const unknownEmail = await call<ErrorBody>(app, post('/auth/login', { email: uniqueEmail(), password: PASSWORD }))
  t.equal(wrongPassword.statusCode, 401)
  t.equal(unknownEmail.statusCode, 401)
  assertErrorShape(t, wrongPassword.body, 401)
  t.same(unknownEmail.body, wrongPassword.body, 'unknown email and wrong password get the same body')

  // Rotation: the new pair works, the presented refresh token is spent.
  const refreshed = await raw(app, post('/auth/refresh', { refresh_token: first.refresh_token }))
  t.equal(refreshed.statusCode, 200)
  assertNoSecrets(t, refreshed.text, 'refresh')
  const second = JSON.parse(refreshed.text) as Tokens
  assertTokens(t, second)
  t.not(second.refresh_token, first.refresh_token, 'refresh token rotated')
  const meAfterRefresh = await call(app, { method: 'GET', url: '/users/me', headers: { authorization: `Bearer ${second.access_token}` } })
  t.equal(meAfterRefresh.statusCode, 200, 'the new access token works')

  const third = await call<Tokens>(app, post('/auth/refresh', { refresh_token: second.refresh_token }))
  t.equal(third.statusCode, 200, 'the rotated token rotates again')

  // Reuse of a spent token revokes the whole family, including its newest token.
  const reuse = await call<ErrorBody>(app, post('/auth/refresh', { refresh_token: first.refresh_token }))
  t.equal(reuse.statusCode, 401, 'a spent refresh token is refused')
  assertErrorShape(t, reuse.body, 401)
  const afterReuse = await call<ErrorBody>(app, post('/auth/refresh', { refresh_token: third.body.refresh_token }))
  t.equal(afterReuse.statusCode, 401, 'reuse revoked the family: its newest token is refused too')

  // Logout ends a (new) session; its token no longer refreshes nor logs out.
  const session = await call<Tokens>(app, post('/auth/login', { email, password: PASSWORD }))
  const logout = await app.inject(post('/auth/logout', { refresh_token: session.body.refresh_token }))
  t.equal(logout.statusCode, 204)
  t.equal(logout.body, '', '204 has no body')
  const refreshAfterLogout = await call<ErrorBody>(app, post('/auth/refresh', { refresh_token: session.body.refresh_token }))
  t.equal(refreshAfterLogout.statusCode, 401)
  assertErrorShape(t, refreshAfterLogout.body, 401)
  const logoutAgain = await call<ErrorBody>(app, post('/auth/logout', { refresh_token: session.body.refresh_token }))
  t.equal(logoutAgain.statusCode, 401)
  assertErrorShape(t, logoutAgain.body, 401)
  t.equal(loginOtherCase.statusCode, 200)
  const otherSession = await call<Tokens>(app, post('/auth/refresh', { refresh_token: loginOtherCase.body.refresh_token }))
  t.equal(otherSession.statusCode, 200, 'logout ends only its own session')

  // Token confusion: neither kind of token passes for the other.
  const fresh = await call<Tokens>(app, post('/auth/login', { email, password: PASSWORD }))
  const accessAsRefresh = await call<ErrorBody>(app, post('/auth/refresh', { refresh_token: fresh.body.access_token }))
  t.equal(accessAsRefresh.statusCode, 401, 'an access token is not a refresh token')
  const accessAsLogout = await call<ErrorBody>(app, post('/auth/logout', { refresh_token: fresh.body.access_token }))
  t.equal(accessAsLogout.statusCode, 401, 'an access token does not log out')
  const refreshAsBearer = await call<ErrorBody>(app, { method: 'GET', url: '/users/me', headers: { authorization: `Bearer ${fresh.body.refresh_token}` } })
  t.equal(refreshAsBearer.statusCode, 401, 'a refresh token is not an access token')
  assertErrorShape(t, refreshAsBearer.body, 401)
  const stillGood = await call<Tokens>(app, post('/auth/refresh', { refresh_token: fresh.body.refresh_token }))
  t.equal(stillGood.statusCode, 200, 'the refused attempts did not spend the real refresh token')
}

test('the account flow on the embedded default backends', async (t) => {
  await authFlow(t, {})
})

test('the account flow on MariaDB and Redis', async (t) => {
  const backends = realBackends()
  if ('skip' in backends) return t.plan(0, backends.skip)
  await authFlow(t, await realBackendOptions(t, backends))
})

test('two parallel refreshes with one token: exactly one succeeds', async (t) => {
  const run = async (t: Test, options: SwitchboardOptions): Promise<void> => {
    const app = await build(t, options)
    const user = await createUser(app)
    const attempts = await Promise.all([1, 2, 3, 4].map(() => call(app, post('/auth/refresh', { refresh_token: user.refreshToken }))))
    const statuses = attempts.map((attempt) => attempt.statusCode).sort()
    t.same(statuses, [200, 401, 401, 401])
  }
  await t.test('embedded', (t) => run(t, {}))
  await t.test('MariaDB and Redis', async (t) => {
    const backends = realBackends()
    if ('skip' in backends) return t.plan(0, backends.skip)
    await run(t, await realBackendOptions(t, backends))
  })
})

test('signup refuses what it cannot accept', async (t) => {
  const app = await build(t)
  const valid = { email: uniqueEmail(), password: PASSWORD, name: 'Grace' }

  const cases: Array<{ name: string, payload: unknown, code?: string }> = [
    { name: 'an email that is not one', payload: { ...valid, email: 'not-an-email' }, code: 'VALIDATION_FAILED' },
    { name: 'a password under 8 characters', payload: { ...valid, password: 'short12' }, code: 'VALIDATION_FAILED' },
    { name: 'a missing email', payload: { password: PASSWORD, name: 'Grace' }, code: 'VALIDATION_FAILED' },
    { name: 'a missing password', payload: { email: valid.email, name: 'Grace' }, code: 'VALIDATION_FAILED' },
    { name: 'a missing name', payload: { email: valid.email, password: PASSWORD }, code: 'VALIDATION_FAILED' },
    { name: 'an empty body object', payload: {}, code: 'VALIDATION_FAILED' },
    { name: 'an unknown key', payload: { ...valid, admin: true }, code: 'VALIDATION_FAILED' },
    { name: 'a number for name (no coercion)', payload: { ...valid, name: 12345 }, code: 'VALIDATION_FAILED' },
    { name: 'an array for email (no coercion)', payload: { ...valid, email: [valid.email] }, code: 'VALIDATION_FAILED' },
    { name: 'a number for password (no coercion)', payload: { ...valid, password: 123456789 }, code: 'VALIDATION_FAILED' },
    { name: 'an empty name', payload: { ...valid, name: '' }, code: 'VALIDATION_FAILED' },
    { name: 'a blank name', payload: { ...valid, name: '   ' }, code: 'VALIDATION_FAILED' },
    { name: 'a JSON array body', payload: [valid], code: 'VALIDATION_FAILED' }
  ]
  for (const { name, payload, code } of cases) {
    const { statusCode, body } = await call<ErrorBody>(app, post('/auth/signup', payload))
    t.equal(statusCode, 400, `400 for ${name}`)
    assertErrorShape(t, body, 400, code)
  }

  // 8 characters of 3 bytes each is 24 bytes: short in bytes, long enough in characters.
  const multibyte = await call(app, post('/auth/signup', { ...valid, email: uniqueEmail(), password: '€€€€€€€€' }))
  t.equal(multibyte.statusCode, 201, 'eight multi-byte characters are a valid password')

  // 25 three-byte characters: 75 bytes, over bcrypt's 72, though only 25 characters.
  const tooLong = await call<ErrorBody>(app, post('/auth/signup', { ...valid, password: '€'.repeat(25) }))
  t.equal(tooLong.statusCode, 400, 'more than 72 UTF-8 bytes is refused, not truncated')
  assertErrorShape(t, tooLong.body, 400, 'PASSWORD_TOO_LONG')
  t.match(tooLong.body.message, /72 bytes/, 'the message names the limit')
  const exactly72 = await call(app, post('/auth/signup', { ...valid, email: uniqueEmail(), password: 'a'.repeat(72) }))
  t.equal(exactly72.statusCode, 201, 'exactly 72 bytes is accepted')
  const ascii73 = await call<ErrorBody>(app, post('/auth/signup', { ...valid, email: uniqueEmail(), password: 'a'.repeat(73) }))
  t.equal(ascii73.statusCode, 400)
  t.equal(ascii73.body.code, 'PASSWORD_TOO_LONG')

  // A __proto__ key must be refused, not merged into anything.
  const proto = await app.inject({
    method: 'POST',
    url: '/auth/signup',
    headers: { 'content-type': 'application/json' },
    payload: `{"email":"${uniqueEmail()}","password":"${PASSWORD}","name":"Mallory","__proto__":{"admin":true}}`
  })
  t.equal(proto.statusCode, 400, '__proto__ key refused')
  assertErrorShape(t, proto.json() as ErrorBody, 400)
  t.equal((proto.json() as ErrorBody).code, 'FORBIDDEN_KEY', 'with a code that says why')
  const constructorProto = await app.inject({
    method: 'POST',
    url: '/auth/signup',
    headers: { 'content-type': 'application/json' },
    payload: `{"email":"${uniqueEmail()}","password":"${PASSWORD}","name":"Mallory","constructor":{"prototype":{"admin":true}}}`
  })
  t.equal(constructorProto.statusCode, 400, 'constructor.prototype key refused')
  t.equal((constructorProto.json() as ErrorBody).code, 'FORBIDDEN_KEY')

  const malformed = await app.inject({ method: 'POST', url: '/auth/signup', headers: { 'content-type': 'application/json' }, payload: '{"email":' })
  t.equal(malformed.statusCode, 400, 'malformed JSON is a 400')
  assertErrorShape(t, malformed.json() as ErrorBody, 400)
  t.equal((malformed.json() as ErrorBody).code, 'INVALID_JSON')
  const empty = await app.inject({ method: 'POST', url: '/auth/signup', headers: { 'content-type': 'application/json' }, payload: '' })
  t.equal(empty.statusCode, 400, 'an empty JSON body is a 400')
  t.equal((empty.json() as ErrorBody).code, 'INVALID_JSON')

  // None of the refused requests created an account.
  const signup = await call(app, post('/auth/signup', valid))
  t.equal(signup.statusCode, 201, 'the email is still free after all the refusals')
})

test('request bodies must be JSON', async (t) => {
  const app = await build(t)
  const email = uniqueEmail()
  const bodies = [
    { type: 'text/plain', payload: JSON.stringify({ email, password: PASSWORD, name: 'Text' }) },
    { type: 'application/x-www-form-urlencoded', payload: `email=${encodeURIComponent(email)}&password=x&name=Form` },
    { type: 'multipart/form-data; boundary=x', payload: '--x\r\nContent-Disposition: form-data; name="email"\r\n\r\na@b.c\r\n--x--\r\n' }
  ]
  for (const url of ['/auth/signup', '/auth/login', '/auth/refresh', '/auth/logout']) {
    for (const { type, payload } of bodies) {
      const { statusCode, body } = await call<ErrorBody>(app, { method: 'POST', url, headers: { 'content-type': type }, payload })
      t.equal(statusCode, 415, `${url} with ${type.split(';')[0]}: 415`)
      assertErrorShape(t, body, 415)
      t.equal(body.code, 'UNSUPPORTED_MEDIA_TYPE', 'named in words, not by a Fastify internal code')
    }
  }
  const login = await call(app, post('/auth/login', { email, password: PASSWORD }))
  t.equal(login.statusCode, 401, 'no account was created by the non-JSON signups')
})

test('login, refresh and logout validate their bodies strictly', async (t) => {
  const app = await build(t)
  const cases: Array<{ url: string, payload: unknown }> = [
    { url: '/auth/login', payload: { email: 'a@example.com' } },
    { url: '/auth/login', payload: { email: 'a@example.com', password: PASSWORD, remember: true } },
    { url: '/auth/login', payload: { email: ['a@example.com'], password: PASSWORD } },
    { url: '/auth/login', payload: { email: 'a@example.com', password: 12345678 } },
    { url: '/auth/refresh', payload: {} },
    { url: '/auth/refresh', payload: { refresh_token: '' } },
    { url: '/auth/refresh', payload: { refresh_token: 42 } },
    { url: '/auth/refresh', payload: { refresh_token: 'x', extra: 1 } },
    { url: '/auth/logout', payload: {} },
    { url: '/auth/logout', payload: { refresh_token: ['x'] } }
  ]
  for (const { url, payload } of cases) {
    const { statusCode, body } = await call<ErrorBody>(app, post(url, payload))
    t.equal(statusCode, 400, `${url} ${JSON.stringify(payload)}: 400`)
    assertErrorShape(t, body, 400, 'VALIDATION_FAILED')
  }
  const unknown = await call<ErrorBody>(app, post('/auth/refresh', { refresh_token: 'no-such-token' }))
  t.equal(unknown.statusCode, 401, 'an unknown refresh token is a 401')
  assertErrorShape(t, unknown.body, 401)
  const unknownLogout = await call<ErrorBody>(app, post('/auth/logout', { refresh_token: 'no-such-token' }))
  t.equal(unknownLogout.statusCode, 401, 'logging out an unknown token is a 401')
})

test('a password longer than 72 bytes never logs in, even when its first 72 bytes match', async (t) => {
  const app = await build(t)
  const email = uniqueEmail()
  const password = 'a'.repeat(72)
  t.equal((await call(app, post('/auth/signup', { email, password, name: 'Max' }))).statusCode, 201)
  t.equal((await call(app, post('/auth/login', { email, password }))).statusCode, 200, 'the 72-byte password logs in')
  // bcrypt alone would compare only the first 72 bytes and let this in.
  const longer = await call<ErrorBody>(app, post('/auth/login', { email, password: password + 'b' }))
  t.equal(longer.statusCode, 401)
  const unknown = await call<ErrorBody>(app, post('/auth/login', { email: uniqueEmail(), password: password + 'b' }))
  t.same(unknown.body, longer.body, 'same body as for an unknown account')
})

test('a body over 64 KiB is a 413 with the usual error shape', async (t) => {
  const app = await build(t)
  const payload = JSON.stringify({ email: uniqueEmail(), password: PASSWORD, name: 'x'.repeat(70 * 1024) })
  const { statusCode, body } = await call<ErrorBody>(app, { method: 'POST', url: '/auth/signup', headers: { 'content-type': 'application/json' }, payload })
  t.equal(statusCode, 413)
  assertErrorShape(t, body, 413)
  t.equal(body.code, 'PAYLOAD_TOO_LARGE')
})
