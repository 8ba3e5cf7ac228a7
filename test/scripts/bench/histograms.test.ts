import { test } from 'tap'
import { encodeHistogram, latencyHistogram, mergeHistograms, recordMicros, summarize } from '../../../scripts/bench/histograms.js'

test('histograms merged from their encodings give the percentiles of all samples together', async (t) => {
  // Two processes with very different latencies: averaging their p99s would give neither.
  const fast = latencyHistogram()
  const slow = latencyHistogram()
  const all = latencyHistogram()
  for (let index = 0; index < 9900; index++) {
    recordMicros(fast, 1000)
    recordMicros(all, 1000)
  }
  for (let index = 0; index < 100; index++) {
    recordMicros(slow, 50_000)
    recordMicros(all, 50_000)
  }
  const merged = mergeHistograms([encodeHistogram(fast), encodeHistogram(slow)])
  const summary = summarize(merged)
  t.equal(summary.count, 10_000)
  const direct = summarize(all)
  // The max of a decoded histogram is its bucket's top, not the exact sample: percentiles are what must agree.
  t.strictSame([summary.p50, summary.p99, summary.p999], [direct.p50, direct.p99, direct.p999])
  t.ok(Math.abs(summary.p50 - 1) < 0.01, `p50 ${summary.p50} ms`)
  t.ok(Math.abs(summary.p99 - 1) < 0.01, `p99 ${summary.p99} ms: 9,900 of 10,000 took 1 ms`)
  t.ok(Math.abs(summary.p999 - 50) < 0.1, `p99.9 ${summary.p999} ms`)
  t.ok(Math.abs(summary.max - 50) < 0.1)
})

test('merging no histograms, or empty ones, gives an empty one', async (t) => {
  t.equal(summarize(mergeHistograms([])).count, 0)
  t.equal(summarize(mergeHistograms([encodeHistogram(latencyHistogram())])).count, 0)
})

test('values below 1 µs and beyond a minute are kept, at the edges', async (t) => {
  const histogram = latencyHistogram()
  recordMicros(histogram, 0.2)
  recordMicros(histogram, -5)
  recordMicros(histogram, 3_600_000_000)
  const summary = summarize(mergeHistograms([encodeHistogram(histogram)]))
  t.equal(summary.count, 3)
  t.ok(summary.max >= 59_000 && summary.max <= 61_000, `max ${summary.max} ms`)
})
