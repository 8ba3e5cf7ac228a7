import { setImmediate as nextTurn, setTimeout as sleep } from 'node:timers/promises'
import type { FastifyInstance } from 'fastify'
import { test, type Test } from 'tap'
import {
  call, connectWs, createUser, listen, onBothBackends, realBackendOptions, realBackends, receiveMessages, refusedUpgrade,
  sendMessages, type ChatLine, type ServerFrame, type TestUser, type WsClient, type WsConnectOptions
} from '../helper.js'

/** A connected client whose welcome frame has been read. */
async function online (t: Test, wsUrl: string, user: TestUser, options: Omit<WsConnectOptions, 'token'> = {}): Promise<WsClient> {
  const client = await connectWs(t, wsUrl, { ...options, token: user.accessToken })
  t.equal((await client.nextJson()).type, 'welcome', 'the first frame is the welcome')
  return client
}

/**
 * Nothing else is on its way: a ping is answered after any replay and after
 * the messages acknowledged so far were routed, so its pong comes next.
 */
async function assertNothingMore (t: Test, client: WsClient, message: string): Promise<void> {
  client.send({ type: 'ping' })
  t.same(await client.nextJson(), { type: 'pong' }, message)
}

function assertIncreasing (t: Test, ids: readonly string[], message: string): void {
  const numbers = ids.map((id) => BigInt(id))
  t.ok(numbers.every((id, index) => index === 0 || id > (numbers[index - 1] as bigint)), message)
}

/** Waits until the server has handled the close of the user's sockets and stored how far they got. */
async function untilOffline (app: FastifyInstance, userId: number): Promise<void> {
  // The close reaches the server a moment after the client sees it, and no event tells the test when.
  for (let attempt = 0; app.switchboardChat.registry.isOnline(userId); attempt++) {
    if (attempt >= 300) throw new Error(`user ${userId} is still online on the server`)
    await sleep(10)
  }
  await app.switchboardChat.drain()
}

/** The whole conversation through GET /messages, oldest first. */
async function fullHistory (app: FastifyInstance, user: TestUser, peerId: number): Promise<Array<ChatLine & { sentAt: string }>> {
  const pages: Array<Array<ChatLine & { sentAt: string }>> = []
  let before: string | null | undefined
  do {
    const query = new URLSearchParams({ with: String(peerId), limit: '200', ...(before ? { before } : {}) })
    const { statusCode, body } = await call<{ messages: Array<ChatLine & { sentAt: string }>, nextBefore: string | null }>(app, {
      method: 'GET', url: `/messages?${query.toString()}`, headers: { authorization: `Bearer ${user.accessToken}` }
    })
    if (statusCode !== 200) throw new Error(`GET /messages: ${statusCode} ${JSON.stringify(body)}`)
    pages.unshift(body.messages)
    before = body.nextBefore
  } while (before !== null)
  return pages.flat()
}

function lines (messages: ReadonlyArray<ChatLine & { sentAt?: string }>): ChatLine[] {
  return messages.map(({ id, from, to, text }) => ({ id, from, to, text }))
}

