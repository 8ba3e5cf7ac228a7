import type { FastifyInstance } from 'fastify'
import { test, type Test } from 'tap'
import {
  build, call, connectWs, createUser, listen, onBothBackends, receiveMessages, sendMessages,
  type ChatLine, type ServerFrame, type TestUser, type WsClient
} from '../helper.js'

interface HistoryMessage extends ChatLine {
  sentAt: string
}

interface HistoryPage {
  messages: HistoryMessage[]
  nextBefore: string | null
}

/** A connected client whose welcome frame has been read. */
async function online (t: Test, wsUrl: string, user: TestUser): Promise<WsClient> {
  const client = await connectWs(t, wsUrl, { token: user.accessToken })
  t.equal((await client.nextJson()).type, 'welcome', 'the first frame is the welcome')
  return client
}

async function page (app: FastifyInstance, user: TestUser, query: Record<string, string | number>): Promise<HistoryPage> {
  const search = new URLSearchParams(Object.entries(query).map(([key, value]): [string, string] => [key, String(value)]))
  const { statusCode, body } = await call<HistoryPage>(app, {
    method: 'GET', url: `/messages?${search.toString()}`, headers: { authorization: `Bearer ${user.accessToken}` }
  })
  if (statusCode !== 200) throw new Error(`GET /messages?${search.toString()}: ${statusCode} ${JSON.stringify(body)}`)
  return body
}

/** Every page of one conversation, newest page first, following nextBefore until it is null. */
async function allPages (app: FastifyInstance, user: TestUser, peerId: number, limit?: number): Promise<HistoryPage[]> {
  const pages: HistoryPage[] = []
  let before: string | null | undefined
  do {
    const next = await page(app, user, { with: peerId, ...(limit === undefined ? {} : { limit }), ...(before ? { before } : {}) })
    pages.push(next)
    before = next.nextBefore
    if (pages.length > 100) throw new Error('nextBefore never became null')
  } while (before !== null)
  return pages
}

function lines (messages: readonly HistoryMessage[]): ChatLine[] {
  return messages.map(({ id, from, to, text }) => ({ id, from, to, text }))
}

test('GET /messages needs a valid access token', async (t) => {
  const app = await build(t)
  const alice = await createUser(app, 'Alice')
  const bob = await createUser(app, 'Bob')
  for (const headers of [{}, { authorization: 'Bearer not-a-token' }, { authorization: `Basic ${alice.accessToken}` }]) {
    const { statusCode, body } = await call(app, { method: 'GET', url: `/messages?with=${bob.id}`, headers })
    t.equal(statusCode, 401, `refused with ${JSON.stringify(headers)}`)
    t.match(body, { statusCode: 401, error: 'Unauthorized', code: String, message: String })
  }
  const viaQuery = await call(app, { method: 'GET', url: `/messages?with=${bob.id}&token=${alice.accessToken}` })
  t.equal(viaQuery.statusCode, 401, '?token= is only for /ws')
})

test('GET /messages refuses a bad with, before or limit with 400', async (t) => {
  const app = await build(t)
  const alice = await createUser(app, 'Alice')
  const bob = await createUser(app, 'Bob')
  const queries = [
    '', 'with=', 'with=0', 'with=-1', 'with=abc', 'with=1.5', 'with=9007199254740992', `with=${bob.id}&with=${bob.id}`,
    `with=${bob.id}&before=abc`, `with=${bob.id}&before=-1`, `with=${bob.id}&before=1.5`, `with=${bob.id}&before=01`,
    `with=${bob.id}&before=`, `with=${bob.id}&before=18446744073709551616`, `with=${bob.id}&before=99999999999999999999`,
    `with=${bob.id}&before=123456789012345678901`,
    `with=${bob.id}&limit=0`, `with=${bob.id}&limit=201`, `with=${bob.id}&limit=-1`, `with=${bob.id}&limit=abc`, `with=${bob.id}&limit=2.5`,
    `with=${bob.id}&unknown=1`
  ]
  for (const query of queries) {
    const { statusCode, body } = await call(app, { method: 'GET', url: `/messages?${query}`, headers: { authorization: `Bearer ${alice.accessToken}` } })
    t.equal(statusCode, 400, `?${query} is refused`)
    t.match(body, { statusCode: 400, error: 'Bad Request', code: String, message: String })
  }
  for (const query of [`with=${bob.id}&before=18446744073709551615&limit=200`, `with=${bob.id}&before=0&limit=1`]) {
    const { statusCode, body } = await call(app, { method: 'GET', url: `/messages?${query}`, headers: { authorization: `Bearer ${alice.accessToken}` } })
    t.equal(statusCode, 200, `?${query} is fine`)
    t.same(body, { messages: [], nextBefore: null })
  }
})

