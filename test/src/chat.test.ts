import { test, type Test } from 'tap'
import { createAccessTokens, type AccessTokenIdentity } from '../../src/access-tokens.js'
import { createChat, type Socket } from '../../src/chat.js'
import { createConnectionRegistry } from '../../src/connections.js'
import { createIdGenerator } from '../../src/ids.js'
import type { OutputFormat } from '../../src/protocol.js'
import type { PublicUser } from '../../src/schemas.js'
import { pluginJwt } from '../helper.js'

const accessTokens = createAccessTokens({ jwt: pluginJwt(), ttlSeconds: 900 })

interface Close { code: number, reason: string }

/** A socket that records what the chat does to it. Not a backend: the real `ws` socket is tested in test/routes. */
interface FakeSocket extends Socket {
  sent: string[]
  closes: Close[]
  /** Resolves once `count` frames have been sent in all. */
  sentCount (count: number): Promise<string[]>
  /** Resolves on the first close. */
  closed: Promise<Close>
}

function fakeSocket (): FakeSocket {
  const waiting: Array<{ count: number, resolve: (sent: string[]) => void }> = []
  let onClose: (close: Close) => void = () => {}
  const socket: FakeSocket = {
    sent: [],
    closes: [],
    closed: new Promise((resolve) => { onClose = resolve }),
    send (data) {
      socket.sent.push(data)
      for (const waiter of waiting.filter(({ count }) => socket.sent.length >= count)) {
        waiting.splice(waiting.indexOf(waiter), 1)
        waiter.resolve(socket.sent)
      }
    },
    close (code, reason) {
      socket.closes.push({ code, reason })
      onClose({ code, reason })
    },
    async sentCount (count) {
      if (socket.sent.length >= count) return socket.sent
      return new Promise((resolve) => waiting.push({ count, resolve }))
    }
  }
  return socket
}

function publicUser (id: number): PublicUser {
  return { id, name: `User ${id}`, avatarUrl: null, createdAt: '2025-01-01T00:00:00.000Z' }
}

function frames (socket: FakeSocket): Array<Record<string, unknown>> {
  return socket.sent.map((data) => JSON.parse(data) as Record<string, unknown>)
}

/** Lets every queued promise callback and timer-free continuation run. */
async function settled (): Promise<void> {
  await new Promise((resolve) => setImmediate(resolve))
}

interface SetupOptions {
  userExists?: (userId: number) => Promise<boolean>
  /** Sessions that have ended (logged out); every other session is live. */
  endedSessions?: string[]
  messageRate?: number
  messageBurst?: number
}

function setup (t: Test, { userExists = async () => true, endedSessions = [], messageRate = 1000, messageBurst = 1000 }: SetupOptions = {}) {
  const registry = createConnectionRegistry()
  const errors: unknown[] = []
  const asked: number[] = []
  const chat = createChat({
    registry,
    userExists: (userId) => {
      asked.push(userId)
      return userExists(userId)
    },
    verifyAccessToken: accessTokens.verify,
    isSessionLive: async (sessionId) => !endedSessions.includes(sessionId),
    nextMessageId: createIdGenerator({ nodeId: 1 }).next,
    limits: { messageMaxChars: 4000, messageRate, messageBurst },
    onError: (error) => { errors.push(error) }
  })

  function connect (userId: number, { format = 'json', identity, keepWelcome = false }: {
    format?: OutputFormat, identity?: AccessTokenIdentity, keepWelcome?: boolean
  } = {}) {
    const socket = fakeSocket()
    const session = chat.open(socket, {
      user: publicUser(userId),
      identity: identity ?? accessTokens.verify(accessTokens.issue(userId, `session-of-${userId}`).token),
      format
    })
    // Stops the expiry timer of a session the test left open.
    t.teardown(() => session.closed())
    if (!keepWelcome) socket.sent.length = 0
    return {
      socket,
      session,
      send: (frame: string | object) => session.receive(Buffer.from(typeof frame === 'string' ? frame : JSON.stringify(frame)), false)
    }
  }

  return { chat, registry, errors, asked, connect }
}

test('a JSON session is welcomed with its user and expiry', async (t) => {
  const { connect, registry } = setup(t)
  const identity: AccessTokenIdentity = { userId: 7, sessionId: 's', expiresAt: Date.UTC(2099, 0, 1) }
  const { socket } = connect(7, { identity, keepWelcome: true })
  t.strictSame(frames(socket), [{ type: 'welcome', user: publicUser(7), expiresAt: '2099-01-01T00:00:00.000Z' }])
  t.equal(registry.isOnline(7), true, 'and registered')
})