onBothBackends('offline delivery: what waited comes first, in order, exactly once; then live; a reconnect gets only what is new', async (t, options) => {
  const { app, wsUrl } = await listen(t, options)
  const alice = await createUser(app, 'Alice')
  const bob = await createUser(app, 'Bob')
  const a = await online(t, wsUrl, alice)

  // Bob has never connected; legacy and JSON frames alike are stored and acknowledged.
  const waiting = await sendMessages(a, alice.id, Array.from({ length: 6 }, (_, index) => index % 2 === 0
    ? { to: bob.id, text: `while you were away ${index}`, legacy: true }
    : { to: bob.id, text: `while you were away ${index}`, ref: `away-${index}` }))
  assertIncreasing(t, waiting.map(({ id }) => id), 'each is acknowledged with a server id, in sending order')

  const b = await online(t, wsUrl, bob)
  t.same(await receiveMessages(b, waiting.length), waiting, 'Bob gets them on connecting, in order, before anything live')
  const live = await sendMessages(a, alice.id, [{ to: bob.id, text: 'live now' }])
  t.same(await receiveMessages(b, 1), live, 'then live messages flow')
  const reply = await sendMessages(b, bob.id, [{ to: alice.id, text: 'thanks', ref: 'reply' }])
  t.same(await receiveMessages(a, 1), reply, 'both ways')
  await assertNothingMore(t, b, 'nothing came twice')

  await b.close()
  await untilOffline(app, bob.id)
  const later = await sendMessages(a, alice.id, [
    { to: bob.id, text: 'after you left 1' },
    { to: bob.id, text: 'after you left 2', legacy: true }
  ])
  const again = await online(t, wsUrl, bob)
  t.same(await receiveMessages(again, later.length), later, 'a reconnect gets only what is new (not even his own reply)')
  await assertNothingMore(t, again, 'nothing already received is repeated')
  await assertNothingMore(t, a, 'Alice got acks and the reply, nothing else')
})

onBothBackends('since: replays exactly the messages to and from the user after that id, then goes live', async (t, options) => {
  const { app, wsUrl } = await listen(t, options)
  const alice = await createUser(app, 'Alice')
  const bob = await createUser(app, 'Bob')
  const carol = await createUser(app, 'Carol')
  const a = await online(t, wsUrl, alice)
  const bobPhone = await online(t, wsUrl, bob)

  // Five messages both ways; Bob's go from his phone.
  const five: ChatLine[] = []
  for (const [index, fromAlice] of [true, false, true, false, true].entries()) {
    const [sender, client, peer, receiver] = fromAlice ? [alice, a, bob, bobPhone] : [bob, bobPhone, alice, a]
    const sent = await sendMessages(client, sender.id, [{ to: peer.id, text: `message ${index + 1}`, ref: `m${index + 1}`, legacy: index === 2 }])
    t.same(await receiveMessages(receiver, 1), sent)
    five.push(...sent)
  }
  // A conversation Bob has no part in.
  await sendMessages(a, alice.id, [{ to: carol.id, text: 'not for Bob' }])

  const laptop = await online(t, wsUrl, bob, { since: five[1]?.id })
  t.same(await receiveMessages(laptop, 3), five.slice(2), 'messages 3 to 5, including the one Bob sent from his phone')
  await assertNothingMore(t, laptop, 'nothing older, nothing twice, nothing of other conversations')

  const six = await sendMessages(a, alice.id, [{ to: bob.id, text: 'message 6' }])
  t.same(await receiveMessages(laptop, 1), six, 'then live')
  t.same(await receiveMessages(bobPhone, 1), six, 'on every device')

  const tablet = await online(t, wsUrl, bob, { since: '0' })
  t.same(await receiveMessages(tablet, 6), [...five, ...six], 'since=0 replays everything')
  await assertNothingMore(t, tablet, 'and nothing else')

  const upToDate = await online(t, wsUrl, bob, { since: six[0]?.id })
  await assertNothingMore(t, upToDate, 'since the newest id replays nothing')

  const legacy = await connectWs(t, wsUrl, { token: bob.accessToken, format: 'text', since: five[2]?.id })
  t.same([await legacy.next(), await legacy.next(), await legacy.next()],
    [`${bob.id}:message 4`, `${alice.id}:message 5`, `${alice.id}:message 6`], 'a ?format=text replay is legacy lines')

  // With all his sockets closed, `since` still wins over what the server remembers of Bob.
  for (const client of [bobPhone, laptop, tablet, upToDate, legacy]) await client.close()
  await untilOffline(app, bob.id)
  const back = await online(t, wsUrl, bob, { since: five[3]?.id })
  t.same(await receiveMessages(back, 2), [five[4], six[0]], 'a first connection with since replays from since')
  await assertNothingMore(t, back, 'and only that')
})

