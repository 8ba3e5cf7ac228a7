import { createHmac } from 'node:crypto'
import { request as httpRequest } from 'node:http'
import type { FastifyInstance, InjectOptions } from 'fastify'
import Fastify from 'fastify'
import { createSigner } from 'fast-jwt'
import fp from 'fastify-plugin'
import { test, type Test } from 'tap'
import switchboard, { type SwitchboardOptions } from '../../src/app.js'
import { serverOptions } from '../../src/server.js'
import {
  TEST_JWT_SECRET, TEST_SETTINGS, build, call, connectWs, createUser, jwtClaims, listen, onBothBackends, refusedUpgrade,
  type ServerFrame, type TestUser, type WsClient
} from '../helper.js'

/**
 * Attacks on the running server (OWASP WebSocket and authentication guidance,
 * RFC 8725, RFC 9700) that the other route tests do not already make. Each
 * case checks the documented refusal, that the process still serves
 * afterwards, and, for messages, that nothing was dropped without an answer.
 */

interface ErrorBody {
  statusCode: number
  code: string
  error: string
  message: string
}

interface Tokens {
  access_token: string
  refresh_token: string
}

const PASSWORD = 'correct horse battery'

let counter = 0
function uniqueEmail (local = 'attack'): string {
  return `${local}${++counter}-${process.pid}-${Date.now()}@example.com`
}

const post = (url: string, payload: unknown, extra: Partial<InjectOptions> = {}): InjectOptions =>
  ({ method: 'POST', url, payload: payload as InjectOptions['payload'], ...extra })

const bearer = (token: string): Record<string, string> => ({ authorization: `Bearer ${token}` })

function assertError (t: Test, response: { statusCode: number, body: ErrorBody }, statusCode: number, code: string, what: string): void {
  t.equal(response.statusCode, statusCode, `${what}: HTTP ${statusCode}`)
  t.match(response.body, { statusCode, code, error: String, message: String }, `${what}: ${code}`)
}

/** The process still answers an authenticated request. */
async function stillServes (t: Test, app: FastifyInstance, user: TestUser, what: string): Promise<void> {
  const me = await call(app, { method: 'GET', url: '/users/me', headers: bearer(user.accessToken) })
  t.equal(me.statusCode, 200, `${what}: the server still serves`)
}

/** A connected client whose welcome frame has been read. */
async function online (t: Test, wsUrl: string, user: TestUser): Promise<WsClient> {
  const client = await connectWs(t, wsUrl, { token: user.accessToken })
  t.equal((await client.nextJson()).type, 'welcome', 'welcomed')
  return client
}

/** A ping round trip: the socket is open and had nothing else queued. */
async function pong (t: Test, client: WsClient, what: string): Promise<void> {
  client.send({ type: 'ping' })
  t.same(await client.nextJson(), { type: 'pong' }, what)
}

async function expectFrameError (t: Test, client: WsClient, frame: string | Buffer | object, code: string, what: string): Promise<void> {
  client.send(frame)
  const error = await client.nextJson()
  t.match(error, { type: 'error', code, message: String }, `${what}: ${code}`)
  await pong(t, client, `${what}: the socket stays open`)
}

// ---------------------------------------------------------------- HTTP input

const SQL_PROBES = ["' OR 1=1 --", '"; DROP TABLE users; --', 'Robert\'); DROP TABLE messages;--', 'back\\slash\\\\ \\\' \\"', '%_%', '1; SELECT SLEEP(5)']

onBothBackends('SQL metacharacters in every signup and login field are stored and compared as data', async (t, options) => {
  const app = await build(t, options)
  // Quotes and = are legal in an email's local part, so they reach the store.
  const email = uniqueEmail("o'reilly'or'1'='1")
  for (const [index, probe] of SQL_PROBES.entries()) {
    const account = { email: index === 0 ? email : uniqueEmail(), password: `${probe}-password`, name: probe }
    const signup = await call<{ id: number, name: string, email: string }>(app, post('/auth/signup', account))
    t.equal(signup.statusCode, 201, `signup with ${JSON.stringify(probe)} in name and password`)
    t.equal(signup.body.name, probe, 'the name is kept byte for byte')
    const login = await call<Tokens>(app, post('/auth/login', { email: account.email, password: account.password }))
    t.equal(login.statusCode, 200, 'and logs in with exactly that password')
    const me = await call<{ name: string, email: string }>(app, { method: 'GET', url: '/users/me', headers: bearer(login.body.access_token) })
    t.match(me.body, { name: probe, email: account.email.toLowerCase() }, 'read back exactly')
    // The probe as the password of an existing account, or as an injected email, logs nobody in.
    assertError(t, await call<ErrorBody>(app, post('/auth/login', { email: account.email, password: probe })), 401, 'INVALID_CREDENTIALS', `password ${JSON.stringify(probe)}`)
    // Login checks no email format (an unknown email and a wrong password must look alike), so the probe reaches the store.
    assertError(t, await call<ErrorBody>(app, post('/auth/login', { email: probe, password: PASSWORD })), 401, 'INVALID_CREDENTIALS', `email ${JSON.stringify(probe)}`)
    assertError(t, await call<ErrorBody>(app, post('/auth/refresh', { refresh_token: probe })), 401, 'INVALID_REFRESH_TOKEN', `refresh token ${JSON.stringify(probe)}`)
    assertError(t, await call<ErrorBody>(app, post('/auth/logout', { refresh_token: probe })), 401, 'INVALID_REFRESH_TOKEN', `logout token ${JSON.stringify(probe)}`)
  }
  // An email that would match everything under LIKE or OR 1=1 matches nothing.
  assertError(t, await call<ErrorBody>(app, post('/auth/login', { email: "x'or'1'='1@example.com", password: "' OR '1'='1" })), 401, 'INVALID_CREDENTIALS', 'injected email and password')
  assertError(t, await call<ErrorBody>(app, post('/auth/signup', { email: email.toUpperCase(), password: PASSWORD, name: 'dup' })), 409, 'EMAIL_TAKEN', 'the quoted email is still taken')
  await stillServes(t, app, await createUser(app), 'after the probes')
})

