import SwaggerParser from '@apidevtools/swagger-parser'
import { Ajv } from 'ajv'
import addFormats from 'ajv-formats'
import Fastify, { type FastifyInstance, type InjectOptions, type RouteOptions } from 'fastify'
import fp from 'fastify-plugin'
import { test, type Test } from 'tap'
import switchboard from '../../src/app.js'
import { serverOptions } from '../../src/server.js'
import { createUser, loadDocsUi, TEST_SETTINGS } from '../helper.js'

interface JsonSchema {
  [keyword: string]: unknown
}

interface Operation {
  tags?: string[]
  summary?: string
  parameters?: Array<{ name: string, in: string, required?: boolean }>
  security?: Array<Record<string, string[]>>
  responses: Record<string, { description?: string, content?: Record<string, { schema?: JsonSchema }> }>
}

interface OpenApiDocument {
  openapi: string
  info: { title: string, version: string }
  tags?: Array<{ name: string }>
  paths: Record<string, Record<string, Operation>>
  components?: { securitySchemes?: Record<string, unknown> }
}

/** The parser's own document type (from openapi-types, which this project does not import directly). */
type ParserDocument = Exclude<Parameters<typeof SwaggerParser.validate>[0], string>

/** The HTTP surface DESIGN promises (this issue): success status, then the failures each documents; JSON unless `mediaType` says otherwise. */
const EXPECTED: Record<string, { success: number, errors: number[], bearer: boolean, mediaType?: string }> = {
  'POST /auth/signup': { success: 201, errors: [400, 409, 415, 429], bearer: false },
  'POST /auth/login': { success: 200, errors: [400, 401, 415, 429], bearer: false },
  'POST /auth/refresh': { success: 200, errors: [400, 401, 415], bearer: false },
  'POST /auth/logout': { success: 204, errors: [400, 401, 415], bearer: false },
  'GET /users/me': { success: 200, errors: [401, 429], bearer: true },
  'GET /users/online': { success: 200, errors: [400, 401, 429], bearer: true },
  'GET /users/{id}': { success: 200, errors: [400, 401, 404, 429], bearer: true },
  'GET /messages': { success: 200, errors: [400, 401, 429], bearer: true },
  'GET /health': { success: 200, errors: [], bearer: false },
  'GET /ready': { success: 200, errors: [503], bearer: false },
  'GET /metrics': { success: 200, errors: [], bearer: false, mediaType: 'text/plain; version=0.0.4; charset=utf-8' }
}

/** `/users/:id` in Fastify is `/users/{id}` in OpenAPI. */
function openApiPath (url: string): string {
  return url.replace(/:(\w+)/g, '{$1}')
}

/** The app as production builds it, remembering every route it registers. */
async function buildRecordingRoutes (t: Test): Promise<{ app: FastifyInstance, routes: RouteOptions[] }> {
  const routes: RouteOptions[] = []
  const app = Fastify(serverOptions({ logLevel: 'silent', trustProxy: false }))
  app.addHook('onRoute', (route) => { routes.push(route) })
  await app.register(fp(switchboard), TEST_SETTINGS)
  await app.ready()
  t.teardown(() => app.close())
  return { app, routes }
}

async function documentOf (app: FastifyInstance): Promise<OpenApiDocument> {
  const response = await app.inject({ method: 'GET', url: '/docs/json' })
  if (response.statusCode !== 200) throw new Error(`GET /docs/json: ${response.statusCode}`)
  return response.json() as OpenApiDocument
}

test('GET /docs/json is a valid OpenAPI 3 document', async (t) => {
  const { app } = await buildRecordingRoutes(t)
  const document = await documentOf(app)
  t.match(document.openapi, /^3\./, 'OpenAPI 3')
  t.equal(document.info.title, 'Switchboard')
  // The parser dereferences in place; give it a copy so the original stays inspectable.
  const validated = await SwaggerParser.validate(structuredClone(document) as unknown as ParserDocument)
  t.ok(validated, 'swagger-parser accepts it')
})