test('a message reaches every connection of the recipient in its format, the sender\'s other devices, and an ack the sender', async (t) => {
  const { connect } = setup(t)
  const alicePhone = connect(1)
  const aliceLaptop = connect(1, { format: 'text' })
  const aliceTablet = connect(1)
  const bobJson = connect(2)
  const bobText = connect(2, { format: 'text' })

  alicePhone.send({ type: 'message', to: 2, text: 'hi: there', id: 'ref-1' })

  const [delivered] = frames(bobJson.socket)
  t.match(delivered, { type: 'message', from: 1, to: 2, text: 'hi: there' })
  t.strictSame(Object.keys(delivered ?? {}).sort(), ['from', 'id', 'sentAt', 'text', 'to', 'type'])
  t.match(delivered?.id, /^[1-9]\d*$/, 'a decimal server id')
  t.equal(new Date(delivered?.sentAt as string).toISOString(), delivered?.sentAt, 'sentAt is ISO 8601')
  t.equal(bobJson.socket.sent.length, 1, 'once per connection')
  t.strictSame(bobText.socket.sent, ['1:hi: there'], 'text format: "from:text"')
  t.strictSame(aliceTablet.socket.sent, bobJson.socket.sent, 'the sender\'s other JSON device sees the same message')
  t.strictSame(aliceLaptop.socket.sent, ['1:hi: there'], 'and the text one in its format')
  t.strictSame(frames(alicePhone.socket), [{ type: 'ack', id: delivered?.id, ref: 'ref-1' }], 'only the sending connection gets the ack')
})

test('a legacy frame is a message, acked without a ref', async (t) => {
  const { connect } = setup(t)
  const alice = connect(1)
  const bob = connect(2)
  alice.send('2:  hello:world\n')
  const [delivered] = frames(bob.socket)
  t.match(delivered, { type: 'message', from: 1, to: 2, text: '  hello:world\n' })
  t.strictSame(frames(alice.socket), [{ type: 'ack', id: delivered?.id }])
})

test('from is the session\'s user, never the client\'s', async (t) => {
  const { connect } = setup(t)
  const alice = connect(1)
  const bob = connect(2)
  alice.send({ type: 'message', to: 2, text: 'it is me, Carol', from: 3 })
  t.match(frames(bob.socket), [{ type: 'message', from: 1 }])
})

test('a message to oneself reaches one\'s other devices once', async (t) => {
  const { connect } = setup(t)
  const phone = connect(1)
  const laptop = connect(1)
  phone.send('1:note to self')
  t.match(frames(laptop.socket), [{ type: 'message', from: 1, to: 1, text: 'note to self' }])
  t.equal(laptop.socket.sent.length, 1)
  t.match(frames(phone.socket), [{ type: 'ack' }])
})

test('message ids increase', async (t) => {
  const { connect } = setup(t)
  const alice = connect(1)
  const bob = connect(2)
  for (let i = 0; i < 5; i++) alice.send(`2:${i}`)
  const ids = frames(bob.socket).map((frame) => BigInt(frame.id as string))
  t.ok(ids.every((id, index) => index === 0 || id > (ids[index - 1] as bigint)))
})

test('an offline user that exists is USER_OFFLINE, one that does not UNKNOWN_USER', async (t) => {
  const { connect, asked } = setup(t, { userExists: async (userId) => userId === 3 })
  const alice = connect(1)
  alice.send({ type: 'message', to: 3, text: 'hi', id: 'r3' })
  alice.send({ type: 'message', to: 4, text: 'hi', id: 'r4' })
  await alice.socket.sentCount(2)
  t.match(frames(alice.socket), [
    { type: 'error', code: 'USER_OFFLINE', ref: 'r3', message: String },
    { type: 'error', code: 'UNKNOWN_USER', ref: 'r4', message: String }
  ])
  t.strictSame(asked, [3, 4])
  t.strictSame(alice.socket.closes, [], 'the socket stays open')
})

test('an online recipient is not looked up', async (t) => {
  const { connect, asked } = setup(t)
  const alice = connect(1)
  connect(2)
  alice.send('2:hi')
  t.strictSame(asked, [])
})

test('frames are answered in order, even when one waits for the user store', async (t) => {
  let answer: (exists: boolean) => void = () => {}
  const { connect } = setup(t, { userExists: () => new Promise((resolve) => { answer = resolve }) })
  const alice = connect(1)
  const bob = connect(2)
  alice.send({ type: 'message', to: 3, text: 'are you there?', id: 'offline' })
  alice.send({ type: 'message', to: 2, text: 'hello bob', id: 'online' })
  alice.send({ type: 'ping' })
  // Give wrongly unqueued work the chance to run before the store answers.
  await settled()
  t.strictSame(alice.socket.sent, [], 'nothing answered while the first frame waits')
  t.strictSame(bob.socket.sent, [], 'nothing delivered ahead of it')
  answer(true)
  await alice.socket.sentCount(3)
  t.match(frames(alice.socket), [
    { type: 'error', code: 'USER_OFFLINE', ref: 'offline' },
    { type: 'ack', ref: 'online' },
    { type: 'pong' }
  ])
  t.match(frames(bob.socket), [{ type: 'message', text: 'hello bob' }])
})