onBothBackends('SQL metacharacters in query strings are 400s, and the tables are intact', async (t, options) => {
  const app = await build(t, options)
  const alice = await createUser(app, 'Alice')
  const bob = await createUser(app, 'Bob')
  const probes = [...SQL_PROBES, `${bob.id} OR 1=1`, `${bob.id}--`, `${bob.id};`, `${bob.id}'`]
  for (const probe of probes) {
    const value = encodeURIComponent(probe)
    for (const url of [`/users/online?cursor=${value}`, `/messages?with=${value}`, `/messages?with=${bob.id}&before=${value}`, `/users/${value}`]) {
      const response = await call<ErrorBody>(app, { method: 'GET', url, headers: bearer(alice.accessToken) })
      assertError(t, response, 400, 'VALIDATION_FAILED', `GET ${url}`)
    }
  }
  const history = await call<{ messages: unknown[] }>(app, { method: 'GET', url: `/messages?with=${bob.id}`, headers: bearer(alice.accessToken) })
  t.equal(history.statusCode, 200, 'a well-formed query still works')
  t.same(history.body.messages, [])
  const profile = await call(app, { method: 'GET', url: `/users/${bob.id}`, headers: bearer(alice.accessToken) })
  t.equal(profile.statusCode, 200, 'the users table is intact')
})

onBothBackends('odd Unicode in names: direction and zero-width characters round-trip exactly; lone surrogates and over-long fields are 400s', async (t, options) => {
  const app = await build(t, options)
  // RTL override, zero-width space and joiner, a combining mark, an emoji ZWJ sequence, NUL-free markup.
  const names = ['a\u202Eevil.exe\u202Cb', 'zero\u200Bwidth\u200Djoin', 'e\u0301 (not é)', '👩‍💻 <b>&amp;</b>', 'العربية עברית', 'x'.repeat(100)]
  for (const name of names) {
    const signup = await call<{ id: number, name: string }>(app, post('/auth/signup', { email: uniqueEmail(), password: PASSWORD, name }))
    t.equal(signup.statusCode, 201, `signup with ${JSON.stringify(name).slice(0, 40)}`)
    t.equal(signup.body.name, name, 'answered exactly')
    const viewer = await createUser(app)
    const profile = await call<{ name: string }>(app, { method: 'GET', url: `/users/${signup.body.id}`, headers: bearer(viewer.accessToken) })
    t.equal(profile.body.name, name, 'read back from the store exactly')
  }

  // JSON can carry a lone surrogate; UTF-8 storage cannot keep it, so it must be refused, not mangled.
  for (const escaped of ['\\ud800', '\\udfff', 'a\\ud83d', '\\ude00b']) {
    const email = uniqueEmail()
    const response = await app.inject({
      method: 'POST',
      url: '/auth/signup',
      headers: { 'content-type': 'application/json' },
      payload: `{"email":"${email}","password":"${PASSWORD}","name":"${escaped}"}`
    })
    t.equal(response.statusCode, 400, `a name with a lone surrogate ${escaped} is a 400`)
    t.equal((response.json() as ErrorBody).code, 'VALIDATION_FAILED', `${escaped}: VALIDATION_FAILED`)
    const login = await call(app, post('/auth/login', { email, password: PASSWORD }))
    t.equal(login.statusCode, 401, `${escaped}: no account was created`)
  }
  const surrogatePassword = await app.inject({
    method: 'POST',
    url: '/auth/login',
    headers: { 'content-type': 'application/json' },
    payload: `{"email":"${uniqueEmail()}","password":"abcdefgh\\ud800"}`
  })
  t.ok([400, 401].includes(surrogatePassword.statusCode), `a lone surrogate in a login password is refused (${surrogatePassword.statusCode}), not a 500`)

  const tooLong = [
    { what: 'a 101-character name', payload: { email: uniqueEmail(), password: PASSWORD, name: 'x'.repeat(101) } },
    { what: 'a 255-character email', payload: { email: `${'e'.repeat(243)}@example.com`, password: PASSWORD, name: 'Long' } },
    { what: 'a 101-emoji name', payload: { email: uniqueEmail(), password: PASSWORD, name: '😀'.repeat(101) } }
  ]
  for (const { what, payload } of tooLong) {
    assertError(t, await call<ErrorBody>(app, post('/auth/signup', payload)), 400, 'VALIDATION_FAILED', what)
  }
  await stillServes(t, app, await createUser(app), 'after the Unicode probes')
})

