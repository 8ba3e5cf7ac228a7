import { test } from 'tap'
import { createBatcher } from '../../src/batcher.js'
import { rejection } from '../helper.js'

/** Lets every queued promise callback run, and one turn of the event loop pass. */
async function settled (): Promise<void> {
  await new Promise((resolve) => setImmediate(resolve))
}

interface HeldFlush {
  items: number[]
  resolve: (results: string[]) => void
  reject: (error: unknown) => void
}

/** A flush whose calls wait until the test answers them; `call(n)` resolves once the n-th (from 0) has started. */
function heldFlush () {
  const calls: HeldFlush[] = []
  const wake: Array<() => void> = []
  return {
    calls,
    flush: (items: number[]) => new Promise<string[]>((resolve, reject) => {
      calls.push({ items: [...items], resolve, reject })
      for (const waiter of wake.splice(0)) waiter()
    }),
    async call (index: number): Promise<HeldFlush> {
      while (calls.length <= index) await new Promise<void>((resolve) => wake.push(resolve))
      return calls[index] as HeldFlush
    }
  }
}

const label = (item: number): string => `item ${item}`

/** A flush that answers at once and records its batches. */
function recordingFlush () {
  const batches: number[][] = []
  return {
    batches,
    flush: async (items: number[]) => {
      batches.push([...items])
      return items.map(label)
    }
  }
}

test('items added in one tick are flushed together, each add resolving with its own result', async (t) => {
  const { batches, flush } = recordingFlush()
  const batcher = createBatcher({ flush, maxBatch: 100 })
  const results = await Promise.all([1, 2, 3, 4, 5].map((item) => batcher.add(item)))
  t.strictSame(batches, [[1, 2, 3, 4, 5]], 'one flush for the whole tick')
  t.strictSame(results, ['item 1', 'item 2', 'item 3', 'item 4', 'item 5'])
})

test('results are matched to items by position, not by order of settling', async (t) => {
  const batcher = createBatcher({ flush: async (items: number[]) => items.map((item) => item * 10), maxBatch: 100 })
  const sevenThenThree = [batcher.add(7), batcher.add(3)]
  t.strictSame(await Promise.all(sevenThenThree), [70, 30])
})

test('nothing is flushed in the tick an item is added', async (t) => {
  const { batches, flush } = recordingFlush()
  const batcher = createBatcher({ flush, maxBatch: 100 })
  const added = batcher.add(1)
  await Promise.resolve()
  t.strictSame(batches, [], 'the batch stays open for the rest of the tick')
  await added
  t.strictSame(batches, [[1]])
})

test('items added while a flush runs wait for it and go in the next batch, in order', async (t) => {
  const held = heldFlush()
  const batcher = createBatcher({ flush: held.flush, maxBatch: 100 })
  const first = batcher.add(1)
  const running = await held.call(0)
  t.strictSame(running.items, [1])
  const later = [batcher.add(2), batcher.add(3)]
  await settled()
  const more = batcher.add(4)
  // Waiting for what must not happen: a second flush starting while the first runs.
  await settled()
  t.equal(held.calls.length, 1, 'one flush at a time')
  running.resolve(['one'])
  t.equal(await first, 'one')
  const next = await held.call(1)
  t.strictSame(next.items, [2, 3, 4], 'everything that arrived meanwhile, in the order it was added')
  next.resolve(['two', 'three', 'four'])
  t.strictSame(await Promise.all([...later, more]), ['two', 'three', 'four'])
  t.equal(held.calls.length, 2)
})

test('maxBatch splits a big tick into batches in order', async (t) => {
  const { batches, flush } = recordingFlush()
  const batcher = createBatcher({ flush, maxBatch: 2 })
  const results = await Promise.all([1, 2, 3, 4, 5].map((item) => batcher.add(item)))
  t.strictSame(batches, [[1, 2], [3, 4], [5]])
  t.strictSame(results, ['item 1', 'item 2', 'item 3', 'item 4', 'item 5'])
})

test('maxWeight caps a batch by weight; an item heavier than the cap still goes alone', async (t) => {
  const { batches, flush } = recordingFlush()
  // Each item weighs its own value.
  const batcher = createBatcher({ flush, maxBatch: 100, maxWeight: 10, weigh: (item: number) => item })
  const results = await Promise.all([4, 5, 2, 30, 1, 9, 1].map((item) => batcher.add(item)))
  t.strictSame(batches, [[4, 5], [2], [30], [1, 9], [1]])
  t.strictSame(results, ['item 4', 'item 5', 'item 2', 'item 30', 'item 1', 'item 9', 'item 1'])
})

