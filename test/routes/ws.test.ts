import { test, type Test } from 'tap'
import {
  call, connectWs, createUser, jwtClaims, listen, onBothBackends,
  type ServerFrame, type TestUser, type WsClient
} from '../helper.js'

/** A connected client whose welcome frame has been read. */
async function online (t: Test, wsUrl: string, user: TestUser, token = user.accessToken): Promise<WsClient> {
  const client = await connectWs(t, wsUrl, { token })
  const welcome = await client.nextJson()
  t.equal(welcome.type, 'welcome', 'the first frame is the welcome')
  return client
}

/** The socket still answers: a ping gets a pong as the very next frame. */
async function assertAlive (t: Test, client: WsClient, message = 'socket still answers'): Promise<void> {
  client.send({ type: 'ping' })
  t.same(await client.nextJson(), { type: 'pong' }, message)
}

/** Checks a delivered message frame, given the server id its sender was acknowledged with. */
function assertMessage (t: Test, frame: ServerFrame, expected: { id: string, from: number, to: number, text: string }): void {
  const { sentAt, ...rest } = frame
  t.same(rest, { type: 'message', ...expected }, 'message frame carries id, from, to and text')
  t.type(sentAt, 'string')
  t.equal(new Date(String(sentAt)).toISOString(), sentAt, 'sentAt is ISO 8601')
}

for (const via of ['header', 'query'] as const) {
  test(`connecting with the token in the ${via === 'header' ? 'Authorization header' : '?token= parameter'} gets a welcome`, async (t) => {
    const { app, wsUrl } = await listen(t)
    const alice = await createUser(app, 'Alice')
    const client = await connectWs(t, wsUrl, { token: alice.accessToken, via })
    const welcome = await client.nextJson()
    const me = await call<Record<string, unknown>>(app, { method: 'GET', url: '/users/me', headers: { authorization: `Bearer ${alice.accessToken}` } })
    const { email, ...publicUser } = me.body
    t.equal(email, alice.email)
    t.same(welcome, {
      type: 'welcome',
      user: publicUser,
      expiresAt: new Date((jwtClaims(alice.accessToken).exp as number) * 1000).toISOString()
    }, 'welcome has the public user and when the token expires')
    t.notOk('email' in (welcome.user as object), 'the welcome never carries the email')
    t.equal(publicUser.name, 'Alice')
    await assertAlive(t, client, 'ping gets pong')
  })
}

onBothBackends('two users message each other both ways, in the legacy and the JSON format', async (t, options) => {
  const { app, wsUrl } = await listen(t, options)
  const alice = await createUser(app, 'Alice')
  const bob = await createUser(app, 'Bob')
  const a = await online(t, wsUrl, alice)
  const b = await online(t, wsUrl, bob)

  a.send(`${bob.id}:hello: Bob, with a colon`)
  const legacyAck = await a.nextJson()
  t.same(Object.keys(legacyAck).sort(), ['id', 'type'], 'a legacy frame is acknowledged without ref')
  t.equal(legacyAck.type, 'ack')
  assertMessage(t, await b.nextJson(), { id: String(legacyAck.id), from: alice.id, to: bob.id, text: 'hello: Bob, with a colon' })

  b.send(`${alice.id}:hi Alice`)
  const replyAck = await b.nextJson()
  t.equal(replyAck.type, 'ack')
  assertMessage(t, await a.nextJson(), { id: String(replyAck.id), from: bob.id, to: alice.id, text: 'hi Alice' })

  a.send({ type: 'message', to: bob.id, text: 'in JSON', id: 'client-1' })
  const jsonAck = await a.nextJson()
  t.same(jsonAck, { type: 'ack', id: jsonAck.id, ref: 'client-1' }, 'a JSON frame is acknowledged with its id as ref')
  assertMessage(t, await b.nextJson(), { id: String(jsonAck.id), from: alice.id, to: bob.id, text: 'in JSON' })

  // A client cannot speak for someone else: `from` is taken from the token.
  b.send({ type: 'message', to: alice.id, text: 'spoofed?', id: 'client-2', from: alice.id })
  const spoofAck = await b.nextJson()
  t.same(spoofAck, { type: 'ack', id: spoofAck.id, ref: 'client-2' })
  assertMessage(t, await a.nextJson(), { id: String(spoofAck.id), from: bob.id, to: alice.id, text: 'spoofed?' })

  const ids = [legacyAck.id, replyAck.id, jsonAck.id, spoofAck.id]
  t.equal(new Set(ids).size, ids.length, 'every message has its own server id')
  await assertAlive(t, a)
  await assertAlive(t, b)
})

