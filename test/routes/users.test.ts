import { createHmac } from 'node:crypto'
import { once } from 'node:events'
import type { FastifyInstance } from 'fastify'
import { test, type Test } from 'tap'
import WebSocket from 'ws'
import type { SwitchboardOptions } from '../../src/app.js'
import { build, call, createUser, listen, onBothBackends, realBackendOptions, realBackends, TEST_SETTINGS, type TestUser } from '../helper.js'

interface ErrorBody {
  statusCode: number
  code: string
  error: string
  message: string
}

interface PublicUser {
  id: number
  name: string
  avatarUrl: string | null
  createdAt: string
}

interface OnlinePage {
  count: number
  users: PublicUser[]
  nextCursor: string | null
}

const bearer = (token: string) => ({ authorization: `Bearer ${token}` })

function assertErrorBody (t: Test, body: ErrorBody, statusCode: number, code?: string): void {
  t.same(Object.keys(body).sort(), ['code', 'error', 'message', 'statusCode'], 'error shape')
  t.equal(body.statusCode, statusCode)
  t.type(body.error, 'string')
  t.type(body.message, 'string')
  if (code !== undefined) t.equal(body.code, code)
  else t.type(body.code, 'string')
}

/** An HS256 JWT signed by hand, to present tokens the service itself would never issue. */
function signJwt (header: Record<string, unknown>, claims: Record<string, unknown>, secret: string): string {
  const encode = (part: Record<string, unknown>) => Buffer.from(JSON.stringify(part)).toString('base64url')
  const unsigned = `${encode(header)}.${encode(claims)}`
  return `${unsigned}.${createHmac('sha256', secret).update(unsigned).digest('base64url')}`
}

interface OpenSocket {
  client: WebSocket
  /** Resolves once the server has handled the close (the registry is updated). */
  serverClosed: Promise<void>
}

/**
 * A real client with a Bearer header, open once the welcome frame arrived.
 * Connections are opened one at a time, so the next server-side socket is this one.
 */
async function connect (t: Test, app: FastifyInstance, wsUrl: string, user: TestUser): Promise<OpenSocket> {
  const serverSide = once(app.websocketServer, 'connection') as Promise<[WebSocket]>
  const client = new WebSocket(`${wsUrl}/ws`, { headers: bearer(user.accessToken) })
  t.teardown(() => { client.terminate() })
  const welcome = new Promise<Record<string, unknown>>((resolve, reject) => {
    client.once('message', (data) => resolve(JSON.parse(String(data)) as Record<string, unknown>))
    client.once('error', reject)
  })
  const [[socket], frame] = await Promise.all([serverSide, welcome])
  // The route's own close listener (registry.remove) runs in the same emit, after this one.
  const serverClosed = new Promise<void>((resolve) => socket.once('close', () => setImmediate(resolve)))
  t.equal(frame.type, 'welcome', 'welcome frame first')
  t.match(frame.user, { id: user.id }, 'welcome names the user')
  return { client, serverClosed }
}

async function disconnect (socket: OpenSocket): Promise<void> {
  socket.client.close(1000, 'bye')
  await socket.serverClosed
}

async function onlinePage (app: FastifyInstance, token: string, query = ''): Promise<OnlinePage> {
  const { statusCode, body } = await call<OnlinePage>(app, { method: 'GET', url: `/users/online${query}`, headers: bearer(token) })
  if (statusCode !== 200) throw new Error(`GET /users/online${query}: ${statusCode} ${JSON.stringify(body)}`)
  return body
}

async function isOnline (app: FastifyInstance, token: string, id: number): Promise<boolean> {
  const { body } = await call<{ online: boolean }>(app, { method: 'GET', url: `/users/${id}`, headers: bearer(token) })
  return body.online
}