onBothBackends('since must be a 64-bit message id: anything else is a 400 before the upgrade', async (t, options) => {
  const { app, wsUrl } = await listen(t, options)
  const alice = await createUser(app, 'Alice')
  for (const since of ['abc', '-1', '18446744073709551616', '99999999999999999999', '1.5', '01', '', ' 1', '1e3', '0x10']) {
    const { statusCode, body } = await refusedUpgrade(wsUrl, { token: alice.accessToken, since })
    t.equal(statusCode, 400, `since=${JSON.stringify(since)} is refused`)
    t.match(body, { statusCode: 400, code: 'VALIDATION_FAILED', error: 'Bad Request' })
  }
  const bob = await createUser(app, 'Bob')
  const largest = await online(t, wsUrl, alice, { since: '18446744073709551615' })
  await assertNothingMore(t, largest, 'the largest 64-bit id is accepted (and nothing comes after it)')
  const b = await online(t, wsUrl, bob)
  const live = await sendMessages(b, bob.id, [{ to: alice.id, text: 'still live' }])
  t.same(await receiveMessages(largest, 1), live, 'live messages still come, whatever since said')
})

for (const resume of ['since', 'cursor'] as const) {
  onBothBackends(`the seam (${resume === 'since' ? '?since' : 'first connection, no since'}): messages sent while the connection opens and replays arrive exactly once, in id order`, async (t, options) => {
    const { app, wsUrl } = await listen(t, options)
    const alice = await createUser(app, 'Alice')
    const bob = await createUser(app, 'Bob')
    const a = await online(t, wsUrl, alice)

    const first = await online(t, wsUrl, bob)
    const seen = await sendMessages(a, alice.id, [{ to: bob.id, text: 'seen' }])
    t.same(await receiveMessages(first, 1), seen)
    await first.close()
    await untilOffline(app, bob.id)

    // Longer than one replay page (500 rows), so the replay takes several queries.
    const backlog = await sendMessages(a, alice.id, Array.from({ length: 1100 }, (_, index) => ({ to: bob.id, text: `backlog ${index}` })))

    // Alice keeps sending before, while and after Bob's connection opens and replays.
    let opened = false
    const connecting = online(t, wsUrl, bob, resume === 'since' ? { since: seen[0]?.id } : {})
    connecting.then(() => { opened = true }, () => { opened = true })
    const racing: Array<{ to: number, text: string, ref: string }> = []
    for (let afterOpen = 0; afterOpen < 100;) {
      const index = racing.length
      racing.push({ to: bob.id, text: `racing ${index}`, ref: `race-${index}` })
      a.send({ type: 'message', to: bob.id, text: `racing ${index}`, id: `race-${index}` })
      if (opened) afterOpen++
      await nextTurn()
    }
    const b = await connecting
    const raced: ChatLine[] = []
    for (const { to, text, ref } of racing) {
      const ack = await a.nextJson()
      t.equal(ack.ref, ref, 'acks come in sending order')
      raced.push({ id: String(ack.id), from: alice.id, to, text })
    }

    const expected = [...backlog, ...raced]
    const received = await receiveMessages(b, expected.length)
    assertIncreasing(t, received.map(({ id }) => id), 'Bob gets them in id order')
    t.equal(new Set(received.map(({ id }) => id)).size, received.length, 'none twice')
    t.same(received, expected, 'all of them, the backlog first')
    await assertNothingMore(t, b, 'and nothing else')
  })
}

