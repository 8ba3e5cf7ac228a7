import type { Pool, ResultSetHeader, RowDataPacket } from 'mysql2/promise'
import { firstIdAt, idTime } from '../ids.js'
import { REF_WINDOW_MS, type HistoryQuery, type MessageStore, type SaveOutcome, type SinceQuery, type StoredMessage } from './messages-memory.js'

/** A message as read back; the id as text, so it never passes through a double whatever the pool's number options. */
const COLUMNS = 'CAST(id AS CHAR) AS id_text, sender_id, recipient_id, body, sent_at, client_ref'

/**
 * The update runs only for a row that was not inserted (an id or a
 * sender's ref already there); it changes nothing but sets LAST_INSERT_ID,
 * which the result reports as `insertId`. That tells "some row was skipped"
 * whatever the connection's FOUND_ROWS flag (mysql2 sets it by default, and
 * with it a skipped row counts in affectedRows as if inserted).
 */
const INSERT_SQL = `INSERT INTO messages (id, sender_id, recipient_id, user_low, user_high, body, sent_at, client_ref)
  VALUES ? ON DUPLICATE KEY UPDATE id = LAST_INSERT_ID(id)`

/**
 * How far back the first `forgetRefsBefore` of a process clears; each later
 * call starts where the one before stopped, so a call costs the rows since
 * then, not the table. Refs further back that no earlier process cleared (a
 * long outage) stay in the table but never match: save checks the age of
 * every ref it finds.
 */
const FIRST_CLEARING_MS = 60 * 60 * 1000

/** Insert-and-classify rounds per save: a second only when an expired ref blocked a row. */
const MAX_SAVE_ROUNDS = 3

interface MessageRow extends RowDataPacket {
  id_text: string
  sender_id: number | string
  recipient_id: number | string
  body: string
  sent_at: Date
  client_ref: Buffer | null
}

function toMessage (row: MessageRow): StoredMessage {
  return {
    id: row.id_text,
    from: Number(row.sender_id),
    to: Number(row.recipient_id),
    text: row.body,
    sentAt: row.sent_at.toISOString(),
    ref: row.client_ref === null ? null : row.client_ref.toString('utf8')
  }
}

function toRow (message: StoredMessage): unknown[] {
  return [
    BigInt(message.id),
    message.from,
    message.to,
    Math.min(message.from, message.to),
    Math.max(message.from, message.to),
    message.text,
    new Date(message.sentAt),
    message.ref
  ]
}

/** A string as utf8mb4 gives it back: a lone surrogate has no UTF-8 form and comes back as U+FFFD. */
function asStored (text: string): string {
  return Buffer.from(text, 'utf8').toString('utf8')
}

function refKey (from: number, ref: string): string {
  return `${from}:${ref}`
}

/** Whether a row with the message's id is that message (a save retried) rather than another one. */
function isSameMessage (row: StoredMessage, message: StoredMessage): boolean {
  return row.from === message.from && row.to === message.to && row.text === asStored(message.text) &&
    Date.parse(row.sentAt) === Date.parse(message.sentAt) &&
    // The row's ref may have been cleared since.
    (row.ref === null || (message.ref !== null && row.ref === asStored(message.ref)))
}

/**
 * Messages in MySQL/MariaDB (tables `messages` and `message_cursors`,
 * created by the migrations). A message's age, for the ref window, is the
 * time in its id; `clock` is the time now.
 */
