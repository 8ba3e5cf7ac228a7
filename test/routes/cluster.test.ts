import { randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyInstance } from 'fastify'
import { Redis } from 'ioredis'
import { test, type Test } from 'tap'
import type { SwitchboardOptions } from '../../src/app.js'
import { compareIds } from '../../src/ids.js'
import {
  call, connectWs, createUser, listen, realBackendOptions, realBackends, receiveMessages, scanKeys, sendMessages, startServerProcess, TEST_JWT_SECRET, until,
  type ChatLine, type ServerFrame, type TestUser, type WsClient, type WsConnectOptions
} from '../helper.js'

/*
 * Several nodes of the service in one process: two app instances on their
 * own ports, sharing one database and one Redis prefix, as behind a load
 * balancer. Only on the real backends: without Redis there is one node.
 */

type Backends = { mysqlUrl: string, redisUrl: string }

interface Node {
  app: FastifyInstance
  url: string
  wsUrl: string
}

/** Seconds after which a silent node counts as dead: short, so reaping is quick to wait for. */
const PRESENCE_TTL = 2

/** Options for the nodes of one cluster: one fresh database and one fresh Redis prefix. */
async function clusterOptions (t: Test, backends: Backends): Promise<SwitchboardOptions & { redisKeyPrefix: string }> {
  const options = await realBackendOptions(t, backends)
  return { ...options, redisKeyPrefix: options.redisKeyPrefix ?? '', presenceTtl: PRESENCE_TTL }
}

/** Two nodes of one cluster, closed when `t` ends (started one after the other: the first migrates the database). */
async function twoNodes (t: Test, backends: Backends) {
  const options = await clusterOptions(t, backends)
  const a = await listen(t, options)
  const b = await listen(t, options)
  return { a, b, options }
}

const bearer = (user: { accessToken: string }) => ({ authorization: `Bearer ${user.accessToken}` })

/** A connected client whose welcome frame has been read. */
async function online (t: Test, node: Pick<Node, 'wsUrl'>, user: { accessToken: string }, options: Omit<WsConnectOptions, 'token'> = {}): Promise<WsClient> {
  const client = await connectWs(t, node.wsUrl, { ...options, token: user.accessToken })
  t.equal((await client.nextJson()).type, 'welcome', 'the first frame is the welcome')
  return client
}

/** Nothing else is on its way (as far as a ping can tell: its pong comes next). */
async function assertNothingMore (t: Test, client: WsClient, message: string): Promise<void> {
  client.send({ type: 'ping' })
  t.same(await client.nextJson(), { type: 'pong' }, message)
}

function chatLine (frame: ServerFrame): ChatLine {
  return { id: String(frame.id), from: Number(frame.from), to: Number(frame.to), text: String(frame.text) }
}

/** Reads frames until `acks` acks and `messages` messages came; anything else fails. */
async function readTraffic (client: WsClient, { acks, messages }: { acks: number, messages: number }): Promise<{ acked: string[], received: ChatLine[] }> {
  const acked: string[] = []
  const received: ChatLine[] = []
  while (acked.length < acks || received.length < messages) {
    const frame = await client.nextJson()
    if (frame.type === 'ack') acked.push(String(frame.id))
    else if (frame.type === 'message') received.push(chatLine(frame))
    else throw new Error(`expected acks and messages, got ${JSON.stringify(frame)}`)
  }
  if (acked.length > acks || received.length > messages) throw new Error(`more than expected: ${acked.length} acks, ${received.length} messages`)
  return { acked, received }
}

/** Reads messages until every id of `expected` has come; returns all that came (duplicates included). */
async function receiveAll (client: WsClient, expected: readonly ChatLine[]): Promise<ChatLine[]> {
  const missing = new Set(expected.map(({ id }) => id))
  const received: ChatLine[] = []
  while (missing.size > 0) {
    const frame = await client.nextJson()
    if (frame.type !== 'message') throw new Error(`expected a message, got ${JSON.stringify(frame)}`)
    received.push(chatLine(frame))
    missing.delete(String(frame.id))
  }
  return received
}