test('malformed and hostile bodies on login, refresh and logout', async (t) => {
  const app = await build(t)
  const user = await createUser(app)
  const json = { 'content-type': 'application/json' }
  for (const url of ['/auth/login', '/auth/refresh', '/auth/logout']) {
    const cases: Array<{ what: string, options: InjectOptions, statusCode: number, code: string }> = [
      { what: 'malformed JSON', options: { method: 'POST', url, headers: json, payload: '{"email":' }, statusCode: 400, code: 'INVALID_JSON' },
      { what: 'a JSON string body', options: { method: 'POST', url, headers: json, payload: '"refresh"' }, statusCode: 400, code: 'VALIDATION_FAILED' },
      { what: 'a __proto__ key', options: { method: 'POST', url, headers: json, payload: '{"__proto__":{"admin":true},"refresh_token":"x"}' }, statusCode: 400, code: 'FORBIDDEN_KEY' },
      { what: 'a nested __proto__', options: { method: 'POST', url, headers: json, payload: '{"refresh_token":"x","a":{"__proto__":{"admin":true}}}' }, statusCode: 400, code: 'FORBIDDEN_KEY' },
      { what: 'constructor.prototype', options: { method: 'POST', url, headers: json, payload: '{"constructor":{"prototype":{"admin":true}}}' }, statusCode: 400, code: 'FORBIDDEN_KEY' },
      { what: 'text/plain', options: { method: 'POST', url, headers: { 'content-type': 'text/plain' }, payload: '{}' }, statusCode: 415, code: 'UNSUPPORTED_MEDIA_TYPE' },
      { what: 'no content type', options: { method: 'POST', url, payload: Buffer.from('{}') }, statusCode: 415, code: 'UNSUPPORTED_MEDIA_TYPE' },
      { what: 'a 65 KiB body', options: { method: 'POST', url, headers: json, payload: JSON.stringify({ refresh_token: 'x'.repeat(65 * 1024) }) }, statusCode: 413, code: 'PAYLOAD_TOO_LARGE' },
      { what: '10,000 nested arrays', options: { method: 'POST', url, headers: json, payload: `{"refresh_token":${'['.repeat(10_000)}${']'.repeat(10_000)}}` }, statusCode: 400, code: 'VALIDATION_FAILED' }
    ]
    if (url === '/auth/login') {
      cases.push(
        { what: 'a number for email', options: post(url, { email: 123, password: PASSWORD }), statusCode: 400, code: 'VALIDATION_FAILED' },
        { what: 'an array for password', options: post(url, { email: user.email, password: [PASSWORD] }), statusCode: 400, code: 'VALIDATION_FAILED' },
        { what: 'an object for email', options: post(url, { email: { $ne: null }, password: PASSWORD }), statusCode: 400, code: 'VALIDATION_FAILED' },
        { what: 'null for password', options: post(url, { email: user.email, password: null }), statusCode: 400, code: 'VALIDATION_FAILED' },
        { what: 'a boolean for password', options: post(url, { email: user.email, password: true }), statusCode: 400, code: 'VALIDATION_FAILED' }
      )
    } else {
      cases.push(
        { what: 'an array token', options: post(url, { refresh_token: [user.refreshToken] }), statusCode: 400, code: 'VALIDATION_FAILED' },
        { what: 'an object token', options: post(url, { refresh_token: { $ne: null } }), statusCode: 400, code: 'VALIDATION_FAILED' },
        { what: 'a numeric token', options: post(url, { refresh_token: 1 }), statusCode: 400, code: 'VALIDATION_FAILED' }
      )
    }
    for (const { what, options, statusCode, code } of cases) {
      assertError(t, await call<ErrorBody>(app, options), statusCode, code, `${url} with ${what}`)
    }
  }
  const refreshed = await call(app, post('/auth/refresh', { refresh_token: user.refreshToken }))
  t.equal(refreshed.statusCode, 200, 'the refusals spent nothing: the real refresh token still rotates')
  const signupNumberName = await call<ErrorBody>(app, post('/auth/signup', { email: uniqueEmail(), password: PASSWORD, name: 123 }))
  assertError(t, signupNumberName, 400, 'VALIDATION_FAILED', 'signup with name: 123 (no coercion)')
})