test('GET /users/me returns the account of the token', async (t) => {
  const app = await build(t)
  const user = await createUser(app, 'Ada Lovelace')
  const response = await app.inject({ method: 'GET', url: '/users/me', headers: bearer(user.accessToken) })
  t.equal(response.statusCode, 200)
  t.notOk(/password|\$2/.test(response.body), 'no password or hash in the body')
  const body = response.json() as Record<string, unknown>
  t.same(Object.keys(body).sort(), ['avatarUrl', 'createdAt', 'email', 'id', 'name'])
  t.match(body, { id: user.id, email: user.email, name: 'Ada Lovelace', avatarUrl: null })
  t.ok(!Number.isNaN(Date.parse(body.createdAt as string)), 'createdAt is a date')
})

test('GET /users/me refuses requests without a valid access token', async (t) => {
  const app = await build(t)
  const user = await createUser(app)
  const secret = TEST_SETTINGS.jwtSecret as string
  const now = Math.floor(Date.now() / 1000)
  const payload = user.accessToken.split('.')[1] as string
  // The session must be live: tokens of an ended session are refused.
  const { sid } = JSON.parse(Buffer.from(payload, 'base64url').toString()) as { sid: string }
  const claims = { sub: String(user.id), sid, iat: now, exp: now + 600, iss: 'switchboard', aud: 'switchboard' }
  const header = { alg: 'HS256', typ: 'at+jwt' }

  // The hand-signed control token proves the refusals below are about what was changed.
  const control = await call(app, { method: 'GET', url: '/users/me', headers: bearer(signJwt(header, claims, secret)) })
  t.equal(control.statusCode, 200, 'a correctly hand-signed token is accepted')

  const cases: Array<{ name: string, headers: Record<string, string>, url?: string, code?: string }> = [
    { name: 'no Authorization header', headers: {} },
    { name: 'an empty Bearer', headers: { authorization: 'Bearer ' } },
    { name: 'a Basic scheme', headers: { authorization: `Basic ${Buffer.from('a:b').toString('base64')}` } },
    { name: 'the token without a scheme', headers: { authorization: user.accessToken } },
    { name: 'garbage', headers: bearer('not-a-token') },
    { name: 'a tampered signature', headers: bearer(user.accessToken.slice(0, -2) + (user.accessToken.endsWith('AA') ? 'BB' : 'AA')) },
    { name: 'alg none', headers: bearer(`${Buffer.from(JSON.stringify({ alg: 'none', typ: 'at+jwt' })).toString('base64url')}.${payload}.`) },
    { name: 'another secret', headers: bearer(signJwt(header, claims, 'another-secret-that-is-at-least-32-bytes')) },
    { name: 'a wrong audience', headers: bearer(signJwt(header, { ...claims, aud: 'someone-else' }, secret)) },
    { name: 'a wrong issuer', headers: bearer(signJwt(header, { ...claims, iss: 'someone-else' }, secret)) },
    { name: 'a plain JWT typ', headers: bearer(signJwt({ alg: 'HS256', typ: 'JWT' }, claims, secret)) },
    { name: 'no sid claim', headers: bearer(signJwt(header, { ...claims, sid: undefined }, secret)) },
    { name: 'an expired token', headers: bearer(signJwt(header, { ...claims, iat: now - 1200, exp: now - 600 }, secret)), code: 'TOKEN_EXPIRED' },
    { name: 'the refresh token', headers: bearer(user.refreshToken) },
    // ?token= is for browsers opening the WebSocket only.
    { name: 'a token in the query string', headers: {}, url: `/users/me?token=${user.accessToken}` }
  ]
  for (const { name, headers, url = '/users/me', code } of cases) {
    const { statusCode, body } = await call<ErrorBody>(app, { method: 'GET', url, headers })
    t.equal(statusCode, 401, `401 for ${name}`)
    assertErrorBody(t, body, 401, code)
  }

  for (const url of ['/users/online', `/users/${user.id}`]) {
    const { statusCode, body } = await call<ErrorBody>(app, { method: 'GET', url })
    t.equal(statusCode, 401, `${url} needs a token too`)
    assertErrorBody(t, body, 401)
  }
})