export function createMysqlMessageStore (pool: Pool, { clock = Date.now }: { clock?: () => number } = {}): MessageStore {
  let clearedBelow: bigint | undefined

  /** The stored rows with any of the batch's ids, and those holding any of its (sender, ref) pairs. */
  async function findExisting (batch: readonly StoredMessage[]): Promise<{ byId: Map<string, StoredMessage>, byRef: Map<string, StoredMessage> }> {
    const pairs = batch.flatMap((message) => message.ref === null ? [] : [[message.from, message.ref]])
    const values: unknown[] = [batch.map((message) => BigInt(message.id))]
    let sql = `SELECT ${COLUMNS} FROM messages WHERE id IN (?)`
    if (pairs.length > 0) {
      sql += ` UNION ALL SELECT ${COLUMNS} FROM messages WHERE (sender_id, client_ref) IN (?)`
      values.push(pairs)
    }
    const [rows] = await pool.query<MessageRow[]>(sql, values)
    const byId = new Map<string, StoredMessage>()
    const byRef = new Map<string, StoredMessage>()
    for (const message of rows.map(toMessage)) {
      byId.set(message.id, message)
      if (message.ref !== null) byRef.set(refKey(message.from, message.ref), message)
    }
    return { byId, byRef }
  }

  return {
    /**
     * Stores a batch with one INSERT; a resend of a ref stored within the
     * window is not stored again. Rejects when an id is taken by a different
     * message (the rest of the batch may then be stored).
     */
    async save (messages: readonly StoredMessage[]): Promise<SaveOutcome[]> {
      const now = clock()
      const outcomes: Array<SaveOutcome | undefined> = new Array(messages.length)
      let pending = messages.map((_, index) => index)

      for (let round = 1; pending.length > 0; round++) {
        if (round > MAX_SAVE_ROUNDS) throw new Error(`messages still blocked by expired refs after ${MAX_SAVE_ROUNDS} attempts`)
        const batch = pending.map((index) => messages[index] as StoredMessage)
        const [result] = await pool.query<ResultSetHeader>(INSERT_SQL, [batch.map(toRow)])
        if (result.affectedRows === batch.length && String(result.insertId) === '0') {
          for (const index of pending) outcomes[index] = { message: { ...(messages[index] as StoredMessage) }, duplicate: false }
          break
        }

        // Some rows were skipped: find out which, and why.
        const existing = await findExisting(batch)
        const retry: number[] = []
        const expiredIds = new Set<string>()
        for (const index of pending) {
          const message = messages[index] as StoredMessage
          const sameId = existing.byId.get(message.id)
          if (sameId !== undefined) {
            if (!isSameMessage(sameId, message)) throw new Error(`message id ${message.id} is already taken by a different message`)
            outcomes[index] = { message: { ...message }, duplicate: false }
            continue
          }
          const original = message.ref === null ? undefined : existing.byRef.get(refKey(message.from, asStored(message.ref)))
          if (original === undefined) throw new Error(`message ${message.id} was not stored and is not a resend`)
          if (now - idTime(original.id) < REF_WINDOW_MS) {
            outcomes[index] = { message: { ...original }, duplicate: true }
          } else {
            // Its ref expired but was not cleared yet: clear it and store the message after all.
            expiredIds.add(original.id)
            retry.push(index)
          }
        }
        if (expiredIds.size > 0) {
          await pool.query('UPDATE messages SET client_ref = NULL WHERE id IN (?)', [[...expiredIds].map(BigInt)])
        }
        pending = retry
      }
      return outcomes as SaveOutcome[]
    },

    /** The newest `limit` messages between two users before `before`, oldest first. */
    async history ({ userId, peerId, before, limit }: HistoryQuery): Promise<StoredMessage[]> {
      const conversation = [Math.min(userId, peerId), Math.max(userId, peerId)]
      const [rows] = before === undefined
        ? await pool.query<MessageRow[]>(
          `SELECT ${COLUMNS} FROM messages WHERE user_low = ? AND user_high = ? ORDER BY id DESC LIMIT ?`,
          [...conversation, limit])
        : await pool.query<MessageRow[]>(
          `SELECT ${COLUMNS} FROM messages WHERE user_low = ? AND user_high = ? AND id < ? ORDER BY id DESC LIMIT ?`,
          [...conversation, BigInt(before), limit])
      return rows.map(toMessage).reverse()
    },

    /** Messages to or from a user after `after`, oldest first, at most `limit`. */
    async since ({ userId, after, limit }: SinceQuery): Promise<StoredMessage[]> {
      const afterId = BigInt(after)
      // One index per branch; a message to oneself comes from the first only.
      const [rows] = await pool.query<MessageRow[]>(
        `(SELECT id, ${COLUMNS} FROM messages WHERE recipient_id = ? AND id > ? ORDER BY id LIMIT ?)
        UNION ALL
        (SELECT id, ${COLUMNS} FROM messages WHERE sender_id = ? AND recipient_id <> ? AND id > ? ORDER BY id LIMIT ?)
        ORDER BY id LIMIT ?`,
        [userId, afterId, limit, userId, userId, afterId, limit, limit])
      return rows.map(toMessage)
    },

    /**
     * Forgets the refs of messages stored before `epochMs`: a resend of one is
     * a new message, and they read back with a null ref. Refs past REF_WINDOW_MS never match anyway; this clears
     * them (the caller passes `now - REF_WINDOW_MS` now and then).
     */
    async forgetRefsBefore (epochMs: number): Promise<void> {
      const below = BigInt(firstIdAt(epochMs))
      const from = clearedBelow ?? BigInt(firstIdAt(epochMs - FIRST_CLEARING_MS))
      if (below <= from) return
      await pool.query('UPDATE messages SET client_ref = NULL WHERE id >= ? AND id < ? AND client_ref IS NOT NULL', [from, below])
      if (clearedBelow === undefined || below > clearedBelow) clearedBelow = below
    },

    /** The id of the last message the user is known to have received, if any. */
    async seenThrough (userId: number): Promise<string | null> {
      const [rows] = await pool.query<RowDataPacket[]>('SELECT CAST(seen_through AS CHAR) AS seen_through FROM message_cursors WHERE user_id = ?', [userId])
      const row = rows[0]
      return row === undefined ? null : String(row.seen_through)
    },

    /** Records that the user has received everything up to `id` (never moves back). */
    async markSeen (userId: number, id: string): Promise<void> {
      const seen = BigInt(id)
      await pool.query(
        'INSERT INTO message_cursors (user_id, seen_through) VALUES (?, ?) ON DUPLICATE KEY UPDATE seen_through = GREATEST(seen_through, ?)',
        [userId, seen, seen])
    },

    /** Moves a user's cursor back to `id` if it is past it (a message before it was never delivered). */
    async rewindSeen (userId: number, id: string): Promise<void> {
      const seen = BigInt(id)
      await pool.query('UPDATE message_cursors SET seen_through = LEAST(seen_through, ?) WHERE user_id = ?', [seen, userId])
    }
  }
}