test('a header over Node\'s limit is a 431 and the server keeps serving', async (t) => {
  const { app, url } = await listen(t)
  const user = await createUser(app)
  const statusCode = await new Promise<number>((resolve, reject) => {
    const request = httpRequest(`${url}/users/me`, { headers: { 'x-huge': 'h'.repeat(64 * 1024), ...bearer(user.accessToken) } }, (response) => {
      response.resume()
      resolve(response.statusCode ?? 0)
    })
    request.on('error', reject)
    request.end()
  })
  t.equal(statusCode, 431, 'Request Header Fields Too Large')
  const after = await fetch(`${url}/users/me`, { headers: bearer(user.accessToken) })
  t.equal(after.status, 200, 'the next request is served')
})

// ---------------------------------------------------------------- WebSocket frames

test('legacy receivers that are not plain positive decimal ids are BAD_RECEIVER; nothing reaches anyone', async (t) => {
  const { app, wsUrl } = await listen(t)
  const alice = await createUser(app, 'Alice')
  const bob = await createUser(app, 'Bob')
  const a = await online(t, wsUrl, alice)
  const b = await online(t, wsUrl, bob)
  const id = String(bob.id)
  const fullWidth = [...id].map((digit) => String.fromCharCode(0xff10 + Number(digit))).join('')
  const receivers = [`+${id}`, `-${id}`, `0${id}`, `0x${Number(id).toString(16)}`, `${id}e0`, fullWidth, '9007199254740993', '__proto__', 'constructor', ` ${id}`, `${id} `, `${id}\u200B`, `${id}.`, '\u0661']
  for (const receiver of receivers) {
    await expectFrameError(t, a, `${receiver}:x`, 'BAD_RECEIVER', JSON.stringify(`${receiver}:x`))
  }
  for (const to of ['__proto__', [bob.id], true, { id: bob.id }, `${bob.id}`, 1e300, -0]) {
    await expectFrameError(t, a, { type: 'message', to, text: 'x', id: 'r' }, 'BAD_RECEIVER', `JSON to ${JSON.stringify(to)}`)
  }
  await pong(t, b, 'Bob got nothing from any of them')
})

onBothBackends('valid but unknown receiver ids are UNKNOWN_USER; a note to self is acknowledged and kept', async (t, options) => {
  const { app, wsUrl } = await listen(t, options)
  const alice = await createUser(app, 'Alice')
  const a = await online(t, wsUrl, alice)
  for (const to of [alice.id + 1_000_000, Number.MAX_SAFE_INTEGER, 2 ** 32, 2 ** 31]) {
    await expectFrameError(t, a, `${to}:hello`, 'UNKNOWN_USER', `legacy to ${to}`)
    a.send({ type: 'message', to, text: 'hello', id: `u${to}` })
    t.match(await a.nextJson(), { type: 'error', code: 'UNKNOWN_USER', ref: `u${to}` }, `JSON to ${to}: UNKNOWN_USER with its ref`)
  }
  a.send({ type: 'message', to: alice.id, text: 'note to self', id: 'self' })
  const ack = await a.nextJson()
  t.match(ack, { type: 'ack', id: String, ref: 'self' }, 'a note to self is acknowledged')
  await pong(t, a, 'the sending socket does not get its own message back')
  const history = await call<{ messages: Array<{ id: string, text: string }> }>(app, { method: 'GET', url: `/messages?with=${alice.id}`, headers: bearer(alice.accessToken) })
  t.same(history.body.messages.map(({ id, text }) => ({ id, text })), [{ id: ack.id, text: 'note to self' }], 'stored once')
})