test('query parameters with a default are documented as optional', async (t) => {
  const { app } = await buildRecordingRoutes(t)
  const document = await documentOf(app)
  const required = (path: string) => Object.fromEntries((document.paths[path]?.get?.parameters ?? [])
    .filter((parameter) => parameter.in === 'query')
    .map((parameter) => [parameter.name, parameter.required === true]))
  t.strictSame(required('/messages'), { with: true, before: false, limit: false })
  t.strictSame(required('/users/online'), { limit: false, cursor: false })
})

test('every HTTP route is documented, with tags and response schemas', async (t) => {
  const { app, routes } = await buildRecordingRoutes(t)
  const document = await documentOf(app)

  const httpRoutes = new Set<string>()
  const websocketRoutes: string[] = []
  for (const route of routes) {
    // HEAD routes are Fastify's automatic twins of GET; the docs UI serves itself.
    const methods = (Array.isArray(route.method) ? route.method : [route.method]).filter((method) => method !== 'HEAD')
    if (methods.length === 0 || route.url.startsWith('/docs')) continue
    const { websocket, wsHandler } = route as RouteOptions & { websocket?: boolean, wsHandler?: unknown }
    if (websocket === true || wsHandler !== undefined) {
      websocketRoutes.push(`${methods.join(',')} ${route.url}`)
      continue
    }
    for (const method of methods) httpRoutes.add(`${method} ${openApiPath(route.url)}`)
  }
  t.same([...httpRoutes].sort(), Object.keys(EXPECTED).sort(), 'the app has exactly the routes DESIGN lists')
  t.same(websocketRoutes, ['GET /ws'], 'and one WebSocket route')

  const documented = Object.entries(document.paths).flatMap(([path, operations]) =>
    Object.keys(operations).map((method) => `${method.toUpperCase()} ${path}`))
  t.same(documented.sort(), [...httpRoutes].sort(), 'the document lists every HTTP route and nothing else')
  t.notOk('/ws' in document.paths, '/ws is not in the document')
  t.notOk(Object.keys(document.paths).some((path) => path.startsWith('/docs')), 'the docs UI is not in the document')

  const declaredTags = new Set((document.tags ?? []).map((tag) => tag.name))
  for (const [route, { success, errors, bearer, mediaType = 'application/json' }] of Object.entries(EXPECTED)) {
    const [method, path] = route.split(' ') as [string, string]
    const operation = document.paths[path]?.[method.toLowerCase()]
    if (operation === undefined) {
      t.fail(`${route} is not documented`)
      continue
    }
    t.ok((operation.tags ?? []).length > 0, `${route} has tags`)
    for (const tag of operation.tags ?? []) t.ok(declaredTags.has(tag), `${route}: tag "${tag}" is declared`)
    t.type(operation.summary, 'string', `${route} has a summary`)

    const successResponse = operation.responses[String(success)]
    t.ok(successResponse, `${route} documents ${success}`)
    if (success === 204) {
      t.equal(successResponse?.content, undefined, `${route}: 204 has no body`)
    } else {
      t.type(successResponse?.content?.[mediaType]?.schema, 'object', `${route}: ${success} has a schema for ${mediaType}`)
    }
    for (const status of errors) {
      const schema = operation.responses[String(status)]?.content?.['application/json']?.schema
      t.type(schema, 'object', `${route}: ${status} has a JSON schema`)
      if (route === 'GET /ready') continue // its 503 is the readiness report itself
      t.match(schema, { type: 'object', required: ['statusCode', 'code', 'error', 'message'] }, `${route}: ${status} is the error shape`)
    }
    if (bearer) t.same(operation.security, [{ bearerAuth: [] }], `${route} needs a Bearer token`)
    else t.notOk(operation.security?.length, `${route} needs no token`)
  }
  t.ok(document.components?.securitySchemes?.bearerAuth, 'the bearer scheme is declared')
})

