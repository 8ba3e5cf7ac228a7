/**
 * Switchboard side by side with a bare `ws` server and Socket.IO 4, same job,
 * same protocol, same load generator (issue 6).
 *
 *   npm run bench                       # full run, under ten minutes
 *   npm run bench -- --quick            # about a minute
 *   npm run bench -- --servers switchboard,ws --scenarios memory,throughput
 *   npm run bench -- --servers switchboard --scenarios throughput --rates 8000,8000,8000
 *   MYSQL_URL=mysql://root@127.0.0.1:3306/test REDIS_URL=redis://127.0.0.1:6379/0 npm run bench
 *
 * Options: --quick; --servers and --scenarios (comma lists, below);
 * --rates (measure these rates in order instead of searching);
 * --generators (processes, default 2); --cpu-prof (a CPU profile of every
 * child in scripts/bench/results/profiles/); --server-flags="--trace-gc"
 * (more Node flags for the servers; their output goes to their logs).
 *
 * Each server runs as its own process pinned to core 0 (taskset), the
 * generators to core 1. Scenarios:
 *   memory      idle sockets at two levels (5k and 15k): RSS and heap per
 *               connection after a forced GC, and the connect rate;
 *   throughput  users chatting in pairs, open-loop: a step search for the
 *               capacity (highest rate with nothing lost, whatever the
 *               latency) and the max sustainable throughput (p99 <= 20 ms,
 *               nothing lost), server CPU per message, latency at half max;
 *   mysql       the throughput search for Switchboard on MariaDB (MYSQL_URL;
 *               a scratch database, dropped after);
 *   cluster     two Switchboard nodes on MariaDB and Redis (MYSQL_URL and
 *               REDIS_URL; a fresh key prefix, deleted after), half of the
 *               pairs split across the nodes.
 * The tables go to stdout and to scripts/bench/results.md; the servers' logs
 * to scripts/bench/results/.
 */
import { execFileSync } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { availableParallelism, cpus, totalmem } from 'node:os'
import { parseArgs } from 'node:util'
import { TEXT_BYTES } from './accounting.js'
import { nowMicros } from './ipc.js'
import { killAll, machineBusyMicros, sleep, stop } from './processes.js'
import { renderReport, SERVER_LABELS, type RunResults, type ServerKind } from './report.js'
import {
  FULL, GENERATOR_CORE, idleMemory, KEEP_UP, MAX_SOCKETS_PER_GENERATOR, P99_LIMIT_MS, QUICK, QUIET_LIMIT_MS, QUIET_MS,
  startGenerators, throughput, type Profile
} from './scenarios.js'
import {
  databaseDurability, LOG_DIR, runCleanups, scratchDatabase, scratchPrefix, SERVER_CORE, SOURCE_DIR, SWITCHBOARD_LIMITS, withServer
} from './servers.js'

const SCENARIOS = ['memory', 'throughput', 'mysql', 'cluster'] as const
type Scenario = typeof SCENARIOS[number]
const SERVER_KINDS: ServerKind[] = ['switchboard', 'ws', 'socketio']
const RESULTS_FILE = `${SOURCE_DIR}results.md`

interface Options {
  quick: boolean
  servers: ServerKind[]
  scenarios: Set<Scenario>
  generators: number
  profile: Profile
  /** Measure these rates, in this order, instead of searching. */
  rates: number[] | null
  command: string
  /** Node flags for every child: --cpu-prof writes each one's CPU profile to scripts/bench/results/profiles/. */
  childFlags: string[]
  /** More Node flags for the servers only (--trace-gc, say: it goes to their logs). */
  serverFlags: string[]
}

function list<T extends string> (text: string, allowed: readonly T[], name: string): T[] {
  const items = text.split(',').map((item) => item.trim()).filter((item) => item !== '')
  for (const item of items) if (!allowed.includes(item as T)) throw new Error(`--${name}: "${item}" is not one of ${allowed.join(', ')}`)
  return allowed.filter((item) => items.includes(item))
}

/** The backend URLs the run was given, as they would be typed before the command, passwords masked. */
function backendVariables (): string[] {
  return ['MYSQL_URL', 'REDIS_URL'].flatMap((name) => {
    const value = configured(name)
    if (value === null) return []
    try {
      const url = new URL(value)
      if (url.password !== '') url.password = '***'
      return [`${name}=${url.toString()}`]
    } catch {
      return [`${name}=(set)`]
    }
  })
}