test('hostile frame shapes: deep nesting, huge JSON, empty and binary frames; the socket stays open and nothing is lost', async (t) => {
  const { app, wsUrl } = await listen(t)
  const alice = await createUser(app, 'Alice')
  const bob = await createUser(app, 'Bob')
  const a = await online(t, wsUrl, alice)
  const b = await online(t, wsUrl, bob)
  const deep = 10_000

  await expectFrameError(t, a, '['.repeat(deep), 'BAD_FORMAT', '10,000 [ (legacy, no colon)')
  await expectFrameError(t, a, `{"type":"message","to":${bob.id},"text":${'['.repeat(deep)}`, 'BAD_JSON', '10,000 unclosed [ in JSON')
  await expectFrameError(t, a, `{"type":"message","to":${bob.id},"text":${'['.repeat(deep)}${']'.repeat(deep)}}`, 'BAD_FORMAT', '10,000-deep array as text')
  await expectFrameError(t, a, `${'{"a":'.repeat(deep)}1${'}'.repeat(deep)}`, 'UNKNOWN_TYPE', '10,000-deep objects')
  await expectFrameError(t, a, '', 'BAD_FORMAT', 'an empty text frame')
  await expectFrameError(t, a, Buffer.alloc(0), 'BAD_FORMAT', 'an empty binary frame')
  await expectFrameError(t, a, Buffer.from(JSON.stringify({ type: 'message', to: bob.id, text: 'binary' })), 'BAD_FORMAT', 'a JSON message in a binary frame')
  await expectFrameError(t, a, { type: 'message', to: bob.id, text: { toString: 'x' }, id: 'o' }, 'BAD_FORMAT', 'an object as text')

  // Extra fields are ignored: a big frame just under the 64 KiB limit still carries its message.
  const padding = 'p'.repeat(60 * 1024)
  a.send(JSON.stringify({ type: 'message', to: bob.id, text: 'under the padding', id: 'big', pad: padding, nested: { __proto__: 1 } }))
  const ack = await a.nextJson()
  t.match(ack, { type: 'ack', id: String, ref: 'big' }, 'a 60 KiB frame is acknowledged')
  const wide = Object.fromEntries(Array.from({ length: 4000 }, (_, index) => [`k${index}`, index]))
  a.send(JSON.stringify({ ...wide, type: 'message', to: bob.id, text: 'among 4000 keys', id: 'wide' }))
  const wideAck = await a.nextJson()
  t.match(wideAck, { type: 'ack', id: String, ref: 'wide' }, 'a frame with 4000 keys is acknowledged')

  const delivered = [await b.nextJson(), await b.nextJson()]
  t.same(delivered.map(({ id, text, from }) => ({ id, text, from })), [
    { id: ack.id, text: 'under the padding', from: alice.id },
    { id: wideAck.id, text: 'among 4000 keys', from: alice.id }
  ], 'Bob got exactly the two acknowledged messages, without the padding')
  t.notOk('pad' in (delivered[0] as ServerFrame), 'no client field is relayed')
  await pong(t, b, 'and nothing else')
})

test('NUL, direction marks and markup pass byte-exact in the legacy and the JSON format', async (t) => {
  const { app, wsUrl } = await listen(t)
  const alice = await createUser(app, 'Alice')
  const bob = await createUser(app, 'Bob')
  const a = await online(t, wsUrl, alice)
  const b = await online(t, wsUrl, bob)
  const legacy = await connectWs(t, wsUrl, { token: bob.accessToken, format: 'text' })
  const texts = ['\u0000nul\u0000', '\u202Egnp.exe', '<script>alert(1)</script>', '\\u0000 not an escape', '{"type":"ping"}', 'a:b:c', '\r\n\t']
  for (const [index, text] of texts.entries()) {
    a.send(index % 2 === 0 ? `${bob.id}:${text}` : { type: 'message', to: bob.id, text })
    t.equal((await a.nextJson()).type, 'ack', `${JSON.stringify(text)} acknowledged`)
    t.equal((await b.nextJson()).text, text, `${JSON.stringify(text)} delivered exactly (JSON)`)
    t.equal(await legacy.next(), `${alice.id}:${text}`, `${JSON.stringify(text)} delivered exactly (text format)`)
  }
})

test('a flood past the token bucket: every frame is answered, acknowledged ones are delivered, other sockets are unaffected', async (t) => {
  const { app, wsUrl } = await listen(t, { wsMessageRate: 1, wsMessageBurst: 5 })
  const alice = await createUser(app, 'Alice')
  const bob = await createUser(app, 'Bob')
  const carol = await createUser(app, 'Carol')
  const flooder = await online(t, wsUrl, alice)
  const aliceOther = await online(t, wsUrl, alice)
  const b = await online(t, wsUrl, bob)
  const c = await online(t, wsUrl, carol)

  const flood = 60
  for (let index = 0; index < flood; index++) flooder.send({ type: 'message', to: bob.id, text: `flood ${index}`, id: `f${index}` })
  const acks: ServerFrame[] = []
  let limited = 0
  for (let index = 0; index < flood; index++) {
    const frame = await flooder.nextJson()
    if (frame.type === 'ack') acks.push(frame)
    else if (frame.type === 'error' && frame.code === 'RATE_LIMITED') limited++
    else t.fail(`unexpected frame ${JSON.stringify(frame)}`)
  }
  t.equal(acks.length + limited, flood, 'every frame got an ack or RATE_LIMITED: none was dropped silently')
  t.ok(acks.length >= 5, `the burst went through (${acks.length} acked)`)
  t.ok(limited > 0, `the rest was refused (${limited} RATE_LIMITED)`)
  t.equal(flooder.socket.readyState, flooder.socket.OPEN, 'the flooding socket stays open')

  const refs = acks.map((ack) => ack.ref)
  const received = []
  for (let index = 0; index < acks.length; index++) received.push(await b.nextJson())
  t.same(received.map((frame) => frame.id), acks.map((ack) => ack.id), 'Bob got exactly the acknowledged messages, in order')
  t.same(received.map((frame) => `f${String(frame.text).slice('flood '.length)}`), refs, 'with their own texts')
  const mirrored = []
  for (let index = 0; index < acks.length; index++) mirrored.push(await aliceOther.nextJson())
  t.same(mirrored.map((frame) => frame.id), acks.map((ack) => ack.id), 'Alice\'s other device got the same ones')

  // Buckets are per socket: Alice's other socket and Carol are not limited.
  await pong(t, aliceOther, 'Alice\'s other socket is answered')
  c.send({ type: 'message', to: bob.id, text: 'not limited', id: 'c1' })
  const carolAck = await c.nextJson()
  t.match(carolAck, { type: 'ack', ref: 'c1' }, 'Carol is not limited')
  t.match(await b.nextJson(), { id: carolAck.id, from: carol.id, text: 'not limited' }, 'and her message arrives')
  await pong(t, b, 'Bob got nothing else')
})

