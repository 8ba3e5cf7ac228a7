import { readdirSync } from 'node:fs'
import { test } from 'tap'
import { connectWs, createUser, listen, until, type WsClient } from '../helper.js'

const SOCKETS = 2000
const BATCH = 200

function openFiles (): number {
  return readdirSync('/proc/self/fd').length
}

test(`${SOCKETS} sockets connect and leave: the node forgets them and its files return to the baseline`, async (t) => {
  const { app, wsUrl } = await listen(t, { wsMaxConnectionsPerUser: SOCKETS + 1, wsMaxConnections: SOCKETS + 1 })
  const alice = await createUser(app, 'Alice')
  // One socket first, so what the first connection sets up once (handlers, pools) is in the baseline.
  const warmUp = await connectWs(t, wsUrl, { token: alice.accessToken })
  await warmUp.nextOfType('welcome')
  await warmUp.close()
  await until('the warm-up socket is gone', () => app.switchboardChat.registry.connectionCount === 0)
  const files = openFiles()

  const clients: WsClient[] = []
  for (let opened = 0; opened < SOCKETS; opened += BATCH) {
    const batch = await Promise.all(Array.from({ length: BATCH }, () => connectWs(t, wsUrl, { token: alice.accessToken })))
    await Promise.all(batch.map((client) => client.nextOfType('welcome')))
    clients.push(...batch)
  }
  t.equal(app.switchboardChat.registry.connectionCount, SOCKETS, 'all of them open on the node')
  t.ok(openFiles() >= files + SOCKETS, 'each holds a file (both ends live in this process)')

  await Promise.all(clients.map((client) => client.close()))
  await until('every socket has left the node', () => app.switchboardChat.registry.connectionCount === 0, 30_000)
  // Closed sockets give their descriptors back as their handles close, a moment after the close event.
  await until('the open files are back to the baseline', () => openFiles() <= files, 30_000)
  t.pass(`open files back to ${files}`)
})
