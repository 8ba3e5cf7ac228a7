/*
 * `npm run cluster [-- --nodes 3 --port 3000 --host 127.0.0.1]`: runs several
 * nodes of the standalone server on one machine, on consecutive ports, all on
 * the same MySQL database and Redis, as a cluster behind a load balancer would.
 *
 * Each node is a child process whose output lines are prefixed with the node.
 * Ctrl-C or SIGTERM stops every node gracefully (a second one kills them);
 * a node that dies is reported and the others keep running.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { createInterface } from 'node:readline'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { parseArgs } from 'node:util'

export const USAGE = `usage: npm run cluster [-- --nodes <n>] [--port <first port>] [--host <address>]

Starts <n> nodes (default 3) of the built server on consecutive ports from
<first port> (default PORT, or 3000), listening on <address> (default HOST,
or 127.0.0.1). MYSQL_URL and REDIS_URL are required: every node uses the
same database, and Redis is what makes them share tokens, presence and
message routing. JWT_SECRET is shared too; a random one is made if unset.
Every other variable the server reads (LOG_LEVEL, TRUST_PROXY, ...) is passed on.`

/** More nodes than this is a typo, not a test cluster on one machine. */
export const MAX_NODES = 64

const SERVER = fileURLToPath(new URL('../src/server.js', import.meta.url))

export class UsageError extends Error {}
export class SetupError extends Error {}

export interface ClusterOptions {
  help: boolean
  nodes: number
  port: number
  host: string
}

export interface NodePlan {
  /** 1-based, as printed. */
  number: number
  port: number
  /** What each output line of the node starts with: `[node 1 :3000]`. */
  label: string
  url: string
  env: NodeJS.ProcessEnv
}

export interface ClusterPlan {
  nodes: NodePlan[]
  /** No JWT_SECRET was set, so one was made for this run. */
  jwtSecretGenerated: boolean
}

function wholeNumber (text: string, what: string): number {
  if (!/^\d+$/.test(text.trim())) throw new UsageError(`${what} must be a whole number, not "${text}"`)
  return Number(text)
}

/** Reads the command line; PORT and HOST give the defaults. */
export function parseClusterArgs (args: string[], env: NodeJS.ProcessEnv): ClusterOptions {
  let values
  try {
    values = parseArgs({
      args,
      options: {
        nodes: { type: 'string' },
        port: { type: 'string' },
        host: { type: 'string' },
        help: { type: 'boolean', short: 'h', default: false }
      },
      strict: true,
      allowPositionals: false
    }).values
  } catch (error) {
    throw new UsageError((error as Error).message)
  }

  const nodes = values.nodes === undefined ? 3 : wholeNumber(values.nodes, '--nodes')
  if (nodes < 1 || nodes > MAX_NODES) throw new UsageError(`--nodes must be between 1 and ${MAX_NODES}, not ${nodes}`)

  const portText = values.port ?? (env.PORT === undefined || env.PORT === '' ? '3000' : env.PORT)
  const port = wholeNumber(portText, values.port === undefined ? 'PORT' : '--port')
  // Port 0 would give each node a random port, which nothing could be pointed at.
  if (port < 1 || port + nodes - 1 > 65_535) {
    throw new UsageError(`ports ${port} to ${port + nodes - 1} are not all valid: the first port must be 1 or more, the last 65535 or less`)
  }

  const host = values.host ?? (env.HOST === undefined || env.HOST === '' ? '127.0.0.1' : env.HOST)
  if (host === '') throw new UsageError('--host must not be empty')

  return { help: values.help, nodes, port, host }
}

/** The address to browse to for a node listening on `host` (any-address listeners are reached on loopback). */
export function nodeUrl (host: string, port: number): string {
  const reachable = host === '0.0.0.0' ? '127.0.0.1' : host === '::' ? '::1' : host
  return `http://${reachable.includes(':') ? `[${reachable}]` : reachable}:${port}`
}

export function nodeLabel (number: number, port: number): string {
  return `[node ${number} :${port}]`
}