function parseOptions (argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      quick: { type: 'boolean', default: false },
      servers: { type: 'string', default: SERVER_KINDS.join(',') },
      scenarios: { type: 'string', default: SCENARIOS.join(',') },
      generators: { type: 'string', default: '2' },
      rates: { type: 'string' },
      'cpu-prof': { type: 'boolean', default: false },
      'server-flags': { type: 'string', default: '' }
    }
  })
  const rates = values.rates === undefined ? null : values.rates.split(',').map(Number)
  if (rates !== null && !rates.every((rate) => Number.isFinite(rate) && rate > 0)) throw new Error('--rates is a comma list of messages per second')
  const profile = values.quick ? QUICK : FULL
  const generators = Number(values.generators)
  if (!Number.isInteger(generators) || generators < 1) throw new Error('--generators is a whole number, 1 or more')
  return {
    quick: values.quick,
    servers: list(values.servers, SERVER_KINDS, 'servers'),
    scenarios: new Set(list(values.scenarios, SCENARIOS, 'scenarios')),
    // Enough processes for the idle sockets, whatever was asked.
    generators: Math.max(generators, Math.ceil(Math.max(...profile.idleLevels) / MAX_SOCKETS_PER_GENERATOR)),
    profile,
    rates,
    command: [...backendVariables(), 'npm run bench', ...(argv.length === 0 ? [] : ['--', ...argv])].join(' '),
    childFlags: values['cpu-prof'] ? ['--cpu-prof', `--cpu-prof-dir=${LOG_DIR}profiles`] : [],
    serverFlags: values['server-flags'].split(' ').filter((flag) => flag !== '')
  }
}

function configured (name: string): string | null {
  const value = process.env[name]
  return value === undefined || value === '' ? null : value
}

// ------------------------------------------------------------------- main

/** The commit measured, and whether the server's code had uncommitted changes (it runs from the working tree's build). */
function revision (): string {
  try {
    const git = (...args: string[]): string => execFileSync('git', args, { cwd: SOURCE_DIR, encoding: 'utf8' })
    // Porcelain lines are "XY path": the status letters may start with a space, so no trimming.
    const changed = git('status', '--porcelain', '--', '../../src', '../../plugins', '../../routes').split('\n')
      .filter((line) => line !== '').map((line) => line.slice(3))
    return `${git('rev-parse', '--short', 'HEAD').trim()}${changed.length === 0 ? '' : ` with uncommitted changes in ${changed.join(', ')}`}`
  } catch {
    return 'unknown (not a git checkout)'
  }
}

function settings (options: Options): string[] {
  const { profile } = options
  return [
    `mode: ${options.quick ? 'quick' : 'full'}; servers pinned to core ${SERVER_CORE}, ${options.generators} generator processes pinned to core ${GENERATOR_CORE} (taskset); MariaDB and Redis unpinned`,
    `idle sockets at ${profile.idleLevels.join(' and ')}; ${profile.chatUsers} users chatting in pairs, open-loop, ${TEXT_BYTES}-byte message texts, each acknowledged`,
    `steps: ${profile.warmupMs} ms warm-up, ${profile.measureMs} ms measured (${profile.halfMeasureMs} ms at half max); a message counts as lost only if it never arrives ` +
      `(counted once nothing has arrived for ${QUIET_MS} ms, ${QUIET_LIMIT_MS / 1000} s at most), as late if it arrives over ${profile.drainMs} ms after the last send; ` +
      `step search ×${profile.factor} up, then halving the gap to ${profile.tolerance * 100}%`,
    `capacity: highest rate where ≥ ${KEEP_UP * 100}% of the window's messages arrived within it and nothing was lost, doubled, reordered or refused; ` +
      `sustainable: that and p99 ≤ ${P99_LIMIT_MS} ms; latency is one-way, from each message's intended send time (no coordinated omission)`,
    `Switchboard limits raised so they are not what is measured: ${Object.entries(SWITCHBOARD_LIMITS).map(([name, value]) => `${name}=${value}`).join(', ')}; LOG_LEVEL info (its default), logs in scripts/bench/results/`
  ]
}

/** Cores the machine keeps busy before the run starts: anything above zero competes with what is measured. */
async function backgroundCores (): Promise<number | null> {
  const before = machineBusyMicros()
  const started = nowMicros()
  await sleep(1000)
  const after = machineBusyMicros()
  return before === null || after === null ? null : (after - before) / (nowMicros() - started)
}

