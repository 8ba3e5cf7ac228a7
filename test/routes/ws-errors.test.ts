import { test, type Test } from 'tap'
import type { SwitchboardOptions } from '../../src/app.js'
import { connectWs, createUser, listen, type TestUser, type WsClient } from '../helper.js'

/** Alice and Bob, both connected with their welcome read. */
async function pair (t: Test, options: SwitchboardOptions = {}): Promise<{ alice: TestUser, bob: TestUser, a: WsClient, b: WsClient }> {
  const { app, wsUrl } = await listen(t, options)
  const alice = await createUser(app, 'Alice')
  const bob = await createUser(app, 'Bob')
  const a = await connectWs(t, wsUrl, { token: alice.accessToken })
  const b = await connectWs(t, wsUrl, { token: bob.accessToken })
  t.equal((await a.nextJson()).type, 'welcome')
  t.equal((await b.nextJson()).type, 'welcome')
  return { alice, bob, a, b }
}

/**
 * Sends `frame`, expects exactly that error (with `ref` when given), then a
 * ping round-trip: the socket stays open and nothing else was sent.
 */
async function expectError (t: Test, client: WsClient, frame: string | Buffer | object, code: string, ref?: string): Promise<void> {
  const label = Buffer.isBuffer(frame) ? `binary frame of ${frame.length} bytes` : JSON.stringify(frame)
  client.send(frame)
  const error = await client.nextJson()
  t.equal(error.type, 'error', `${label} gets an error`)
  t.equal(error.code, code, `${label} is ${code}`)
  t.type(error.message, 'string')
  if (ref === undefined) t.notOk('ref' in error, `${label}: no ref`)
  else t.equal(error.ref, ref, `${label}: ref ${ref}`)
  t.same(Object.keys(error).filter((key) => !['type', 'code', 'message', 'ref'].includes(key)), [], 'no other fields')
  client.send({ type: 'ping' })
  t.same(await client.nextJson(), { type: 'pong' }, `${label}: the socket stays open`)
}

test('BAD_FORMAT: no colon, empty text, binary frames, non-object JSON, a bad id', async (t) => {
  const { bob, a, b } = await pair(t)
  await expectError(t, a, 'just some words', 'BAD_FORMAT')
  await expectError(t, a, `${bob.id}:`, 'BAD_FORMAT')
  await expectError(t, a, Buffer.from(`${bob.id}:binary`), 'BAD_FORMAT')
  await expectError(t, a, '[1,2]', 'BAD_FORMAT')
  await expectError(t, a, 'null', 'BAD_FORMAT')
  await expectError(t, a, { type: 'message', to: bob.id, text: '', id: 'e1' }, 'BAD_FORMAT', 'e1')
  await expectError(t, a, { type: 'message', to: bob.id, id: 'e2' }, 'BAD_FORMAT', 'e2')
  await expectError(t, a, { type: 'message', to: bob.id, text: 42, id: 'e3' }, 'BAD_FORMAT', 'e3')
  await expectError(t, a, { type: 'message', to: bob.id, text: 'x', id: 7 }, 'BAD_FORMAT')
  await expectError(t, a, { type: 'message', to: bob.id, text: 'x', id: 'r'.repeat(129) }, 'BAD_FORMAT')
  await expectError(t, a, { type: 'refresh' }, 'BAD_FORMAT')
  await expectError(t, a, { type: 'refresh', token: 'not-a-jwt' }, 'BAD_FORMAT')
  // None of these reached Bob: his next frame is his own pong.
  b.send({ type: 'ping' })
  t.same(await b.nextJson(), { type: 'pong' }, 'nothing was delivered')
})

test('BAD_JSON: a frame that starts with { but is not JSON', async (t) => {
  const { a } = await pair(t)
  await expectError(t, a, '{not json', 'BAD_JSON')
  await expectError(t, a, '{"type":"message","to":2,"text":"cut', 'BAD_JSON')
  await expectError(t, a, '{', 'BAD_JSON')
  await expectError(t, a, '{"type":"ping"} trailing', 'BAD_JSON')
})

test('BAD_RECEIVER: anything but a positive decimal user id', async (t) => {
  const { bob, a } = await pair(t)
  for (const receiver of ['-1', '0', '0x1', '1e3', '+1', ' 1', '1.0', 'abc', '', '99999999999999999']) {
    await expectError(t, a, `${receiver}:x`, 'BAD_RECEIVER')
  }
  await expectError(t, a, { type: 'message', to: String(bob.id), text: 'x', id: 'b1' }, 'BAD_RECEIVER', 'b1')
  await expectError(t, a, { type: 'message', to: 0, text: 'x', id: 'b2' }, 'BAD_RECEIVER', 'b2')
  await expectError(t, a, { type: 'message', to: -1, text: 'x' }, 'BAD_RECEIVER')
  await expectError(t, a, { type: 'message', to: 1.5, text: 'x' }, 'BAD_RECEIVER')
  await expectError(t, a, { type: 'message', to: null, text: 'x' }, 'BAD_RECEIVER')
  await expectError(t, a, { type: 'message', text: 'x', id: 'b3' }, 'BAD_RECEIVER', 'b3')
  await expectError(t, a, '{"type":"message","to":9007199254740993,"text":"x"}', 'BAD_RECEIVER')
})

