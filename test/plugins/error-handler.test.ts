import { Writable } from 'node:stream'
import Fastify, { type FastifyInstance } from 'fastify'
import { test, type Test } from 'tap'
import errorHandlerPlugin from '../../plugins/error-handler.js'
import {
  ConflictError, DomainError, ForbiddenError, InvalidInputError, NotFoundError, UnauthorizedError, UnavailableError
} from '../../src/errors.js'
import { build, call } from '../helper.js'

interface ErrorBody {
  statusCode: number
  code: string
  error: string
  message: string
}

const SECRET = 'connect ECONNREFUSED db.internal:3306 password=hunter2'

/** A tiny app with only the error handler, routes that throw, and its log lines kept. */
async function tinyApp (t: Test): Promise<{ app: FastifyInstance, logs: string[] }> {
  const logs: string[] = []
  const stream = new Writable({
    write (chunk: Buffer, _encoding, done) {
      logs.push(chunk.toString('utf8'))
      done()
    }
  })
  const app = Fastify({ logger: { level: 'info', stream } })
  await app.register(errorHandlerPlugin)
  app.get('/boom', async () => { throw new Error(SECRET) })
  app.get('/boom-with-code', async () => {
    throw Object.assign(new Error(SECRET), { code: 'ER_ACCESS_DENIED', statusCode: 500 })
  })
  app.get('/unavailable', async () => { throw new UnavailableError('REDIS_DOWN', SECRET) })
  app.get('/database', async () => {
    // As mysql2 reports a failed statement: with the SQL and its values attached.
    throw Object.assign(new Error("Table 'chat.messages' doesn't exist"), {
      code: 'ER_NO_SUCH_TABLE', errno: 1146, sqlState: '42S02', sql: "INSERT INTO messages VALUES (1, 'my private diagnosis')"
    })
  })
  app.get('/bare-domain', async () => { throw new DomainError('SOMETHING', SECRET) })
  // As the drivers report a backend they cannot reach.
  const unreachable: Record<string, Error> = {
    refused: Object.assign(new Error(`connect ECONNREFUSED ${SECRET}`), { code: 'ECONNREFUSED' }),
    lost: Object.assign(new Error(SECRET), { code: 'PROTOCOL_CONNECTION_LOST' }),
    offline: new Error("Stream isn't writeable and enableOfflineQueue options is false"),
    timeout: new Error('Command timed out'),
    retries: Object.assign(new Error('Reached the max retries per request limit (which is 20).'), { name: 'MaxRetriesPerRequestError' }),
    queue: new Error('Queue limit reached.'),
    deadline: Object.assign(new Error('MySQL statement timed out after 1500 ms'), { code: 'ETIMEDOUT' })
  }
  app.get('/unreachable/:kind', async (request) => {
    const error = unreachable[(request.params as { kind: string }).kind]
    if (error === undefined) throw new Error('no such kind')
    throw error
  })
  app.get('/typed/:kind', async (request) => {
    const { kind } = request.params as { kind: string }
    const errors: Record<string, DomainError> = {
      invalid: new InvalidInputError('BAD_THING', 'that is not right'),
      unauthorized: new UnauthorizedError('NO_ENTRY', 'who are you'),
      forbidden: new ForbiddenError('NOT_YOURS', 'not yours'),
      missing: new NotFoundError('NO_SUCH', 'not here'),
      conflict: new ConflictError('ALREADY', 'already there')
    }
    throw errors[kind] ?? new Error('unknown kind')
  })
  app.post('/validated', {
    schema: { body: { type: 'object', required: ['n'], properties: { n: { type: 'integer' } }, additionalProperties: false } }
  }, async () => ({ ok: true }))
  await app.ready()
  t.teardown(() => app.close())
  return { app, logs }
}

test('a 500 leaks nothing to the client but keeps the cause in the log', async (t) => {
  const { app, logs } = await tinyApp(t)
  for (const url of ['/boom', '/boom-with-code', '/bare-domain']) {
    const response = await app.inject({ method: 'GET', url })
    t.equal(response.statusCode, 500, url)
    t.same(response.json(), {
      statusCode: 500,
      code: 'INTERNAL_SERVER_ERROR',
      error: 'Internal Server Error',
      message: 'something went wrong on our side'
    }, `${url}: the generic body`)
    t.notOk(/hunter2|ECONNREFUSED|ER_ACCESS_DENIED|SOMETHING|stack|at /.test(response.body), `${url}: no detail, code or stack in the body`)
  }
  const errorLines = logs.map((line) => JSON.parse(line) as { level: number, err?: { message?: string } }).filter((line) => line.level >= 50)
  t.equal(errorLines.length, 3, 'each 500 is logged at error level')
  t.ok(errorLines.every((line) => line.err?.message === SECRET), 'with the real cause')
})

