import type { EncodedMessage } from './protocol.js'

/** Which message it was and whose: enough to find the cursors it concerns. */
export interface RoutedMessage {
  id: string
  from: number
  to: number
}

/** What the cluster tells this node's chat. */
export interface ClusterEvents {
  /** A message stored by another node, for a user connected here (its recipient or sender). */
  message (message: EncodedMessage): void
  /** A user came online on their first connection anywhere, or went offline with their last. */
  presence (userId: number, online: boolean): void
  /** A login session ended (on any node): its sockets close. */
  sessionRevoked (userId: number, sessionId: string): void
  /**
   * Messages from other nodes may be getting lost (the bus is down): stop
   * live delivery. Those stored after `gapFrom` (a message id) may be missed.
   */
  interrupted (gapFrom: string): void
  /** The bus is back: what was stored after `gapFrom` may have been missed. */
  restored (gapFrom: string): void
  /**
   * Messages whose routing had failed reached the other nodes late. Their
   * users may have gone offline meanwhile with a cursor past them.
   */
  rerouted (messages: readonly RoutedMessage[]): void
}

export interface OnlinePage {
  /** Users online in all. */
  count: number
  /** Ascending, after the cursor. */
  userIds: number[]
}

/**
 * How nodes share presence and route messages to each other. With one node
 * (no Redis) the local implementation below is all there is; with Redis,
 * `src/stores/cluster-redis.ts`.
 */
export interface Cluster {
  readonly backend: 'local' | 'redis'
  /** Starts telling `events` what happens in the cluster. */
  attach (events: ClusterEvents): void
  /** The user's first connection on this node opened; resolves once other nodes route their messages here. */
  join (userId: number): Promise<void>
  /** The user's last connection on this node closed. */
  leave (userId: number): void
  /** Hands a stored message to the other nodes where its recipient or sender is connected. */
  publish (message: EncodedMessage): void
  /** Ends a session's sockets on every node (this one included). */
  revokeSession (userId: number, sessionId: string): void
  isOnline (userId: number): Promise<boolean>
  onlineStates (userIds: readonly number[]): Promise<boolean[]>
  onlineUsers (page: { after: number, limit: number }): Promise<OnlinePage>
  /** Nodes alive at the last look (1 without Redis). */
  nodeCount (): number
  /** Resolves while messages between nodes flow; rejects while the bus is down. */
  check (): Promise<void>
  /** Leaves the cluster: this node's users go offline at once and nothing of it stays behind. */
  close (): Promise<void>
}

/** The cluster of one node: presence is this node's connections, and there is no one to route to. */
export function createLocalCluster (): Cluster {
  const online = new Set<number>()
  let events: ClusterEvents | undefined

  return {
    backend: 'local',
    attach (listener) { events = listener },
    async join (userId) {
      online.add(userId)
      events?.presence(userId, true)
    },
    leave (userId) {
      if (online.delete(userId)) events?.presence(userId, false)
    },
    publish () {},
    revokeSession (userId, sessionId) { events?.sessionRevoked(userId, sessionId) },
    async isOnline (userId) { return online.has(userId) },
    async onlineStates (userIds) { return userIds.map((userId) => online.has(userId)) },
    async onlineUsers ({ after, limit }) {
      const userIds = [...online].filter((id) => id > after).sort((a, b) => a - b).slice(0, limit)
      return { count: online.size, userIds }
    },
    nodeCount: () => 1,
    check: async () => {},
    async close () { online.clear() }
  }
}
