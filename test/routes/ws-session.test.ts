import { once } from 'node:events'
import type { Socket } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyInstance } from 'fastify'
import { test, type Test } from 'tap'
import WebSocket from 'ws'
import {
  call, connectWs, createUser, jwtClaims, listen, signAccessToken,
  type TestUser, type WsClient, type WsConnectOptions
} from '../helper.js'

/** A connected client whose welcome has been read. */
async function online (t: Test, wsUrl: string, options: WsConnectOptions): Promise<WsClient> {
  const client = await connectWs(t, wsUrl, options)
  t.equal((await client.nextJson()).type, 'welcome', 'welcomed')
  return client
}

async function assertAlive (t: Test, client: WsClient, message: string): Promise<void> {
  client.send({ type: 'ping' })
  t.same(await client.nextJson(), { type: 'pong' }, message)
}

/** An access token of the user's own session that expires in about `seconds` (at least seconds - 1). */
function shortLivedToken (app: FastifyInstance, user: TestUser, seconds: number): string {
  const { sub, sid } = jwtClaims(user.accessToken)
  return signAccessToken(app, { sub: String(sub), sid: String(sid) }, { expiresIn: seconds })
}

/** Logs the same user in again: a second session with its own tokens. */
async function secondSession (app: FastifyInstance, user: TestUser): Promise<{ accessToken: string, refreshToken: string }> {
  const login = await call<{ access_token: string, refresh_token: string }>(app, { method: 'POST', url: '/auth/login', payload: { email: user.email, password: user.password } })
  if (login.statusCode !== 200) throw new Error(`login failed: ${JSON.stringify(login.body)}`)
  return { accessToken: login.body.access_token, refreshToken: login.body.refresh_token }
}

function isoExpiry (token: string): string {
  return new Date((jwtClaims(token).exp as number) * 1000).toISOString()
}

test('a refresh frame with a newer token gets a new welcome and keeps the socket past the old expiry', async (t) => {
  const { app, wsUrl } = await listen(t)
  const alice = await createUser(app, 'Alice')
  const firstToken = shortLivedToken(app, alice, 2)
  const client = await connectWs(t, wsUrl, { token: firstToken })
  const welcome = await client.nextJson()
  t.equal(welcome.expiresAt, isoExpiry(firstToken), 'the first welcome names the first expiry')

  const refreshed = await call<{ access_token: string }>(app, { method: 'POST', url: '/auth/refresh', payload: { refresh_token: alice.refreshToken } })
  t.equal(refreshed.statusCode, 200)
  const nextToken = refreshed.body.access_token
  client.send({ type: 'refresh', token: nextToken })
  const renewed = await client.nextJson()
  t.same(renewed, { type: 'welcome', user: welcome.user, expiresAt: isoExpiry(nextToken) }, 'a new welcome with the new expiry')
  t.ok(Date.parse(String(renewed.expiresAt)) > Date.parse(String(welcome.expiresAt)), 'the expiry moved forward')

  // The socket must NOT close with 4001 when the first token runs out: wait just past that moment.
  await sleep(Math.max(0, Date.parse(String(welcome.expiresAt)) - Date.now()) + 500)
  await assertAlive(t, client, 'still open after the first token expired')
})

test('refresh frames that cannot renew the session', async (t) => {
  const { app, wsUrl } = await listen(t)
  const alice = await createUser(app, 'Alice')
  const bob = await createUser(app, 'Bob')
  const client = await online(t, wsUrl, { token: alice.accessToken })

  client.send({ type: 'refresh', token: 'not-a-token' })
  t.match(await client.nextJson(), { type: 'error', code: 'BAD_FORMAT' }, 'an invalid token is an error')
  const expired = signAccessToken(app, { sub: String(alice.id), sid: String(jwtClaims(alice.accessToken).sid) }, { clockTimestamp: Date.now() - 3_600_000, expiresIn: 60 })
  client.send({ type: 'refresh', token: expired })
  t.match(await client.nextJson(), { type: 'error', code: 'BAD_FORMAT' }, 'an expired token is an error')
  client.send({ type: 'refresh', token: alice.refreshToken })
  t.match(await client.nextJson(), { type: 'error', code: 'BAD_FORMAT' }, 'a refresh token is not an access token')
  await assertAlive(t, client, 'those leave the socket open')

  // Someone else's token is not a mistake to forgive: the socket is closed as a policy violation.
  const watcher = await online(t, wsUrl, { token: alice.accessToken })
  client.send({ type: 'refresh', token: bob.accessToken })
  const { code } = await client.closed()
  t.equal(code, 1008, "another user's token closes the socket with 1008")
  await assertAlive(t, watcher, "the user's other socket is untouched")
})

