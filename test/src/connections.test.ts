import { test } from 'tap'
import { createConnectionRegistry, type Connection, type ConnectionRegistry } from '../../src/connections.js'
import type { EncodedMessage, OutputFormat } from '../../src/protocol.js'

interface FakeConnection extends Connection {
  delivered: EncodedMessage[]
  closes: Array<{ code: number, reason: string }>
  terminated: boolean
}

function fakeConnection (userId: number, sessionId = `session-of-${userId}`, format: OutputFormat = 'json', onClose?: (self: FakeConnection) => void): FakeConnection {
  const connection: FakeConnection = {
    userId,
    sessionId,
    format,
    delivered: [],
    closes: [],
    deliver (message) { connection.delivered.push(message) },
    isOpen: () => connection.closes.length === 0 && !connection.terminated,
    terminated: false,
    terminate () {
      connection.terminated = true
      onClose?.(connection)
    },
    close (code, reason) {
      connection.closes.push({ code, reason })
      onClose?.(connection)
    }
  }
  return connection
}

test('add reports the first connection of a user, remove the last', async (t) => {
  const registry = createConnectionRegistry()
  const phone = fakeConnection(1)
  const laptop = fakeConnection(1)
  t.equal(registry.isOnline(1), false)
  t.equal(registry.add(phone), true, 'first: the user came online')
  t.equal(registry.add(laptop), false, 'second device: already online')
  t.equal(registry.isOnline(1), true)
  t.equal(registry.remove(phone), false, 'not the last')
  t.equal(registry.isOnline(1), true)
  t.equal(registry.remove(laptop), true, 'last: the user went offline')
  t.equal(registry.isOnline(1), false)
  t.equal(registry.connectionsOf(1), undefined)
  t.equal(registry.add(phone), true, 'coming back is a first connection again')
})

test('adding or removing the same connection twice counts once', async (t) => {
  const registry = createConnectionRegistry()
  const connection = fakeConnection(1)
  registry.add(connection)
  t.equal(registry.add(connection), false)
  t.equal(registry.connectionCount, 1)
  t.equal(registry.remove(connection), true)
  t.equal(registry.remove(connection), false, 'already gone')
  t.equal(registry.connectionCount, 0)
  t.equal(registry.remove(fakeConnection(2)), false, 'never added')
  t.equal(registry.connectionCount, 0)
})

test('a user holds several devices, each its own connection', async (t) => {
  const registry = createConnectionRegistry()
  const phone = fakeConnection(1, 'a')
  const laptop = fakeConnection(1, 'b', 'text')
  const someoneElse = fakeConnection(2)
  for (const connection of [phone, laptop, someoneElse]) registry.add(connection)
  t.strictSame([...registry.connectionsOf(1) ?? []], [phone, laptop])
  t.strictSame([...registry.connectionsOf(2) ?? []], [someoneElse])
  t.equal(registry.connectionCount, 3)
})

test('onlineUsers pages through online users in ascending id order', async (t) => {
  const registry = createConnectionRegistry()
  for (const userId of [5, 1, 10, 3]) registry.add(fakeConnection(userId))
  registry.add(fakeConnection(5, 'second device'))
  t.strictSame(registry.onlineUsers({ limit: 10 }), { count: 4, userIds: [1, 3, 5, 10] }, 'a user with two devices counts once')
  t.strictSame(registry.onlineUsers({ limit: 2 }), { count: 4, userIds: [1, 3] })
  t.strictSame(registry.onlineUsers({ after: 3, limit: 2 }), { count: 4, userIds: [5, 10] }, 'after is exclusive')
  t.strictSame(registry.onlineUsers({ after: 4, limit: 1 }), { count: 4, userIds: [5] }, 'after need not be online')
  t.strictSame(registry.onlineUsers({ after: 10, limit: 2 }), { count: 4, userIds: [] })
  t.strictSame(registry.onlineUsers({ limit: 0 }), { count: 4, userIds: [] })
  t.strictSame(createConnectionRegistry().onlineUsers({ limit: 5 }), { count: 0, userIds: [] })
})

test('onlineUsers sorts numerically, not as text', async (t) => {
  const registry = createConnectionRegistry()
  for (const userId of [100, 20, 3]) registry.add(fakeConnection(userId))
  t.strictSame(registry.onlineUsers({ limit: 10 }).userIds, [3, 20, 100])
})