test('too many frames are RATE_LIMITED and the socket stays open', async (t) => {
  const { connect } = setup(t, { messageRate: 0.001, messageBurst: 3 })
  const alice = connect(1)
  const bob = connect(2)
  for (let i = 1; i <= 5; i++) alice.send(`2:message ${i}`)
  t.equal(bob.socket.sent.length, 3, 'the burst got through, the rest did not')
  t.match(frames(alice.socket), [
    { type: 'ack' }, { type: 'ack' }, { type: 'ack' },
    { type: 'error', code: 'RATE_LIMITED' }, { type: 'error', code: 'RATE_LIMITED' }
  ])
  t.strictSame(alice.socket.closes, [])
})

test('a binary frame is BAD_FORMAT', async (t) => {
  const { connect } = setup(t)
  const alice = connect(1)
  const bob = connect(2)
  alice.session.receive(Buffer.from('2:hi'), true)
  t.match(frames(alice.socket), [{ type: 'error', code: 'BAD_FORMAT' }])
  t.strictSame(bob.socket.sent, [], 'not delivered though its bytes read as a message')
  t.strictSame(alice.socket.closes, [])
})

test('fragmented and ArrayBuffer text frames are read as UTF-8', async (t) => {
  const { connect } = setup(t)
  const alice = connect(1)
  const bob = connect(2, { format: 'text' })
  const bytes = Buffer.from('2:h\u00e9llo \u{1F600}')
  alice.session.receive([bytes.subarray(0, 4), bytes.subarray(4)], false)
  alice.session.receive(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length), false)
  t.strictSame(bob.socket.sent, ['1:h\u00e9llo \u{1F600}', '1:h\u00e9llo \u{1F600}'])
})

test('ping gets pong', async (t) => {
  const { connect } = setup(t)
  const alice = connect(1)
  alice.send({ type: 'ping' })
  t.strictSame(frames(alice.socket), [{ type: 'pong' }])
})

test('bad frames get their error codes, carrying the ref, and never close the socket', async (t) => {
  const { connect } = setup(t)
  const alice = connect(1)
  alice.send({ type: 'message', to: '2', text: 'hi', id: 'r' })
  alice.send('{"type":')
  alice.send('no colon here')
  alice.send({ type: 'shout' })
  alice.send({ type: 'message', to: 2, text: 'x'.repeat(4001), id: 'long' })
  alice.send({ type: 'watch', users: [2] })
  t.match(frames(alice.socket), [
    { type: 'error', code: 'BAD_RECEIVER', ref: 'r' },
    { type: 'error', code: 'BAD_JSON' },
    { type: 'error', code: 'BAD_FORMAT' },
    { type: 'error', code: 'UNKNOWN_TYPE' },
    { type: 'error', code: 'TOO_LONG', ref: 'long' },
    { type: 'error', code: 'UNKNOWN_TYPE' }
  ])
  t.strictSame(alice.socket.closes, [])
})

test('a text-format session gets only "from:text" and "error:CODE"', async (t) => {
  const { connect } = setup(t, { userExists: async () => false })
  const alice = connect(1, { format: 'text', keepWelcome: true })
  const bob = connect(2)
  t.strictSame(alice.socket.sent, [], 'no welcome')
  alice.send('2:hi bob')
  alice.send({ type: 'ping' })
  alice.send({ type: 'refresh', token: accessTokens.issue(1, 'session-of-1').token })
  await settled()
  t.strictSame(alice.socket.sent, [], 'no ack, no pong, no welcome after refresh')
  t.match(frames(bob.socket), [{ type: 'message', from: 1, text: 'hi bob' }], 'though the message went out')
  bob.send('1:hi alice')
  alice.send('no colon')
  alice.send('9:anyone?')
  await alice.socket.sentCount(3)
  t.strictSame(alice.socket.sent, ['2:hi alice', 'error:BAD_FORMAT', 'error:UNKNOWN_USER'])
})