test('a socket whose access token expires is closed with 4001', async (t) => {
  const { app, wsUrl } = await listen(t)
  const alice = await createUser(app, 'Alice')
  const token = shortLivedToken(app, alice, 2)
  const client = await online(t, wsUrl, { token })
  const other = await online(t, wsUrl, { token: alice.accessToken })
  const { code } = await client.closed(5_000)
  t.equal(code, 4001, 'closed with 4001 when the token runs out')
  t.ok(Date.now() >= (jwtClaims(token).exp as number) * 1000, 'not before the token expired')
  await assertAlive(t, other, 'a socket with a longer-lived token stays open')
})

test('logout closes the sockets of that session with 1008, not those of the same user\'s other session', async (t) => {
  const { app, wsUrl } = await listen(t)
  const alice = await createUser(app, 'Alice')
  const bob = await createUser(app, 'Bob')
  const laptop = await secondSession(app, alice)
  const phone = await online(t, wsUrl, { token: alice.accessToken })
  const phoneTab = await online(t, wsUrl, { token: alice.accessToken, via: 'query' })
  const laptopSocket = await online(t, wsUrl, { token: laptop.accessToken })
  const b = await online(t, wsUrl, { token: bob.accessToken })

  const logout = await call(app, { method: 'POST', url: '/auth/logout', payload: { refresh_token: alice.refreshToken } })
  t.equal(logout.statusCode, 204)
  t.equal((await phone.closed()).code, 1008, 'the session\'s first socket closes with 1008')
  t.equal((await phoneTab.closed()).code, 1008, 'and its second')

  await assertAlive(t, laptopSocket, 'the other session\'s socket stays open')
  b.send(`${alice.id}:still there?`)
  t.equal((await b.nextJson()).type, 'ack')
  t.match(await laptopSocket.nextJson(), { type: 'message', from: bob.id, text: 'still there?' }, 'and still receives messages')
  await assertAlive(t, b, 'other users are untouched')

  const refused = await call(app, { method: 'POST', url: '/auth/refresh', payload: { refresh_token: alice.refreshToken } })
  t.equal(refused.statusCode, 401, 'the logged-out session cannot refresh')
})

test('reusing a spent refresh token revokes the session and closes its sockets with 1008', async (t) => {
  const { app, wsUrl } = await listen(t)
  const alice = await createUser(app, 'Alice')
  const laptop = await secondSession(app, alice)
  const phone = await online(t, wsUrl, { token: alice.accessToken })
  const laptopSocket = await online(t, wsUrl, { token: laptop.accessToken })

  const rotated = await call(app, { method: 'POST', url: '/auth/refresh', payload: { refresh_token: alice.refreshToken } })
  t.equal(rotated.statusCode, 200, 'the first use rotates')
  await assertAlive(t, phone, 'a normal rotation leaves the socket open')

  const reused = await call(app, { method: 'POST', url: '/auth/refresh', payload: { refresh_token: alice.refreshToken } })
  t.equal(reused.statusCode, 401, 'the spent token is refused')
  t.equal((await phone.closed()).code, 1008, 'and the session it belongs to loses its socket')
  await assertAlive(t, laptopSocket, 'the user\'s other session is untouched')
})

test('closing the server closes every socket with 1001', async (t) => {
  const { app, wsUrl } = await listen(t)
  const alice = await createUser(app, 'Alice')
  const bob = await createUser(app, 'Bob')
  const clients = [
    await online(t, wsUrl, { token: alice.accessToken }),
    await online(t, wsUrl, { token: alice.accessToken, via: 'query' }),
    await online(t, wsUrl, { token: bob.accessToken })
  ]
  clients.push(await connectWs(t, wsUrl, { token: bob.accessToken, format: 'text' }))

  await app.close()
  const closes = await Promise.all(clients.map((client) => client.closed()))
  t.same(closes.map(({ code }) => code), [1001, 1001, 1001, 1001], 'every client, in either format, gets 1001')
})

test('shutdown does not wait on a client that never answers the close: it drops it', async (t) => {
  const { app, wsUrl } = await listen(t)
  const alice = await createUser(app, 'Alice')
  const bob = await createUser(app, 'Bob')
  const polite = await online(t, wsUrl, { token: alice.accessToken })
  const silent = new WebSocket(`${wsUrl}/ws`, { headers: { authorization: `Bearer ${bob.accessToken}` } })
  t.teardown(() => silent.terminate())
  await once(silent, 'message')
  // Bob's client stops reading its socket: it will never see, or answer, the server's close frame.
  const raw = (silent as unknown as { _socket: Socket })._socket
  raw.pause()
  const silentClosed = once(silent, 'close')

  // ws would otherwise give up on the handshake only after its own 30 s timeout.
  const guard = sleep(20_000, 'still waiting').then((value) => value)
  const result = await Promise.race([app.close().then(() => 'closed'), guard])
  t.equal(result, 'closed', 'the server finished closing')
  t.equal((await polite.closed()).code, 1001, 'the polite client got 1001')
  // Reading again, it finds the 1001 that was sent before the server dropped it.
  raw.resume()
  const [code] = await silentClosed as [number]
  t.equal(code, 1001)
})
