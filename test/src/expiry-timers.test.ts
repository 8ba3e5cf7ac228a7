import { setTimeout as sleep } from 'node:timers/promises'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import { test, type Test } from 'tap'
import { ExpiryTimers } from '../../src/expiry-timers.js'

/** The timer is unref'd (it must never hold a server open), so something else keeps this process alive meanwhile. */
function keepAlive (t: Test): void {
  const interval = setInterval(() => {}, 1000)
  t.teardown(() => clearInterval(interval))
}

/** Expiry timers that record the items they expire, in order, and when. */
function recorded<T> (t: Test) {
  keepAlive(t)
  const expired: T[] = []
  const expiredAt = new Map<T, number>()
  const timers = new ExpiryTimers<T>((item) => {
    expired.push(item)
    expiredAt.set(item, Date.now())
  })
  return { timers, expired, expiredAt }
}

/** Resolves once `check` holds, polling; fails the test after five seconds. */
async function until (check: () => boolean): Promise<void> {
  for (const started = Date.now(); !check(); await sleep(2)) {
    if (Date.now() - started > 5000) throw new Error('timed out')
  }
}

test('items expire once their deadlines pass, earliest first, whatever order they came in', async (t) => {
  const { timers, expired, expiredAt } = recorded<string>(t)
  const now = Date.now()
  const deadlines = { late: now + 40, early: now + 10, middle: now + 25 }
  for (const [item, deadline] of Object.entries(deadlines)) timers.add(item, deadline)
  t.equal(timers.size, 3)
  await until(() => expired.length === 3)
  t.strictSame(expired, ['early', 'middle', 'late'])
  for (const [item, deadline] of Object.entries(deadlines)) t.ok((expiredAt.get(item) ?? 0) >= deadline, `${item}: not before its deadline`)
  t.equal(timers.size, 0)
})

test('items sharing a deadline expire together', async (t) => {
  const { timers, expired } = recorded<number>(t)
  const deadline = Date.now() + 10
  for (let item = 0; item < 1000; item++) timers.add(item, deadline)
  await until(() => expired.length > 0)
  t.equal(expired.length, 1000, 'in one firing')
})

test('a deleted item never expires and is not kept', async (t) => {
  const { timers, expired } = recorded<string>(t)
  const now = Date.now()
  timers.add('closed', now + 10)
  timers.add('open', now + 20)
  timers.delete('closed', now + 10)
  timers.delete('never added', now + 10)
  timers.delete('open', now + 999)
  t.equal(timers.size, 1, 'only a delete with its own deadline removes an item')
  await until(() => expired.length > 0)
  await sleep(20)
  t.strictSame(expired, ['open'])
})

// The test needs to collect garbage on demand; tap does not start node with --expose-gc.
setFlagsFromString('--expose-gc')
const collectGarbage = runInNewContext('gc') as () => void

/** Timers whose expire callback alone holds `owner` (the chat and the app behind it); each item added, then deleted. */
function addAndDeleteAll (items: Array<[string, number]>): WeakRef<object> {
  const owner = { app: 'closed' }
  const timers = new ExpiryTimers<string>(() => { throw new Error(`expired, for ${owner.app}`) })
  for (const [item, deadline] of items) timers.add(item, deadline)
  for (const [item, deadline] of items) timers.delete(item, deadline)
  if (timers.size !== 0) throw new Error('items left')
  return new WeakRef(owner)
}

test('with no item left, the timer lets go of what expiring would reach (a closed app)', async (t) => {
  keepAlive(t)
  const now = Date.now()
  const ownerGone = addAndDeleteAll([['socket', now + 60_000], ['other socket', now + 120_000]])
  for (let attempt = 0; attempt < 5 && ownerGone.deref() !== undefined; attempt++) {
    await sleep(10)
    collectGarbage()
  }
  t.equal(ownerGone.deref(), undefined, 'collected: no timer is left armed holding it')
})

test('moving an item to a later deadline (a refreshed token) expires it then, once', async (t) => {
  const { timers, expired, expiredAt } = recorded<string>(t)
  const now = Date.now()
  timers.add('refreshed', now + 10)
  timers.delete('refreshed', now + 10)
  timers.add('refreshed', now + 40)
  timers.add('refreshed', now + 40)
  t.equal(timers.size, 1, 'adding twice at one deadline is once')
  await until(() => expired.length > 0)
  t.ok((expiredAt.get('refreshed') ?? 0) >= now + 40, 'not at the old deadline')
  await sleep(10)
  t.strictSame(expired, ['refreshed'])
})

test('a deadline already passed expires on the next turn', async (t) => {
  const { timers, expired } = recorded<string>(t)
  timers.add('late', Date.now() + 60_000)
  timers.add('past', Date.now() - 1)
  t.strictSame(expired, [], 'not from within add')
  await until(() => expired.length > 0)
  t.strictSame(expired, ['past'])
})

test('an item added while others expire, at a deadline passed, expires in the same firing', async (t) => {
  const expired: string[] = []
  const timers: ExpiryTimers<string> = new ExpiryTimers<string>((item) => {
    expired.push(item)
    if (item === 'first') timers.add('added meanwhile', Date.now() - 1)
  })
  keepAlive(t)
  timers.add('first', Date.now() + 5)
  await until(() => expired.length > 0)
  t.strictSame(expired, ['first', 'added meanwhile'])
})

test('a deadline past the longest timer Node can arm does not fire early', async (t) => {
  const { timers, expired } = recorded<string>(t)
  // Node would warn and fire at once after 1 ms: the timer waits the longest it can, and again.
  timers.add('far', Date.now() + 3_000_000_000)
  await sleep(30)
  t.strictSame(expired, [])
  t.equal(timers.size, 1)
})

test('many random deadlines expire in deadline order', async (t) => {
  const { timers, expired } = recorded<number>(t)
  const now = Date.now()
  const deadlines = Array.from({ length: 300 }, () => now + 5 + Math.floor(Math.random() * 40))
  deadlines.forEach((deadline, index) => { timers.add(index, deadline) })
  await until(() => expired.length === deadlines.length)
  const inOrder = expired.map((index) => deadlines[index] as number)
  t.strictSame(inOrder, [...inOrder].sort((a, b) => a - b))
})