// ---------------------------------------------------------------- tokens

interface ForgeOptions {
  claims?: Record<string, unknown>
  algorithm?: 'HS256' | 'HS384' | 'HS512' | 'none'
  key?: string
  header?: { alg: string, typ?: string }
  noTimestamp?: boolean
}

/**
 * A token forged with fast-jwt: correct by default, so each case changes one
 * thing. It names the user's real session, which the upgrade checks is live.
 */
function forge (user: { id: number, accessToken?: string }, { claims = {}, algorithm = 'HS256', key = TEST_JWT_SECRET, header, noTimestamp = false }: ForgeOptions = {}): string {
  const now = Math.floor(Date.now() / 1000)
  const sid = user.accessToken === undefined ? 'forged-session' : jwtClaims(user.accessToken).sid
  const payload: Record<string, unknown> = { sub: String(user.id), sid, iat: now, exp: now + 600, iss: 'switchboard', aud: 'switchboard', ...claims }
  for (const [name, value] of Object.entries(payload)) if (value === undefined) Reflect.deleteProperty(payload, name)
  const signer = algorithm === 'none'
    ? createSigner({ algorithm: 'none', noTimestamp, header: header ?? { alg: 'none', typ: 'at+jwt' } })
    : createSigner({ key, algorithm, noTimestamp, header: header ?? { alg: algorithm, typ: 'at+jwt' } })
  return signer(payload)
}

/**
 * A token HMAC-signed with the right key by hand, for what fast-jwt refuses to
 * sign: `alg: RS256` in the header (the classic algorithm confusion), a string `exp`.
 */
function forgeByHand (user: { id: number, accessToken: string }, { alg = 'HS256', claims = {} }: { alg?: string, claims?: Record<string, unknown> } = {}): string {
  const now = Math.floor(Date.now() / 1000)
  const encode = (part: object): string => Buffer.from(JSON.stringify(part)).toString('base64url')
  const payload = { sub: String(user.id), sid: jwtClaims(user.accessToken).sid, iat: now, exp: now + 600, iss: 'switchboard', aud: 'switchboard', ...claims }
  const input = `${encode({ alg, typ: 'at+jwt' })}.${encode(payload)}`
  return `${input}.${createHmac('sha256', TEST_JWT_SECRET).update(input).digest('base64url')}`
}

test('forged access tokens are refused at GET /users/me and at the /ws upgrade alike', async (t) => {
  const { app, wsUrl } = await listen(t)
  const alice = await createUser(app, 'Alice')
  const now = Math.floor(Date.now() / 1000)

  // The control: forged right, the token opens both doors, so each refusal below is about its one change.
  const control = forge(alice)
  t.equal((await call(app, { method: 'GET', url: '/users/me', headers: bearer(forgeByHand(alice)) })).statusCode, 200, 'so is the hand-signed control')
  t.equal((await call(app, { method: 'GET', url: '/users/me', headers: bearer(control) })).statusCode, 200, 'the control token is accepted by /users/me')
  await online(t, wsUrl, { ...alice, accessToken: control })

  const cases: Array<{ what: string, token: string, code?: string }> = [
    { what: 'alg none', token: forge(alice, { algorithm: 'none' }) },
    { what: 'HS512 with the right key', token: forge(alice, { algorithm: 'HS512' }) },
    { what: 'HS384 with the right key', token: forge(alice, { algorithm: 'HS384' }) },
    { what: 'RS256 in the header, HMAC-signed', token: forgeByHand(alice, { alg: 'RS256' }) },
    { what: 'ES256 in the header, HMAC-signed', token: forgeByHand(alice, { alg: 'ES256' }) },
    { what: 'alg "hs256" in lower case', token: forgeByHand(alice, { alg: 'hs256' }) },
    { what: 'another key', token: forge(alice, { key: 'an-attacker-key-that-is-at-least-32-bytes' }) },
    { what: 'no exp', token: forge(alice, { claims: { exp: undefined } }) },
    { what: 'exp as a string', token: forgeByHand(alice, { claims: { exp: String(now + 600) } }) },
    { what: 'no iat', token: forge(alice, { claims: { iat: undefined }, noTimestamp: true }) },
    { what: 'no iss', token: forge(alice, { claims: { iss: undefined } }) },
    { what: 'a wrong iss', token: forge(alice, { claims: { iss: 'https://evil.example' } }) },
    { what: 'no aud', token: forge(alice, { claims: { aud: undefined } }) },
    { what: 'a wrong aud', token: forge(alice, { claims: { aud: 'another-service' } }) },
    { what: 'an aud list without ours', token: forge(alice, { claims: { aud: ['a', 'b'] } }) },
    { what: 'no typ', token: forge(alice, { header: { alg: 'HS256' } }) },
    { what: 'typ JWT', token: forge(alice, { header: { alg: 'HS256', typ: 'JWT' } }) },
    { what: 'nbf an hour ahead', token: forge(alice, { claims: { nbf: now + 3600 } }) },
    { what: 'expired a minute ago', token: forge(alice, { claims: { iat: now - 660, exp: now - 60 } }), code: 'TOKEN_EXPIRED' },
    { what: 'a numeric sub', token: forge(alice, { claims: { sub: alice.id } }) },
    { what: 'sub of a user that does not exist', token: forge({ id: alice.id + 1_000_000 }) },
    { what: 'no sid', token: forge(alice, { claims: { sid: undefined } }) },
    { what: 'a refresh token', token: alice.refreshToken },
    { what: 'a JWT with a trailing dot-segment', token: `${control}.x` },
    { what: 'a header part only', token: control.split('.')[0] ?? '' }
  ]
  for (const { what, token, code = 'INVALID_TOKEN' } of cases) {
    const me = await call<ErrorBody>(app, { method: 'GET', url: '/users/me', headers: bearer(token) })
    assertError(t, me, 401, code, `/users/me with ${what}`)
    const upgrade = await refusedUpgrade(wsUrl, { token })
    t.equal(upgrade.statusCode, 401, `/ws with ${what}: HTTP 401`)
    t.match(upgrade.body, { statusCode: 401, code }, `/ws with ${what}: ${code}`)
  }
  await stillServes(t, app, alice, 'after the forged tokens')
})