test('GET /users/:id returns a public profile', async (t) => {
  const app = await build(t)
  const reader = await createUser(app, 'Reader')
  const other = await createUser(app, 'Grace Hopper')

  const response = await app.inject({ method: 'GET', url: `/users/${other.id}`, headers: bearer(reader.accessToken) })
  t.equal(response.statusCode, 200)
  t.notOk(response.body.includes(other.email), 'the email appears nowhere in the body')
  t.notOk(/password|\$2/.test(response.body), 'no password or hash in the body')
  const body = response.json() as Record<string, unknown>
  t.same(Object.keys(body).sort(), ['avatarUrl', 'createdAt', 'id', 'name', 'online'])
  t.match(body, { id: other.id, name: 'Grace Hopper', avatarUrl: null, online: false })

  const missing = await call<ErrorBody>(app, { method: 'GET', url: `/users/${other.id + 1000}`, headers: bearer(reader.accessToken) })
  t.equal(missing.statusCode, 404)
  assertErrorBody(t, missing.body, 404, 'USER_NOT_FOUND')

  for (const id of ['abc', '0', '-1', '1.5', '99999999999999999999']) {
    const { statusCode, body } = await call<ErrorBody>(app, { method: 'GET', url: `/users/${id}`, headers: bearer(reader.accessToken) })
    t.equal(statusCode, 400, `400 for id "${id}"`)
    assertErrorBody(t, body, 400, 'VALIDATION_FAILED')
  }
})

async function onlineUsersFlow (t: Test, options: SwitchboardOptions): Promise<void> {
  const { app, wsUrl } = await listen(t, options)
  const reader = await createUser(app, 'Reader')
  const users = [await createUser(app, 'One'), await createUser(app, 'Two'), await createUser(app, 'Three')]

  const empty = await onlinePage(app, reader.accessToken)
  t.same(empty, { count: 0, users: [], nextCursor: null }, 'nobody is online before anyone connects')

  const sockets = new Map<number, OpenSocket[]>()
  for (const user of users) sockets.set(user.id, [await connect(t, app, wsUrl, user)])
  // A second device for the first user: still one user online.
  const [first] = users as [TestUser, TestUser, TestUser]
  sockets.get(first.id)?.push(await connect(t, app, wsUrl, first))

  const all = await onlinePage(app, reader.accessToken)
  t.equal(all.count, 3, 'three users online, counting the two-device user once')
  t.same(all.users.map((user) => user.id), users.map((user) => user.id).sort((a, b) => a - b), 'ascending id order')
  t.equal(all.nextCursor, null, 'one page holds them all')
  for (const user of all.users) {
    t.same(Object.keys(user).sort(), ['avatarUrl', 'createdAt', 'id', 'name'], `user ${user.id} is a PublicUser (no email)`)
  }
  t.equal(await isOnline(app, reader.accessToken, first.id), true, '/users/:id says online')
  t.equal(await isOnline(app, reader.accessToken, reader.id), false, 'a user without a socket is offline')

  // Paging one at a time walks every online user exactly once.
  const seen: number[] = []
  let cursor: string | null = null
  let pages = 0
  do {
    const query: string = cursor === null ? '?limit=1' : `?limit=1&cursor=${cursor}`
    const page = await onlinePage(app, reader.accessToken, query)
    pages++
    t.equal(page.count, 3, 'count is the whole total on every page')
    t.equal(page.users.length, 1, 'one user per page')
    seen.push(...page.users.map((user) => user.id))
    cursor = page.nextCursor
    if (pages > 10) throw new Error('paging does not end')
  } while (cursor !== null)
  t.equal(pages, 3, 'three pages, the last with nextCursor null')
  t.same(seen, all.users.map((user) => user.id), 'every online user once, in order, no duplicates')
  t.equal(new Set(seen).size, seen.length, 'no duplicates')

  const two = await onlinePage(app, reader.accessToken, '?limit=2')
  t.equal(two.users.length, 2)
  t.equal(two.nextCursor, String(two.users[1]?.id), 'nextCursor is the last id of the page')
  const rest = await onlinePage(app, reader.accessToken, `?limit=2&cursor=${two.nextCursor}`)
  t.same(rest.users.map((user) => user.id), [all.users[2]?.id])
  t.equal(rest.nextCursor, null)

  // The two-device user stays online until the last socket closes.
  const [firstDevice, secondDevice] = sockets.get(first.id) as [OpenSocket, OpenSocket]
  await disconnect(firstDevice)
  t.equal(await isOnline(app, reader.accessToken, first.id), true, 'still online with one device left')
  t.equal((await onlinePage(app, reader.accessToken)).count, 3)
  await disconnect(secondDevice)
  t.equal(await isOnline(app, reader.accessToken, first.id), false, 'offline once the last socket closed')
  const after = await onlinePage(app, reader.accessToken)
  t.equal(after.count, 2)
  t.notOk(after.users.some((user) => user.id === first.id), 'gone from the online list')
}

