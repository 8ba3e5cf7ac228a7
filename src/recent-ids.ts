import { compareIds, firstIdAt } from './ids.js'

/** Adds between two looks at the oldest entries. */
const PRUNE_EVERY = 64

/**
 * The message ids one socket was sent lately, so that a second copy of one
 * (read by a replay and also routed live, or replayed again after a bus
 * outage) is dropped. Ids older than the window are forgotten, unless a
 * floor holds them: while a replay after an outage may still meet them.
 *
 * A class, not a factory of closures, because every socket has one: its
 * methods are shared, and a socket that is sent nothing holds no set.
 */
class RecentIds {
  // A Set iterates in insertion order, which is close to id order: the oldest come first.
  #ids: Set<string> | null = null
  #floor: string | null = null
  #adds = 0
  #threshold: string
  readonly #windowMs: number
  readonly #clock: () => number

  constructor (windowMs: number, clock: () => number) {
    this.#windowMs = windowMs
    this.#clock = clock
    this.#threshold = firstIdAt(clock() - windowMs)
  }

  #keepFrom (): string {
    return this.#floor !== null && compareIds(this.#floor, this.#threshold) < 0 ? this.#floor : this.#threshold
  }

  #prune (ids: Set<string>): void {
    this.#threshold = firstIdAt(this.#clock() - this.#windowMs)
    const oldestKept = this.#keepFrom()
    for (const id of ids) {
      if (compareIds(id, oldestKept) >= 0) break
      ids.delete(id)
    }
  }

  add (id: string): void {
    const ids = this.#ids ??= new Set()
    if (++this.#adds % PRUNE_EVERY === 0) this.#prune(ids)
    // Too old for a second copy to come: not worth remembering.
    if (compareIds(id, this.#keepFrom()) < 0) return
    ids.add(id)
  }

  has (id: string): boolean {
    return this.#ids?.has(id) ?? false
  }

  /** Keeps every id from `id` on (null: back to the window alone). */
  holdFrom (id: string | null): void {
    this.#floor = id
  }

  /** Keeps every id from `id` on as well: lowers the floor, never raises it. */
  keepFrom (id: string): void {
    if (this.#floor === null || compareIds(id, this.#floor) < 0) this.#floor = id
  }

  get size (): number {
    return this.#ids?.size ?? 0
  }
}

export function createRecentIds ({ windowMs, clock = Date.now }: { windowMs: number, clock?: () => number }): RecentIds {
  return new RecentIds(windowMs, clock)
}

export type { RecentIds }
