import { setTimeout as sleep } from 'node:timers/promises'
import { test } from 'tap'
import { connectWs, createUser, listen, receiveMessages, sendMessages, until, type ChatLine } from '../helper.js'

test('a client that stops answering pings is dropped after two; one that answers stays', async (t) => {
  const { app, wsUrl } = await listen(t, { wsPingInterval: 1 })
  const alice = await createUser(app, 'Alice')
  const bob = await createUser(app, 'Bob')
  const silent = await connectWs(t, wsUrl, { token: alice.accessToken, autoPong: false })
  const answering = await connectWs(t, wsUrl, { token: bob.accessToken })
  await silent.nextOfType('welcome')
  await answering.nextOfType('welcome')

  // Pinged at 1 s and 2 s without answer, dropped at 3 s: no closing handshake, so 1006 here.
  const closed = await silent.closed(6000)
  t.equal(closed.code, 1006, 'terminated, not closed politely')
  await until('the dropped socket leaves the node', () => app.switchboardChat.registry.connectionCount === 1)
  t.pass('and gone from the node')

  answering.send({ type: 'ping' })
  t.same(await answering.nextOfType('pong'), { type: 'pong' }, 'the answering client is still served')
})

test('a client that stops reading is closed as too slow and dropped; the sender goes on, and nothing acknowledged is lost', async (t) => {
  const { app, wsUrl } = await listen(t, { wsMaxBuffered: 256 * 1024 })
  const alice = await createUser(app, 'Alice')
  const bob = await createUser(app, 'Bob')
  const sender = await connectWs(t, wsUrl, { token: alice.accessToken })
  const reader = await connectWs(t, wsUrl, { token: bob.accessToken })
  await sender.nextOfType('welcome')
  await reader.nextOfType('welcome')
  // Bob's client stops reading: once the kernel's buffers are full, frames pile up on the server.
  reader.socket.pause()

  const text = 'x'.repeat(3000)
  const acked: ChatLine[] = []
  // Rounds of 50 with a pause between them: the server closes Bob's socket once its backlog passes the cap
  // and drops it 3 s later, by when a few thousand messages have been sent, not tens of thousands.
  const deadline = Date.now() + 20_000
  while (app.switchboardChat.registry.isOnline(bob.id)) {
    if (Date.now() > deadline) throw new Error(`Bob is still online after ${acked.length} messages`)
    acked.push(...await sendMessages(sender, alice.id, Array.from({ length: 50 }, () => ({ to: bob.id, text }))))
    await sleep(50)
  }
  // Reading again, the old client sees the end of its socket.
  reader.socket.resume()
  t.pass(`Bob's socket left the node after ${acked.length} messages (${(acked.length * text.length / 1024 / 1024).toFixed(1)} MiB)`)

  sender.send({ type: 'ping' })
  t.same(await sender.nextOfType('pong'), { type: 'pong' }, 'the sender is still served')
  const next = await sendMessages(sender, alice.id, [{ to: bob.id, text: 'after the drop' }])

  // The dropped socket was not trusted with anything: Bob's next socket gets every message from the start.
  const again = await connectWs(t, wsUrl, { token: bob.accessToken })
  await again.nextOfType('welcome')
  const received = await receiveMessages(again, acked.length + 1)
  t.same(received.map(({ id }) => id), [...acked, ...next].map(({ id }) => id), 'Bob\'s next socket gets all of them, in order, once each')
})