test('a 503 says only that a backend is unavailable', async (t) => {
  const { app } = await tinyApp(t)
  const { statusCode, body } = await call<ErrorBody>(app, { method: 'GET', url: '/unavailable' })
  t.equal(statusCode, 503)
  t.same(body, {
    statusCode: 503,
    code: 'SERVICE_UNAVAILABLE',
    error: 'Service Unavailable',
    message: 'a backend this request needs is unavailable; try again shortly'
  })
})

test('a backend the drivers cannot reach is a 503 that says only that', async (t) => {
  const { app, logs } = await tinyApp(t)
  for (const kind of ['refused', 'lost', 'offline', 'timeout', 'retries', 'queue', 'deadline']) {
    const { statusCode, body } = await call<ErrorBody>(app, { method: 'GET', url: `/unreachable/${kind}` })
    t.equal(statusCode, 503, kind)
    t.same(body, { statusCode: 503, code: 'SERVICE_UNAVAILABLE', error: 'Service Unavailable', message: 'a backend this request needs is unavailable; try again shortly' }, `${kind}: body`)
  }
  t.ok(logs.some((line) => line.includes('ECONNREFUSED')), 'the cause is in the log')
})

test('domain errors map to their status, keeping code and message', async (t) => {
  const { app } = await tinyApp(t)
  const expected: Array<[string, number, string, string, string]> = [
    ['invalid', 400, 'BAD_THING', 'Bad Request', 'that is not right'],
    ['unauthorized', 401, 'NO_ENTRY', 'Unauthorized', 'who are you'],
    ['forbidden', 403, 'NOT_YOURS', 'Forbidden', 'not yours'],
    ['missing', 404, 'NO_SUCH', 'Not Found', 'not here'],
    ['conflict', 409, 'ALREADY', 'Conflict', 'already there']
  ]
  for (const [kind, statusCode, code, error, message] of expected) {
    const response = await call<ErrorBody>(app, { method: 'GET', url: `/typed/${kind}` })
    t.equal(response.statusCode, statusCode, kind)
    t.same(response.body, { statusCode, code, error, message }, `${kind}: body`)
  }
})

test('validation errors have code VALIDATION_FAILED', async (t) => {
  const { app } = await tinyApp(t)
  const tiny = await call<ErrorBody>(app, { method: 'POST', url: '/validated', payload: { n: 'x' } })
  t.equal(tiny.statusCode, 400)
  t.equal(tiny.body.code, 'VALIDATION_FAILED')
  t.equal(tiny.body.error, 'Bad Request')
  t.match(tiny.body.message, /n/, 'the message says what is wrong')

  const app2 = await build(t)
  const full = await call<ErrorBody>(app2, { method: 'POST', url: '/auth/signup', payload: { email: 'a@example.com' } })
  t.equal(full.statusCode, 400)
  t.same(Object.keys(full.body).sort(), ['code', 'error', 'message', 'statusCode'])
  t.equal(full.body.code, 'VALIDATION_FAILED')
  const query = await call<ErrorBody>(app2, { method: 'GET', url: '/users/abc' })
  t.equal(query.statusCode, 401, 'authentication comes before parameter validation')
})

test('an unknown route is a 404 with the error shape', async (t) => {
  const app = await build(t)
  for (const [method, url] of [['GET', '/nope'], ['POST', '/nope?x=1'], ['DELETE', '/users/me'], ['GET', '/auth/signup']] as const) {
    const { statusCode, body } = await call<ErrorBody>(app, { method, url })
    t.equal(statusCode, 404, `${method} ${url}`)
    t.same(Object.keys(body).sort(), ['code', 'error', 'message', 'statusCode'])
    t.equal(body.statusCode, 404)
    t.equal(body.code, 'NOT_FOUND')
    t.equal(body.error, 'Not Found')
    t.notOk(body.message.includes('x=1'), 'the query string is not echoed')
  }
})

test('a database error is logged without its statement or values', async (t) => {
  const { app, logs } = await tinyApp(t)
  const response = await call<ErrorBody>(app, { method: 'GET', url: '/database' })
  t.equal(response.statusCode, 500)
  t.notMatch(JSON.stringify(response.body), /private|messages/, 'the client learns nothing')
  const logged = logs.join('')
  t.match(logged, /ER_NO_SUCH_TABLE/, 'the log keeps what went wrong')
  t.notMatch(logged, /private diagnosis/, 'but not the values of the statement')
  t.notMatch(logged, /INSERT INTO/, 'nor the statement')
})