test('GET /users/online lists the users with a live WebSocket', async (t) => {
  await onlineUsersFlow(t, {})
})

test('GET /users/online on MariaDB and Redis', async (t) => {
  const backends = realBackends()
  if ('skip' in backends) return t.plan(0, backends.skip)
  await onlineUsersFlow(t, await realBackendOptions(t, backends))
})

test('GET /users/online validates its query', async (t) => {
  const app = await build(t)
  const user = await createUser(app)
  for (const query of ['?limit=0', '?limit=201', '?limit=abc', '?cursor=abc', '?cursor=0', '?cursor=-5', '?other=1']) {
    const { statusCode, body } = await call<ErrorBody>(app, { method: 'GET', url: `/users/online${query}`, headers: bearer(user.accessToken) })
    t.equal(statusCode, 400, `400 for ${query}`)
    assertErrorBody(t, body, 400, 'VALIDATION_FAILED')
  }
  const page = await onlinePage(app, user.accessToken, '?limit=200&cursor=1')
  t.same(page, { count: 0, users: [], nextCursor: null }, 'the largest limit and a cursor are accepted')
})

onBothBackends('after logout, or reuse of a spent refresh token, the session\'s access tokens are refused at once', async (t, options) => {
  const app = await build(t, options)
  const alice = await createUser(app, 'Alice')
  const bob = await createUser(app, 'Bob')
  const routes = ['/users/me', `/users/${bob.id}`, '/users/online', `/messages?with=${bob.id}`]
  const get = (token: string, url: string) => call<{ code?: string }>(app, { method: 'GET', url, headers: { authorization: `Bearer ${token}` } })
  for (const url of routes) t.equal((await get(alice.accessToken, url)).statusCode, 200, `${url} before logout`)

  t.equal((await app.inject({ method: 'POST', url: '/auth/logout', payload: { refresh_token: alice.refreshToken } })).statusCode, 204)
  for (const url of routes) {
    const refused = await get(alice.accessToken, url)
    t.match({ statusCode: refused.statusCode, code: refused.body.code }, { statusCode: 401, code: 'INVALID_TOKEN' }, `${url} after logout, though the token has not expired`)
  }
  t.equal((await get(bob.accessToken, '/users/me')).statusCode, 200, 'other sessions are untouched')

  // Reuse of a spent refresh token ends the session too.
  const rotated = await call<{ access_token: string }>(app, { method: 'POST', url: '/auth/refresh', payload: { refresh_token: bob.refreshToken } })
  t.equal((await get(rotated.body.access_token, '/users/me')).statusCode, 200, 'the rotated session works')
  t.equal((await call(app, { method: 'POST', url: '/auth/refresh', payload: { refresh_token: bob.refreshToken } })).statusCode, 401, 'the spent token is reused')
  t.equal((await get(rotated.body.access_token, '/users/me')).statusCode, 401, 'and the session\'s newest access token is refused')
})
