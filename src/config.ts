import { randomBytes } from 'node:crypto'
import Type, { type Static, type TSchema } from 'typebox'
import Value from 'typebox/value'
import { ConfigError } from './errors.js'

/**
 * Every setting of the service. The plugin takes these as options; the
 * standalone server reads them from the environment variable named in
 * `ENVIRONMENT` below. Defaults live here and nowhere else.
 */
export const ConfigSchema = Type.Object({
  jwtSecret: Type.Optional(Type.String({ description: 'HS256 key, at least 32 bytes' })),
  jwtIssuer: Type.String({ default: 'switchboard', minLength: 1 }),
  jwtAudience: Type.String({ default: 'switchboard', minLength: 1 }),
  accessTokenTtl: Type.Integer({ default: 900, minimum: 10, maximum: 86_400 }),
  refreshTokenTtl: Type.Integer({ default: 604_800, minimum: 60, maximum: 31_536_000 }),
  bcryptCost: Type.Integer({ default: 12, minimum: 4, maximum: 15 }),
  wsMaxPayload: Type.Integer({ default: 65_536, minimum: 1024, maximum: 16_777_216 }),
  wsAllowedOrigins: Type.Array(Type.String({ minLength: 1 }), { default: [] }),
  wsMessageRate: Type.Number({ default: 20, exclusiveMinimum: 0 }),
  wsMessageBurst: Type.Integer({ default: 40, minimum: 1 }),
  wsPingInterval: Type.Integer({ default: 30, minimum: 1, maximum: 3600, description: 'seconds between pings; two missed pongs drop the socket' }),
  wsMaxBuffered: Type.Integer({ default: 1_048_576, minimum: 1024, description: 'bytes waiting to be sent to one socket before it is dropped as too slow' }),
  wsMaxConnectionsPerUser: Type.Integer({ default: 10, minimum: 1 }),
  wsMaxConnections: Type.Integer({ default: 10_000, minimum: 1 }),
  messageMaxChars: Type.Integer({ default: 4000, minimum: 1, maximum: 65_535 }),
  rateLimitMax: Type.Integer({ default: 300, minimum: 1 }),
  rateLimitWindow: Type.Integer({ default: 60, minimum: 1 }),
  authRateLimitMax: Type.Integer({ default: 10, minimum: 1 }),
  authRateLimitWindow: Type.Integer({ default: 60, minimum: 1 }),
  mysqlUrl: Type.Optional(Type.String({ pattern: '^mysql://' })),
  redisUrl: Type.Optional(Type.String({ pattern: '^rediss?://' })),
  redisKeyPrefix: Type.String({ default: 'switchboard:' }),
  presenceTtl: Type.Integer({ default: 15, minimum: 1, maximum: 20, description: 'seconds after which a silent node counts as dead' })
}, { additionalProperties: false })

export type ConfigInput = Partial<Static<typeof ConfigSchema>>

/** Settings that belong to the standalone server, not to the plugin. */
export const ServerConfigSchema = Type.Object({
  port: Type.Integer({ default: 3000, minimum: 0, maximum: 65_535 }),
  host: Type.String({ default: '127.0.0.1' }),
  logLevel: Type.Union([
    Type.Literal('fatal'), Type.Literal('error'), Type.Literal('warn'),
    Type.Literal('info'), Type.Literal('debug'), Type.Literal('trace'), Type.Literal('silent')
  ], { default: 'info' }),
  trustProxy: Type.Union([Type.Boolean(), Type.Integer({ minimum: 0 }), Type.Array(Type.String())], { default: false })
}, { additionalProperties: false })

export type ServerConfig = Static<typeof ServerConfigSchema>

type Parser = 'int' | 'number' | 'string' | 'list' | 'trustProxy'

/** Environment variable -> option, and how its text is read. */
const ENVIRONMENT: Record<string, { option: string, parse: Parser }> = {
  JWT_SECRET: { option: 'jwtSecret', parse: 'string' },
  JWT_ISSUER: { option: 'jwtIssuer', parse: 'string' },
  JWT_AUDIENCE: { option: 'jwtAudience', parse: 'string' },
  ACCESS_TOKEN_TTL: { option: 'accessTokenTtl', parse: 'int' },
  REFRESH_TOKEN_TTL: { option: 'refreshTokenTtl', parse: 'int' },
  BCRYPT_COST: { option: 'bcryptCost', parse: 'int' },
  WS_MAX_PAYLOAD: { option: 'wsMaxPayload', parse: 'int' },
  WS_ALLOWED_ORIGINS: { option: 'wsAllowedOrigins', parse: 'list' },
  WS_MESSAGE_RATE: { option: 'wsMessageRate', parse: 'number' },
  WS_MESSAGE_BURST: { option: 'wsMessageBurst', parse: 'int' },
  WS_PING_INTERVAL: { option: 'wsPingInterval', parse: 'int' },
  WS_MAX_BUFFERED: { option: 'wsMaxBuffered', parse: 'int' },
  WS_MAX_CONNECTIONS_PER_USER: { option: 'wsMaxConnectionsPerUser', parse: 'int' },
  WS_MAX_CONNECTIONS: { option: 'wsMaxConnections', parse: 'int' },
  MESSAGE_MAX_CHARS: { option: 'messageMaxChars', parse: 'int' },
  RATE_LIMIT_MAX: { option: 'rateLimitMax', parse: 'int' },
  RATE_LIMIT_WINDOW: { option: 'rateLimitWindow', parse: 'int' },
  AUTH_RATE_LIMIT_MAX: { option: 'authRateLimitMax', parse: 'int' },
  AUTH_RATE_LIMIT_WINDOW: { option: 'authRateLimitWindow', parse: 'int' },
  MYSQL_URL: { option: 'mysqlUrl', parse: 'string' },
  REDIS_URL: { option: 'redisUrl', parse: 'string' },
  REDIS_KEY_PREFIX: { option: 'redisKeyPrefix', parse: 'string' },
  PRESENCE_TTL: { option: 'presenceTtl', parse: 'int' },
  PORT: { option: 'port', parse: 'int' },
  HOST: { option: 'host', parse: 'string' },
  LOG_LEVEL: { option: 'logLevel', parse: 'string' },
  TRUST_PROXY: { option: 'trustProxy', parse: 'trustProxy' }
}

