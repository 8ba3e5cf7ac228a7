import { test } from 'tap'
import {
  addTallies, createSequenceTracker, emptyTally, isClean, readStamp, stampText, TEXT_BYTES
} from '../../../scripts/bench/accounting.js'

test('a stamp reads back from the text it made, which is exactly TEXT_BYTES of ASCII', async (t) => {
  const text = stampText({ step: 12, seq: 3456, intendedMicros: 987_654_321_012.4 })
  t.equal(Buffer.byteLength(text), TEXT_BYTES)
  t.equal(text.length, TEXT_BYTES)
  t.strictSame(readStamp(text), { step: 12, seq: 3456, intendedMicros: 987_654_321_012 })
})

test('a stamp is read from where the text starts inside a frame', async (t) => {
  const text = stampText({ step: 1, seq: 2, intendedMicros: 3 })
  const frame = `{"type":"message","id":"9","from":4,"to":5,"text":"${text}","sentAt":"2026-01-01T00:00:00.000Z"}`
  t.strictSame(readStamp(frame, frame.indexOf(text)), { step: 1, seq: 2, intendedMicros: 3 })
})

test('text that is not a stamp reads as null', async (t) => {
  t.equal(readStamp('hello'), null)
  t.equal(readStamp('1 x 3 '), null)
  t.equal(readStamp('1 0 3 '), null, 'sequence numbers start at 1')
  t.equal(readStamp('1 2 '), null)
})

test('in-order arrivals: nothing lost, doubled or reordered', async (t) => {
  const tracker = createSequenceTracker()
  for (let seq = 1; seq <= 5; seq++) t.equal(tracker.receive(seq), 'new')
  t.equal(tracker.unique, 5)
  t.equal(tracker.lost(5), 0)
  t.equal(tracker.duplicated, 0)
  t.equal(tracker.reordered, 0)
})

test('messages sent after the last arrival count as lost', async (t) => {
  const tracker = createSequenceTracker()
  tracker.receive(1)
  tracker.receive(2)
  t.equal(tracker.lost(5), 3)
  t.equal(createSequenceTracker().lost(4), 4, 'nothing arrived at all')
})

test('a gap never filled counts as lost; filled later, as reordered', async (t) => {
  const tracker = createSequenceTracker()
  tracker.receive(1)
  tracker.receive(4)
  t.equal(tracker.lost(4), 2, '2 and 3 are missing so far')
  t.equal(tracker.receive(3), 'late')
  t.equal(tracker.lost(4), 1)
  t.equal(tracker.reordered, 1)
  t.equal(tracker.unique, 3)
})

test('a second copy counts as duplicated, whether of an in-order or a late arrival', async (t) => {
  const tracker = createSequenceTracker()
  tracker.receive(1)
  tracker.receive(3)
  tracker.receive(2)
  t.equal(tracker.receive(1), 'duplicate')
  t.equal(tracker.receive(2), 'duplicate')
  t.equal(tracker.receive(3), 'duplicate')
  t.equal(tracker.duplicated, 3)
  t.equal(tracker.reordered, 1)
  t.equal(tracker.unique, 3)
  t.equal(tracker.lost(3), 0)
})

test('arrivals in reverse order: each but the first closes a gap', async (t) => {
  const tracker = createSequenceTracker()
  for (let seq = 10; seq >= 1; seq--) tracker.receive(seq)
  t.equal(tracker.unique, 10)
  t.equal(tracker.reordered, 9)
  t.equal(tracker.lost(10), 0)
})

test('tallies add field by field; a tally is clean only with nothing wrong in it', async (t) => {
  const a = { ...emptyTally(), sent: 10, unique: 9, lost: 1 }
  const b = { ...emptyTally(), sent: 5, unique: 5, stale: 2 }
  t.strictSame(addTallies(a, b), { ...emptyTally(), sent: 15, unique: 14, lost: 1, stale: 2 })
  t.ok(isClean({ ...emptyTally(), sent: 5, unique: 5, stale: 3 }), 'late arrivals of an earlier step do not spoil this one')
  for (const field of ['lost', 'duplicated', 'reordered', 'errors', 'unexpected', 'closed'] as const) {
    t.notOk(isClean({ ...emptyTally(), [field]: 1 }), field)
  }
})
