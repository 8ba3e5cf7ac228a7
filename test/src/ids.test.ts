import { test } from 'tap'
import { MAX_NODE_ID, compareIds, createIdGenerator, idTime, isMessageId, previousId } from '../../src/ids.js'

const T = Date.UTC(2025, 5, 1, 12, 0, 0)

/** A clock the test moves by hand. */
function manualClock (start = T) {
  const clock = { now: start, read: () => clock.now }
  return clock
}

test('ids are decimal strings that strictly increase as BigInt through a burst of more than 4096 in one millisecond', async (t) => {
  const clock = manualClock()
  const ids = createIdGenerator({ nodeId: 7, clock: clock.read })
  const made: string[] = []
  for (let i = 0; i < 10_000; i++) made.push(ids.next())
  t.ok(made.every((id) => /^[1-9]\d*$/.test(id)), 'plain decimal')
  let increasing = true
  for (let i = 1; i < made.length; i++) if (BigInt(made[i] as string) <= BigInt(made[i - 1] as string)) increasing = false
  t.ok(increasing, 'each id is greater than the one before')
  t.equal(new Set(made).size, made.length, 'no id repeats')
})

test('a burst borrows the next millisecond, and the real next millisecond continues after it', async (t) => {
  const clock = manualClock()
  const ids = createIdGenerator({ nodeId: 1, clock: clock.read })
  const first = ids.next()
  for (let i = 1; i < 4096; i++) ids.next()
  const borrowed = ids.next()
  t.equal(idTime(first), T)
  t.equal(idTime(borrowed), T + 1, 'the 4097th id of one millisecond is stamped with the next')
  clock.now = T + 1
  const next = ids.next()
  t.ok(BigInt(next) > BigInt(borrowed), 'the clock catching up does not repeat a borrowed id')
})

test('idTime returns the millisecond an id was made in', async (t) => {
  const clock = manualClock()
  const ids = createIdGenerator({ nodeId: MAX_NODE_ID, clock: clock.read })
  t.equal(idTime(ids.next()), T)
  clock.now = T + 12_345
  t.equal(idTime(ids.next()), T + 12_345)

  const real = createIdGenerator({ nodeId: 0 })
  const before = Date.now()
  const id = real.next()
  const after = Date.now()
  t.ok(idTime(id) >= before && idTime(id) <= after, 'with the default clock too')
})

test('ids sort by time across generators of different nodes', async (t) => {
  const clock = manualClock()
  const a = createIdGenerator({ nodeId: 5, clock: clock.read })
  const b = createIdGenerator({ nodeId: 6, clock: clock.read })
  const fromA = a.next()
  const fromB = b.next()
  t.not(fromA, fromB, 'two nodes in one millisecond make different ids')
  clock.now = T + 1
  const later = a.next()
  t.ok(BigInt(later) > BigInt(fromB), 'a later millisecond sorts after any node\'s earlier one')
})

test('nodeId must be an integer from 0 to MAX_NODE_ID', async (t) => {
  t.equal(MAX_NODE_ID, 1023)
  for (const nodeId of [-1, MAX_NODE_ID + 1, 1.5, Number.NaN, Number.POSITIVE_INFINITY]) {
    t.throws(() => createIdGenerator({ nodeId }), RangeError, `${nodeId} refused`)
  }
  t.doesNotThrow(() => createIdGenerator({ nodeId: 0 }))
  t.doesNotThrow(() => createIdGenerator({ nodeId: MAX_NODE_ID }))
})

test('a clock going backwards never produces a smaller id', async (t) => {
  const clock = manualClock()
  const ids = createIdGenerator({ nodeId: 3, clock: clock.read })
  let last = BigInt(ids.next())
  let increasing = true
  // Backwards by a second, then forwards but still behind, then back to the start, with bursts in between.
  for (const now of [T - 1000, T - 500, T, T - 1, T + 1]) {
    clock.now = now
    for (let i = 0; i < 5000; i++) {
      const id = BigInt(ids.next())
      if (id <= last) increasing = false
      last = id
    }
  }
  t.ok(increasing, 'every id is greater than the one before')
})

test('compareIds orders ids as numbers, across lengths', async (t) => {
  const MAX_U64 = '18446744073709551615'
  const cases: Array<[string, string, number]> = [
    ['0', '0', 0],
    ['9', '10', -1],
    ['10', '9', 1],
    ['99', '100', -1],
    ['123', '123', 0],
    ['123', '124', -1],
    ['200', '199', 1],
    ['9223372036854775807', MAX_U64, -1],
    [MAX_U64, '9999999999999999999', 1],
    [MAX_U64, MAX_U64, 0]
  ]
  for (const [a, b, sign] of cases) t.equal(Math.sign(compareIds(a, b)), sign, `${a} vs ${b}`)

  // Plain string order would put '10' before '9'; numeric order must not.
  const ids = ['100', '9', '18446744073709551615', '0', '10', '99', '1000000000000', '11', '1']
  const sorted = [...ids].sort(compareIds)
  t.strictSame(sorted, [...ids].sort((a, b) => (BigInt(a) < BigInt(b) ? -1 : BigInt(a) > BigInt(b) ? 1 : 0)))
  t.strictSame(sorted, ['0', '1', '9', '10', '11', '99', '100', '1000000000000', '18446744073709551615'])
})

test('compareIds agrees with the order ids are generated in', async (t) => {
  const clock = manualClock()
  const ids = createIdGenerator({ nodeId: 9, clock: clock.read })
  const made: string[] = []
  for (let i = 0; i < 100; i++) {
    made.push(ids.next())
    clock.now += 997
  }
  t.ok(made.every((id, index) => index === 0 || compareIds(made[index - 1] as string, id) < 0))
})

test('isMessageId accepts plain decimal 64-bit unsigned numbers only', async (t) => {
  for (const id of ['0', '1', '42', '9007199254740993', '9999999999999999999', '18446744073709551615']) {
    t.equal(isMessageId(id), true, `${id} accepted`)
  }
  const made = createIdGenerator({ nodeId: MAX_NODE_ID }).next()
  t.equal(isMessageId(made), true, 'a generated id')

  const refused = [
    '18446744073709551616', // 2^64
    '99999999999999999999', // 20 digits, above 2^64 - 1
    '1'.repeat(21), '100000000000000000000', // 21 digits
    '00', '01', '007', // leading zeros
    '+1', '-1', '-0', // signs
    ' 1', '1 ', '1 2', '\t1', '1\n', // spaces
    '', '1.0', '1e3', '0x1', 'abc', '\u0661', // not plain decimal digits (the last is an Arabic-Indic one)
    '\uff11' // a fullwidth 1
  ]
  for (const id of refused) t.equal(isMessageId(id), false, `${JSON.stringify(id)} refused`)
})

test('previousId is the id just before, digit for digit, and never below 0', async (t) => {
  t.equal(previousId('18446744073709551615'), '18446744073709551614')
  t.equal(previousId('9007199254740993'), '9007199254740992')
  t.equal(previousId('1'), '0')
  t.equal(previousId('0'), '0')
})