test('what the server answers matches the documented schemas', async (t) => {
  const { app } = await buildRecordingRoutes(t)
  const document = await documentOf(app)
  // The document is OpenAPI 3.0, whose schemas use `nullable`; ajv understands it.
  const ajv = new Ajv({ strict: false, allErrors: true })
  addFormats.default(ajv)

  async function check (request: InjectOptions, path: string, expectedStatus: number): Promise<unknown> {
    const response = await app.inject(request)
    const label = `${request.method ?? 'GET'} ${String(request.url)} -> ${expectedStatus}`
    t.equal(response.statusCode, expectedStatus, label)
    const documented = document.paths[path]?.[(request.method ?? 'GET').toLowerCase()]?.responses[String(response.statusCode)]
    t.ok(documented, `${label}: status is documented`)
    if (response.statusCode === 204) {
      t.equal(response.body, '', `${label}: no body`)
      return null
    }
    const schema = documented?.content?.['application/json']?.schema
    const body: unknown = response.json()
    if (schema === undefined) {
      t.fail(`${label}: no schema`)
      return body
    }
    const valid = ajv.validate(schema, body)
    t.ok(valid, `${label}: body matches the documented schema`, { errors: ajv.errors, body })
    return body
  }

  const email = `docs-${Date.now()}@example.com`
  const signupBody = { email, password: 'correct horse battery', name: 'Doc' }
  await check({ method: 'POST', url: '/auth/signup', payload: signupBody }, '/auth/signup', 201)
  await check({ method: 'POST', url: '/auth/signup', payload: signupBody }, '/auth/signup', 409)
  await check({ method: 'POST', url: '/auth/signup', payload: { ...signupBody, name: 1 } }, '/auth/signup', 400)
  await check({ method: 'POST', url: '/auth/signup', headers: { 'content-type': 'text/plain' }, payload: 'x' }, '/auth/signup', 415)
  const tokens = await check({ method: 'POST', url: '/auth/login', payload: { email, password: signupBody.password } }, '/auth/login', 200) as { access_token: string, refresh_token: string }
  await check({ method: 'POST', url: '/auth/login', payload: { email, password: 'wrong password' } }, '/auth/login', 401)
  const rotated = await check({ method: 'POST', url: '/auth/refresh', payload: { refresh_token: tokens.refresh_token } }, '/auth/refresh', 200) as { access_token: string, refresh_token: string }
  await check({ method: 'POST', url: '/auth/refresh', payload: { refresh_token: 'spent' } }, '/auth/refresh', 401)

  const headers = { authorization: `Bearer ${rotated.access_token}` }
  const me = await check({ method: 'GET', url: '/users/me', headers }, '/users/me', 200) as { id: number }
  await check({ method: 'GET', url: '/users/me' }, '/users/me', 401)
  await check({ method: 'GET', url: '/users/online', headers }, '/users/online', 200)
  await check({ method: 'GET', url: '/users/online?limit=0', headers }, '/users/online', 400)
  const other = await createUser(app, 'Other')
  await check({ method: 'GET', url: `/users/${other.id}`, headers }, '/users/{id}', 200)
  await check({ method: 'GET', url: `/users/${me.id + other.id + 100}`, headers }, '/users/{id}', 404)
  await check({ method: 'GET', url: '/users/abc', headers }, '/users/{id}', 400)
  await check({ method: 'GET', url: `/messages?with=${other.id}`, headers }, '/messages', 200)
  await check({ method: 'GET', url: '/messages?with=abc', headers }, '/messages', 400)
  await check({ method: 'GET', url: `/messages?with=${other.id}` }, '/messages', 401)
  await check({ method: 'GET', url: '/health' }, '/health', 200)
  await check({ method: 'GET', url: '/ready' }, '/ready', 200)
  await check({ method: 'POST', url: '/auth/logout', payload: { refresh_token: rotated.refresh_token } }, '/auth/logout', 204)
  await check({ method: 'POST', url: '/auth/logout', payload: { refresh_token: rotated.refresh_token } }, '/auth/logout', 401)
})

test('GET /docs serves the UI, and every asset it links to', async (t) => {
  const { app } = await buildRecordingRoutes(t)
  const ui = await loadDocsUi(app, '/docs')
  t.equal(ui.statusCode, 200)
  t.match(ui.contentType, /text\/html/)
  t.match(ui.body, /swagger-ui/i, 'the Swagger UI page')
  t.ok(ui.assets.length >= 3, 'it links its styles and scripts')
  for (const asset of ui.assets) t.equal(asset.statusCode, 200, `${asset.url} is served`)
  const initializer = await app.inject({ method: 'GET', url: '/docs/static/swagger-initializer.js' })
  t.equal(initializer.statusCode, 200, 'the initializer script is served')
})