onBothBackends('a resent client ref is acknowledged with the original id and delivered once; another sender may use the same ref', async (t, options) => {
  const { app, wsUrl } = await listen(t, options)
  const alice = await createUser(app, 'Alice')
  const bob = await createUser(app, 'Bob')
  const carol = await createUser(app, 'Carol')
  const aliceLaptop = await online(t, wsUrl, alice)
  const b = await online(t, wsUrl, bob)
  const c = await online(t, wsUrl, carol)

  const phone = await online(t, wsUrl, alice)
  const [original] = await sendMessages(phone, alice.id, [{ to: bob.id, text: 'pay 10 euros', ref: 'r1' }])
  t.same(await receiveMessages(b, 1), [original])
  t.same(await receiveMessages(aliceLaptop, 1), [original])
  const originalAck = { type: 'ack', id: original?.id, ref: 'r1' }

  phone.send({ type: 'message', to: bob.id, text: 'pay 10 euros', id: 'r1' })
  t.same(await phone.nextJson(), originalAck, 'a resend on the same socket gets the original ack')
  await phone.close()
  const phoneAgain = await online(t, wsUrl, alice)
  phoneAgain.send({ type: 'message', to: bob.id, text: 'pay 10 euros', id: 'r1' })
  t.same(await phoneAgain.nextJson(), originalAck, 'so does a resend after a reconnect')
  phoneAgain.send({ type: 'message', to: bob.id, text: 'pay 20 euros', id: 'r1' })
  t.same(await phoneAgain.nextJson(), originalAck, 'and one with another text: the ref names the message')
  phoneAgain.send({ type: 'message', to: carol.id, text: 'pay 10 euros', id: 'r1' })
  t.same(await phoneAgain.nextJson(), originalAck, 'or another recipient')
  await assertNothingMore(t, b, 'Bob got the message once')
  await assertNothingMore(t, c, 'Carol got none of it')
  await assertNothingMore(t, aliceLaptop, "Alice's other device saw it once")

  const fromCarol = await sendMessages(c, carol.id, [{ to: bob.id, text: 'pay 10 euros', ref: 'r1' }])
  t.not(fromCarol[0]?.id, original?.id, "Carol's r1 is another message")
  t.same(await receiveMessages(b, 1), fromCarol, 'and is delivered')
  const next = await sendMessages(phoneAgain, alice.id, [{ to: bob.id, text: 'pay 10 euros', ref: 'r2' }])
  t.same(await receiveMessages(b, 1), next, 'a new ref is a new message, even with the same text')

  const replay = await online(t, wsUrl, bob, { since: '0' })
  t.same(await receiveMessages(replay, 3), [original, ...fromCarol, ...next], 'stored once: the replay has each once')
  await assertNothingMore(t, replay, 'and nothing else')
  t.same(lines(await fullHistory(app, bob, alice.id)), [original, ...next], 'so has the history')
})

onBothBackends("the sender's other devices get what it sent, to someone offline and to itself; the sending socket only the ack", async (t, options) => {
  const { app, wsUrl } = await listen(t, options)
  const alice = await createUser(app, 'Alice')
  const bob = await createUser(app, 'Bob')
  const phone = await online(t, wsUrl, alice)
  const laptop = await online(t, wsUrl, alice)

  const toBob = await sendMessages(phone, alice.id, [{ to: bob.id, text: 'Bob is offline', ref: 'p1' }])
  t.same(await receiveMessages(laptop, 1), toBob, 'the laptop sees what the phone sent to an offline user')
  const toSelf = await sendMessages(phone, alice.id, [{ to: alice.id, text: 'note to self', legacy: true }])
  t.same(await receiveMessages(laptop, 1), toSelf, 'and a note to self, once')
  const fromLaptop = await sendMessages(laptop, alice.id, [{ to: bob.id, text: 'from the laptop' }])
  t.same(await receiveMessages(phone, 1), fromLaptop, 'the other way round too')
  await assertNothingMore(t, phone, 'the phone got acks and the laptop’s message only')
  await assertNothingMore(t, laptop, 'the laptop got acks and the phone’s messages only')

  const b = await online(t, wsUrl, bob)
  t.same(await receiveMessages(b, 2), [...toBob, ...fromLaptop], 'Bob gets what was sent to him, not the note')
  await assertNothingMore(t, b, 'once')
  const tablet = await online(t, wsUrl, alice, { since: '0' })
  t.same(await receiveMessages(tablet, 3), [...toBob, ...toSelf, ...fromLaptop], 'a replay has the note to self once')
  await assertNothingMore(t, tablet, 'and nothing else')
})

