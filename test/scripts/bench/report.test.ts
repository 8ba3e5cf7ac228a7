import { test } from 'tap'
import { commonRate, cpuPerMessageAt, ratio } from '../../../scripts/bench/report.js'

function step (rate: number, capacityPass: boolean, cpuPerMessageMicros: number | null = null) {
  return { rate, capacityPass, cpuPerMessageMicros }
}

test('the common rate is the highest every server kept up with, at most half the lowest capacity', async (t) => {
  const throughput = {
    switchboard: { capacity: 20_000, steps: [step(4000, true), step(8000, true), step(16_000, true), step(20_000, true)] },
    ws: { capacity: 40_000, steps: [step(4000, true), step(8000, true), step(16_000, true), step(40_000, true)] },
    socketio: { capacity: 12_000, steps: [step(4000, true), step(8000, false), step(6000, true), step(12_000, true)] }
  }
  t.equal(commonRate({ servers: ['switchboard', 'ws'], throughput }), 8000, 'not 16,000: above half of 20,000')
  t.equal(commonRate({ servers: ['switchboard', 'ws', 'socketio'], throughput }), 4000, 'a rate one server did not keep up with does not count')
  t.equal(commonRate({ servers: ['switchboard', 'ws'], throughput: { ws: throughput.ws } }), null, 'a server that did not run')
  t.equal(commonRate({ servers: ['ws'], throughput: { ws: { capacity: null, steps: [step(4000, false)] } } }), null, 'no capacity')
})

test('CPU per message at a rate is the mean of the steps there that kept up', async (t) => {
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
