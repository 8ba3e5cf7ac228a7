/**
 * Message ids: 64-bit numbers written in decimal, made of the millisecond
 * (since 2024-01-01), a 10-bit node id and a 12-bit sequence. They are unique
 * per node id and sort in time order; a burst beyond 4096 ids in one
 * millisecond borrows the next millisecond rather than repeat or go backwards.
 */
const EPOCH_MS = Date.UTC(2024, 0, 1)
const NODE_BITS = 10n
const SEQUENCE_BITS = 12n
const MAX_SEQUENCE = (1 << Number(SEQUENCE_BITS)) - 1
export const MAX_NODE_ID = (1 << Number(NODE_BITS)) - 1

export function createIdGenerator ({ nodeId, clock = Date.now }: { nodeId: number, clock?: () => number }) {
  if (!Number.isInteger(nodeId) || nodeId < 0 || nodeId > MAX_NODE_ID) throw new RangeError(`nodeId must be an integer from 0 to ${MAX_NODE_ID}`)
  const node = BigInt(nodeId) << SEQUENCE_BITS
  let lastMs = -1
  let sequence = 0
  let prefix = 0n

  return {
    next (): string {
      const now = clock() - EPOCH_MS
      if (now > lastMs) {
        lastMs = now
        sequence = 0
        prefix = (BigInt(lastMs) << (NODE_BITS + SEQUENCE_BITS)) | node
      } else if (++sequence > MAX_SEQUENCE) {
        lastMs += 1
        sequence = 0
        prefix = (BigInt(lastMs) << (NODE_BITS + SEQUENCE_BITS)) | node
      }
      return (prefix | BigInt(sequence)).toString()
    }
  }
}

/** The time an id was made, in epoch milliseconds. */
export function idTime (id: string): number {
  return Number(BigInt(id) >> (NODE_BITS + SEQUENCE_BITS)) + EPOCH_MS
}

/** The smallest id any node can make in millisecond `epochMs`: every id made earlier is smaller. */
export function firstIdAt (epochMs: number): string {
  return (BigInt(Math.max(0, Math.floor(epochMs) - EPOCH_MS)) << (NODE_BITS + SEQUENCE_BITS)).toString()
}

/** The id just before `id` (a cursor that stops short of it). */
export function previousId (id: string): string {
  const value = BigInt(id)
  return (value > 0n ? value - 1n : 0n).toString()
}

/** Orders two ids numerically (they are decimal strings without leading zeros). */
export function compareIds (a: string, b: string): number {
  if (a.length !== b.length) return a.length - b.length
  return a < b ? -1 : a > b ? 1 : 0
}

const ID_PATTERN = /^(0|[1-9]\d{0,19})$/
const MAX_ID = (1n << 64n) - 1n

/** Whether `text` is a message id as clients may send it back (`since`, `before`). */
export function isMessageId (text: string): boolean {
  return ID_PATTERN.test(text) && BigInt(text) <= MAX_ID
}