onBothBackends('every device of the recipient and of the sender gets the message; the sending socket only the ack', async (t, options) => {
  const { app, wsUrl } = await listen(t, options)
  const alice = await createUser(app, 'Alice')
  const bob = await createUser(app, 'Bob')
  const alicePhone = await online(t, wsUrl, alice)
  const aliceLaptop = await online(t, wsUrl, alice)
  const bobPhone = await online(t, wsUrl, bob)
  const bobLaptop = await online(t, wsUrl, bob)

  alicePhone.send({ type: 'message', to: bob.id, text: 'to all your devices', id: 'm1' })
  const ack = await alicePhone.nextJson()
  t.same(ack, { type: 'ack', id: ack.id, ref: 'm1' })
  const expected = { id: String(ack.id), from: alice.id, to: bob.id, text: 'to all your devices' }
  const onBobPhone = await bobPhone.nextJson()
  const onBobLaptop = await bobLaptop.nextJson()
  const onAliceLaptop = await aliceLaptop.nextJson()
  assertMessage(t, onBobPhone, expected)
  t.same(onBobLaptop, onBobPhone, 'the second device gets the same frame')
  t.same(onAliceLaptop, onBobPhone, "the sender's other device sees the message too")
  // The server writes copies before the ack, so a pong right after the ack proves no copy came to the sender.
  await assertAlive(t, alicePhone, 'the sending socket got the ack and nothing else')

  bobLaptop.send(`${alice.id}:back to you`)
  const replyAck = await bobLaptop.nextJson()
  t.equal(replyAck.type, 'ack')
  const reply = { id: String(replyAck.id), from: bob.id, to: alice.id, text: 'back to you' }
  assertMessage(t, await alicePhone.nextJson(), reply)
  assertMessage(t, await aliceLaptop.nextJson(), reply)
  assertMessage(t, await bobPhone.nextJson(), reply)
  await assertAlive(t, bobLaptop, 'the replying socket got the ack and nothing else')
})

onBothBackends('a message to a user with no socket is acknowledged and waits for them; an id with no account is UNKNOWN_USER', async (t, options) => {
  const { app, wsUrl } = await listen(t, options)
  const alice = await createUser(app, 'Alice')
  const bob = await createUser(app, 'Bob')
  const a = await online(t, wsUrl, alice)
  const noSuchUser = bob.id + 1_000_000

  a.send(`${bob.id}:are you there?`)
  const legacyAck = await a.nextJson()
  t.same(Object.keys(legacyAck).sort(), ['id', 'type'], 'a legacy message to an offline user is acknowledged')
  t.equal(legacyAck.type, 'ack')
  a.send({ type: 'message', to: bob.id, text: 'are you there? (JSON)', id: 'r1' })
  const jsonAck = await a.nextJson()
  t.same(jsonAck, { type: 'ack', id: jsonAck.id, ref: 'r1' }, 'so is a JSON one, with its ref')
  await assertAlive(t, a)

  a.send(`${noSuchUser}:anyone?`)
  t.same(await a.nextJson(), { type: 'error', code: 'UNKNOWN_USER', message: `user ${noSuchUser} does not exist` })
  a.send({ type: 'message', to: noSuchUser, text: 'anyone?', id: 'r2' })
  t.same(await a.nextJson(), { type: 'error', code: 'UNKNOWN_USER', message: `user ${noSuchUser} does not exist`, ref: 'r2' })
  await assertAlive(t, a)

  // Bob connects: what waited comes first, in order, then live messages.
  const b = await online(t, wsUrl, bob)
  assertMessage(t, await b.nextJson(), { id: String(legacyAck.id), from: alice.id, to: bob.id, text: 'are you there?' })
  assertMessage(t, await b.nextJson(), { id: String(jsonAck.id), from: alice.id, to: bob.id, text: 'are you there? (JSON)' })
  a.send(`${bob.id}:now you are`)
  const ack = await a.nextJson()
  t.equal(ack.type, 'ack')
  assertMessage(t, await b.nextJson(), { id: String(ack.id), from: alice.id, to: bob.id, text: 'now you are' })
  await assertAlive(t, b, 'the message that waited came once')
})