const OPTION_TO_ENV = new Map(Object.entries(ENVIRONMENT).map(([env, { option }]) => [option, env]))

function parseValue (variable: string, text: string, parse: Parser): unknown {
  switch (parse) {
    case 'string':
      return text
    case 'int':
      if (!/^-?\d+$/.test(text.trim())) throw new ConfigError(`${variable} must be a whole number, got "${text}"`)
      return Number(text)
    case 'number': {
      const value = Number(text)
      if (text.trim() === '' || !Number.isFinite(value)) throw new ConfigError(`${variable} must be a number, got "${text}"`)
      return value
    }
    case 'list':
      return text.split(',').map((item) => item.trim()).filter((item) => item !== '')
    case 'trustProxy':
      if (text === 'true') return true
      if (text === 'false' || text === '') return false
      if (/^\d+$/.test(text)) return Number(text)
      return text.split(',').map((item) => item.trim()).filter((item) => item !== '')
  }
}

/** Reads the environment into option objects; empty variables count as unset. */
export function readEnvironment (env: NodeJS.ProcessEnv): { app: ConfigInput, server: ServerConfig } {
  const values: Record<string, unknown> = {}
  for (const [variable, { option, parse }] of Object.entries(ENVIRONMENT)) {
    const text = env[variable]
    if (text === undefined || text === '') continue
    values[option] = parseValue(variable, text, parse)
  }
  const { port, host, logLevel, trustProxy, ...app } = values
  const server = Object.fromEntries(Object.entries({ port, host, logLevel, trustProxy }).filter(([, value]) => value !== undefined))
  return { app: app as ConfigInput, server: resolveServerConfig(server) }
}

function describe (option: string): string {
  const variable = OPTION_TO_ENV.get(option)
  return variable === undefined ? `option "${option}"` : `${variable} (option "${option}")`
}

/** "a, b or c" when an option only takes a few literal values, otherwise null. */
function allowedValues (schema: TSchema, option: string): string | null {
  const property = (schema as { properties?: Record<string, { anyOf?: Array<{ const?: unknown }> }> }).properties?.[option]
  const values = property?.anyOf?.map((branch) => branch.const)
  if (values === undefined || values.some((value) => value === undefined)) return null
  return values.map(String).join(', ')
}

function validated<T> (schema: TSchema, input: object): T {
  const value = Value.Default(schema, structuredClone(input)) as object
  const [first] = Value.Errors(schema, value)
  if (first !== undefined) {
    const unknown = first.keyword === 'additionalProperties' || first.keyword === 'boolean'
    const option = first.instancePath.split('/')[1] ?? ''
    if (unknown) throw new ConfigError(`unknown ${describe(option || 'option')}`)
    const choices = allowedValues(schema, option)
    throw new ConfigError(`${describe(option)} ${choices === null ? first.message : `must be one of ${choices}`}`)
  }
  return value as T
}

export function resolveServerConfig (input: object): ServerConfig {
  return validated<ServerConfig>(ServerConfigSchema, input)
}

export type Config = Static<typeof ConfigSchema> & {
  jwtSecret: string
  /** True when no secret was configured and one was made for this process. */
  jwtSecretGenerated: boolean
}

/**
 * Validates options and fills defaults. `sharedState` says whether several
 * nodes may share tokens (Redis is configured), which makes a secret mandatory.
 */
export function resolveConfig (input: ConfigInput, { sharedState }: { sharedState: boolean }): Config {
  const config = validated<Static<typeof ConfigSchema>>(ConfigSchema, input)
  if (config.jwtSecret !== undefined) {
    if (Buffer.byteLength(config.jwtSecret) < 32) throw new ConfigError(`${describe('jwtSecret')} must be at least 32 bytes`)
    return { ...config, jwtSecret: config.jwtSecret, jwtSecretGenerated: false }
  }
  if (sharedState) throw new ConfigError(`${describe('jwtSecret')} is required when Redis is configured: every node must verify every other node's tokens`)
  return { ...config, jwtSecret: randomBytes(48).toString('base64url'), jwtSecretGenerated: true }
}
