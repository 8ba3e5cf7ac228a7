import { test } from 'tap'
import { commonRate, cpuPerMessageAt } from '../../../scripts/bench/report.js'

function step (rate: number, capacityPass: boolean, cpuPerMessageMicros: number | null = null) {
  return { rate, capacityPass, cpuPerMessageMicros }
}

test('the common rate is the highest rate every server kept up with', async (t) => {
  const throughput = {
    switchboard: { steps: [step(4000, true), step(8000, true), step(16_000, true), step(32_000, false)] },
    ws: { steps: [step(4000, true), step(8000, true), step(16_000, true), step(32_000, true)] },
    socketio: { steps: [step(4000, true), step(8000, true), step(16_000, false), step(12_000, true)] }
  }
  t.equal(commonRate({ servers: ['switchboard', 'ws'], throughput }), 16_000, 'a rate one server failed does not count')
  t.equal(commonRate({ servers: ['switchboard', 'ws', 'socketio'], throughput }), 8000, 'only rates every server ran')
  t.equal(commonRate({ servers: ['switchboard', 'ws'], throughput: { ws: throughput.ws } }), null, 'a server that did not run')
  t.equal(commonRate({ servers: ['ws'], throughput: { ws: { steps: [step(4000, false)] } } }), null, 'none kept up')
})

test('CPU per message at a rate is the mean of the steps there that kept up', async (t) => {
  const run = { steps: [step(8000, true, 40), step(16_000, true, 30), step(16_000, false, 90), step(16_000, true, 34)] }
  t.equal(cpuPerMessageAt(run, 16_000), 32)
  t.equal(cpuPerMessageAt(run, 8000), 40)
  t.equal(cpuPerMessageAt(run, 4000), null, 'no step at that rate')
  t.equal(cpuPerMessageAt(run, null), null)
  t.equal(cpuPerMessageAt(undefined, 8000), null)
})