onBothBackends('GET /messages pages back through one conversation: oldest first within a page, none twice, none missing, both directions', async (t, options) => {
  const { app, wsUrl } = await listen(t, options)
  const alice = await createUser(app, 'Alice')
  const bob = await createUser(app, 'Bob')
  const carol = await createUser(app, 'Carol')
  const a = await online(t, wsUrl, alice)
  const b = await online(t, wsUrl, bob)
  const c = await online(t, wsUrl, carol)

  // Ten messages between Alice and Bob, both ways, with Carol talking to each of them in between.
  const conversation: ChatLine[] = []
  const framesBobSaw = new Map<string, ServerFrame>()
  for (let index = 0; index < 10; index++) {
    if (index % 3 === 2) {
      conversation.push(...await sendMessages(b, bob.id, [{ to: alice.id, text: `bob to alice ${index}`, ref: `b${index}` }]))
      await receiveMessages(a, 1)
    } else {
      conversation.push(...await sendMessages(a, alice.id, [{ to: bob.id, text: `alice to bob ${index}`, legacy: index % 2 === 0 }]))
      const frame = await b.nextJson()
      framesBobSaw.set(String(frame.id), frame)
    }
    await sendMessages(c, carol.id, [{ to: alice.id, text: `carol to alice ${index}` }, { to: bob.id, text: `carol to bob ${index}` }])
    await receiveMessages(a, 1)
    await receiveMessages(b, 1)
  }
  const ids = conversation.map(({ id }) => id)

  const pages = await allPages(app, alice, bob.id, 3)
  t.same(pages.map(({ messages }) => lines(messages)), [
    conversation.slice(7, 10), conversation.slice(4, 7), conversation.slice(1, 4), conversation.slice(0, 1)
  ], 'four pages of at most 3, the newest page first, each oldest first')
  t.same(pages.map(({ nextBefore }) => nextBefore), [ids[7], ids[4], ids[1], null], 'nextBefore is the oldest id of the page, null at the start')
  const flattened = pages.slice().reverse().flatMap(({ messages }) => messages.map(({ id }) => id))
  t.same(flattened, ids, 'together: every message once, in id order')
  t.ok(flattened.every((id, index) => index === 0 || BigInt(id) > BigInt(flattened[index - 1] as string)), 'ids compare as numbers in order')

  const bobsPages = await allPages(app, bob, alice.id, 3)
  t.same(bobsPages, pages, 'Bob sees the same conversation from his side')

  for (const message of pages.flatMap(({ messages }) => messages)) {
    const frame = framesBobSaw.get(message.id)
    if (frame === undefined) continue
    const { type, ...live } = frame
    t.same(message, live, `message ${message.id} reads back as it was delivered, sentAt included`)
  }

  const sinceMiddle = await page(app, alice, { with: bob.id, before: ids[5] as string, limit: 50 })
  t.same(lines(sinceMiddle.messages), conversation.slice(0, 5), 'before is exclusive')
  t.equal(sinceMiddle.nextBefore, null)
  // An id from another conversation works as a cut-off too.
  const carolsFirst = (await page(app, carol, { with: alice.id, limit: 1 })).messages[0]
  t.ok(carolsFirst)
  const beforeCarol = await page(app, alice, { with: bob.id, before: carolsFirst?.id ?? '0' })
  t.same(lines(beforeCarol.messages), conversation.filter(({ id }) => BigInt(id) < BigInt(carolsFirst?.id ?? '0')))

  // Carol and Alice: exactly two pages of 5; the second one says it is the start.
  const carolPages = await allPages(app, carol, alice.id, 5)
  t.same(carolPages.map(({ messages }) => messages.length), [5, 5])
  t.equal(carolPages[1]?.nextBefore, null, 'a page that ends at the first message has nextBefore null')
  t.ok(carolPages.flatMap(({ messages }) => messages).every(({ from, to }) => from === carol.id && to === alice.id), 'only that conversation')

  const everything = await page(app, bob, { with: alice.id })
  t.same(lines(everything.messages), conversation, 'the default limit (50) holds the whole conversation')
  t.equal(everything.nextBefore, null)
  t.notOk(everything.messages.some(({ from, to }) => from === carol.id || to === carol.id), 'Carol never appears')
})

