import { test } from 'tap'
import { createLimiter } from '../../src/limiter.js'

/** A job that runs until the test ends it. */
function heldJob () {
  let end: (value: string) => void = () => {}
  let started = false
  const job = async (): Promise<string> => {
    started = true
    return new Promise<string>((resolve) => { end = resolve })
  }
  return { job, end: (value: string) => end(value), started: () => started }
}

const turn = () => new Promise((resolve) => setImmediate(resolve))

test('runs at most the given number of jobs at once, the others in the order they came', async (t) => {
  const limiter = createLimiter(2)
  const jobs = Array.from({ length: 4 }, heldJob)
  const results = jobs.map(({ job }) => limiter.run(job))
  await turn()
  t.same(jobs.map(({ started }) => started()), [true, true, false, false], 'two run, two wait')
  t.equal(limiter.waiting, 2)
  jobs[1]?.end('second')
  await turn()
  t.same(jobs.map(({ started }) => started()), [true, true, true, false], 'a finished job hands its slot to the first waiting')
  jobs[0]?.end('first')
  await turn()
  jobs[2]?.end('third')
  jobs[3]?.end('fourth')
  t.same(await Promise.all(results), ['first', 'second', 'third', 'fourth'], 'each caller gets its own job\'s result')
  t.equal(limiter.waiting, 0)
})

test('a failing job frees its slot and rejects only its own caller', async (t) => {
  const limiter = createLimiter(1)
  const failing = limiter.run(async () => { throw new Error('boom') })
  const next = limiter.run(async () => 'ran')
  await t.rejects(failing, /boom/)
  t.equal(await next, 'ran')
})
