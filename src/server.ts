import { pathToFileURL } from 'node:url'
import closeWithGrace from 'close-with-grace'
import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify'
import fp from 'fastify-plugin'
import switchboard, { type SwitchboardOptions } from './app.js'
import { readEnvironment, type ServerConfig } from './config.js'
import { ConfigError } from './errors.js'

/** A URL with any `token` query parameter masked, for logs. */
export function redactUrl (url: string): string {
  return url.replace(/([?&]token=)[^&#]*/gi, '$1[redacted]')
}

/**
 * The Fastify server options of the standalone server. Tests build their
 * app with these same options (`logStream` lets them read the log lines).
 */
export function serverOptions ({ logLevel, trustProxy }: Pick<ServerConfig, 'logLevel' | 'trustProxy'>, { logStream }: { logStream?: NodeJS.WritableStream } = {}): FastifyServerOptions {
  return {
    logger: {
      level: logLevel,
      ...(logStream === undefined ? {} : { stream: logStream }),
      serializers: {
        req (request: { method: string, url: string, host?: string, ip?: string, socket?: { remotePort?: number } }) {
          return { method: request.method, url: redactUrl(request.url), host: request.host, remoteAddress: request.ip, remotePort: request.socket?.remotePort }
        }
      }
    },
    // Fastify accepts a hop count too, though its types do not say so.
    trustProxy: trustProxy as FastifyServerOptions['trustProxy'],
    bodyLimit: 64 * 1024,
    connectionTimeout: 30_000,
    requestTimeout: 30_000,
    keepAliveTimeout: 5_000,
    pluginTimeout: 60_000,
    return503OnClosing: true,
    forceCloseConnections: 'idle'
  }
}

export async function buildServer (serverConfig: ServerConfig, options: SwitchboardOptions): Promise<FastifyInstance> {
  const app = Fastify(serverOptions(serverConfig))
  // Wrapped here so the standalone server's root is the service itself.
  await app.register(fp(switchboard), options)
  return app
}

export async function start (env: NodeJS.ProcessEnv = process.env): Promise<FastifyInstance> {
  const { app: options, server } = readEnvironment(env)
  const app = await buildServer(server, options)

  const grace = closeWithGrace({ delay: 10_000 }, async ({ signal, err }) => {
    if (err !== undefined) app.log.error({ err }, 'closing after an error')
    else app.log.info({ signal }, 'shutting down')
    await app.close()
  })
  // Closed some other way (by an embedding script, a test), it leaves no process listeners behind.
  app.addHook('onClose', async () => { grace.uninstall() })

  const address = await app.listen({ port: server.port, host: server.host })
  app.log.info(`Switchboard is listening on ${address} (API docs: ${address}/docs)`)
  return app
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  start().catch((error: unknown) => {
    if (error instanceof ConfigError) console.error(`switchboard: configuration error: ${error.message}`)
    else console.error('switchboard: failed to start:', error)
    process.exit(1)
  })
}
