import { randomUUID } from 'node:crypto'
import { test, type Test } from 'tap'
import {
  build, connectWs, createUser, listen, refusedUpgrade, signAccessToken,
  type WsClient, type WsConnectOptions
} from '../helper.js'

/** Expects `GET /ws` refused with this status and error code, and no upgrade. */
async function expectRefused (t: Test, wsUrl: string, options: WsConnectOptions, statusCode: number, code: string, what: string): Promise<void> {
  const refused = await refusedUpgrade(wsUrl, options)
  t.equal(refused.statusCode, statusCode, `${what}: HTTP ${statusCode}`)
  t.match(refused.body, { statusCode, code, message: String }, `${what}: error body ${code}`)
}

/** Expects the upgrade accepted: the first frame is the welcome. */
async function expectWelcome (t: Test, wsUrl: string, options: WsConnectOptions, what: string): Promise<WsClient> {
  const client = await connectWs(t, wsUrl, options)
  t.equal((await client.nextJson()).type, 'welcome', `${what}: upgraded and welcomed`)
  return client
}

test('an upgrade without a valid access token is an HTTP 401', async (t) => {
  const { app, wsUrl } = await listen(t)
  const alice = await createUser(app, 'Alice')

  await expectRefused(t, wsUrl, {}, 401, 'INVALID_TOKEN', 'no token')
  await expectRefused(t, wsUrl, { token: 'not.a.jwt' }, 401, 'INVALID_TOKEN', 'garbage Bearer token')
  await expectRefused(t, wsUrl, { token: 'not.a.jwt', via: 'query' }, 401, 'INVALID_TOKEN', 'garbage ?token=')
  await expectRefused(t, wsUrl, { headers: { authorization: `Basic ${Buffer.from('a:b').toString('base64')}` } }, 401, 'INVALID_TOKEN', 'Basic credentials')
  await expectRefused(t, wsUrl, { token: alice.refreshToken }, 401, 'INVALID_TOKEN', 'a refresh token')
  // A header that is present but wrong is not rescued by a good ?token=.
  await expectRefused(t, wsUrl, { token: alice.accessToken, via: 'query', headers: { authorization: 'Bearer wrong' } }, 401, 'INVALID_TOKEN', 'a bad header with a good ?token=')

  const past = Date.now() - 3_600_000
  const expired = signAccessToken(app, { sub: String(alice.id), sid: randomUUID() }, { clockTimestamp: past, expiresIn: 60 })
  await expectRefused(t, wsUrl, { token: expired }, 401, 'TOKEN_EXPIRED', 'an expired token')
  await expectRefused(t, wsUrl, { token: expired, via: 'query' }, 401, 'TOKEN_EXPIRED', 'an expired ?token=')

  const nobody = signAccessToken(app, { sub: String(alice.id + 1_000_000), sid: randomUUID() })
  await expectRefused(t, wsUrl, { token: nobody }, 401, 'INVALID_TOKEN', 'a token for an account that does not exist')

  // The same user id, signed by a server with another secret.
  const other = await build(t, { jwtSecret: 'another-secret-that-is-32-bytes-or-more' })
  const foreign = await createUser(other, 'Mallory')
  await expectRefused(t, wsUrl, { token: foreign.accessToken }, 401, 'INVALID_TOKEN', 'a token from another secret')

  // The refusals left nothing behind: the same user connects fine.
  await expectWelcome(t, wsUrl, { token: alice.accessToken }, 'a valid token')
})

test('the access token of a logged-out session no longer opens a socket', async (t) => {
  const { app, wsUrl } = await listen(t)
  const alice = await createUser(app, 'Alice')
  await expectWelcome(t, wsUrl, { token: alice.accessToken }, 'before logout')
  const logout = await app.inject({ method: 'POST', url: '/auth/logout', payload: { refresh_token: alice.refreshToken } })
  t.equal(logout.statusCode, 204)
  await expectRefused(t, wsUrl, { token: alice.accessToken }, 401, 'INVALID_TOKEN', 'after logout, though the token has not expired')
})