test('an iat in the future is not checked (RFC 7519 makes iat informational): the token is accepted while exp holds', async (t) => {
  // fast-jwt checks iat only against a maxAge, which Switchboard does not set; exp and nbf bound the token.
  const { app, wsUrl } = await listen(t)
  const alice = await createUser(app, 'Alice')
  const now = Math.floor(Date.now() / 1000)
  const future = forge(alice, { claims: { iat: now + 3600, exp: now + 600 } })
  t.equal((await call(app, { method: 'GET', url: '/users/me', headers: bearer(future) })).statusCode, 200, '/users/me accepts it')
  await online(t, wsUrl, { ...alice, accessToken: future })
})

onBothBackends('refresh-token attacks: tampering, reuse, racing refresh against logout', async (t, options) => {
  const { app, wsUrl } = await listen(t, options)
  const alice = await createUser(app, 'Alice')

  // One character changed, a prefix, the token twice, padding added: all unknown; the real one is unspent.
  const real = alice.refreshToken
  const flipped = `${real.slice(0, -1)}${real.endsWith('A') ? 'B' : 'A'}`
  for (const [what, token] of [['one character changed', flipped], ['a prefix', real.slice(0, 20)], ['doubled', real + real], ['padded', `${real}==`], ['upper-cased', real.toUpperCase()]] as const) {
    assertError(t, await call<ErrorBody>(app, post('/auth/refresh', { refresh_token: token })), 401, 'INVALID_REFRESH_TOKEN', `refresh with ${what}`)
  }
  assertError(t, await call<ErrorBody>(app, post('/auth/refresh', { refresh_token: 'r'.repeat(60 * 1024) })), 400, 'VALIDATION_FAILED', 'refresh with a 60 KiB token')
  // An access token is a JWT, never a refresh token: it neither rotates nor ends the session.
  assertError(t, await call<ErrorBody>(app, post('/auth/refresh', { refresh_token: alice.accessToken })), 401, 'INVALID_REFRESH_TOKEN', 'refresh with the access token')
  assertError(t, await call<ErrorBody>(app, post('/auth/logout', { refresh_token: alice.accessToken })), 401, 'INVALID_REFRESH_TOKEN', 'logout with the access token')
  const rotated = await call<Tokens>(app, post('/auth/refresh', { refresh_token: real }))
  t.equal(rotated.statusCode, 200, 'the real token still rotates after the probes')

  // Reuse of the spent token revokes the family: the newest access token no longer opens a socket.
  const socket = await online(t, wsUrl, { ...alice, accessToken: rotated.body.access_token })
  assertError(t, await call<ErrorBody>(app, post('/auth/refresh', { refresh_token: real })), 401, 'INVALID_REFRESH_TOKEN', 'reuse of the spent token')
  t.match(await socket.closed(), { code: 1008 }, 'the family\'s open socket closes with 1008')
  const refused = await refusedUpgrade(wsUrl, { token: rotated.body.access_token })
  t.equal(refused.statusCode, 401, 'the family\'s newest access token no longer opens a socket')
  assertError(t, await call<ErrorBody>(app, post('/auth/refresh', { refresh_token: rotated.body.refresh_token })), 401, 'INVALID_REFRESH_TOKEN', 'the family\'s newest refresh token')

  // A refresh racing a logout with one token: exactly one of them succeeds.
  const session = await call<Tokens>(app, post('/auth/login', { email: alice.email, password: alice.password }))
  const [refresh, logout] = await Promise.all([
    app.inject(post('/auth/refresh', { refresh_token: session.body.refresh_token })),
    app.inject(post('/auth/logout', { refresh_token: session.body.refresh_token }))
  ])
  const statuses = [refresh.statusCode, logout.statusCode]
  t.equal(statuses.filter((status) => status === 200 || status === 204).length, 1, `exactly one of refresh and logout succeeds (${statuses.join(', ')})`)
  t.equal(statuses.filter((status) => status === 401).length, 1, 'the other is a 401')
  if (refresh.statusCode === 200) {
    const winner = refresh.json() as Tokens
    const after = await call(app, post('/auth/refresh', { refresh_token: winner.refresh_token }))
    t.equal(after.statusCode, 401, 'the losing logout counted as reuse: the winner\'s token is revoked too')
  }

  const fresh = await call<Tokens>(app, post('/auth/login', { email: alice.email, password: alice.password }))
  t.equal(fresh.statusCode, 200, 'the account can still log in')
  await stillServes(t, app, { ...alice, accessToken: fresh.body.access_token }, 'after the refresh attacks')
})

