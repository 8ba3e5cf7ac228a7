import { once } from 'node:events'
import { readdirSync } from 'node:fs'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import { test } from 'tap'
import WebSocket from 'ws'
import Fastify from 'fastify'
import fp from 'fastify-plugin'
import switchboard from '../../src/app.js'
import { serverOptions } from '../../src/server.js'
import { createUser, listen, TEST_SETTINGS, until, type TestUser } from '../helper.js'

const USERS = 20
const SOCKETS_PER_USER = 100
const SOCKETS = USERS * SOCKETS_PER_USER
const BATCH = 200
/** Heap a run may keep for good (code compiled, caches warmed), whatever the number of sockets. */
const HEAP_SLACK = 4 * 1024 * 1024

// The test needs to collect garbage on demand; tap does not start node with --expose-gc.
setFlagsFromString('--expose-gc')
const collectGarbage = runInNewContext('gc') as () => void

function openFiles (): number {
  return readdirSync('/proc/self/fd').length
}

/** Heap in use once everything unreachable is gone (a few rounds: weak references and finalizers free more). */
async function settledHeap (): Promise<number> {
  for (let round = 0; round < 4; round++) {
    collectGarbage()
    await new Promise((resolve) => setImmediate(resolve))
  }
  return process.memoryUsage().heapUsed
}

/**
 * Plain ws clients rather than the helper's, which the test keeps until it ends: here
 * nothing may hold a client after it closed, or the heap could not come back.
 */
async function openSockets (wsUrl: string, users: readonly TestUser[], perUser = SOCKETS_PER_USER): Promise<WebSocket[]> {
  const sockets: WebSocket[] = []
  const owners = users.flatMap((user) => Array.from({ length: perUser }, () => user))
  for (let start = 0; start < owners.length; start += BATCH) {
    sockets.push(...await Promise.all(owners.slice(start, start + BATCH).map(async (user) => {
      const socket = new WebSocket(new URL('/ws', wsUrl), { headers: { authorization: `Bearer ${user.accessToken}` } })
      const [welcome] = await once(socket, 'message') as [Buffer]
      if (!welcome.toString().startsWith('{"type":"welcome"')) throw new Error(`expected a welcome, got ${welcome.toString()}`)
      return socket
    })))
  }
  return sockets
}

async function closeAll (sockets: WebSocket[]): Promise<void> {
  await Promise.all(sockets.map(async (socket) => {
    const closed = once(socket, 'close')
    socket.close(1000)
    await closed
  }))
}

test(`${SOCKETS} sockets connect and leave: the node forgets them, and its files and heap return to the baseline`, async (t) => {
  const { app, wsUrl } = await listen(t, { wsMaxConnectionsPerUser: SOCKETS_PER_USER, wsMaxConnections: SOCKETS })
  const users = await Promise.all(Array.from({ length: USERS }, (_, index) => createUser(app, `Load ${index}`)))
  const registry = app.switchboardChat.registry

  // One round first, so what the first connections set up once (handlers, compiled code, pools) is in the baseline.
  await closeAll(await openSockets(wsUrl, users.slice(0, 1)))
  await until('the warm-up sockets are gone', () => registry.connectionCount === 0)
  const files = openFiles()
  const heap = await settledHeap()

  let sockets = await openSockets(wsUrl, users)
  t.equal(registry.connectionCount, SOCKETS, 'all of them open on the node')
  t.ok(users.every((user) => registry.isOnline(user.id)), 'every user is online')
  t.ok(openFiles() >= files + SOCKETS, 'each holds a file (both ends live in this process)')
  const peakHeap = await settledHeap()
  t.ok(peakHeap - heap > HEAP_SLACK, `the open sockets hold heap: ${mib(peakHeap - heap)} MiB more than the baseline`)

  await closeAll(sockets)
  sockets = []
  await until('every socket has left the node', () => registry.connectionCount === 0, 30_000)
  t.ok(users.every((user) => !registry.isOnline(user.id)), 'every user is offline')
  // Closed sockets give their descriptors back as their handles close, a moment after the close event.
  await until('the open files are back to the baseline', () => openFiles() <= files, 30_000)
  t.pass(`open files back to ${files}`)
  await app.switchboardChat.drain()
  const after = await settledHeap()
  t.ok(after - heap < HEAP_SLACK,
    `heap back to the baseline: ${mib(heap)} MiB before, ${mib(peakHeap)} MiB with ${SOCKETS} sockets, ${mib(after)} MiB after`)
})

function mib (bytes: number): string {
  return (bytes / 1024 / 1024).toFixed(1)
}

test('an open socket does not keep its upgrade request, reply or their HTTP objects alive', async (t) => {
  // Built by hand so a hook of the host can see the upgrade request.
  const app = Fastify(serverOptions({ logLevel: 'silent', trustProxy: false }))
  const upgrades: Array<WeakRef<object>> = []
  app.addHook('onRequest', async (request, reply) => {
    if (request.url.startsWith('/ws')) upgrades.push(new WeakRef(request), new WeakRef(reply), new WeakRef(request.raw), new WeakRef(reply.raw))
  })
  await app.register(fp(switchboard), TEST_SETTINGS)
  t.teardown(() => app.close())
  const wsUrl = (await app.listen({ port: 0, host: '127.0.0.1' })).replace(/^http/, 'ws')
  const alice = await createUser(app, 'Alice')
  const [socket] = await openSockets(wsUrl, [alice], 1)
  await settledHeap()
  t.equal(upgrades.length, 4, 'the upgrade was seen')
  t.same(upgrades.map((ref) => ref.deref() === undefined), [true, true, true, true], 'request, reply and both raw objects are collected while the socket is open')
  t.equal(app.switchboardChat.registry.connectionCount, 1, 'and the socket still is')
  await closeAll(socket === undefined ? [] : [socket])
})
