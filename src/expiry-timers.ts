/** Timers longer than this overflow Node's 32-bit delay; re-armed when they fire early. */
const MAX_TIMER_MS = 2_147_483_647

/**
 * Many deadlines behind one timer: each item is expired once its deadline
 * (a `clock` time, Date.now() by default) has passed. The timer is armed for
 * the earliest deadline only, and is unref'd: it never holds a process open.
 *
 * For the access-token expiry of every socket, which would otherwise cost
 * each idle socket a timer of its own. Items are kept by deadline (the tokens
 * of one TTL share the second they expire in) and the deadlines in a
 * min-heap, so adding, removing and expiring cost no scan of every item.
 */
export class ExpiryTimers<T> {
  /**
   * Items by deadline. A deadline whose items were all removed stays until it
   * passes, so that the heap holds each deadline once and no more.
   */
  private readonly byDeadline = new Map<number, Set<T>>()
  /** The keys of `byDeadline`, as a binary min-heap. */
  private readonly deadlines: number[] = []
  private readonly expire: (item: T) => void
  private readonly clock: () => number
  private timer: NodeJS.Timeout | undefined = undefined
  /** The deadline the timer is armed for. */
  private armedFor = Infinity
  private count = 0

  constructor (expire: (item: T) => void, clock: () => number = Date.now) {
    this.expire = expire
    this.clock = clock
  }

  /** Expires `item` once `deadline` has passed (removed with the same deadline). */
  add (item: T, deadline: number): void {
    let items = this.byDeadline.get(deadline)
    if (items === undefined) {
      items = new Set()
      this.byDeadline.set(deadline, items)
      this.push(deadline)
    }
    if (items.has(item)) return
    items.add(item)
    this.count++
    if (deadline < this.armedFor) this.arm(deadline)
  }

  /** Forgets `item`, added with `deadline`; one that was not there (or has expired) is ignored. */
  delete (item: T, deadline: number): void {
    if (this.byDeadline.get(deadline)?.delete(item) !== true) return
    // None left: the deadlines left are all empty, and the timer must not keep its owner alive.
    if (--this.count === 0) this.reset()
  }

  private reset (): void {
    clearTimeout(this.timer)
    this.timer = undefined
    this.armedFor = Infinity
    this.byDeadline.clear()
    this.deadlines.length = 0
  }

  /** Items still to expire. */
  get size (): number {
    return this.count
  }

  private arm (deadline: number): void {
    clearTimeout(this.timer)
    this.armedFor = deadline
    this.timer = setTimeout(this.fire, Math.min(Math.max(deadline - this.clock(), 0), MAX_TIMER_MS))
    this.timer.unref()
  }

  private readonly fire = (): void => {
    this.timer = undefined
    this.armedFor = Infinity
    const now = this.clock()
    // What expiring adds at a deadline already passed comes up in this same loop.
    for (let deadline = this.deadlines[0]; deadline !== undefined && deadline <= now; deadline = this.deadlines[0]) {
      this.pop()
      const items = this.byDeadline.get(deadline) ?? []
      this.byDeadline.delete(deadline)
      for (const item of items) {
        this.count--
        this.expire(item)
      }
    }
    if (this.count === 0) {
      this.reset()
      return
    }
    const next = this.deadlines[0]
    if (next !== undefined && next < this.armedFor) this.arm(next)
  }

  private push (deadline: number): void {
    const heap = this.deadlines
    let index = heap.push(deadline) - 1
    while (index > 0) {
      const parent = (index - 1) >> 1
      const above = heap[parent] as number
      if (above <= deadline) break
      heap[index] = above
      index = parent
    }
    heap[index] = deadline
  }

  private pop (): void {
    const heap = this.deadlines
    const last = heap.pop() as number
    if (heap.length === 0) return
    let index = 0
    for (;;) {
      const left = 2 * index + 1
      if (left >= heap.length) break
      const right = left + 1
      const child = right < heap.length && (heap[right] as number) < (heap[left] as number) ? right : left
      const smaller = heap[child] as number
      if (smaller >= last) break
      heap[index] = smaller
      index = child
    }
    heap[index] = last
  }
}
