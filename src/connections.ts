import type { EncodedMessage, OutputFormat } from './protocol.js'

/** local: the message was stored on this node; remote: it came from another node through the bus. */
export type DeliveryRoute = 'local' | 'remote'

/** What the registry needs of a live socket. */
export interface Connection {
  readonly userId: number
  /** The login session whose token the socket holds; a `refresh` frame may move it to another. */
  sessionId: string
  readonly format: OutputFormat
  /** A chat message to or from this user (held back while the connection replays what it missed). */
  deliver (message: EncodedMessage, route: DeliveryRoute): void
  /** False once the socket has started closing, though it stays registered until it has closed. */
  isOpen (): boolean
  close (code: number, reason: string): void
  /** Drops the connection at once, without the closing handshake (a peer that does not answer). */
  terminate (): void
}

/**
 * The live connections of this node, by user. A user may hold several
 * (devices); each gets every message to or from that user.
 */
export function createConnectionRegistry () {
  const byUser = new Map<number, Set<Connection>>()
  let total = 0

  return {
    /** Returns true when this is the user's first connection (they came online). */
    add (connection: Connection): boolean {
      let connections = byUser.get(connection.userId)
      const first = connections === undefined
      if (connections === undefined) {
        connections = new Set()
        byUser.set(connection.userId, connections)
      }
      if (!connections.has(connection)) {
        connections.add(connection)
        total++
      }
      return first
    },

    /** Returns true when this was the user's last connection (they went offline). */
    remove (connection: Connection): boolean {
      const connections = byUser.get(connection.userId)
      if (connections === undefined || !connections.delete(connection)) return false
      total--
      if (connections.size > 0) return false
      byUser.delete(connection.userId)
      return true
    },

    connectionsOf (userId: number): ReadonlySet<Connection> | undefined {
      return byUser.get(userId)
    },

    isOnline (userId: number): boolean {
      return byUser.has(userId)
    },

    /** Whether one of the user's sockets can still receive messages. */
    hasOpenConnection (userId: number): boolean {
      for (const connection of byUser.get(userId) ?? []) if (connection.isOpen()) return true
      return false
    },

    /** Online user ids in ascending order, `limit` at a time after `after`. */
    onlineUsers ({ after = 0, limit }: { after?: number, limit: number }): { count: number, userIds: number[] } {
      const userIds = [...byUser.keys()].filter((id) => id > after).sort((a, b) => a - b).slice(0, limit)
      return { count: byUser.size, userIds }
    },

    get connectionCount (): number {
      return total
    },

    /** Users with at least one connection here. */
    get userCount (): number {
      return byUser.size
    },

    /** Closes every connection opened with tokens of one session (logout, revocation). */
    closeSession (userId: number, sessionId: string, code: number, reason: string): number {
      let closed = 0
      for (const connection of byUser.get(userId) ?? []) {
        if (connection.sessionId !== sessionId) continue
        connection.close(code, reason)
        closed++
      }
      return closed
    },

    closeAll (code: number, reason: string): void {
      for (const connections of byUser.values()) for (const connection of connections) connection.close(code, reason)
    },

    terminateAll (): void {
      for (const connections of [...byUser.values()]) for (const connection of [...connections]) connection.terminate()
    }
  }
}

export type ConnectionRegistry = ReturnType<typeof createConnectionRegistry>