test('closeSession closes only that session\'s connections', async (t) => {
  const registry = createConnectionRegistry()
  const sessionA1 = fakeConnection(1, 'A')
  const sessionA2 = fakeConnection(1, 'A')
  const sessionB = fakeConnection(1, 'B')
  const otherUserSameSessionId = fakeConnection(2, 'A')
  for (const connection of [sessionA1, sessionA2, sessionB, otherUserSameSessionId]) registry.add(connection)

  t.equal(registry.closeSession(1, 'A', 1008, 'session revoked'), 2)
  t.strictSame(sessionA1.closes, [{ code: 1008, reason: 'session revoked' }])
  t.strictSame(sessionA2.closes, [{ code: 1008, reason: 'session revoked' }])
  t.strictSame(sessionB.closes, [], 'another session of the same user stays')
  t.strictSame(otherUserSameSessionId.closes, [], 'another user stays')
  t.equal(registry.closeSession(3, 'A', 1008, 'nobody'), 0, 'a user with no connections')
})

test('closeAll closes every connection', async (t) => {
  const registry = createConnectionRegistry()
  const connections = [fakeConnection(1), fakeConnection(1), fakeConnection(2), fakeConnection(3, 's', 'text')]
  for (const connection of connections) registry.add(connection)
  registry.closeAll(1001, 'server shutting down')
  for (const connection of connections) t.strictSame(connection.closes, [{ code: 1001, reason: 'server shutting down' }])
})

test('connections that leave the registry while being closed are all still closed', async (t) => {
  let registry: ConnectionRegistry = createConnectionRegistry()
  const leave = (connection: FakeConnection) => { registry.remove(connection) }
  const connections = [fakeConnection(1, 'A', 'json', leave), fakeConnection(1, 'A', 'json', leave), fakeConnection(2, 'A', 'json', leave)]
  for (const connection of connections) registry.add(connection)
  registry.closeAll(1001, 'bye')
  t.ok(connections.every((connection) => connection.closes.length === 1), 'closeAll')
  t.equal(registry.connectionCount, 0)

  registry = createConnectionRegistry()
  const session = [fakeConnection(1, 'A', 'json', leave), fakeConnection(1, 'A', 'json', leave), fakeConnection(1, 'A', 'json', leave)]
  for (const connection of session) registry.add(connection)
  t.equal(registry.closeSession(1, 'A', 1008, 'revoked'), 3, 'closeSession')
  t.ok(session.every((connection) => connection.closes.length === 1))
  t.equal(registry.isOnline(1), false)
})

test('connectionCount follows adds and removes', async (t) => {
  const registry = createConnectionRegistry()
  const a = fakeConnection(1)
  const b = fakeConnection(1)
  const c = fakeConnection(2)
  t.equal(registry.connectionCount, 0)
  registry.add(a)
  registry.add(b)
  registry.add(c)
  t.equal(registry.connectionCount, 3)
  registry.remove(b)
  t.equal(registry.connectionCount, 2)
  registry.remove(a)
  registry.remove(c)
  t.equal(registry.connectionCount, 0)
})

test('hasOpenConnection ignores sockets that have started closing', async (t) => {
  const registry = createConnectionRegistry()
  const phone = fakeConnection(1)
  const laptop = fakeConnection(1)
  t.equal(registry.hasOpenConnection(1), false, 'nobody')
  registry.add(phone)
  registry.add(laptop)
  t.equal(registry.hasOpenConnection(1), true)
  phone.close(1000, 'bye')
  t.equal(registry.hasOpenConnection(1), true, 'the laptop is still open')
  laptop.close(1000, 'bye')
  t.equal(registry.isOnline(1), true, 'both still registered until their close events')
  t.equal(registry.hasOpenConnection(1), false, 'but neither can receive')
})

test('terminateAll drops every connection, including ones that leave the registry as they go', async (t) => {
  const registry = createConnectionRegistry()
  const connections = [
    fakeConnection(1, 's1', 'json', (self) => registry.remove(self)),
    fakeConnection(1, 's2', 'json', (self) => registry.remove(self)),
    fakeConnection(2, 's3', 'json', (self) => registry.remove(self))
  ]
  for (const connection of connections) registry.add(connection)
  registry.terminateAll()
  t.strictSame(connections.map((connection) => connection.terminated), [true, true, true])
  t.equal(registry.connectionCount, 0)
})
