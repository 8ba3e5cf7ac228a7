import { compareIds } from '../ids.js'

/** A message as it is stored: what the wire carries, plus the sender's own reference. */
export interface StoredMessage {
  /** Server id: a 64-bit number in decimal, unique, sorting by time. */
  id: string
  from: number
  to: number
  text: string
  /** ISO 8601, millisecond precision. */
  sentAt: string
  /** The client's `id` for the message, used to recognise a resend; null when none was given. */
  ref: string | null
}

/**
 * What became of one message handed to `save`: stored, or recognised as a
 * resend (same sender and ref within the dedupe window) of `message`, which
 * is then the original as stored.
 */
export interface SaveOutcome {
  message: StoredMessage
  duplicate: boolean
}

/** How long a client ref identifies its message for resends. */
export const REF_WINDOW_MS = 24 * 60 * 60 * 1000

export interface HistoryQuery {
  userId: number
  peerId: number
  /** Only messages with a smaller id; none: from the newest. */
  before?: string
  limit: number
}

export interface SinceQuery {
  userId: number
  /** Only messages with a larger id. */
  after: string
  limit: number
}

function refKey (from: number, ref: string): string {
  return `${from}:${ref}`
}

function conversationKey (a: number, b: number): string {
  return a < b ? `${a}:${b}` : `${b}:${a}`
}

/** Index of the first message whose id is greater than `id` (binary search). */
function firstAfter (messages: readonly StoredMessage[], id: string): number {
  let low = 0
  let high = messages.length
  while (low < high) {
    const middle = (low + high) >>> 1
    if (compareIds((messages[middle] as StoredMessage).id, id) <= 0) low = middle + 1
    else high = middle
  }
  return low
}

/** Index of the first message whose id is not smaller than `id`. */
function firstAtOrAfter (messages: readonly StoredMessage[], id: string): number {
  let low = 0
  let high = messages.length
  while (low < high) {
    const middle = (low + high) >>> 1
    if (compareIds((messages[middle] as StoredMessage).id, id) < 0) low = middle + 1
    else high = middle
  }
  return low
}

/** Inserts keeping id order; ids almost always arrive in order, so this is an append. */
function insertSorted (messages: StoredMessage[], message: StoredMessage): void {
  const last = messages.at(-1)
  if (last === undefined || compareIds(last.id, message.id) < 0) messages.push(message)
  else messages.splice(firstAfter(messages, message.id), 0, message)
}

/**
 * Messages kept in this process: per user (to or from them) and per
 * conversation, each in id order, plus the refs of the last 24 hours.
 */
export function createMemoryMessageStore ({ clock = Date.now }: { clock?: () => number } = {}) {
  const byUser = new Map<number, StoredMessage[]>()
  const byConversation = new Map<string, StoredMessage[]>()
  const byRef = new Map<string, { message: StoredMessage, storedAt: number }>()
  const seen = new Map<number, string>()
  let saves = 0

  function listOf<K> (map: Map<K, StoredMessage[]>, key: K): StoredMessage[] {
    let list = map.get(key)
    if (list === undefined) {
      list = []
      map.set(key, list)
    }
    return list
  }

  function dropRefsBefore (epochMs: number): void {
    // Map iteration follows insertion order, which is storage order.
    for (const [key, { message, storedAt }] of byRef) {
      if (storedAt >= epochMs) break
      message.ref = null
      byRef.delete(key)
    }
  }

  function store (message: StoredMessage, now: number): SaveOutcome {
    if (message.ref !== null) {
      const key = refKey(message.from, message.ref)
      const original = byRef.get(key)
      if (original !== undefined) {
        if (now - original.storedAt < REF_WINDOW_MS) return { message: { ...original.message }, duplicate: true }
        // Expired: the ref passes to the new message.
        original.message.ref = null
        byRef.delete(key)
      }
      byRef.set(key, { message, storedAt: now })
    }
    insertSorted(listOf(byUser, message.from), message)
    if (message.to !== message.from) insertSorted(listOf(byUser, message.to), message)
    insertSorted(listOf(byConversation, conversationKey(message.from, message.to)), message)
    return { message: { ...message }, duplicate: false }
  }

  return {
    /** Stores a batch in order; a resend of a stored ref is not stored again. */
    async save (messages: readonly StoredMessage[]): Promise<SaveOutcome[]> {
      const now = clock()
      if (++saves % 1000 === 0) dropRefsBefore(now - REF_WINDOW_MS)
      return messages.map((message) => store({ ...message }, now))
    },

    /** The newest `limit` messages between two users before `before`, oldest first. */
    async history ({ userId, peerId, before, limit }: HistoryQuery): Promise<StoredMessage[]> {
      const messages = byConversation.get(conversationKey(userId, peerId)) ?? []
      const end = before === undefined ? messages.length : firstAtOrAfter(messages, before)
      return messages.slice(Math.max(0, end - limit), end).map((message) => ({ ...message }))
    },

    /** Messages to or from a user after `after`, oldest first, at most `limit`. */
    async since ({ userId, after, limit }: SinceQuery): Promise<StoredMessage[]> {
      const messages = byUser.get(userId) ?? []
      const start = firstAfter(messages, after)
      return messages.slice(start, start + limit).map((message) => ({ ...message }))
    },

    /**
     * Forgets the refs of messages stored before `epochMs`: a resend of one is
     * a new message, and they read back with a null ref (as does a message
     * whose expired ref passed to a new one). Refs past REF_WINDOW_MS never
     * match anyway; this lets them go (the caller passes `now - REF_WINDOW_MS`
     * now and then).
     */
    async forgetRefsBefore (epochMs: number): Promise<void> {
      dropRefsBefore(epochMs)
    },

    /** The id of the last message the user is known to have received, if any. */
    async seenThrough (userId: number): Promise<string | null> {
      return seen.get(userId) ?? null
    },

    /** Records that the user has received everything up to `id` (never moves back). */
    async markSeen (userId: number, id: string): Promise<void> {
      const current = seen.get(userId)
      if (current === undefined || compareIds(current, id) < 0) seen.set(userId, id)
    },

    /** Moves a user's cursor back to `id` if it is past it (a message before it was never delivered). */
    async rewindSeen (userId: number, id: string): Promise<void> {
      const current = seen.get(userId)
      if (current !== undefined && compareIds(id, current) < 0) seen.set(userId, id)
    }
  }
}

export type MessageStore = ReturnType<typeof createMemoryMessageStore>
