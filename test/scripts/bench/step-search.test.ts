import { test } from 'tap'
import { bracket, nextRate, roundRate, searchHighest } from '../../../scripts/bench/step-search.js'

/** A server that serves up to `limit` messages a second, measured by recording each rate asked. */
function server (limit: number) {
  const asked: number[] = []
  return {
    asked,
    measure: async (rate: number): Promise<boolean> => {
      asked.push(rate)
      return rate <= limit
    }
  }
}

const identity = (rate: number): number => rate

test('rates round to two significant figures', async (t) => {
  t.equal(roundRate(12_345), 12_000)
  t.equal(roundRate(987), 990)
  t.equal(roundRate(56), 56)
  t.equal(roundRate(0), 0)
})

test('climbs by the factor until a failure, then halves the gap until within tolerance', async (t) => {
  const { asked, measure } = server(23_000)
  const result = await searchHighest({ measure, start: 4000, factor: 2, tolerance: 0.1, maxSteps: 20, round: identity })
  t.strictSame(asked.slice(0, 4), [4000, 8000, 16_000, 32_000])
  t.ok(result.best !== null && result.failedAt !== null)
  t.ok((result.best as number) <= 23_000 && (result.failedAt as number) > 23_000)
  t.ok((result.failedAt as number) / (result.best as number) <= 1.1, `${result.best} .. ${result.failedAt}`)
  t.equal(result.measured.length, asked.length)
})

test('descends from the start when it fails there', async (t) => {
  const { asked, measure } = server(900)
  const result = await searchHighest({ measure, start: 4000, factor: 2, tolerance: 0.25, maxSteps: 20, round: identity })
  t.strictSame(asked.slice(0, 4), [4000, 2000, 1000, 500])
  t.ok((result.best as number) <= 900 && (result.failedAt as number) / (result.best as number) <= 1.25)
})

test('no rate passes: best is null once the minimum rate fails', async (t) => {
  const { asked, measure } = server(0)
  const result = await searchHighest({ measure, start: 400, factor: 2, tolerance: 0.1, maxSteps: 20, minRate: 100, round: identity })
  t.equal(result.best, null)
  t.equal(asked.at(-1), 100)
  t.equal(result.failedAt, 100)
})

test('stops at the maximum rate when it passes there', async (t) => {
  const { asked, measure } = server(Infinity)
  const result = await searchHighest({ measure, start: 1000, factor: 4, tolerance: 0.1, maxSteps: 20, maxRate: 10_000, round: identity })
  t.strictSame(asked, [1000, 4000, 10_000])
  t.equal(result.best, 10_000)
})

test('never measures more than maxSteps', async (t) => {
  const { asked, measure } = server(12_345)
  const result = await searchHighest({ measure, start: 1000, factor: 2, tolerance: 0.001, maxSteps: 5, round: identity })
  t.equal(asked.length, 5)
  t.equal(result.measured.length, 5)
})

test('known verdicts are reused, not measured again', async (t) => {
  const { asked, measure } = server(20_000)
  const result = await searchHighest({
    measure,
    start: 4000,
    factor: 2,
    tolerance: 0.1,
    maxSteps: 20,
    round: identity,
    known: [{ rate: 16_000, pass: true }, { rate: 32_000, pass: false }]
  })
  t.notOk(asked.includes(4000) || asked.includes(16_000) || asked.includes(32_000))
  t.equal(asked[0], Math.sqrt(16_000 * 32_000))
  t.ok((result.best as number) >= 16_000 && (result.best as number) <= 20_000)
})

test('a failure below a pass is taken for noise: the pass is believed', async (t) => {
  t.strictSame(bracket([{ rate: 5000, pass: false }, { rate: 10_000, pass: true }, { rate: 20_000, pass: false }]), { pass: 10_000, fail: 20_000 })
  t.strictSame(bracket([{ rate: 5000, pass: false }]), { pass: null, fail: 5000 })
  t.strictSame(bracket([{ rate: 5000, pass: true }]), { pass: 5000, fail: null })
  t.strictSame(bracket([]), { pass: null, fail: null })
})

test('the next rate is null once rounding lands on a rate already measured', async (t) => {
  const options = { start: 1000, factor: 2, tolerance: 0.01 }
  t.equal(nextRate([{ rate: 10_000, pass: true }, { rate: 11_000, pass: false }], options), null)
  t.equal(nextRate([{ rate: 10_000, pass: true }, { rate: 12_000, pass: false }], options), 11_000)
})