test('UNKNOWN_USER carries the ref of a JSON frame; a user with no socket is no error', async (t) => {
  const { app, wsUrl } = await listen(t)
  const alice = await createUser(app, 'Alice')
  const carol = await createUser(app, 'Carol')
  const a = await connectWs(t, wsUrl, { token: alice.accessToken })
  t.equal((await a.nextJson()).type, 'welcome')
  await expectError(t, a, `${carol.id + 1000}:hello`, 'UNKNOWN_USER')
  await expectError(t, a, { type: 'message', to: carol.id + 1000, text: 'hello', id: 'u1' }, 'UNKNOWN_USER', 'u1')
  // Carol has never connected: her messages wait for her (USER_OFFLINE is no longer sent).
  a.send({ type: 'message', to: carol.id, text: 'hello', id: 'o1' })
  const ack = await a.nextJson()
  t.same(ack, { type: 'ack', id: ack.id, ref: 'o1' }, 'a message to an offline user is acknowledged with its ref')
})

test('TOO_LONG: text over messageMaxChars, counted in characters', async (t) => {
  const { alice, bob, a, b } = await pair(t, { messageMaxChars: 10 })
  await expectError(t, a, `${bob.id}:${'x'.repeat(11)}`, 'TOO_LONG')
  await expectError(t, a, { type: 'message', to: bob.id, text: 'y'.repeat(11), id: 'long' }, 'TOO_LONG', 'long')

  // Exactly the limit passes, also when each character takes two UTF-16 units.
  for (const text of ['z'.repeat(10), '😀'.repeat(10)]) {
    a.send(`${bob.id}:${text}`)
    t.equal((await a.nextJson()).type, 'ack')
    const delivered = await b.nextJson()
    t.equal(delivered.text, text, 'a message of exactly the limit is delivered')
    t.equal(delivered.from, alice.id)
  }
  await expectError(t, a, `${bob.id}:${'😀'.repeat(11)}`, 'TOO_LONG')
})

test('RATE_LIMITED: frames past the burst are refused until the bucket refills', async (t) => {
  const { a } = await pair(t, { wsMessageRate: 1, wsMessageBurst: 3 })
  for (let index = 0; index < 3; index++) a.send({ type: 'ping' })
  a.send({ type: 'message', to: 1, text: 'too soon', id: 'limited' })
  a.send({ type: 'ping' })
  for (let index = 0; index < 3; index++) t.same(await a.nextJson(), { type: 'pong' }, 'the burst goes through')
  const first = await a.nextJson()
  t.same({ type: first.type, code: first.code }, { type: 'error', code: 'RATE_LIMITED' }, 'the fourth frame is refused')
  t.type(first.message, 'string')
  const second = await a.nextJson()
  t.same({ type: second.type, code: second.code }, { type: 'error', code: 'RATE_LIMITED' }, 'and the fifth')

  // The socket stays open: at 1 frame/s a ping is answered again within a few seconds.
  // Refused frames spend no token, so polling does not keep the bucket empty.
  let answer = second
  for (let attempt = 0; attempt < 15 && answer.type !== 'pong'; attempt++) {
    await new Promise((resolve) => setTimeout(resolve, 200))
    a.send({ type: 'ping' })
    answer = await a.nextJson()
    if (answer.type !== 'pong') t.equal(answer.code, 'RATE_LIMITED')
  }
  t.same(answer, { type: 'pong' }, 'a ping is answered once the bucket has refilled')
})

test('UNKNOWN_TYPE: a JSON frame with a type the server does not know, or none', async (t) => {
  const { a } = await pair(t)
  await expectError(t, a, { type: 'shout', text: 'hey' }, 'UNKNOWN_TYPE')
  await expectError(t, a, { text: 'no type' }, 'UNKNOWN_TYPE')
  await expectError(t, a, {}, 'UNKNOWN_TYPE')
  await expectError(t, a, { type: 42 }, 'UNKNOWN_TYPE')
  await expectError(t, a, { type: 'MESSAGE', to: 1, text: 'x' }, 'UNKNOWN_TYPE')
  await expectError(t, a, { type: 'WATCH', users: [1] }, 'UNKNOWN_TYPE')
})

test('a watch of more than 1000 users is BAD_FORMAT, a bad id BAD_RECEIVER; the socket stays open', async (t) => {
  const { a } = await pair(t)
  await expectError(t, a, { type: 'watch', users: Array.from({ length: 1001 }, (_, index) => index + 1) }, 'BAD_FORMAT')
  await expectError(t, a, { type: 'watch', users: [1, 'two'] }, 'BAD_RECEIVER')
  await expectError(t, a, { type: 'watch', users: '1' }, 'BAD_FORMAT')
  a.send({ type: 'ping' })
  t.same(await a.nextJson(), { type: 'pong' })
})

test('a frame over wsMaxPayload closes the socket with 1009; one of exactly the limit is fine', async (t) => {
  const { bob, a, b } = await pair(t, { wsMaxPayload: 1024 })
  const prefix = `${bob.id}:`
  const exactlyTheLimit = prefix + 'x'.repeat(1024 - prefix.length)
  a.send(exactlyTheLimit)
  t.equal((await a.nextJson()).type, 'ack', 'a frame of exactly wsMaxPayload bytes is accepted')
  t.equal((await b.nextJson()).text, exactlyTheLimit.slice(prefix.length))

  a.send(prefix + 'x'.repeat(2000))
  const { code } = await a.closed()
  t.equal(code, 1009, 'closed as too big')
  b.send({ type: 'ping' })
  t.same(await b.nextJson(), { type: 'pong' }, 'other sockets are unaffected')
})