test('maxBatch also splits what piled up during a flush', async (t) => {
  const held = heldFlush()
  const batcher = createBatcher({ flush: held.flush, maxBatch: 3 })
  const all = [batcher.add(0)]
  const first = await held.call(0)
  for (let item = 1; item <= 7; item++) all.push(batcher.add(item))
  first.resolve(['0'])
  for (const [index, items] of [[1, 2, 3], [4, 5, 6], [7]].entries()) {
    const call = await held.call(index + 1)
    t.strictSame(call.items, items)
    call.resolve(items.map(String))
  }
  t.strictSame(await Promise.all(all), ['0', '1', '2', '3', '4', '5', '6', '7'])
})

test('a failing flush rejects exactly its own items, and later batches still work', async (t) => {
  const held = heldFlush()
  const batcher = createBatcher({ flush: held.flush, maxBatch: 100 })
  const failing = [batcher.add(1), batcher.add(2)]
  const firstCall = await held.call(0)
  const next = batcher.add(3)
  const failure = new Error('insert failed')
  firstCall.reject(failure)
  for (const add of failing) t.equal(await rejection(t, add, Error), failure, 'the flush error itself')
  const secondCall = await held.call(1)
  t.strictSame(secondCall.items, [3], 'the next batch is flushed on its own')
  secondCall.resolve(['three'])
  t.equal(await next, 'three')

  const afterwards = batcher.add(4)
  const thirdCall = await held.call(2)
  thirdCall.resolve(['four'])
  t.equal(await afterwards, 'four', 'and so is one added once all was idle again')
})

test('a flush that throws before returning a promise rejects its items', async (t) => {
  const failure = new Error('bad statement')
  let calls = 0
  const batcher = createBatcher<number, string>({
    flush: (items) => {
      if (++calls === 1) throw failure
      return Promise.resolve(items.map(label))
    },
    maxBatch: 100
  })
  t.equal(await rejection(t, batcher.add(1), Error), failure)
  t.equal(await batcher.add(2), 'item 2', 'the batcher keeps going')
})

test('a flush returning the wrong number of results rejects its items', async (t) => {
  const batcher = createBatcher<number, string>({ flush: async (items) => items.slice(1).map(label), maxBatch: 100 })
  const adds = [batcher.add(1), batcher.add(2)]
  for (const add of adds) {
    const error = await rejection(t, add, Error)
    t.match(error.message, /1 results for 2 items/)
  }
  const tooMany = createBatcher<number, string>({ flush: async (items) => [...items, 0].map(label), maxBatch: 100 })
  t.match((await rejection(t, tooMany.add(1), Error)).message, /2 results for 1 items/)
})

test('drain waits for everything added, including items not yet flushed', async (t) => {
  const held = heldFlush()
  const batcher = createBatcher({ flush: held.flush, maxBatch: 100 })
  await batcher.drain()
  t.pass('an idle batcher drains at once')

  const adds = [batcher.add(1)]
  let drained = false
  const draining = batcher.drain().then(() => { drained = true })
  const first = await held.call(0)
  adds.push(batcher.add(2))
  first.resolve(['one'])
  const second = await held.call(1)
  // Waiting for what must not happen: drain resolving while the second batch is still being written.
  await settled()
  t.equal(drained, false, 'not while a batch is being flushed')
  second.resolve(['two'])
  await draining
  t.equal(drained, true)
  t.strictSame(await Promise.all(adds), ['one', 'two'])
  t.equal(batcher.pending, 0)
})

test('drain does not reject when a flush failed', async (t) => {
  const batcher = createBatcher<number, string>({ flush: async () => { throw new Error('down') }, maxBatch: 100 })
  const rejected = rejection(t, batcher.add(1), Error)
  await batcher.drain()
  t.match((await rejected).message, 'down', 'the item still gets its rejection')
})

test('pending counts the items waiting for a flush', async (t) => {
  const held = heldFlush()
  const batcher = createBatcher({ flush: held.flush, maxBatch: 100 })
  t.equal(batcher.pending, 0)
  const adds = [batcher.add(1), batcher.add(2), batcher.add(3)]
  t.equal(batcher.pending, 3, 'queued for the next flush')
  const first = await held.call(0)
  t.equal(batcher.pending, 0, 'items being flushed are no longer pending')
  adds.push(batcher.add(4), batcher.add(5))
  t.equal(batcher.pending, 2, 'items waiting behind the running flush')
  first.resolve(['1', '2', '3'])
  const second = await held.call(1)
  t.equal(batcher.pending, 0)
  second.resolve(['4', '5'])
  t.strictSame(await Promise.all(adds), ['1', '2', '3', '4', '5'])
  t.equal(batcher.pending, 0)
})