/** What every node must share, from the environment; a JWT secret is made when none is set. */
export function sharedEnvironment (env: NodeJS.ProcessEnv): { shared: Record<string, string>, jwtSecretGenerated: boolean } {
  const mysqlUrl = env.MYSQL_URL
  if (mysqlUrl === undefined || mysqlUrl === '') {
    throw new SetupError('MYSQL_URL is not set: every node must use the same database, e.g. MYSQL_URL=mysql://user:password@127.0.0.1:3306/switchboard')
  }
  const redisUrl = env.REDIS_URL
  if (redisUrl === undefined || redisUrl === '') {
    throw new SetupError('REDIS_URL is not set: Redis is what lets the nodes share tokens, presence and message routing, e.g. REDIS_URL=redis://127.0.0.1:6379/0')
  }
  const configuredSecret = env.JWT_SECRET
  const jwtSecretGenerated = configuredSecret === undefined || configuredSecret === ''
  // 48 random bytes: well over the 32 the server requires.
  const jwtSecret = jwtSecretGenerated ? randomBytes(48).toString('base64url') : configuredSecret
  return { shared: { MYSQL_URL: mysqlUrl, REDIS_URL: redisUrl, JWT_SECRET: jwtSecret }, jwtSecretGenerated }
}

/** Every node's port, label, URL and environment: the inherited one, the shared settings, and its own PORT and HOST. */
export function planCluster ({ nodes, port, host }: ClusterOptions, env: NodeJS.ProcessEnv): ClusterPlan {
  const { shared, jwtSecretGenerated } = sharedEnvironment(env)
  const plans = Array.from({ length: nodes }, (_unused, index): NodePlan => {
    const nodePort = port + index
    return {
      number: index + 1,
      port: nodePort,
      label: nodeLabel(index + 1, nodePort),
      url: nodeUrl(host, nodePort),
      env: { ...env, ...shared, PORT: String(nodePort), HOST: host }
    }
  })
  return { nodes: plans, jwtSecretGenerated }
}

/** One line on how to put the nodes behind a load balancer. */
export function loadBalancerHint (nodes: NodePlan[]): string {
  const targets = nodes.map((node) => new URL(node.url).host).join(', ')
  return `Load balancer: spread HTTP and WebSocket upgrades (GET /ws) over ${targets}; no sticky sessions needed, and set TRUST_PROXY on the nodes so rate limits see client addresses.`
}

export interface Output {
  log (line: string): void
  error (line: string): void
}

export interface RunningCluster {
  /** Resolves once every node has exited: 0 if each was stopped and exited cleanly, 1 otherwise. */
  exited: Promise<number>
  /** Sends SIGTERM to every running node; resolves as `exited` does. */
  stop (): Promise<number>
  /** Sends SIGKILL to every running node, for when a graceful stop takes too long. */
  kill (): void
}

function describeExit (code: number | null, signal: NodeJS.Signals | null): string {
  return signal === null ? `exited with code ${code}` : `was killed by ${signal}`
}

/**
 * Starts one child per node, running `command` (the server, unless a test
 * passes another) with the node's environment.
 */
