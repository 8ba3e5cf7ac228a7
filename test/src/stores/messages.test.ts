import { createPool, type Pool, type PoolOptions, type RowDataPacket } from 'mysql2/promise'
import { test, type Test } from 'tap'
import type { TSchema } from 'typebox'
import { ConfigSchema } from '../../../src/config.js'
import { createIdGenerator } from '../../../src/ids.js'
import { createMemoryMessageStore, REF_WINDOW_MS, type MessageStore, type SaveOutcome, type StoredMessage } from '../../../src/stores/messages-memory.js'
import { createMysqlMessageStore } from '../../../src/stores/messages-mysql.js'
import { migrate } from '../../../src/stores/migrate.js'
import { freshDatabase, realBackends } from '../../helper.js'

/** Makes an empty store on `clock` that lives as long as `t`. */
type MessageStoreFactory = (t: Test, options: { clock: () => number }) => Promise<MessageStore>

const START = Date.UTC(2025, 5, 1, 12, 0, 0)
const ANN = 1
const BOB = 2
const CAT = 3
const DAN = 4
const MAX_ID = '18446744073709551615'
/** The largest MESSAGE_MAX_CHARS the configuration accepts. */
const LONGEST_TEXT_CHARS = Number((ConfigSchema.properties.messageMaxChars as TSchema & { maximum?: number }).maximum)

/** A store, the hand-moved clock it runs on, and messages with ids made on that clock. */
async function harness (t: Test, makeStore: MessageStoreFactory) {
  const time = { now: START }
  const clock = (): number => time.now
  const store = await makeStore(t, { clock })
  const ids = createIdGenerator({ nodeId: 5, clock })
  let counter = 0

  function message (from: number, to: number, { text, ref = null }: { text?: string, ref?: string | null } = {}): StoredMessage {
    counter += 1
    return { id: ids.next(), from, to, text: text ?? `message ${counter}`, sentAt: new Date(time.now).toISOString(), ref }
  }

  /** Saves a batch that must be stored whole, as given. */
  async function saveNew (t: Test, messages: StoredMessage[]): Promise<void> {
    t.strictSame(await store.save(messages), messages.map((stored) => ({ message: stored, duplicate: false })), `${messages.length} stored`)
  }

  return { store, time, message, saveNew }
}

function stored (message: StoredMessage): SaveOutcome {
  return { message, duplicate: false }
}

function resendOf (original: StoredMessage): SaveOutcome {
  return { message: original, duplicate: true }
}

/** Every page of a conversation, newest page first, until a short one. */
async function pageBack (store: MessageStore, userId: number, peerId: number, limit: number): Promise<StoredMessage[][]> {
  const pages: StoredMessage[][] = []
  let before: string | undefined
  for (;;) {
    const page = await store.history({ userId, peerId, limit, ...(before === undefined ? {} : { before }) })
    pages.push(page)
    if (page.length < limit) return pages
    before = (page[0] as StoredMessage).id
  }
}