test('refresh with a token of the same user sends a new welcome with the new expiry', async (t) => {
  const { connect } = setup(t)
  const soon = Date.now() + 60_000
  const alice = connect(1, { identity: { userId: 1, sessionId: 'session-of-1', expiresAt: soon } })
  const next = accessTokens.issue(1, 'session-of-1').token
  const nextExpiry = accessTokens.verify(next).expiresAt
  alice.send({ type: 'refresh', token: next })
  await alice.socket.sentCount(1)
  t.strictSame(frames(alice.socket), [{ type: 'welcome', user: publicUser(1), expiresAt: new Date(nextExpiry).toISOString() }])
  t.not(new Date(nextExpiry).toISOString(), new Date(soon).toISOString())
})

test('a refresh before expiry keeps the socket open past the old expiry', async (t) => {
  const { connect } = setup(t)
  const alice = connect(1, { identity: { userId: 1, sessionId: 'session-of-1', expiresAt: Date.now() + 30 } })
  alice.send({ type: 'refresh', token: accessTokens.issue(1, 'session-of-1').token })
  // Waiting for something that must not happen: well past the old 30 ms expiry, bounded.
  await new Promise((resolve) => setTimeout(resolve, 150))
  t.strictSame(alice.socket.closes, [])
})

test('refresh with another user\'s token closes with 1008', async (t) => {
  const { connect } = setup(t)
  const alice = connect(1)
  alice.send({ type: 'refresh', token: accessTokens.issue(2, 'session-of-2').token })
  t.match(await alice.socket.closed, { code: 1008 })
  t.strictSame(alice.socket.sent, [], 'and no welcome')
})

test('refresh with a token of an ended session is an error and changes nothing', async (t) => {
  const { connect } = setup(t, { endedSessions: ['logged-out'] })
  const alice = connect(1, { identity: { userId: 1, sessionId: 'session-of-1', expiresAt: Date.now() + 60_000 } })
  alice.send({ type: 'refresh', token: accessTokens.issue(1, 'logged-out').token })
  await alice.socket.sentCount(1)
  t.match(frames(alice.socket), [{ type: 'error', code: 'BAD_FORMAT', message: /session/ }])
  t.equal(alice.session.connection.sessionId, 'session-of-1', 'the socket stays in its own session')
  t.strictSame(alice.socket.closes, [])
})

test('refresh with an invalid token is an error and keeps the socket', async (t) => {
  const { connect } = setup(t)
  const alice = connect(1)
  alice.send({ type: 'refresh', token: 'not.a.token' })
  const foreign = createAccessTokens({ jwt: pluginJwt({ secret: 'another-key-that-is-also-32-bytes-long' }), ttlSeconds: 900 })
  alice.send({ type: 'refresh', token: foreign.issue(1, 'session-of-1').token })
  await alice.socket.sentCount(2)
  t.match(frames(alice.socket), [{ type: 'error', code: 'BAD_FORMAT' }, { type: 'error', code: 'BAD_FORMAT' }])
  t.strictSame(alice.socket.closes, [])
})

test('an expiring access token closes the socket with 4001', async (t) => {
  const { connect } = setup(t)
  const alice = connect(1, { identity: { userId: 1, sessionId: 'session-of-1', expiresAt: Date.now() + 20 } })
  t.strictSame(alice.socket.closes, [], 'open until then')
  // The expiry timer is unref'd (it must never hold a server open), so something else keeps this process alive meanwhile.
  const keepAlive = setInterval(() => {}, 1000)
  t.teardown(() => clearInterval(keepAlive))
  t.match(await alice.socket.closed, { code: 4001 })
})

test('a session opened with an already expired token closes at once with 4001', async (t) => {
  const { connect } = setup(t)
  const alice = connect(1, { identity: { userId: 1, sessionId: 'session-of-1', expiresAt: Date.now() - 1 } })
  t.strictSame(alice.socket.closes.map(({ code }) => code), [4001])
})

test('closed() removes the connection from the registry and stops it', async (t) => {
  const { connect, registry } = setup(t, { userExists: async () => true })
  const alice = connect(1)
  const bob = connect(2)
  bob.session.closed()
  t.equal(registry.isOnline(2), false)
  t.equal(registry.connectionCount, 1)
  alice.send('2:still there?')
  await alice.socket.sentCount(1)
  t.match(frames(alice.socket), [{ type: 'error', code: 'USER_OFFLINE' }])
  bob.send('1:from beyond')
  await settled()
  t.strictSame(alice.socket.sent.length, 1, 'a closed session sends nothing')
  bob.session.closed()
  t.equal(registry.connectionCount, 1, 'closing twice is harmless')
})

test('a failing user store reports the error and closes with 1011', async (t) => {
  const failure = new Error('database is down')
  const { connect, errors } = setup(t, { userExists: async () => { throw failure } })
  const alice = connect(1)
  alice.send('3:hello?')
  t.match(await alice.socket.closed, { code: 1011 })
  t.strictSame(errors, [failure])
  t.strictSame(alice.socket.sent, [], 'no answer to the frame')
})