/** The first copy of each message, in the order they came. */
function firstCopies (lines: readonly ChatLine[]): ChatLine[] {
  const seen = new Set<string>()
  return lines.filter(({ id }) => !seen.has(id) && seen.add(id) !== undefined)
}

function ascending (lines: readonly ChatLine[]): boolean {
  return lines.every((line, index) => index === 0 || compareIds((lines[index - 1] as ChatLine).id, line.id) < 0)
}

/** Waits until the node has handled the close of the user's sockets there. */
async function untilGoneFrom (node: Node, userId: number): Promise<void> {
  await until(`user ${userId} has no socket left on ${node.url}`, () => !node.app.switchboardChat.registry.isOnline(userId))
}

interface OnlinePage {
  count: number
  users: Array<{ id: number, [key: string]: unknown }>
  nextCursor: string | null
}

async function onlinePage (node: Node, viewer: TestUser, query = ''): Promise<OnlinePage> {
  const { statusCode, body } = await call<OnlinePage>(node.app, { method: 'GET', url: `/users/online${query}`, headers: bearer(viewer) })
  if (statusCode !== 200) throw new Error(`GET /users/online: ${statusCode} ${JSON.stringify(body)}`)
  return body
}

async function isOnline (node: Node, viewer: TestUser, userId: number): Promise<boolean> {
  const { statusCode, body } = await call<{ online: boolean }>(node.app, { method: 'GET', url: `/users/${userId}`, headers: bearer(viewer) })
  if (statusCode !== 200) throw new Error(`GET /users/${userId}: ${statusCode} ${JSON.stringify(body)}`)
  return body.online
}

/** The whole conversation through GET /messages, oldest first. */
async function history (node: Node, user: TestUser, peerId: number): Promise<ChatLine[]> {
  const pages: ChatLine[][] = []
  let before: string | null = null
  do {
    const query: URLSearchParams = new URLSearchParams({ with: String(peerId), limit: '100', ...(before === null ? {} : { before }) })
    const { statusCode, body }: { statusCode: number, body: { messages: ChatLine[], nextBefore: string | null } } = await call<{ messages: ChatLine[], nextBefore: string | null }>(node.app, { method: 'GET', url: `/messages?${query.toString()}`, headers: bearer(user) })
    if (statusCode !== 200) throw new Error(`GET /messages: ${statusCode} ${JSON.stringify(body)}`)
    pages.unshift(body.messages.map(({ id, from, to, text }) => ({ id, from, to, text })))
    before = body.nextBefore
  } while (before !== null)
  return pages.flat()
}

/** The next presence frame (other frames are skipped). */
async function nextPresence (client: WsClient): Promise<{ userId: number, online: boolean }> {
  const frame = await client.nextOfType('presence')
  return { userId: Number(frame.userId), online: frame.online === true }
}