export function startNodes (nodes: NodePlan[], { command, output }: { command: string[], output: Output }): RunningCluster {
  const [executable, ...commandArgs] = command
  if (executable === undefined) throw new Error('startNodes needs a command')
  let stopping = false
  let failed = false

  const children = nodes.map((node) => {
    const child = spawn(executable, commandArgs, {
      env: node.env,
      stdio: ['ignore', 'pipe', 'pipe'],
      // Its own process group: a terminal's Ctrl-C reaches only this script, which
      // forwards one SIGTERM. A second signal would make a node quit without closing.
      detached: true
    })
    for (const [stream, write] of [[child.stdout, output.log], [child.stderr, output.error]] as const) {
      createInterface({ input: stream, crlfDelay: Infinity }).on('line', (line) => write(`${node.label} ${line}`))
    }
    const closed = new Promise<void>((resolve) => {
      let neverStarted = false
      child.on('error', (error) => {
        failed = true
        neverStarted = child.pid === undefined
        output.error(`${node.label} ${neverStarted ? 'could not start' : 'failed'}: ${error.message}`)
        if (neverStarted) resolve()
      })
      // 'close' comes after the output streams end, so the node's last lines are printed first.
      child.once('close', (code, signal) => {
        if (neverStarted) return
        const clean = stopping && (code === 0 || signal === 'SIGTERM')
        if (!clean) failed = true
        if (!stopping) {
          const others = children.filter((other) => other.child !== child && isRunning(other.child)).length
          output.error(`${node.label} ${describeExit(code, signal)}; ${others === 0 ? 'no node is left running' : `the other ${others === 1 ? 'node keeps' : `${others} nodes keep`} running`}`)
        } else if (!clean) {
          output.error(`${node.label} ${describeExit(code, signal)} while stopping`)
        }
        resolve()
      })
    })
    return { child, closed }
  })

  const exited = Promise.all(children.map(({ closed }) => closed)).then(() => failed ? 1 : 0)

  function signalAll (signal: NodeJS.Signals): void {
    for (const { child } of children) if (isRunning(child)) child.kill(signal)
  }

  return {
    exited,
    stop () {
      stopping = true
      signalAll('SIGTERM')
      return exited
    },
    kill () {
      stopping = true
      signalAll('SIGKILL')
    }
  }
}

function isRunning (child: ChildProcess): boolean {
  return child.pid !== undefined && child.exitCode === null && child.signalCode === null
}

/** Runs the command with `args` (what follows `--`) until every node has exited; resolves to the exit code. */
export async function runClusterCommand (args: string[], { env, output, command = [process.execPath, SERVER] }: {
  env: NodeJS.ProcessEnv
  output: Output
  command?: string[]
}): Promise<number> {
  let plan: ClusterPlan
  try {
    const options = parseClusterArgs(args, env)
    if (options.help) {
      output.log(USAGE)
      return 0
    }
    plan = planCluster(options, env)
  } catch (failure) {
    if (failure instanceof UsageError) {
      output.error(`cluster: ${failure.message}\n\n${USAGE}`)
      return 2
    }
    if (failure instanceof SetupError) {
      output.error(`cluster: ${failure.message}`)
      return 1
    }
    throw failure
  }

  if (plan.jwtSecretGenerated) {
    output.log('JWT_SECRET is not set: generated a random one shared by these nodes; their tokens stop working when the cluster stops.')
  }
  output.log(`Starting ${plan.nodes.length} Switchboard node${plan.nodes.length === 1 ? '' : 's'} sharing MySQL and Redis:`)
  for (const node of plan.nodes) output.log(`  node ${node.number}: ${node.url}  (API docs: ${node.url}/docs, WebSocket: ${node.url.replace(/^http/, 'ws')}/ws)`)
  output.log(loadBalancerHint(plan.nodes))

  const cluster = startNodes(plan.nodes, { command, output })
  let signals = 0
  const onSignal = (signal: NodeJS.Signals): void => {
    signals++
    if (signals === 1) {
      output.log(`${signal}: stopping every node (again to kill them)`)
      cluster.stop().catch(() => {})
    } else {
      output.log(`${signal} again: killing every node`)
      cluster.kill()
    }
  }
  // Detached nodes outlive this script unless told otherwise, even when it crashes.
  const onExit = (): void => { cluster.kill() }
  const signalNames = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const
  for (const signal of signalNames) process.on(signal, onSignal)
  process.on('exit', onExit)
  try {
    return await cluster.exited
  } finally {
    for (const signal of signalNames) process.removeListener(signal, onSignal)
    process.removeListener('exit', onExit)
  }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  process.exitCode = await runClusterCommand(process.argv.slice(2), {
    env: process.env,
    output: { log: (line) => console.log(line), error: (line) => console.error(line) }
  })
}