// ---------------------------------------------------------------- brute force

/** The app as the standalone server builds it behind a proxy (TRUST_PROXY=true). */
async function buildBehindProxy (t: Test, options: SwitchboardOptions): Promise<FastifyInstance> {
  const app = Fastify(serverOptions({ logLevel: 'silent', trustProxy: true }))
  await app.register(fp(switchboard), { ...TEST_SETTINGS, ...options })
  await app.ready()
  t.teardown(() => app.close())
  return app
}

onBothBackends('brute force on one account through a proxy, from a new X-Forwarded-For each time, still hits the per-account limit', async (t, options) => {
  const app = await buildBehindProxy(t, { ...options, authRateLimitMax: 3 })
  const email = uniqueEmail('victim')
  const signup = await call(app, post('/auth/signup', { email, password: PASSWORD, name: 'Victim' }, { headers: { 'x-forwarded-for': '198.51.100.1' } }))
  t.equal(signup.statusCode, 201)
  for (let attempt = 2; attempt <= 3; attempt++) {
    const guess = await call<ErrorBody>(app, post('/auth/login', { email, password: `guess ${attempt}` }, { headers: { 'x-forwarded-for': `198.51.100.${attempt}` } }))
    assertError(t, guess, 401, 'INVALID_CREDENTIALS', `guess ${attempt} from a fresh address`)
  }
  for (const [what, password, address] of [['a wrong guess', 'guess 4', '198.51.100.4'], ['the right password', PASSWORD, '198.51.100.5']] as const) {
    const limited = await call<ErrorBody>(app, post('/auth/login', { email: email.toUpperCase(), password }, { headers: { 'x-forwarded-for': address } }))
    assertError(t, limited, 429, 'RATE_LIMITED', `${what} past the account limit`)
    const retryAfter = Number(limited.headers['retry-after'])
    t.ok(Number.isInteger(retryAfter) && retryAfter > 0, `${what}: retry-after ${String(limited.headers['retry-after'])}`)
  }
  const other = await call(app, post('/auth/signup', { email: uniqueEmail(), password: PASSWORD, name: 'Other' }, { headers: { 'x-forwarded-for': '198.51.100.9' } }))
  t.equal(other.statusCode, 201, 'another account is served')
})

test('without trustProxy a forged X-Forwarded-For does not escape the per-IP limit', async (t) => {
  const app = await build(t, { authRateLimitMax: 3 })
  for (let attempt = 1; attempt <= 3; attempt++) {
    const guess = await call(app, post('/auth/login', { email: uniqueEmail(), password: PASSWORD }, { headers: { 'x-forwarded-for': `203.0.113.${attempt}` }, remoteAddress: '192.0.2.7' }))
    t.equal(guess.statusCode, 401, `attempt ${attempt} is answered`)
  }
  const limited = await call<ErrorBody>(app, post('/auth/login', { email: uniqueEmail(), password: PASSWORD }, { headers: { 'x-forwarded-for': '203.0.113.99' }, remoteAddress: '192.0.2.7' }))
  assertError(t, limited, 429, 'RATE_LIMITED', 'the 4th from one socket address, whatever the header says')
  t.ok(Number(limited.headers['retry-after']) > 0, 'with retry-after')
  const elsewhere = await call(app, post('/auth/login', { email: uniqueEmail(), password: PASSWORD }, { remoteAddress: '192.0.2.8' }))
  t.equal(elsewhere.statusCode, 401, 'another client is served')
})
