/**
 * What each benchmark message carries, and the per-pair bookkeeping that
 * turns arrivals into lost, duplicated and reordered counts. Pure: no
 * sockets, no clocks, so the tests can drive it.
 */

/** Every message text is exactly this many bytes (ASCII), the stamp padded. */
export const TEXT_BYTES = 256
const PADDING = '.'

/** What a message says about itself: the step it belongs to, its number within its pair, when it was meant to leave. */
export interface Stamp {
  step: number
  /** 1, 2, 3... per sender and recipient within one step. */
  seq: number
  /** `process.hrtime` in microseconds, shared by every process on the machine. */
  intendedMicros: number
}

/** `<step> <seq> <intended µs> ` padded to TEXT_BYTES. */
export function stampText ({ step, seq, intendedMicros }: Stamp): string {
  return `${step} ${seq} ${Math.round(intendedMicros)} `.padEnd(TEXT_BYTES, PADDING)
}

/** Reads the stamp at the start of `text`, from `start` on; null when it is not one of ours. */
export function readStamp (text: string, start = 0): Stamp | null {
  const first = text.indexOf(' ', start)
  const second = first === -1 ? -1 : text.indexOf(' ', first + 1)
  const third = second === -1 ? -1 : text.indexOf(' ', second + 1)
  if (third === -1) return null
  const step = Number(text.slice(start, first))
  const seq = Number(text.slice(first + 1, second))
  const intendedMicros = Number(text.slice(second + 1, third))
  if (!Number.isSafeInteger(step) || !Number.isSafeInteger(seq) || seq < 1 || !Number.isFinite(intendedMicros)) return null
  return { step, seq, intendedMicros }
}

export type Arrival = 'new' | 'late' | 'duplicate'

/**
 * One direction of one pair within one step: messages numbered 1, 2, 3...
 * A number past the highest seen opens a gap; a number inside a gap is a
 * reordered (late) arrival that closes it; any other number at or below
 * the highest was already had, so it is a duplicate.
 */
export function createSequenceTracker () {
  let highest = 0
  /** Numbers below `highest` not received yet. */
  const missing = new Set<number>()
  let unique = 0
  let duplicated = 0
  let reordered = 0

  return {
    receive (seq: number): Arrival {
      if (seq > highest) {
        for (let gap = highest + 1; gap < seq; gap++) missing.add(gap)
        highest = seq
        unique++
        return 'new'
      }
      if (missing.delete(seq)) {
        unique++
        reordered++
        return 'late'
      }
      duplicated++
      return 'duplicate'
    },

    /** Messages sent (1..sent) that never arrived. */
    lost (sent: number): number {
      return missing.size + Math.max(0, sent - highest)
    },

    get unique (): number { return unique },
    get duplicated (): number { return duplicated },
    get reordered (): number { return reordered }
  }
}

export type SequenceTracker = ReturnType<typeof createSequenceTracker>

/** Counts of one step, summed over pairs and then over generator processes. */
export interface DeliveryTally {
  sent: number
  /** First arrivals. */
  unique: number
  /** Never arrived. */
  lost: number
  /** Arrived, but only after the drain time that followed the last send. */
  late: number
  duplicated: number
  reordered: number
  /** Arrivals from a step that had already been counted. */
  stale: number
  /** Error frames, or acks that carried an error. */
  errors: number
  /** Frames no pair of this step explains (wrong sender, unreadable text). */
  unexpected: number
  /** Sockets the server closed while the step ran. */
  closed: number
}

export function emptyTally (): DeliveryTally {
  return { sent: 0, unique: 0, lost: 0, late: 0, duplicated: 0, reordered: 0, stale: 0, errors: 0, unexpected: 0, closed: 0 }
}

export function addTallies (a: DeliveryTally, b: DeliveryTally): DeliveryTally {
  return {
    sent: a.sent + b.sent,
    unique: a.unique + b.unique,
    lost: a.lost + b.lost,
    late: a.late + b.late,
    duplicated: a.duplicated + b.duplicated,
    reordered: a.reordered + b.reordered,
    stale: a.stale + b.stale,
    errors: a.errors + b.errors,
    unexpected: a.unexpected + b.unexpected,
    closed: a.closed + b.closed
  }
}

/** Nothing lost, doubled, reordered, refused or cut off (late is no failure here: the rate check sees it). */
export function isClean (tally: DeliveryTally): boolean {
  return tally.lost === 0 && tally.duplicated === 0 && tally.reordered === 0 &&
    tally.errors === 0 && tally.unexpected === 0 && tally.closed === 0
}