onBothBackends('GET /messages: a conversation with nobody is empty; limit defaults to 50 and goes up to 200', async (t, options) => {
  const { app, wsUrl } = await listen(t, options)
  const alice = await createUser(app, 'Alice')
  const bob = await createUser(app, 'Bob')
  const carol = await createUser(app, 'Carol')

  t.same(await page(app, alice, { with: bob.id }), { messages: [], nextBefore: null }, 'no messages yet')
  t.same(await page(app, alice, { with: carol.id + 1000 }), { messages: [], nextBefore: null }, 'a user who does not exist')

  const a = await online(t, wsUrl, alice)
  const sent = await sendMessages(a, alice.id, Array.from({ length: 60 }, (_, index) => ({ to: bob.id, text: `offline ${index}`, legacy: index % 2 === 1 })))
  t.same(await page(app, alice, { with: carol.id }), { messages: [], nextBefore: null }, 'still nothing with Carol')

  const first = await page(app, bob, { with: alice.id })
  t.same(lines(first.messages), sent.slice(10), 'the default page is the newest 50')
  t.equal(first.nextBefore, sent[10]?.id)
  const second = await page(app, bob, { with: alice.id, before: first.nextBefore ?? '' })
  t.same(lines(second.messages), sent.slice(0, 10), 'then the rest')
  t.equal(second.nextBefore, null)
  const whole = await page(app, bob, { with: alice.id, limit: 200 })
  t.same(lines(whole.messages), sent, 'limit=200 in one page')
  t.equal(whole.nextBefore, null)
  const exact = await page(app, bob, { with: alice.id, limit: 60 })
  t.equal(exact.messages.length, 60)
  t.equal(exact.nextBefore, null, 'a page that holds exactly the whole conversation ends it')

  const notes = await sendMessages(a, alice.id, [{ to: alice.id, text: 'note to self' }])
  t.same(lines((await page(app, alice, { with: alice.id })).messages), notes, 'with yourself: your notes to self')
})

interface Operation {
  tags?: string[]
  security?: unknown
  parameters?: Array<{ name: string, in: string, required?: boolean, schema?: Record<string, unknown> }>
  responses: Record<string, { content?: Record<string, { schema?: Record<string, unknown> }> }>
}

test('the OpenAPI document describes GET /messages', async (t) => {
  const app = await build(t)
  const { statusCode, body } = await call<{ paths: Record<string, Record<string, Operation>> }>(app, { method: 'GET', url: '/docs/json' })
  t.equal(statusCode, 200)
  const operation = body.paths['/messages']?.get
  t.ok(operation, '/messages is listed')
  t.same(operation?.tags, ['messages'])
  t.same(operation?.security, [{ bearerAuth: [] }], 'it needs a Bearer token')
  const parameters = new Map((operation?.parameters ?? []).map((parameter) => [parameter.name, parameter]))
  t.same([...parameters.keys()].sort(), ['before', 'limit', 'with'])
  t.ok([...parameters.values()].every((parameter) => parameter.in === 'query'), 'all in the query string')
  t.equal(parameters.get('with')?.required, true, 'with is required')
  t.match(parameters.get('limit')?.schema, { type: 'integer', minimum: 1, maximum: 200, default: 50 })
  t.match(parameters.get('before')?.schema, { type: 'string' })
  t.same(Object.keys(operation?.responses ?? {}).sort(), ['200', '400', '401', '429'])
  t.match(operation?.responses['200']?.content?.['application/json']?.schema, {
    type: 'object',
    properties: { messages: { type: 'array' }, nextBefore: {} }
  })
})
