/**
 * Group commit: items handed to `add` in the same turn of the event loop, or
 * while the previous flush is still running, are written together by one
 * `flush` call. One flush runs at a time, so batches land in the order their
 * items were added, and the store sees many rows per statement under load
 * without any item waiting on a timer.
 */
export function createBatcher<Item, Result> ({ flush, maxBatch, maxWeight = Infinity, weigh = () => 0 }: {
  flush: (items: Item[]) => Promise<Result[]>
  /** Items per flush at most. */
  maxBatch: number
  /** Total weight per flush at most (one item alone may exceed it), e.g. bytes per statement. */
  maxWeight?: number
  weigh?: (item: Item) => number
}) {
  interface Waiting {
    item: Item
    resolve: (result: Result) => void
    reject: (error: unknown) => void
  }

  let queue: Waiting[] = []
  let running: Promise<void> | null = null
  let scheduled = false

  async function flushOne (batch: Waiting[]): Promise<void> {
    try {
      const results = await flush(batch.map(({ item }) => item))
      if (results.length !== batch.length) throw new Error(`flush returned ${results.length} results for ${batch.length} items`)
      batch.forEach((waiting, index) => waiting.resolve(results[index] as Result))
    } catch (error) {
      for (const waiting of batch) waiting.reject(error)
    }
  }

  async function run (): Promise<void> {
    while (queue.length > 0) {
      let size = 0
      let weight = 0
      while (size < queue.length && size < maxBatch) {
        weight += weigh((queue[size] as Waiting).item)
        if (size > 0 && weight > maxWeight) break
        size++
      }
      const batch = size === queue.length ? queue : queue.slice(0, size)
      queue = size === queue.length ? [] : queue.slice(size)
      await flushOne(batch)
    }
    running = null
  }

  function start (): void {
    scheduled = false
    if (running === null && queue.length > 0) running = run()
  }

  return {
    add (item: Item): Promise<Result> {
      return new Promise<Result>((resolve, reject) => {
        queue.push({ item, resolve, reject })
        // While a flush runs, the loop in `run` picks the item up when it ends.
        if (running === null && !scheduled) {
          scheduled = true
          setImmediate(start)
        }
      })
    },

    /** Resolves once everything added so far has been flushed. */
    async drain (): Promise<void> {
      for (;;) {
        if (running !== null) await running
        else if (queue.length > 0 || scheduled) await new Promise((resolve) => setImmediate(resolve))
        else return
      }
    },

    get pending (): number {
      return queue.length
    }
  }
}

export type Batcher<Item, Result> = ReturnType<typeof createBatcher<Item, Result>>