test('two nodes', async (t) => {
  const backends = realBackends()
  if ('skip' in backends) return t.plan(0, backends.skip)

  t.test('messages cross nodes both ways: acknowledged, each exactly once, in order', async (t) => {
    const { a, b } = await twoNodes(t, backends)
    const alice = await createUser(a.app, 'Alice')
    const bob = await createUser(a.app, 'Bob')
    const onA = await online(t, a, alice)
    const onB = await online(t, b, bob)

    const first = await sendMessages(onA, alice.id, [{ to: bob.id, text: 'hello from A', ref: 'hello-a' }])
    t.same(await receiveMessages(onB, 1), first, 'A to B')
    const reply = await sendMessages(onB, bob.id, [{ to: alice.id, text: 'hello from B', ref: 'hello-b' }])
    t.same(await receiveMessages(onA, 1), reply, 'B to A')

    // 200 each way at once: each socket gets its acks and the other's messages, interleaved.
    const count = 200
    for (let index = 0; index < count; index++) {
      onA.send({ type: 'message', to: bob.id, text: `a${index}`, id: `a${index}` })
      onB.send({ type: 'message', to: alice.id, text: `b${index}`, id: `b${index}` })
    }
    const [atA, atB] = await Promise.all([readTraffic(onA, { acks: count, messages: count }), readTraffic(onB, { acks: count, messages: count })])
    const sentByA = atA.acked.map((id, index) => ({ id, from: alice.id, to: bob.id, text: `a${index}` }))
    const sentByB = atB.acked.map((id, index) => ({ id, from: bob.id, to: alice.id, text: `b${index}` }))
    t.same(atB.received, sentByA, 'B got all of A\'s messages, once each, in sending order')
    t.same(atA.received, sentByB, 'A got all of B\'s messages, once each, in sending order')
    t.ok(ascending(atB.received) && ascending(atA.received), 'in id order')
    await assertNothingMore(t, onA, 'nothing more for A')
    await assertNothingMore(t, onB, 'nothing more for B')

    const stored = await history(b, bob, alice.id)
    t.same(stored, [...first, ...reply, ...[...sentByA, ...sentByB].sort((x, y) => compareIds(x.id, y.id))], 'GET /messages on B: every message of both nodes, in id order')
  })

  t.test('a user\'s devices on both nodes each get every message to and from that user', async (t) => {
    const { a, b } = await twoNodes(t, backends)
    const [user, peerOnA, peerOnB] = [await createUser(a.app, 'Multi'), await createUser(a.app, 'Peer A'), await createUser(a.app, 'Peer B')]
    const deviceA = await online(t, a, user)
    const deviceB = await online(t, b, user)
    const peerA = await online(t, a, peerOnA)
    const peerB = await online(t, b, peerOnB)

    const fromA = await sendMessages(peerA, peerOnA.id, [{ to: user.id, text: 'from a peer on A' }])
    t.same(await receiveMessages(deviceA, 1), fromA, 'the device on the sender\'s node')
    t.same(await receiveMessages(deviceB, 1), fromA, 'the device on the other node')
    const fromB = await sendMessages(peerB, peerOnB.id, [{ to: user.id, text: 'from a peer on B' }])
    t.same(await receiveMessages(deviceA, 1), fromB)
    t.same(await receiveMessages(deviceB, 1), fromB)

    const ownFromA = await sendMessages(deviceA, user.id, [{ to: peerOnB.id, text: 'sent from my device on A' }])
    t.same(await receiveMessages(peerB, 1), ownFromA, 'the recipient on the other node')
    t.same(await receiveMessages(deviceB, 1), ownFromA, 'and the sender\'s own device on the other node')
    const ownFromB = await sendMessages(deviceB, user.id, [{ to: peerOnA.id, text: 'sent from my device on B' }])
    t.same(await receiveMessages(peerA, 1), ownFromB)
    t.same(await receiveMessages(deviceA, 1), ownFromB)

    for (const [name, client] of Object.entries({ deviceA, deviceB, peerA, peerB })) await assertNothingMore(t, client, `${name}: nothing twice, nothing else`)
  })

  t.test('GET /users/online and GET /users/:id answer for the whole cluster on every node', async (t) => {
    const { a, b } = await twoNodes(t, backends)
    const [first, second, offline] = [await createUser(a.app, 'On A'), await createUser(a.app, 'On B'), await createUser(a.app, 'Offline')]
    await online(t, a, first)
    const secondSocket = await online(t, b, second)
    // Joining the cluster completes a moment after the welcome.
    await until('both are online cluster-wide', async () => (await onlinePage(a, offline)).count === 2)

    for (const [name, node] of Object.entries({ a, b })) {
      const all = await onlinePage(node, offline)
      t.match(all, { count: 2, users: [{ id: first.id, name: 'On A' }, { id: second.id, name: 'On B' }], nextCursor: null }, `node ${name}: both users, in id order`)
      t.equal(all.users.length, 2)
      t.notOk(all.users.some((user) => 'email' in user), 'public profiles only')
      const page1 = await onlinePage(node, offline, '?limit=1')
      t.same(page1.users.map(({ id }) => id), [first.id])
      t.equal(page1.count, 2)
      t.equal(page1.nextCursor, String(first.id))
      const page2 = await onlinePage(node, offline, `?limit=1&cursor=${page1.nextCursor ?? ''}`)
      t.same({ ids: page2.users.map(({ id }) => id), nextCursor: page2.nextCursor }, { ids: [second.id], nextCursor: null }, `node ${name}: the second page ends it`)
      t.same(
        [await isOnline(node, offline, first.id), await isOnline(node, offline, second.id), await isOnline(node, first, offline.id)],
        [true, true, false],
        `node ${name}: GET /users/:id`
      )
    }

    await secondSocket.close()
    for (const [name, node] of Object.entries({ a, b })) {
      await until(`node ${name} has the user of B offline`, async () => !await isOnline(node, first, second.id))
      t.same((await onlinePage(node, offline)).users.map(({ id }) => id), [first.id], `node ${name} lists only the user of A`)
    }
  })

  t.test('watch: presence across nodes, offline only when the last connection anywhere closes', async (t) => {
    const { a, b } = await twoNodes(t, backends)
    const [watcher, watched, fence] = [await createUser(a.app, 'Watcher'), await createUser(a.app, 'Watched'), await createUser(a.app, 'Fence')]
    const eyes = await online(t, a, watcher)
    eyes.send({ type: 'watch', users: [watched.id, fence.id] })
    t.same([await nextPresence(eyes), await nextPresence(eyes)], [{ userId: watched.id, online: false }, { userId: fence.id, online: false }], 'the initial state of each')

    const onB = await online(t, b, watched)
    t.same(await nextPresence(eyes), { userId: watched.id, online: true }, 'online when they connect on the other node')
    const onA = await online(t, a, watched)

    await onB.close()
    await untilGoneFrom(b, watched.id)
    // Presence changes reach the watcher in order: the fence's comes after anything the close caused.
    await online(t, b, fence)
    t.same(await nextPresence(eyes), { userId: fence.id, online: true }, 'closing one of two connections changed nothing')

    await onA.close()
    t.same(await nextPresence(eyes), { userId: watched.id, online: false }, 'offline once their last connection closed')
    await assertNothingMore(t, eyes, 'one frame per change')
  })

  t.test('logout on one node closes that session\'s sockets on every node with 1008; other sessions stay', async (t) => {
    const { a, b } = await twoNodes(t, backends)
    const user = await createUser(a.app, 'Two Sessions')
    const login = await call<{ access_token: string, refresh_token: string }>(b.app, { method: 'POST', url: '/auth/login', payload: { email: user.email, password: user.password } })
    const otherSession = { accessToken: login.body.access_token, refreshToken: login.body.refresh_token }
    const loggedOutOnB = await online(t, b, user)
    const loggedOutOnA = await online(t, a, user)
    const stays = await online(t, b, otherSession)

    const logout = await call(a.app, { method: 'POST', url: '/auth/logout', payload: { refresh_token: user.refreshToken } })
    t.equal(logout.statusCode, 204)
    t.equal((await loggedOutOnB.closed(5000)).code, 1008, 'the session\'s socket on the other node closes with 1008')
    t.equal((await loggedOutOnA.closed(5000)).code, 1008, 'and the one on this node')
    await assertNothingMore(t, stays, 'the other session\'s socket is still open')

    // Reusing a spent refresh token (on A) ends that session too, on B.
    const rotated = await call<{ refresh_token: string }>(b.app, { method: 'POST', url: '/auth/refresh', payload: { refresh_token: otherSession.refreshToken } })
    t.equal(rotated.statusCode, 200)
    const reuse = await call(a.app, { method: 'POST', url: '/auth/refresh', payload: { refresh_token: otherSession.refreshToken } })
    t.equal(reuse.statusCode, 401)
    t.equal((await stays.closed(5000)).code, 1008, 'refresh-token reuse closes the session\'s socket on the other node')
  })

  t.test('an offline user gets, on reconnecting, what was sent to them through the other node', async (t) => {
    const { a, b } = await twoNodes(t, backends)
    const sender = await createUser(a.app, 'Sender')
    const recipient = await createUser(a.app, 'Recipient')
    const senderSocket = await online(t, a, sender)
    const first = await online(t, b, recipient)
    const before = await sendMessages(senderSocket, sender.id, [{ to: recipient.id, text: 'before 1' }, { to: recipient.id, text: 'before 2' }])
    t.same(await receiveMessages(first, 2), before, 'received live')
    await first.close()
    await untilGoneFrom(b, recipient.id)
    await b.app.switchboardChat.drain()

    const away = await sendMessages(senderSocket, sender.id, Array.from({ length: 5 }, (_, index) => ({ to: recipient.id, text: `while away ${index}` })))
    const back = await online(t, b, recipient)
    // With several nodes a catch-up starts a little (up to 1 s) before the cursor, since messages routed
    // through different nodes may come a moment out of id order: a message already received may come
    // again. So: every message at least once, none missing, and in id order once duplicates are dropped.
    const caughtUp = await receiveAll(back, away)
    const unique = firstCopies(caughtUp)
    t.same(unique.filter(({ id }) => !before.some((line) => line.id === id)), away, 'everything sent while away, in order')
    t.ok(ascending(unique), 'in id order once duplicates are dropped')
    t.ok(caughtUp.every((line) => [...before, ...away].some((sent) => sent.id === line.id)), 'nothing that was not sent to them')
    await assertNothingMore(t, back, 'then nothing more')

    const live = await sendMessages(senderSocket, sender.id, [{ to: recipient.id, text: 'live again' }])
    t.same(await receiveMessages(back, 1), live, 'then live')
  })

  t.test('the bus of a node drops while messages flow to it: it reconnects, and every acknowledged message arrives exactly once', async (t) => {
    const options = await clusterOptions(t, backends)
    const admin = new Redis(backends.redisUrl)
    t.teardown(() => admin.quit())
    // Node B logs in to Redis as a user of its own, so its subscriber can be told apart (and locked out) in CLIENT LIST.
    const redisUser = `switchboard-test-${randomBytes(6).toString('hex')}`
    const password = randomBytes(12).toString('hex')
    await admin.acl('SETUSER', redisUser, 'on', `>${password}`, '~*', '&*', '+@all')
    t.teardown(async () => { await admin.acl('DELUSER', redisUser) })
    const nodeBUrl = new URL(backends.redisUrl)
    nodeBUrl.username = redisUser
    nodeBUrl.password = password

    const a = await listen(t, options)
    const b = await listen(t, { ...options, redisUrl: nodeBUrl.toString() })
    const sender = await createUser(a.app, 'Sender')
    const recipient = await createUser(a.app, 'Recipient')
    const senderSocket = await online(t, a, sender)
    const recipientSocket = await online(t, b, recipient)
    const readyOnB = async () => await call<{ bus: { status: string } }>(b.app, { method: 'GET', url: '/ready' })
    t.match(await readyOnB(), { statusCode: 200, body: { bus: { backend: 'redis', status: 'up' } } })

    // A steady flow from A to B for the whole test, in small acknowledged batches.
    const sent: ChatLine[] = []
    const stopFlow = new AbortController()
    const flow = (async () => {
      for (let batch = 0; !stopFlow.signal.aborted; batch++) {
        sent.push(...await sendMessages(senderSocket, sender.id, Array.from({ length: 5 }, (_, index) => ({ to: recipient.id, text: `batch ${batch} message ${index}` }))))
        await sleep(5)
      }
    })()
    const killSubscriber = async () => Number(await admin.call('CLIENT', 'KILL', 'USER', redisUser, 'TYPE', 'pubsub'))
    const sentSoFar = (count: number) => until(`${count} more messages were sent`, () => sent.length >= count)

    await sentSoFar(50)
    t.equal(await killSubscriber(), 1, 'CLIENT KILL found node B\'s subscriber')
    await sentSoFar(sent.length + 50)
    await until('node B is ready again', async () => (await readyOnB()).statusCode === 200)

    // A longer outage: the subscriber cannot log in again until the user is back on.
    await admin.acl('SETUSER', redisUser, 'off')
    t.equal(await killSubscriber(), 1)
    await until('node B reports its bus down', async () => (await readyOnB()).body.bus.status === 'down')
    t.match(await readyOnB(), { statusCode: 503, body: { bus: { status: 'down' } } }, '/ready on B: 503 while its bus is down')
    await sentSoFar(sent.length + 50)
    await admin.acl('SETUSER', redisUser, 'on')
    await until('node B reports its bus up again', async () => (await readyOnB()).statusCode === 200)
    t.match(await readyOnB(), { body: { bus: { status: 'up' } } }, '/ready on B: up again')
    await sentSoFar(sent.length + 50)

    stopFlow.abort()
    await flow
    t.ok(sent.length >= 200, `${sent.length} messages were acknowledged`)
    t.same(await receiveMessages(recipientSocket, sent.length), sent, 'every one reached the recipient on B, once, in order')
    await assertNothingMore(t, recipientSocket, 'and no second copy')
  })

  t.test('shutting both nodes down closes their sockets with 1001 and leaves no cluster key in Redis', async (t) => {
    const { a, b, options } = await twoNodes(t, backends)
    const alice = await createUser(a.app, 'Alice')
    const bob = await createUser(a.app, 'Bob')
    const onA = await online(t, a, alice)
    const onB = await online(t, b, bob)
    await sendMessages(onA, alice.id, [{ to: bob.id, text: 'bye' }])
    await receiveMessages(onB, 1)
    const redis = new Redis(backends.redisUrl)
    t.teardown(() => redis.quit())
    const prefix = options.redisKeyPrefix
    t.ok((await scanKeys(redis, `${prefix}cluster:*`)).length > 0, 'the cluster keeps keys while it runs')

    await a.app.close()
    t.equal((await onA.closed()).code, 1001, 'A\'s sockets close with 1001')
    t.ok(await isOnline(b, bob, bob.id), 'B still has its user online')
    t.notOk(await isOnline(b, bob, alice.id), 'and A\'s user offline at once')
    await b.app.close()
    t.equal((await onB.closed()).code, 1001, 'B\'s sockets too')

    const left = (await scanKeys(redis, `${prefix}*`)).map((key) => key.slice(prefix.length)).sort()
    t.comment(`keys left under the prefix: ${left.join(', ') || 'none'}`)
    t.same(left.filter((key) => key.startsWith('cluster:')), [], 'no presence or routing key')
    t.same(left.filter((key) => /^node:\d+$/.test(key)), [], 'no node id lease')
  })
})