/** What every message store must do, whatever keeps the data. */
function messageStoreContract (t: Test, makeStore: MessageStoreFactory): void {
  t.test('an empty batch stores nothing', async (t) => {
    const { store } = await harness(t, makeStore)
    t.strictSame(await store.save([]), [])
    t.strictSame(await store.since({ userId: ANN, after: '0', limit: 10 }), [])
  })

  t.test('save returns one outcome per message, in order, and the messages read back as given', async (t) => {
    const { store, message, time } = await harness(t, makeStore)
    const batch = [
      message(ANN, BOB, { ref: 'a-1' }),
      message(BOB, ANN),
      message(CAT, ANN, { ref: 'c-1' }),
      message(ANN, ANN, { text: 'a note to myself' }),
      message(DAN, BOB)
    ]
    t.strictSame(await store.save(batch), batch.map(stored))
    time.now += 1000
    const later = message(BOB, ANN, { ref: 'b-1' })
    t.strictSame(await store.save([later]), [stored(later)])

    t.strictSame(await store.since({ userId: ANN, after: '0', limit: 100 }), [batch[0], batch[1], batch[2], batch[3], later])
    t.strictSame(await store.history({ userId: ANN, peerId: BOB, limit: 100 }), [batch[0], batch[1], later])
  })

  t.test('returned messages are copies: changing one does not change the store', async (t) => {
    const { store, message } = await harness(t, makeStore)
    const original = message(ANN, BOB, { text: 'original', ref: 'r' })
    const snapshot = { ...original }
    const [outcome] = await store.save([original])
    original.text = 'changed input'
    if (outcome !== undefined) outcome.message.text = 'changed outcome'
    const [read] = await store.history({ userId: ANN, peerId: BOB, limit: 10 })
    if (read !== undefined) read.text = 'changed read'
    t.strictSame(await store.history({ userId: ANN, peerId: BOB, limit: 10 }), [snapshot])
    t.strictSame(await store.save([{ ...snapshot, id: message(ANN, BOB).id }]), [resendOf(snapshot)])
  })

  t.test('history pages back through one conversation: each message once, oldest first, before exclusive', async (t) => {
    const { store, message, time, saveNew } = await harness(t, makeStore)
    const conversation: StoredMessage[] = []
    // 23 messages between Ann and Bob in both directions, among messages of others, over three batches.
    for (let batchNumber = 0; batchNumber < 3; batchNumber++) {
      const batch: StoredMessage[] = []
      for (let i = 0; i < 8 && conversation.length < 23; i++) {
        const between = conversation.length % 3 === 0 ? message(BOB, ANN) : message(ANN, BOB)
        conversation.push(between)
        batch.push(between, message(ANN, CAT), message(CAT, BOB), message(BOB, BOB), message(ANN, ANN))
      }
      await saveNew(t, batch)
      time.now += 1000
    }

    for (const [userId, peerId] of [[ANN, BOB], [BOB, ANN]] as const) {
      const pages = await pageBack(store, userId, peerId, 5)
      t.strictSame(pages.map((page) => page.length), [5, 5, 5, 5, 3], `pages for user ${userId}`)
      t.strictSame(pages[0], conversation.slice(-5), 'the first page is the newest five, oldest first')
      t.strictSame(pages.toReversed().flat(), conversation, 'the pages together are the whole conversation, once each')
    }

    const tenth = conversation[10] as StoredMessage
    t.strictSame(await store.history({ userId: ANN, peerId: BOB, before: tenth.id, limit: 3 }), conversation.slice(7, 10), 'before is exclusive')
    t.strictSame(await store.history({ userId: ANN, peerId: BOB, before: (conversation[0] as StoredMessage).id, limit: 3 }), [], 'nothing before the first')
    t.strictSame(await store.history({ userId: ANN, peerId: BOB, limit: 100 }), conversation, 'a large limit returns everything')
    t.strictSame(await store.history({ userId: ANN, peerId: DAN, limit: 10 }), [], 'no conversation, no messages')
    t.equal((await store.history({ userId: BOB, peerId: BOB, limit: 100 })).length, 23, 'messages to oneself are a conversation of their own')
  })

  t.test('since returns the messages to or from a user after an id, oldest first, at most limit; one to oneself once', async (t) => {
    const { store, message, time, saveNew } = await harness(t, makeStore)
    const mine: StoredMessage[] = []
    const all: StoredMessage[] = []
    // Runs of received (positive), sent (negative) and self (Ann) messages, so pages mix both halves of the query.
    const plan = [BOB, -BOB, -CAT, -BOB, ANN, CAT, CAT, CAT, -DAN, ANN, BOB, CAT, BOB, -BOB]
    for (const entry of plan) {
      const own = entry === ANN ? message(ANN, ANN) : entry > 0 ? message(entry, ANN) : message(ANN, -entry)
      mine.push(own)
      const batch = [own, message(BOB, CAT), message(CAT, DAN)]
      all.push(...batch)
      await saveNew(t, batch)
      time.now += 10
    }

    t.strictSame(await store.since({ userId: ANN, after: '0', limit: 100 }), mine, 'everything, each once')
    t.strictSame(await store.since({ userId: ANN, after: (mine[3] as StoredMessage).id, limit: 100 }), mine.slice(4), 'after is exclusive')
    t.strictSame(await store.since({ userId: ANN, after: '0', limit: 3 }), mine.slice(0, 3), 'limit')
    t.strictSame(await store.since({ userId: ANN, after: (mine.at(-1) as StoredMessage).id, limit: 10 }), [], 'nothing after the last')

    for (const limit of [1, 2, 3, 4]) {
      const pages: StoredMessage[] = []
      let after = '0'
      for (let page = await store.since({ userId: ANN, after, limit }); page.length > 0; page = await store.since({ userId: ANN, after, limit })) {
        t.ok(page.length <= limit, 'a page holds at most limit')
        pages.push(...page)
        after = (page.at(-1) as StoredMessage).id
      }
      t.strictSame(pages, mine, `paging by ${limit} returns every message once, in order`)
    }
    const dans = all.filter((one) => one.from === DAN || one.to === DAN)
    t.strictSame(await store.since({ userId: DAN, after: '0', limit: 100 }), dans, 'others see only what is to or from them')
  })

  t.test('a resend of a stored ref is not stored again: the original comes back, in any later batch', async (t) => {
    const { store, message, time } = await harness(t, makeStore)
    const original = message(ANN, BOB, { text: 'hello', ref: 'ref-1' })
    t.strictSame(await store.save([original]), [stored(original)])

    time.now += 60_000
    const resend = message(ANN, BOB, { text: 'hello', ref: 'ref-1' })
    t.strictSame(await store.save([resend]), [resendOf(original)])

    time.now += 60_000
    const changedResend = message(ANN, BOB, { text: 'hello, edited', ref: 'ref-1' })
    const fresh = message(ANN, BOB, { text: 'something new', ref: 'ref-2' })
    const toSomeoneElse = message(ANN, CAT, { text: 'same ref, other recipient', ref: 'ref-1' })
    t.strictSame(await store.save([changedResend, fresh, toSomeoneElse]), [resendOf(original), stored(fresh), resendOf(original)],
      'the ref decides, whatever the text or the recipient')

    t.strictSame(await store.history({ userId: ANN, peerId: BOB, limit: 10 }), [original, fresh], 'stored once')
    t.strictSame(await store.since({ userId: BOB, after: '0', limit: 10 }), [original, fresh])
    t.strictSame(await store.since({ userId: CAT, after: '0', limit: 10 }), [])
  })

  t.test('two messages with one ref in one batch: the first is stored, the second is its resend', async (t) => {
    const { store, message } = await harness(t, makeStore)
    const first = message(ANN, BOB, { text: 'first', ref: 'twice' })
    const between = message(BOB, ANN, { ref: 'twice' })
    const second = message(ANN, BOB, { text: 'second', ref: 'twice' })
    const third = message(ANN, BOB, { text: 'third', ref: 'twice' })
    t.strictSame(await store.save([first, between, second, third]), [stored(first), stored(between), resendOf(first), resendOf(first)])
    t.strictSame(await store.history({ userId: ANN, peerId: BOB, limit: 10 }), [first, between])
  })

  t.test('a ref belongs to its sender and matches exactly', async (t) => {
    const { store, message } = await harness(t, makeStore)
    const ref = 'ref 😀 Ω'
    const fromAnn = message(ANN, BOB, { ref })
    const fromBob = message(BOB, ANN, { ref })
    const fromCat = message(CAT, BOB, { ref })
    t.strictSame(await store.save([fromAnn, fromBob, fromCat]), [stored(fromAnn), stored(fromBob), stored(fromCat)], 'the same ref from other senders is new')

    // Case, padding, invisible characters and Unicode equivalence all make a different ref.
    const lookalikes = ['REF 😀 Ω', `${ref} `, ` ${ref}`, `${ref}\u0000`, `${ref}\u200b`, 'ref 😀 \u2126', 'ref 😀 \u03a9\u0301', 'ref 😀']
    const others = lookalikes.map((lookalike) => message(ANN, BOB, { ref: lookalike }))
    t.strictSame(await store.save(others), others.map(stored), 'look-alike refs are new')
    t.strictSame(await store.save([message(ANN, BOB, { ref })]), [resendOf(fromAnn)], 'the exact ref is a resend')
    t.strictSame(await store.save([message(ANN, BOB, { ref: `${ref} ` })]), [resendOf(others[1] as StoredMessage)], 'so is the exact padded one')
  })

  t.test('a ref stops matching once REF_WINDOW_MS has passed', async (t) => {
    const { store, message, time } = await harness(t, makeStore)
    const original = message(ANN, BOB, { text: 'day one', ref: 'daily' })
    await store.save([original])

    time.now = START + REF_WINDOW_MS - 1
    t.strictSame(await store.save([message(ANN, BOB, { ref: 'daily' })]), [resendOf(original)], 'a millisecond before the window ends: a resend')

    time.now = START + REF_WINDOW_MS
    const nextDay = message(ANN, BOB, { text: 'day two', ref: 'daily' })
    t.strictSame(await store.save([nextDay]), [stored(nextDay)], 'when the window ends: a new message')

    time.now += 1
    const both = [message(ANN, BOB, { text: 'day two again', ref: 'daily' }), message(ANN, BOB, { text: 'day two, third time', ref: 'daily' })]
    t.strictSame(await store.save(both), [resendOf(nextDay), resendOf(nextDay)], 'the new message holds the ref now')
    t.strictSame(await store.history({ userId: ANN, peerId: BOB, limit: 10 }), [{ ...original, ref: null }, nextDay],
      'both are kept; the ref passed from the first to the second')
  })

  t.test('an expired ref sent twice in one batch is stored once', async (t) => {
    const { store, message, time } = await harness(t, makeStore)
    const original = message(ANN, BOB, { ref: 'again' })
    await store.save([original])
    time.now = START + REF_WINDOW_MS + 5000
    const first = message(ANN, BOB, { text: 'first after the window', ref: 'again' })
    const other = message(BOB, ANN)
    const second = message(ANN, BOB, { text: 'second after the window', ref: 'again' })
    t.strictSame(await store.save([first, other, second]), [stored(first), stored(other), resendOf(first)])
    t.strictSame(await store.history({ userId: ANN, peerId: BOB, limit: 10 }), [{ ...original, ref: null }, first, other])
  })

  t.test('forgetRefsBefore forgets the refs of messages stored before that time, and only those', async (t) => {
    const { store, message, time } = await harness(t, makeStore)
    const early = message(ANN, BOB, { ref: 'early' })
    await store.save([early])
    time.now = START + 1000
    const later = message(ANN, BOB, { ref: 'later' })
    await store.save([later])
    time.now = START + 2000

    await store.forgetRefsBefore(START + 1000)
    const earlyAgain = message(ANN, BOB, { ref: 'early' })
    t.strictSame(await store.save([earlyAgain]), [stored(earlyAgain)], 'a ref stored before the time is forgotten')
    t.strictSame(await store.save([message(ANN, BOB, { ref: 'later' })]), [resendOf(later)], 'a ref stored at the time is kept')

    await store.forgetRefsBefore(START + 1001)
    const laterAgain = message(ANN, BOB, { ref: 'later' })
    t.strictSame(await store.save([laterAgain]), [stored(laterAgain)], 'a second call forgets what became older since')
    t.strictSame(await store.save([message(ANN, BOB, { ref: 'early' })]), [resendOf(earlyAgain)], 'refs stored after the time are kept')
    await store.forgetRefsBefore(START)
    t.strictSame(await store.save([message(ANN, BOB, { ref: 'later' })]), [resendOf(laterAgain)], 'an earlier time forgets nothing more')
    t.strictSame(await store.history({ userId: ANN, peerId: BOB, limit: 10 }), [{ ...early, ref: null }, { ...later, ref: null }, earlyAgain, laterAgain],
      'the messages themselves stay, with their refs forgotten')
  })

  t.test('text comes back byte for byte, whatever it holds', async (t) => {
    const { store, message, saveNew } = await harness(t, makeStore)
    const texts = [
      'Zoë Ñandú 日本語 한국어 Ελληνικά Русский עברית العربية हिन्दी ไทย',
      '😀 4-byte emoji, 👩🏽‍💻 a ZWJ sequence, 🏳️‍🌈 a flag, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 letters',
      'NUL\u0000inside and at the end\u0000',
      '\u200fright-to-left mark, \u202eoverride\u202c, \u200bzero width, \ufeffBOM, \u2066isolate\u2069',
      '<script>alert("x")</script> &amp; <b>bold</b> \'single\' "double" `back` \\ backslash \\0 \\n',
      "'; DROP TABLE messages; -- ? ?? :name %s {{x}} #{x} \\' \\\\",
      // Decomposed é (e + combining acute) must not be normalised to the composed form.
      'Rene\u0301e and Renée',
      '  leading and trailing spaces  ',
      'line\nbreaks\r\nand\ttabs\u000b\f',
      '\u0001\u001f\u007f\u0085 controls',
      ' ',
      '\ufffd\uffff\u{10ffff} edge code points',
      '😀'.repeat(4000)
    ]
    const messages = texts.map((text, index) => message(ANN, BOB, { text, ref: `ref-${[...text].slice(0, 20).join('')}-${index}` }))
    await saveNew(t, messages)

    const byHistory = await store.history({ userId: BOB, peerId: ANN, limit: 100 })
    const bySince = await store.since({ userId: BOB, after: '0', limit: 100 })
    texts.forEach((text, index) => {
      t.same(Buffer.from(byHistory[index]?.text ?? '', 'utf8'), Buffer.from(text, 'utf8'), `history keeps ${JSON.stringify(text.slice(0, 30))}`)
      t.equal(bySince[index]?.text, text)
      t.equal(bySince[index]?.ref, messages[index]?.ref, 'and its ref')
    })
    t.equal(byHistory.at(-1)?.text.length, 8000, '4000 emoji are 8000 UTF-16 units')
  })

  t.test('the longest text MESSAGE_MAX_CHARS allows, in 4-byte characters, fits', async (t) => {
    const { store, message, saveNew } = await harness(t, makeStore)
    const longest = '😀'.repeat(LONGEST_TEXT_CHARS)
    await saveNew(t, [message(ANN, BOB, { text: longest })])
    const [read] = await store.history({ userId: ANN, peerId: BOB, limit: 1 })
    t.equal(read?.text.length, 2 * LONGEST_TEXT_CHARS)
    t.ok(read?.text === longest, 'unchanged, not cut')
  })

  t.test('a batch of 1000 messages is stored whole and in order', async (t) => {
    const { store, message } = await harness(t, makeStore)
    const users = [ANN, BOB, CAT, DAN]
    const batch = Array.from({ length: 1000 }, (_, index) => message(
      users[index % 4] as number,
      users[(index * 7 + 1) % 4] as number,
      { text: `message ${index} ${'😀'.repeat(index % 50)}`, ref: index % 2 === 0 ? `ref-${index}` : null }
    ))
    t.strictSame(await store.save(batch), batch.map(stored))

    const involving = (userId: number) => batch.filter((one) => one.from === userId || one.to === userId)
    for (const userId of users) {
      t.strictSame(await store.since({ userId, after: '0', limit: 1000 }), involving(userId), `since for user ${userId}`)
    }
    const conversation = batch.filter((one) => (one.from === ANN && one.to === BOB) || (one.from === BOB && one.to === ANN))
    t.strictSame((await pageBack(store, ANN, BOB, 37)).toReversed().flat(), conversation, 'history pages through it')
    const resent = batch.slice(0, 10).map((one) => ({ ...one, id: message(ANN, BOB).id }))
    t.strictSame(await store.save(resent), resent.map((copy, index) => copy.ref === null ? stored(copy) : resendOf(batch[index] as StoredMessage)),
      'resending part of it: the refs are recognised, the messages without one are new')
  })

  t.test('ids order as 64-bit numbers, not as text or doubles', async (t) => {
    const { store, message } = await harness(t, makeStore)
    const ids = ['9', '10', '9007199254740993', '9007199254740994', '18446744073709551614', MAX_ID]
    const ordered = ids.map((id) => ({ ...message(ANN, BOB), id }))
    const shuffled = [ordered[3], ordered[0], ordered[5], ordered[2], ordered[4], ordered[1]] as StoredMessage[]
    t.strictSame(await store.save(shuffled), shuffled.map(stored))

    t.strictSame(await store.history({ userId: ANN, peerId: BOB, limit: 10 }), ordered)
    t.strictSame(await store.history({ userId: ANN, peerId: BOB, before: MAX_ID, limit: 10 }), ordered.slice(0, 5))
    t.strictSame(await store.history({ userId: ANN, peerId: BOB, before: '9007199254740994', limit: 1 }), ordered.slice(2, 3))
    t.strictSame(await store.since({ userId: BOB, after: '10', limit: 10 }), ordered.slice(2))
    t.strictSame(await store.since({ userId: ANN, after: '9007199254740993', limit: 10 }), ordered.slice(3))
    t.strictSame(await store.since({ userId: ANN, after: '18446744073709551614', limit: 10 }), ordered.slice(5))
  })

  t.test('rewindSeen moves a cursor back, never forward, and creates none', async (t) => {
    const { store } = await harness(t, makeStore)
    await store.rewindSeen(ANN, '5')
    t.equal(await store.seenThrough(ANN), null, 'no cursor, none made')
    await store.markSeen(ANN, '9007199254740993')
    await store.rewindSeen(ANN, '9007199254740992')
    t.equal(await store.seenThrough(ANN), '9007199254740992', 'back, digit for digit')
    await store.rewindSeen(ANN, '9007199254740999')
    t.equal(await store.seenThrough(ANN), '9007199254740992', 'never forward')
  })

  t.test('seenThrough is null until markSeen, and markSeen never moves back', async (t) => {
    const { store } = await harness(t, makeStore)
    t.equal(await store.seenThrough(ANN), null)

    await store.markSeen(ANN, '999')
    t.equal(await store.seenThrough(ANN), '999')
    await store.markSeen(ANN, '1000')
    t.equal(await store.seenThrough(ANN), '1000', 'compared as numbers: 1000 is after 999')
    await store.markSeen(ANN, '998')
    t.equal(await store.seenThrough(ANN), '1000', 'an older id does not move it back')
    await store.markSeen(ANN, '9007199254740993')
    await store.markSeen(ANN, '9007199254740992')
    t.equal(await store.seenThrough(ANN), '9007199254740993', 'no double rounding')
    await store.markSeen(ANN, MAX_ID)
    t.equal(await store.seenThrough(ANN), MAX_ID)

    t.equal(await store.seenThrough(BOB), null, 'each user has their own')
    await store.markSeen(BOB, '5')
    t.equal(await store.seenThrough(BOB), '5')
    t.equal(await store.seenThrough(ANN), MAX_ID)
  })
}