test('the Origin header: none or the same host is allowed, another host is a 403', async (t) => {
  const { app, url, wsUrl } = await listen(t)
  const alice = await createUser(app, 'Alice')
  const token = alice.accessToken
  const host = new URL(url).host

  await expectWelcome(t, wsUrl, { token }, 'no Origin')
  await expectWelcome(t, wsUrl, { token, origin: `http://${host}` }, 'same-host Origin')
  await expectWelcome(t, wsUrl, { token, origin: `https://${host}` }, 'same host over https')

  await expectRefused(t, wsUrl, { token, origin: 'https://evil.example' }, 403, 'ORIGIN_NOT_ALLOWED', 'another host')
  await expectRefused(t, wsUrl, { token, origin: `http://${new URL(url).hostname}:1` }, 403, 'ORIGIN_NOT_ALLOWED', 'same name, other port')
  await expectRefused(t, wsUrl, { token, origin: 'null' }, 403, 'ORIGIN_NOT_ALLOWED', 'an opaque origin')
  await expectRefused(t, wsUrl, { origin: 'https://evil.example' }, 403, 'ORIGIN_NOT_ALLOWED', 'another host, no token')
})

test('origins listed in wsAllowedOrigins are allowed, others still refused', async (t) => {
  const { app, url, wsUrl } = await listen(t, { wsAllowedOrigins: ['https://app.example', 'http://localhost:5173'] })
  const alice = await createUser(app, 'Alice')
  const token = alice.accessToken

  await expectWelcome(t, wsUrl, { token, origin: 'https://app.example' }, 'a listed origin')
  await expectWelcome(t, wsUrl, { token, origin: 'http://localhost:5173', via: 'query' }, 'another listed origin, ?token=')
  await expectWelcome(t, wsUrl, { token, origin: `http://${new URL(url).host}` }, 'the same host')
  await expectRefused(t, wsUrl, { token, origin: 'https://app.example.evil' }, 403, 'ORIGIN_NOT_ALLOWED', 'an origin that only starts like a listed one')
  await expectRefused(t, wsUrl, { token, origin: 'http://app.example' }, 403, 'ORIGIN_NOT_ALLOWED', 'a listed host on another scheme')
})

test('a plain GET /ws (no upgrade) is a 426 with the usual error body', async (t) => {
  const app = await build(t)
  const alice = await createUser(app, 'Alice')
  const response = await app.inject({ method: 'GET', url: '/ws', headers: { authorization: `Bearer ${alice.accessToken}` } })
  t.equal(response.statusCode, 426)
  t.match(response.json(), { statusCode: 426, code: 'UPGRADE_REQUIRED', error: 'Upgrade Required', message: String })
  const unauthenticated = await app.inject({ method: 'GET', url: '/ws' })
  t.equal(unauthenticated.statusCode, 401, 'the token is checked first')
})

test('past the sockets one user may hold on a node the upgrade is a 429; past the node\'s, a 503', async (t) => {
  const { app, wsUrl } = await listen(t, { wsMaxConnectionsPerUser: 2, wsMaxConnections: 3 })
  const alice = await createUser(app, 'Alice')
  const bob = await createUser(app, 'Bob')
  const first = await expectWelcome(t, wsUrl, { token: alice.accessToken }, 'alice\'s first')
  await expectWelcome(t, wsUrl, { token: alice.accessToken }, 'alice\'s second')
  await expectRefused(t, wsUrl, { token: alice.accessToken }, 429, 'TOO_MANY_CONNECTIONS', 'alice\'s third')
  await first.close()
  await expectWelcome(t, wsUrl, { token: alice.accessToken }, 'alice again, once one closed')

  await expectWelcome(t, wsUrl, { token: bob.accessToken }, 'bob, the node\'s third')
  await expectRefused(t, wsUrl, { token: bob.accessToken }, 503, 'SERVER_FULL', 'a fourth on the node')
})