async function main (): Promise<void> {
  const options = parseOptions(process.argv.slice(2))
  const { profile } = options
  const serverFlags = [...options.childFlags, ...options.serverFlags]
  const startedAt = new Date()
  const began = nowMicros()
  const results: RunResults = {
    startedAt,
    command: options.command,
    quick: options.quick,
    revision: revision(),
    machine: { cores: availableParallelism(), cpu: cpus()[0]?.model ?? 'unknown', memoryGiB: Math.round(totalmem() / 2 ** 30), node: process.version },
    settings: settings(options),
    servers: options.servers,
    idle: {},
    throughput: {},
    mysql: null,
    cluster: null,
    p99LimitMs: P99_LIMIT_MS,
    elapsedSeconds: 0
  }
  const background = await backgroundCores()
  results.settings.push(background === null
    ? 'machine load before the run: unknown (no /proc/stat)'
    : `machine load before the run: ${background.toFixed(2)} cores busy${background > 0.1 ? ' (other work on the machine: the figures are noisier than they would be on a quiet one; see "other cores" in every step)' : ''}`)
  const mysqlInUse = configured('MYSQL_URL')
  if (mysqlInUse !== null && options.servers.includes('switchboard') && (options.scenarios.has('mysql') || options.scenarios.has('cluster'))) {
    results.settings.push(await databaseDurability(mysqlInUse))
  }
  for (const line of results.settings) console.log(line)
  const generators = startGenerators(options.generators, options.childFlags)
  try {
    for (const kind of options.servers) {
      const idle = options.scenarios.has('memory')
      const load = options.scenarios.has('throughput')
      if (!idle && !load) continue
      const seed = Math.max(load ? profile.chatUsers : 0, idle ? Math.max(...profile.idleLevels) : 0)
      console.log(`\n${SERVER_LABELS[kind]}`)
      await withServer(kind, { seed, label: kind, flags: serverFlags }, async (server) => {
        if (idle) results.idle[kind] = await idleMemory(server, generators, profile)
        if (load) results.throughput[kind] = await throughput(SERVER_LABELS[kind], server, generators, profile, options.rates)
      })
    }

    const mysqlUrl = configured('MYSQL_URL')
    const redisUrl = configured('REDIS_URL')
    const switchboard = options.servers.includes('switchboard')
    if (options.scenarios.has('mysql') && switchboard) {
      if (mysqlUrl === null) {
        results.mysql = 'MYSQL_URL is not set'
        console.log('\nSwitchboard on MariaDB: skipped, MYSQL_URL is not set')
      } else {
        console.log('\nSwitchboard on MariaDB (scratch database, dropped after)')
        const database = await scratchDatabase(mysqlUrl)
        results.mysql = await withServer('switchboard', { seed: profile.chatUsers, env: { MYSQL_URL: database }, label: 'switchboard-mariadb', flags: serverFlags },
          async (server) => await throughput('Switchboard on MariaDB', server, generators, profile, options.rates))
        await runCleanups()
      }
    }
    if (options.scenarios.has('cluster') && switchboard) {
      if (mysqlUrl === null || redisUrl === null) {
        results.cluster = `${[mysqlUrl === null ? 'MYSQL_URL' : null, redisUrl === null ? 'REDIS_URL' : null].filter((name) => name !== null).join(' and ')} not set`
        console.log(`\nTwo Switchboard nodes: skipped, ${results.cluster}`)
      } else {
        console.log('\nTwo Switchboard nodes on MariaDB and Redis (scratch database and key prefix, removed after)')
        const database = await scratchDatabase(mysqlUrl)
        const prefix = scratchPrefix(redisUrl)
        const env = { MYSQL_URL: database, REDIS_URL: redisUrl, REDIS_KEY_PREFIX: prefix }
        results.cluster = await withServer('switchboard', { seed: profile.chatUsers, nodes: 2, env, label: 'switchboard-cluster', flags: serverFlags },
          async (server) => await throughput('Switchboard, 2 nodes', server, generators, profile, options.rates))
        await runCleanups()
      }
    }
  } finally {
    await Promise.all(generators.map(async (generator) => await stop(generator)))
    await runCleanups()
  }
  results.elapsedSeconds = (nowMicros() - began) / 1e6
  const report = renderReport(results)
  console.log(`\n${report}`)
  writeFileSync(RESULTS_FILE, report)
  console.log(`written to ${RESULTS_FILE}`)
}

process.on('exit', killAll)
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => {
    killAll()
    runCleanups().finally(() => process.exit(130))
  })
}

main().catch(async (error: unknown) => {
  console.error(error)
  killAll()
  await runCleanups()
  process.exit(1)
})