test('in-memory message store', async (t) => {
  messageStoreContract(t, async (_t, options) => createMemoryMessageStore(options))
})

test('MySQL message store', async (t) => {
  const backends = realBackends()
  if ('skip' in backends) return t.plan(0, backends.skip)

  const { mysqlUrl } = backends

  /** A migrated pool on a fresh database, with the same connection settings as plugins/db.ts. */
  async function freshPool (t: Test, options: PoolOptions = {}): Promise<Pool> {
    const uri = await freshDatabase(t, mysqlUrl)
    const pool = createPool({ uri, timezone: 'Z', charset: 'utf8mb4_unicode_ci', ...options })
    t.teardown(() => pool.end())
    await migrate(pool)
    return pool
  }

  messageStoreContract(t, async (t, options) => createMysqlMessageStore(await freshPool(t), options))

  /** The refs the table still holds, by message id. */
  async function storedRefs (pool: Pool): Promise<Record<string, string | null>> {
    const [rows] = await pool.query<RowDataPacket[]>('SELECT CAST(id AS CHAR) AS id, client_ref FROM messages ORDER BY id')
    return Object.fromEntries(rows.map((row) => [String(row.id), row.client_ref === null ? null : (row.client_ref as Buffer).toString('utf8')]))
  }

  t.test('an id taken by a different message rejects the save and leaves the stored one alone', async (t) => {
    const { store, message } = await harness(t, async (t, options) => createMysqlMessageStore(await freshPool(t), options))
    const original = message(ANN, BOB, { text: 'original', ref: 'mine' })
    await store.save([original])

    const impostors: StoredMessage[] = [
      { ...original, text: 'impostor' },
      { ...original, from: CAT },
      { ...original, to: DAN },
      { ...original, sentAt: new Date(Date.parse(original.sentAt) + 1).toISOString() },
      { ...original, ref: 'other' },
      { ...original, ref: null }
    ]
    for (const impostor of impostors) {
      const fresh = message(CAT, DAN)
      await t.rejects(store.save([fresh, impostor]), /already taken by a different message/, `rejects ${JSON.stringify(impostor)}`)
    }
    t.strictSame(await store.history({ userId: ANN, peerId: BOB, limit: 10 }), [original], 'the original is untouched')
    t.strictSame(await store.since({ userId: ANN, after: '0', limit: 10 }), [original], 'and nothing else reached Ann')
  })

  t.test('saving a stored message again (a retried save) stores it once and is no error', async (t) => {
    const { store, message } = await harness(t, async (t, options) => createMysqlMessageStore(await freshPool(t), options))
    const batch = [message(ANN, BOB, { ref: 'retried' }), message(BOB, ANN)]
    await store.save(batch)
    const next = message(ANN, BOB)
    t.strictSame(await store.save([...batch, next]), [...batch, next].map(stored))
    t.strictSame(await store.history({ userId: ANN, peerId: BOB, limit: 10 }), [...batch, next])
  })

  t.test('a batch is one statement; only a batch with skipped rows reads back, once', async (t) => {
    const pool = await freshPool(t)
    const statements: string[] = []
    // Counts what the store asks of the pool; anything but query would be a way around the count.
    const counted = new Proxy(pool, {
      get (target, property) {
        if (property === 'query') {
          return (sql: string, values?: Parameters<Pool['query']>[1]) => {
            statements.push(/^\(?(\w+)/.exec(sql.trim())?.[1] ?? sql)
            return target.query(sql, values)
          }
        }
        if (property === 'execute' || property === 'getConnection') statements.push(String(property))
        return Reflect.get(target, property, target)
      }
    })
    const { store, message } = await harness(t, async (_t, options) => createMysqlMessageStore(counted, options))

    const batch = Array.from({ length: 200 }, (_, index) => message(ANN + (index % 3), BOB + (index % 2), { ref: `r${index}` }))
    await store.save(batch)
    t.strictSame(statements, ['INSERT'], '200 new messages: one INSERT')

    statements.length = 0
    const outcomes = await store.save([message(ANN, BOB, { ref: 'r0' }), message(ANN, BOB)])
    t.strictSame(outcomes.map((outcome) => outcome.duplicate), [true, false])
    t.strictSame(statements, ['INSERT', 'SELECT'], 'a resend in the batch: the INSERT and one SELECT')

    statements.length = 0
    await store.history({ userId: ANN, peerId: BOB, limit: 50 })
    await store.since({ userId: ANN, after: '0', limit: 50 })
    t.strictSame(statements, ['SELECT', 'SELECT'], 'history and since: one statement each')
  })

  t.test('resends are recognised whatever the connection\'s FOUND_ROWS flag', async (t) => {
    for (const flags of [['FOUND_ROWS'], ['-FOUND_ROWS']]) {
      const { store, message } = await harness(t, async (t, options) => createMysqlMessageStore(await freshPool(t, { flags }), options))
      const original = message(ANN, BOB, { ref: 'once' })
      await store.save([original])
      t.strictSame(await store.save([message(ANN, BOB, { ref: 'once' })]), [resendOf(original)], `${flags[0]}: alone`)
      const fresh = message(ANN, BOB)
      t.strictSame(await store.save([fresh, message(ANN, BOB, { ref: 'once' })]), [stored(fresh), resendOf(original)], `${flags[0]}: in a batch`)
    }
  })

  t.test('forgetRefsBefore clears refs in the table, each call from where the last one stopped', async (t) => {
    const pool = await freshPool(t)
    const { store, message, time } = await harness(t, async (_t, options) => createMysqlMessageStore(pool, options))
    const at = (ms: number, ref: string): StoredMessage => {
      time.now = ms
      return message(ANN, BOB, { ref })
    }
    // A day ago, beyond how far the first call looks back; then one message a minute.
    const old = at(START - REF_WINDOW_MS, 'old')
    const first = at(START, 'first')
    const second = at(START + 60_000, 'second')
    const third = at(START + 120_000, 'third')
    await store.save([old, first, second, third])

    await store.forgetRefsBefore(START + 60_000)
    t.strictSame(await storedRefs(pool), { [old.id]: 'old', [first.id]: null, [second.id]: 'second', [third.id]: 'third' },
      'the first call clears back one hour only')
    await store.forgetRefsBefore(START + 120_001)
    t.strictSame(await storedRefs(pool), { [old.id]: 'old', [first.id]: null, [second.id]: null, [third.id]: null })

    // The old ref was never cleared, but it is past the window: a resend of it is new.
    time.now = START + 180_000
    const oldAgain = message(ANN, BOB, { ref: 'old' })
    t.strictSame(await store.save([oldAgain]), [stored(oldAgain)])
    t.strictSame(await storedRefs(pool), { [old.id]: null, [first.id]: null, [second.id]: null, [third.id]: null, [oldAgain.id]: 'old' },
      'saving cleared the expired ref it ran into')
  })
})