test('a message acknowledged before a restart is delivered after it (MariaDB + Redis)', async (t) => {
  const backends = realBackends()
  if ('skip' in backends) return t.plan(0, backends.skip)
  // One database and key prefix for both runs; listen() gives both the same jwtSecret.
  const options = await realBackendOptions(t, backends)
  const before = await listen(t, options)
  const alice = await createUser(before.app, 'Alice')
  const bob = await createUser(before.app, 'Bob')
  const a = await online(t, before.wsUrl, alice)
  const b = await online(t, before.wsUrl, bob)
  const seen = await sendMessages(a, alice.id, [{ to: bob.id, text: 'seen before the restart' }])
  t.same(await receiveMessages(b, 1), seen)
  await b.close()
  await untilOffline(before.app, bob.id)
  const waiting = await sendMessages(a, alice.id, [
    { to: bob.id, text: 'acked before the restart 😀', ref: 'w1' },
    { to: bob.id, text: 'and this one', legacy: true }
  ])
  await before.app.close()
  t.equal((await a.closed()).code, 1001, "Alice's socket closes with 1001")

  const after = await listen(t, options)
  const b2 = await online(t, after.wsUrl, bob)
  t.same(await receiveMessages(b2, 2), waiting, 'Bob gets what waited, and not what he had already seen')
  await assertNothingMore(t, b2, 'nothing else')
  const a2 = await online(t, after.wsUrl, alice)
  await assertNothingMore(t, a2, 'Alice had seen her own messages: nothing to replay')
  a2.send({ type: 'message', to: bob.id, text: 'acked before the restart 😀', id: 'w1' })
  t.same(await a2.nextJson(), { type: 'ack', id: waiting[0]?.id, ref: 'w1' }, 'a resend after the restart gets the original ack')
  const fresh = await sendMessages(a2, alice.id, [{ to: bob.id, text: 'after the restart' }])
  t.same(await receiveMessages(b2, 1), fresh, 'live again')
  assertIncreasing(t, [...seen, ...waiting, ...fresh].map(({ id }) => id), 'ids made after the restart sort after the earlier ones')
})

/** Texts that must survive storage byte for byte. */
const EXACT_TEXTS = [
  '😀 four bytes each: 🧑🏽‍💻 👨‍👩‍👧‍👦 𝄞 🀄',
  'مرحبا بالعالم',
  '\u200Fשלום עולם\u200E, \u202Eoverride\u202C and \u2067isolate\u2069',
  '你好，世界 こんにちは 안녕하세요',
  'नमस्ते दुनिया',
  'before\u0000after NUL',
  '<script>alert("x")</script> &amp; \' " \\',
  'colons: a:b::c: 12:30:',
  '  leading and trailing spaces  ',
  'line\nbreak\r\nand\ttab',
  '\uFEFFBOM, \uFFFD, e\u0301 (combining) and Ω≈ç√'
]

