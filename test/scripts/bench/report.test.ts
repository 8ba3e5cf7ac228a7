import { test } from 'tap'
import { commonRate, cpuPerMessageAt, ratio } from '../../../scripts/bench/report.js'

function step (rate: number, sustainable: boolean, cpuPerMessageMicros: number | null = null) {
  return { rate, sustainable, cpuPerMessageMicros }
}

test('the common rate is the highest rate every server sustained', async (t) => {
  const throughput = {
    switchboard: { steps: [step(4000, true), step(8000, true), step(16_000, true), step(32_000, false)] },
    ws: { steps: [step(4000, true), step(8000, true), step(16_000, true), step(32_000, true)] },
    socketio: { steps: [step(4000, true), step(8000, true), step(16_000, false), step(12_000, true)] }
  }
  t.equal(commonRate({ servers: ['switchboard', 'ws'], throughput }), 16_000, 'a rate one server did not sustain does not count')
  t.equal(commonRate({ servers: ['switchboard', 'ws', 'socketio'], throughput }), 8000, 'only rates every server ran')
  t.equal(commonRate({ servers: ['switchboard', 'ws'], throughput: { ws: throughput.ws } }), null, 'a server that did not run')
  t.equal(commonRate({ servers: ['ws'], throughput: { ws: { steps: [step(4000, false)] } } }), null, 'none sustained')
})

test('CPU per message at a rate is the mean of the steps there that were sustained', async (t) => {
  const run = { steps: [step(8000, true, 40), step(16_000, true, 30), step(16_000, false, 90), step(16_000, true, 34)] }
  t.equal(cpuPerMessageAt(run, 16_000), 32)
  t.equal(cpuPerMessageAt(run, 8000), 40)
  t.equal(cpuPerMessageAt(run, 4000), null, 'no step at that rate')
  t.equal(cpuPerMessageAt(run, null), null)
  t.equal(cpuPerMessageAt(undefined, 8000), null)
})

test('a ratio of a missing or non-finite figure is no ratio', async (t) => {
  t.equal(ratio(3, 2), 1.5)
  t.equal(ratio(null, 2), null)
  t.equal(ratio(3, undefined), null)
  t.equal(ratio(3, 0), null, 'division by zero')
  t.equal(ratio(Number.NaN, 2), null, 'NaN, e.g. a memory slope over one level')
})
