import { test } from 'tap'
import { createIdGenerator } from '../../src/ids.js'
import { createRecentIds } from '../../src/recent-ids.js'

function idAt (epochMs: number, nodeId = 1): string {
  return createIdGenerator({ nodeId, clock: () => epochMs }).next()
}

test('remembers ids within the window and forgets older ones as more come', async (t) => {
  let now = Date.UTC(2026, 0, 1)
  const recent = createRecentIds({ windowMs: 1000, clock: () => now })
  const first = idAt(now)
  recent.add(first)
  t.equal(recent.has(first), true)
  now += 5000
  for (let i = 0; i < 64; i++) recent.add(idAt(now, i + 2))
  t.equal(recent.has(first), false, 'pruned once past the window')
  t.equal(recent.size, 64)
})

test('does not remember an id already older than the window', async (t) => {
  const now = Date.UTC(2026, 0, 1)
  const recent = createRecentIds({ windowMs: 1000, clock: () => now })
  recent.add(idAt(now - 2000))
  t.equal(recent.size, 0)
})

test('a floor keeps ids from it on, however old, until released', async (t) => {
  let now = Date.UTC(2026, 0, 1)
  const recent = createRecentIds({ windowMs: 1000, clock: () => now })
  const kept = idAt(now)
  recent.add(kept)
  recent.holdFrom('0')
  now += 10_000
  for (let i = 0; i < 64; i++) recent.add(idAt(now, i + 2))
  t.equal(recent.has(kept), true, 'held while paused')
  recent.add(idAt(now - 9000, 99))
  t.equal(recent.has(idAt(now - 9000, 99)), true, 'old ids are still taken while held')
  recent.holdFrom(null)
  for (let i = 0; i < 64; i++) recent.add(idAt(now, i + 100))
  t.equal(recent.has(kept), false, 'forgotten once released')
})

test('keepFrom lowers the floor and never raises it', async (t) => {
  let now = Date.UTC(2026, 0, 1)
  const recent = createRecentIds({ windowMs: 1000, clock: () => now })
  const older = idAt(now - 500)
  const newer = idAt(now)
  recent.keepFrom(newer)
  recent.keepFrom(older)
  recent.keepFrom(newer)
  recent.add(older)
  now += 10_000
  for (let i = 0; i < 64; i++) recent.add(idAt(now, i + 2))
  t.equal(recent.has(older), true, 'held from the lower of the two')
  recent.holdFrom(null)
  for (let i = 0; i < 64; i++) recent.add(idAt(now, i + 100))
  t.equal(recent.has(older), false, 'released with the floor')
})