onBothBackends('emoji, mixed scripts, NUL, markup and colons round-trip byte-exact: live, on replay and through GET /messages', async (t, options) => {
  const { app, wsUrl } = await listen(t, options)
  const alice = await createUser(app, 'Alice')
  const bob = await createUser(app, 'Bob')
  const a = await online(t, wsUrl, alice)
  const b = await online(t, wsUrl, bob)
  const textClient = await connectWs(t, wsUrl, { token: bob.accessToken, format: 'text' })

  const sent = await sendMessages(a, alice.id, EXACT_TEXTS.flatMap((text, index) => [
    { to: bob.id, text, ref: `exact-${index}` },
    { to: bob.id, text, legacy: true }
  ]))
  const bytes = (messages: readonly ChatLine[]): string[] => messages.map(({ text }) => Buffer.from(text, 'utf8').toString('hex'))
  const live = await receiveMessages(b, sent.length)
  t.same(live, sent, 'live, as JSON')
  t.same(bytes(live), bytes(sent), 'byte for byte')
  const reply = await sendMessages(b, bob.id, [{ to: alice.id, text: EXACT_TEXTS.join(' | ') }])
  const all = [...sent, ...reply]
  const legacyLines: string[] = []
  for (let index = 0; index < all.length; index++) legacyLines.push(await textClient.next())
  t.same(legacyLines, all.map(({ from, text }) => `${from}:${text}`), 'live, as legacy lines')
  t.same(await receiveMessages(a, 1), reply)

  const replay = await online(t, wsUrl, bob, { since: '0' })
  const replayed = await receiveMessages(replay, all.length)
  t.same(replayed, all, 'on replay')
  t.same(bytes(replayed), bytes(all), 'byte for byte')
  const history = lines(await fullHistory(app, alice, bob.id))
  t.same(history, all, 'through GET /messages')
  t.same(bytes(history), bytes(all), 'byte for byte')
})

onBothBackends('TOO_LONG above messageMaxChars, counted in characters; nothing of a refused message is stored', async (t, options) => {
  const { app, wsUrl } = await listen(t, { ...options, messageMaxChars: 5 })
  const alice = await createUser(app, 'Alice')
  const bob = await createUser(app, 'Bob')
  const a = await online(t, wsUrl, alice)

  const accepted = await sendMessages(a, alice.id, [{ to: bob.id, text: '😀😀😀😀😀', ref: 'five' }, { to: bob.id, text: 'abcde', legacy: true }])
  a.send({ type: 'message', to: bob.id, text: '😀😀😀😀😀😀', id: 'six' })
  t.match(await a.nextJson(), { type: 'error', code: 'TOO_LONG', ref: 'six' }, 'six emoji are too long')
  a.send(`${bob.id}:abcdef`)
  t.match(await a.nextJson(), { type: 'error', code: 'TOO_LONG' }, 'six letters are too long')
  await assertNothingMore(t, a, 'the socket stays open')

  const b = await online(t, wsUrl, bob)
  t.same(await receiveMessages(b, 2), accepted, 'Bob gets the two that fit')
  await assertNothingMore(t, b, 'and not the refused ones')
  t.same(lines(await fullHistory(app, bob, alice.id)), accepted, 'which are all that is stored')
})

onBothBackends('4000 emoji fit the default limit and round-trip exactly; 4001 characters are TOO_LONG', async (t, options) => {
  const { app, wsUrl } = await listen(t, options)
  const alice = await createUser(app, 'Alice')
  const bob = await createUser(app, 'Bob')
  const a = await online(t, wsUrl, alice)
  const longest = '🦄'.repeat(4000)

  const sent = await sendMessages(a, alice.id, [{ to: bob.id, text: longest, ref: 'long' }, { to: bob.id, text: `${longest.slice(2)}x`, legacy: true }])
  for (const text of [`${longest}x`, 'y'.repeat(4001)]) {
    a.send({ type: 'message', to: bob.id, text, id: 'too-long' })
    t.match(await a.nextJson(), { type: 'error', code: 'TOO_LONG', ref: 'too-long' }, '4001 characters are too long')
  }
  const b = await online(t, wsUrl, bob)
  t.same(await receiveMessages(b, 2), sent, '4000 characters of 4 bytes each are delivered exactly')
  await assertNothingMore(t, b, 'and nothing else')
  t.same(lines(await fullHistory(app, alice, bob.id)), sent, 'and stored exactly')
})