test('a ?format=text receiver gets "<senderId>:<text>" and nothing else', async (t) => {
  const { app, wsUrl } = await listen(t)
  const alice = await createUser(app, 'Alice')
  const bob = await createUser(app, 'Bob')
  const a = await online(t, wsUrl, alice)
  const legacy = await connectWs(t, wsUrl, { token: bob.accessToken, format: 'text' })

  // Nothing comes back for these (no welcome, no pong, no ack); the message to Alice
  // proves the server handled them, and Bob's first frame below proves nothing came before it.
  legacy.send('{"type":"ping"}')
  legacy.send(`${alice.id}:sent in text mode`)
  const fromText = await a.nextJson()
  t.equal(fromText.type, 'message')
  t.equal(fromText.from, bob.id)
  t.equal(fromText.text, 'sent in text mode')

  a.send(`${bob.id}:plain: text`)
  t.equal((await a.nextJson()).type, 'ack')
  t.equal(await legacy.next(), `${alice.id}:plain: text`, 'legacy line with the sender id from the token')
  a.send({ type: 'message', to: bob.id, text: 'from JSON', id: 'x', from: 999 })
  t.equal((await a.nextJson()).type, 'ack')
  t.equal(await legacy.next(), `${alice.id}:from JSON`, 'a JSON-sent message reaches a text receiver as a legacy line')

  legacy.send('no colon here')
  t.equal(await legacy.next(), 'error:BAD_FORMAT', 'errors are "error:<CODE>"')
  legacy.send({ type: 'message', to: 'x', text: 'y', id: 'r' })
  t.equal(await legacy.next(), 'error:BAD_RECEIVER')
  legacy.send('{oops')
  t.equal(await legacy.next(), 'error:BAD_JSON')
})

test('ping gets pong, as often as asked', async (t) => {
  const { app, wsUrl } = await listen(t)
  const alice = await createUser(app, 'Alice')
  const client = await online(t, wsUrl, alice)
  for (let round = 0; round < 3; round++) client.send({ type: 'ping' })
  for (let round = 0; round < 3; round++) t.same(await client.nextJson(), { type: 'pong' })
})

test('50 messages sent at once arrive in order, each exactly once, and are acknowledged in order', async (t) => {
  const { app, wsUrl } = await listen(t)
  const alice = await createUser(app, 'Alice')
  const bob = await createUser(app, 'Bob')
  const a = await online(t, wsUrl, alice)
  const b = await online(t, wsUrl, bob)
  const count = 50

  for (let index = 0; index < count; index++) {
    if (index % 2 === 0) a.send(`${bob.id}:message ${index}`)
    else a.send({ type: 'message', to: bob.id, text: `message ${index}`, id: `ref-${index}` })
  }
  const acks: ServerFrame[] = []
  const received: ServerFrame[] = []
  for (let index = 0; index < count; index++) acks.push(await a.nextJson())
  for (let index = 0; index < count; index++) received.push(await b.nextJson())

  t.same(acks.map((ack) => ack.ref), Array.from({ length: count }, (_, index) => index % 2 === 0 ? undefined : `ref-${index}`), 'acks come in sending order')
  t.ok(acks.every((ack) => ack.type === 'ack'))
  t.same(received.map((frame) => frame.text), Array.from({ length: count }, (_, index) => `message ${index}`), 'messages arrive in sending order')
  t.same(received.map((frame) => frame.id), acks.map((ack) => ack.id), 'each message has the id its ack announced')
  const ids = acks.map((ack) => BigInt(String(ack.id)))
  t.equal(new Set(ids).size, count, 'ids are unique')
  t.ok(ids.every((id, index) => index === 0 || id > (ids[index - 1] as bigint)), 'ids grow in sending order')
  // Nothing more is on the way: a ping round-trip on each side comes back first.
  await assertAlive(t, a, 'no extra frame for the sender')
  await assertAlive(t, b, 'no duplicate for the recipient')
})
