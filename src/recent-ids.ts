import { compareIds, firstIdAt } from './ids.js'

/** Adds between two looks at the oldest entries. */
const PRUNE_EVERY = 64

/**
 * The message ids one socket was sent lately, so that a second copy of one
 * (read by a replay and also routed live, or replayed again after a bus
 * outage) is dropped. Ids older than the window are forgotten, unless a
 * floor holds them: while a replay after an outage may still meet them.
 */
export function createRecentIds ({ windowMs, clock = Date.now }: { windowMs: number, clock?: () => number }) {
  // A Set iterates in insertion order, which is close to id order: the oldest come first.
  const ids = new Set<string>()
  let floor: string | null = null
  let adds = 0
  let threshold = firstIdAt(clock() - windowMs)

  function keepFrom (): string {
    return floor !== null && compareIds(floor, threshold) < 0 ? floor : threshold
  }

  function prune (): void {
    threshold = firstIdAt(clock() - windowMs)
    const oldestKept = keepFrom()
    for (const id of ids) {
      if (compareIds(id, oldestKept) >= 0) break
      ids.delete(id)
    }
  }

  return {
    add (id: string): void {
      if (++adds % PRUNE_EVERY === 0) prune()
      // Too old for a second copy to come: not worth remembering.
      if (compareIds(id, keepFrom()) < 0) return
      ids.add(id)
    },

    has (id: string): boolean {
      return ids.has(id)
    },

    /** Keeps every id from `id` on (null: back to the window alone). */
    holdFrom (id: string | null): void {
      floor = id
    },

    /** Keeps every id from `id` on as well: lowers the floor, never raises it. */
    keepFrom (id: string): void {
      if (floor === null || compareIds(id, floor) < 0) floor = id
    },

    get size (): number {
      return ids.size
    }
  }
}

export type RecentIds = ReturnType<typeof createRecentIds>