onBothBackends('shutdown while messages are in flight: every acknowledged message is kept, sockets close with 1001', async (t, options) => {
  const { app, wsUrl } = await listen(t, options)
  const alice = await createUser(app, 'Alice')
  const bob = await createUser(app, 'Bob')
  const a = await online(t, wsUrl, alice)
  const b = await online(t, wsUrl, bob)
  const count = 200

  for (let index = 0; index < count; index++) a.send({ type: 'message', to: bob.id, text: `in flight ${index}`, id: `f${index}` })
  const acked: ChatLine[] = []
  let closing: Promise<unknown> | undefined
  for (;;) {
    let frame: ServerFrame
    try {
      frame = await a.nextJson()
    } catch {
      break // the socket closed: no more acks
    }
    t.equal(frame.ref, `f${acked.length}`, 'acks come in sending order')
    acked.push({ id: String(frame.id), from: alice.id, to: bob.id, text: `in flight ${acked.length}` })
    if (acked.length === 10) closing = app.close()
  }
  await closing
  t.equal((await a.closed()).code, 1001, "the sender's socket closes with 1001")
  t.ok(acked.length < count, `the close came with messages in flight (${acked.length} of ${count} acknowledged)`)
  const live: ChatLine[] = []
  for (;;) {
    try {
      live.push(...await receiveMessages(b, 1))
    } catch {
      break
    }
  }
  t.equal((await b.closed()).code, 1001, "the recipient's socket closes with 1001")
  const ackedIds = new Set(acked.map(({ id }) => id))

  if (options.mysqlUrl === undefined) {
    // The memory store dies with the app; read it directly before it goes.
    const stored = await app.switchboardDb.messages.since({ userId: bob.id, after: '0', limit: 10_000 })
    const storedIds = new Set(stored.map(({ id }) => id))
    t.ok([...ackedIds].every((id) => storedIds.has(id)), 'every acknowledged message is stored')
    t.same(live, lines(stored).slice(0, live.length), 'Bob got a prefix of what is stored, in order')
    return
  }

  const after = await listen(t, options)
  const history = lines(await fullHistory(after.app, bob, alice.id))
  const storedIds = new Set(history.map(({ id }) => id))
  t.ok([...ackedIds].every((id) => storedIds.has(id)), 'every acknowledged message is in GET /messages after a restart')
  t.equal(storedIds.size, history.length, 'each once')
  t.same(history.slice(0, acked.length), acked, 'in order, the acknowledged ones first')
  t.same(live, history.slice(0, live.length), 'Bob got a prefix of it live')
  // Bob comes back without since: exactly what he had not received.
  const back = await online(t, after.wsUrl, bob)
  t.same(await receiveMessages(back, history.length - live.length), history.slice(live.length), 'the rest on his next connection')
  await assertNothingMore(t, back, 'and nothing twice')
})

test('a backlog many times WS_MAX_BUFFERED is replayed whole, as fast as the client reads, and is not taken for a slow consumer', async (t) => {
  const { app, wsUrl } = await listen(t, { wsMaxBuffered: 64 * 1024 })
  const alice = await createUser(app, 'Alice')
  const bob = await createUser(app, 'Bob')
  const a = await online(t, wsUrl, alice)
  const backlog: ChatLine[] = []
  // About 9 MiB: more than the kernel's socket buffers take, so the server's own queue grows too.
  for (let round = 0; round < 60; round++) {
    backlog.push(...await sendMessages(a, alice.id, Array.from({ length: 50 }, (_, index) => ({ to: bob.id, text: `${round}-${index} ${'y'.repeat(3000)}` }))))
  }
  const b = await online(t, wsUrl, bob)
  t.same(await receiveMessages(b, backlog.length), backlog, `all ${backlog.length} (about 9 MiB against a 64 KiB cap), in order`)
  const live = await sendMessages(a, alice.id, [{ to: bob.id, text: 'and then live' }])
  t.same(await receiveMessages(b, 1), live, 'then live, on the same socket')
})
