import { test } from 'tap'
import { connectWs, createUser, listen, until } from '../helper.js'

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
