import { test } from 'tap'
import { createTokenBucket } from '../../src/token-bucket.js'

/** A millisecond clock the test moves by hand. */
function manualClock () {
  const clock = { now: 1_000_000, read: () => clock.now }
  return clock
}

/** How many takes succeed in a row right now. */
function drain (bucket: { take: () => boolean }): number {
  let taken = 0
  while (bucket.take()) {
    taken++
    if (taken > 1000) throw new Error('the bucket never runs dry')
  }
  return taken
}

test('a full bucket allows a burst, then refuses', async (t) => {
  const clock = manualClock()
  const bucket = createTokenBucket({ ratePerSecond: 2, burst: 3, clock: clock.read })
  t.equal(bucket.take(), true)
  t.equal(bucket.take(), true)
  t.equal(bucket.take(), true)
  t.equal(bucket.take(), false, 'the fourth in the same instant is refused')
  t.equal(bucket.take(), false, 'and stays refused while time stands still')
})

test('tokens come back at the given rate', async (t) => {
  const clock = manualClock()
  const bucket = createTokenBucket({ ratePerSecond: 2, burst: 3, clock: clock.read })
  drain(bucket)
  clock.now += 499
  t.equal(bucket.take(), false, 'not quite one token after 499 ms at 2/s')
  clock.now += 1
  t.equal(bucket.take(), true, 'one token after 500 ms')
  t.equal(bucket.take(), false)
  clock.now += 1000
  t.equal(drain(bucket), 2, 'two tokens a second')
})

test('fractions of a token add up across refused takes', async (t) => {
  const clock = manualClock()
  const bucket = createTokenBucket({ ratePerSecond: 4, burst: 1, clock: clock.read })
  drain(bucket)
  clock.now += 125
  t.equal(bucket.take(), false, 'half a token')
  clock.now += 125
  t.equal(bucket.take(), true, 'the two halves make one: a refused take costs nothing')
})

test('refill stops at the burst size', async (t) => {
  const clock = manualClock()
  const bucket = createTokenBucket({ ratePerSecond: 10, burst: 5, clock: clock.read })
  drain(bucket)
  clock.now += 3_600_000
  t.equal(drain(bucket), 5, 'an hour idle still allows only a burst')
})

test('the default clock works without injection', async (t) => {
  const bucket = createTokenBucket({ ratePerSecond: 0.001, burst: 2 })
  t.equal(bucket.take(), true)
  t.equal(bucket.take(), true)
  // At one token per 1000 s, none can come back during this test.
  t.equal(bucket.take(), false)
})