test('a node killed with SIGKILL: another node takes its users offline once its presence expires', async (t) => {
  const backends = realBackends()
  if ('skip' in backends) return t.plan(0, backends.skip)
  const options = await clusterOptions(t, backends)
  const inProcess = await listen(t, options)
  const killed = await startServerProcess(t, {
    MYSQL_URL: options.mysqlUrl,
    REDIS_URL: backends.redisUrl,
    REDIS_KEY_PREFIX: options.redisKeyPrefix,
    JWT_SECRET: TEST_JWT_SECRET,
    PRESENCE_TTL: String(PRESENCE_TTL),
    BCRYPT_COST: '4'
  })

  const watcher = await createUser(inProcess.app, 'Watcher')
  const user = await createUser(inProcess.app, 'On the child')
  const eyes = await online(t, inProcess, watcher)
  eyes.send({ type: 'watch', users: [user.id] })
  t.same(await nextPresence(eyes), { userId: user.id, online: false })
  await online(t, killed, user)
  t.same(await nextPresence(eyes), { userId: user.id, online: true }, 'the watcher on the other node sees them come online')
  t.same((await onlinePage(inProcess, watcher)).users.map(({ id }) => id), [watcher.id, user.id], 'listed online by the in-process node')

  killed.child.kill('SIGKILL')
  await killed.exited
  // Deadline generous on purpose: the TTL is 2 s; the design promises 30 s at the default TTL.
  await until('the killed node\'s user is off the online list', async () => !(await onlinePage(inProcess, watcher)).users.some(({ id }) => id === user.id), 30_000)
  t.pass('the user is gone from GET /users/online')
  t.same(await nextPresence(eyes), { userId: user.id, online: false }, 'and the watcher got presence offline')
  t.equal(await isOnline(inProcess, watcher, user.id), false)
})
