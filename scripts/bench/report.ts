/**
 * What a benchmark run found, and the markdown it is printed as: one table
 * side by side with ratios, Switchboard's storage and cluster figures, the
 * issue's targets, and every measured step.
 */
import type { DeliveryTally } from './accounting.js'
import type { LatencySummary } from './histograms.js'

export type ServerKind = 'switchboard' | 'ws' | 'socketio'

export const SERVER_LABELS: Record<ServerKind, string> = { switchboard: 'Switchboard', ws: 'ws', socketio: 'Socket.IO' }

export interface StepResult {
  /** Which setup ran it: "ws", "Switchboard on MariaDB", ... */
  setup: string
  rate: number
  measureMs: number
  tally: DeliveryTally
  acks: number
  /** First arrivals within the measured window, per second. */
  deliveredPerSecond: number
  /** Delivered within the window at least KEEP_UP of what was sent in it. */
  keptUp: boolean
  latency: LatencySummary
  /** How late the generators sent, against the schedule. */
  sendLag: LatencySummary
  /** Cores busy over the window (null where /proc cannot tell). */
  serverCores: number | null
  generatorCores: number | null
  /** The machine's MariaDB and Redis servers. */
  backendCores: number | null
  /**
   * Busy cores of the machine besides the server, the generators, MariaDB
   * and Redis: the parent, kernel threads, and anything else that ran
   * meanwhile, which competes with what is measured.
   */
  otherCores: number | null
  /** The (first) server's JS heap after the step, without a forced GC, in bytes. */
  serverHeapUsed: number
  cpuPerMessageMicros: number | null
  /** Kept up, nothing lost, doubled, reordered or refused. */
  capacityPass: boolean
  /** And p99 within the limit. */
  sustainable: boolean
  /** The generators used more CPU than the server(s) over the window. */
  generatorBusier: boolean
}

export interface MemoryPoint {
  sockets: number
  rss: number
  heapUsed: number
}

export interface IdleResult {
  points: MemoryPoint[]
  /** Bytes per socket: slope between the first and the last level. */
  rssPerSocket: number
  heapPerSocket: number
  /** Sockets opened per second (upgrade done, ready for messages). */
  connectRate: number
  /** Cores busy while the sockets opened. */
  connectServerCores: number | null
  connectGeneratorCores: number | null
  failed: number
  firstError: string | null
}

/**
 * Server CPU per socket opened: with the generator the busier side, the
 * connect rate is its limit, and this is the figure that tells the servers apart.
 */
function cpuPerConnect (idle: IdleResult | undefined): number | null {
  if (idle === undefined || idle.connectServerCores === null || !(idle.connectRate > 0)) return null
  return idle.connectServerCores / idle.connectRate * 1e6
}

export interface ThroughputResult {
  /** Highest rate with nothing lost and p99 within the limit. */
  sustainable: number | null
  /** Highest rate with nothing lost, whatever the latency. */
  capacity: number | null
  /** The step at half the sustainable rate (or half the capacity when none was sustainable). */
  half: StepResult | null
  /** The step that set the capacity. */
  atCapacity: StepResult | null
  steps: StepResult[]
}

/** A throughput run as far as a figure needs its steps. */
interface StepsOf<Field extends keyof StepResult> {
  steps: Array<Pick<StepResult, Field>>
}

/**
 * One load for every server, well below saturation: the highest rate every
 * server measured a step at and kept up with (nothing lost), at most half the
 * lowest capacity among them. CPU per message there compares the servers at
 * the same work. At capacity each is measured at its own rate, saturated, and
 * a higher rate costs less per message (more frames share a write), so that
 * figure moves with the capacity itself.
 */
export function commonRate (results: { servers: ServerKind[], throughput: Partial<Record<ServerKind, { capacity: number | null } & StepsOf<'rate' | 'capacityPass'>>> }): number | null {
  const runs = results.servers.map((kind) => results.throughput[kind])
  if (runs.length === 0) return null
  const capacities = runs.map((run) => run?.capacity ?? null)
  if (capacities.some((capacity) => capacity === null)) return null
  const ceiling = Math.min(...(capacities as number[])) / 2
  const keptUp = runs.map((run) => new Set((run as StepsOf<'rate' | 'capacityPass'>).steps.filter((step) => step.capacityPass && step.rate <= ceiling).map((step) => step.rate)))
  const shared = [...(keptUp[0] as Set<number>)].filter((rate) => keptUp.every((rates) => rates.has(rate)))
  return shared.length === 0 ? null : Math.max(...shared)
}

/** Server CPU per message at `rate`: the mean of the steps at that rate that kept up. */
export function cpuPerMessageAt (run: StepsOf<'rate' | 'capacityPass' | 'cpuPerMessageMicros'> | undefined, rate: number | null): number | null {
  if (run === undefined || rate === null) return null
  const readings = run.steps.filter((step) => step.rate === rate && step.capacityPass).flatMap((step) => step.cpuPerMessageMicros ?? [])
  return readings.length === 0 ? null : readings.reduce((sum, micros) => sum + micros, 0) / readings.length
}

export interface RunResults {
  startedAt: Date
  command: string
  /** Short windows and few sockets: figures to smoke-test with, not to judge targets by. */
  quick: boolean
  /** The commit the servers ran from, and any uncommitted changes to them. */
  revision: string
  machine: { cores: number, cpu: string, memoryGiB: number, node: string }
  settings: string[]
  servers: ServerKind[]
  idle: Partial<Record<ServerKind, IdleResult>>
  throughput: Partial<Record<ServerKind, ThroughputResult>>
  /** Switchboard on MariaDB, or why it did not run. */
  mysql: ThroughputResult | string | null
  /** Two Switchboard nodes with Redis, or why it did not run. */
  cluster: ThroughputResult | string | null
  /** The limits the run was held to, for the targets: p99 limit, and so on. */
  p99LimitMs: number
  elapsedSeconds: number
}

/** Past this, the generators' core has little left: the step may measure them as much as the server. */
export const GENERATOR_NEARLY_FULL = 0.9

/** Cores used by other processes past which a step is marked as disturbed. */
export const FOREIGN_LOAD_CORES = 0.15

type Cell = number | null | undefined

function integer (value: Cell): string {
  return value === null || value === undefined || !Number.isFinite(value) ? '–' : Math.round(value).toLocaleString('en-US')
}

function decimal (value: Cell, digits = 2): string {
  return value === null || value === undefined || !Number.isFinite(value) ? '–' : value.toFixed(digits)
}

function ms (value: Cell): string {
  if (value === null || value === undefined || !Number.isFinite(value)) return '–'
  return value.toFixed(value < 10 ? 2 : 1)
}

function kib (bytes: Cell): string {
  return bytes === null || bytes === undefined ? '–' : decimal(bytes / 1024, 1)
}

/** a / b, or null where either is missing or the quotient is not a number (NaN, a division by 0). */
export function ratio (a: Cell, b: Cell): number | null {
  if (a === null || a === undefined || b === null || b === undefined) return null
  const quotient = a / b
  return Number.isFinite(quotient) ? quotient : null
}

function ratioCell (a: Cell, b: Cell): string {
  const value = ratio(a, b)
  return value === null ? '–' : `${value.toFixed(2)}x`
}

interface Figure {
  name: string
  value: (kind: ServerKind, results: RunResults) => Cell
  format: (value: Cell) => string
  /** The same for every server by definition: no ratio columns. */
  shared?: boolean
}

const FIGURES: Figure[] = [
  { name: 'idle memory per connection, RSS slope (KiB)', value: (kind, r) => r.idle[kind]?.rssPerSocket, format: kib },
  { name: 'idle memory per connection, JS heap slope (KiB)', value: (kind, r) => r.idle[kind]?.heapPerSocket, format: kib },
  { name: 'connect rate (sockets/s)', value: (kind, r) => r.idle[kind]?.connectRate, format: integer },
  { name: 'server CPU per connection opened (µs)', value: (kind, r) => cpuPerConnect(r.idle[kind]), format: integer },
  { name: 'capacity: highest rate, nothing lost (msgs/s)', value: (kind, r) => r.throughput[kind]?.capacity, format: integer },
  { name: 'max sustainable throughput: p99 ≤ limit, nothing lost (msgs/s)', value: (kind, r) => r.throughput[kind]?.sustainable, format: integer },
  { name: 'server CPU per delivered message at capacity (µs)', value: (kind, r) => r.throughput[kind]?.atCapacity?.cpuPerMessageMicros, format: (v) => decimal(v, 1) },
  { name: 'common rate: at most half the lowest capacity, all kept up (msgs/s)', value: (_kind, r) => commonRate(r), format: integer, shared: true },
  { name: 'server CPU per delivered message at the common rate (µs)', value: (kind, r) => cpuPerMessageAt(r.throughput[kind], commonRate(r)), format: (v) => decimal(v, 1) },
  { name: 'server CPU per delivered message at half max (µs)', value: (kind, r) => r.throughput[kind]?.half?.cpuPerMessageMicros, format: (v) => decimal(v, 1) },
  { name: 'rate of the half-max step (msgs/s)', value: (kind, r) => r.throughput[kind]?.half?.rate, format: integer },
  { name: 'latency p50 at half max (ms)', value: (kind, r) => r.throughput[kind]?.half?.latency.p50, format: ms },
  { name: 'latency p99 at half max (ms)', value: (kind, r) => r.throughput[kind]?.half?.latency.p99, format: ms },
  { name: 'latency p99.9 at half max (ms)', value: (kind, r) => r.throughput[kind]?.half?.latency.p999, format: ms }
]

function sideBySide (results: RunResults): string[] {
  const kinds = results.servers
  const hasSwitchboard = kinds.includes('switchboard')
  const ratioColumns = (['ws', 'socketio'] as const).filter((kind) => hasSwitchboard && kinds.includes(kind))
  const header = ['figure', ...kinds.map((kind) => SERVER_LABELS[kind]), ...ratioColumns.map((kind) => `Switchboard/${SERVER_LABELS[kind]}`)]
  const lines = [`| ${header.join(' | ')} |`, `|${header.map(() => '---').join('|')}|`]
  for (const figure of FIGURES) {
    const values = kinds.map((kind) => figure.value(kind, results))
    if (values.every((value) => value === null || value === undefined)) continue
    const ratios = ratioColumns.map((kind) => figure.shared === true ? '' : ratioCell(figure.value('switchboard', results), figure.value(kind, results)))
    lines.push(`| ${figure.name} | ${[...values.map(figure.format), ...ratios].join(' | ')} |`)
  }
  return lines
}

function ran (run: ThroughputResult | string | null | undefined): run is ThroughputResult {
  return typeof run === 'object' && run !== null
}

function storageAndNodes (results: RunResults): string[] {
  if (!ran(results.mysql) && !ran(results.cluster)) return []
  const memory = results.throughput.switchboard
  const columns = [
    { name: 'in memory, 1 node', result: memory },
    { name: 'MariaDB, 1 node', result: results.mysql },
    { name: '2 nodes, MariaDB + Redis, half the recipients remote', result: results.cluster }
  ].flatMap(({ name, result }) => ran(result) ? [{ name, result }] : [])
  const rows: Array<{ name: string, value: (result: ThroughputResult) => Cell, format: (value: Cell) => string }> = [
    { name: 'capacity (msgs/s)', value: (r) => r.capacity, format: integer },
    { name: 'max sustainable throughput (msgs/s)', value: (r) => r.sustainable, format: integer },
    { name: 'server CPU per delivered message at capacity (µs, all nodes)', value: (r) => r.atCapacity?.cpuPerMessageMicros, format: (v) => decimal(v, 1) },
    { name: 'rate of the half-max step (msgs/s)', value: (r) => r.half?.rate, format: integer },
    { name: 'latency p50 at half max (ms)', value: (r) => r.half?.latency.p50, format: ms },
    { name: 'latency p99 at half max (ms)', value: (r) => r.half?.latency.p99, format: ms },
    { name: 'latency p99.9 at half max (ms)', value: (r) => r.half?.latency.p999, format: ms }
  ]
  const withRatio = columns.filter((column) => column.result !== memory)
  const header = ['Switchboard', ...columns.map((column) => column.name), ...(memory === undefined ? [] : withRatio.map((column) => `${column.name.split(',')[0]} / in memory`))]
  const lines = [`| ${header.join(' | ')} |`, `|${header.map(() => '---').join('|')}|`]
  for (const row of rows) {
    const cells = columns.map((column) => row.format(row.value(column.result)))
    const ratios = memory === undefined ? [] : withRatio.map((column) => ratioCell(row.value(column.result), row.value(memory)))
    lines.push(`| ${row.name} | ${[...cells, ...ratios].join(' | ')} |`)
  }
  return lines
}

interface Target {
  name: string
  measured: number | null
  /** Met when the measured ratio or figure is on the right side of this. */
  bound: number
  atLeast: boolean
  unit: string
}

export function targets (results: RunResults): Target[] {
  const sb = results.throughput.switchboard
  const ws = results.throughput.ws
  const sio = results.throughput.socketio
  const idle = results.idle
  const mysql = ran(results.mysql) ? results.mysql : null
  const cluster = ran(results.cluster) ? results.cluster : null
  const common = commonRate(results)
  const list: Target[] = [
    { name: 'capacity, Switchboard/ws', measured: ratio(sb?.capacity, ws?.capacity), bound: 0.9, atLeast: true, unit: 'x' },
    { name: 'capacity, Switchboard/Socket.IO', measured: ratio(sb?.capacity, sio?.capacity), bound: 2, atLeast: true, unit: 'x' },
    { name: 'CPU per message at capacity, ws/Switchboard (efficiency)', measured: ratio(ws?.atCapacity?.cpuPerMessageMicros, sb?.atCapacity?.cpuPerMessageMicros), bound: 0.9, atLeast: true, unit: 'x' },
    { name: 'CPU per message at capacity, Socket.IO/Switchboard (efficiency)', measured: ratio(sio?.atCapacity?.cpuPerMessageMicros, sb?.atCapacity?.cpuPerMessageMicros), bound: 2, atLeast: true, unit: 'x' },
    { name: 'CPU per message at the common rate, ws/Switchboard (efficiency)', measured: ratio(cpuPerMessageAt(ws, common), cpuPerMessageAt(sb, common)), bound: 0.9, atLeast: true, unit: 'x' },
    { name: 'CPU per message at the common rate, Socket.IO/Switchboard (efficiency)', measured: ratio(cpuPerMessageAt(sio, common), cpuPerMessageAt(sb, common)), bound: 2, atLeast: true, unit: 'x' },
    { name: 'idle memory per connection, Switchboard/ws', measured: ratio(idle.switchboard?.rssPerSocket, idle.ws?.rssPerSocket), bound: 1.3, atLeast: false, unit: 'x' },
    { name: 'idle memory per connection, Switchboard/Socket.IO', measured: ratio(idle.switchboard?.rssPerSocket, idle.socketio?.rssPerSocket), bound: 1, atLeast: false, unit: 'x' },
    { name: 'connect rate, Switchboard/ws', measured: ratio(idle.switchboard?.connectRate, idle.ws?.connectRate), bound: 0.7, atLeast: true, unit: 'x' },
    { name: 'latency p99 at half max, one node', measured: sb?.half?.latency.p99 ?? null, bound: 5, atLeast: false, unit: ' ms' },
    { name: 'latency p99 at half max, two nodes', measured: cluster?.half?.latency.p99 ?? null, bound: 10, atLeast: false, unit: ' ms' },
    { name: 'capacity on MariaDB / in memory', measured: ratio(mysql?.capacity, sb?.capacity), bound: 0.5, atLeast: true, unit: 'x' },
    { name: 'max sustainable throughput on MariaDB / in memory', measured: ratio(mysql?.sustainable, sb?.sustainable), bound: 0.5, atLeast: true, unit: 'x' }
  ]
  return list.filter((target) => target.measured !== null)
}

function targetLines (results: RunResults): string[] {
  const list = targets(results)
  if (list.length === 0) return []
  const lines = ['| target (issue 6) | needed | measured | met |', '|---|---|---|---|']
  for (const { name, measured, bound, atLeast, unit } of list) {
    const met = atLeast ? (measured as number) >= bound : (measured as number) <= bound
    // Three digits: a ratio just under its bound (0.899) must not print as the bound itself.
    lines.push(`| ${name} | ${atLeast ? '≥' : '≤'} ${bound}${unit} | ${decimal(measured, 3)}${unit} | ${met ? 'yes' : '**no**'} |`)
  }
  return lines
}

export function stepHeader (): string[] {
  return [
    '| setup | rate (msgs/s) | delivered/s | p50 (ms) | p99 (ms) | p99.9 (ms) | max (ms) | lost | dup | reord | err | server cores | generator cores | MariaDB + Redis cores | other cores | send lag p99 (ms) | CPU/msg (µs) | server heap (MiB) | capacity | sustainable | note |',
    '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|'
  ]
}

export function stepLine (step: StepResult): string {
  const notes: string[] = []
  if (step.generatorBusier) notes.push('generator busier than server')
  else if ((step.generatorCores ?? 0) >= GENERATOR_NEARLY_FULL) notes.push('generator core nearly full')
  if ((step.otherCores ?? 0) > FOREIGN_LOAD_CORES) notes.push('other work on the machine')
  if (!step.keptUp) notes.push('fell behind')
  if (step.tally.closed > 0) notes.push(`${step.tally.closed} sockets closed`)
  if (step.tally.unexpected > 0) notes.push(`${step.tally.unexpected} unexpected frames`)
  if (step.tally.late > 0) notes.push(`${step.tally.late} arrived after the drain time`)
  if (step.tally.stale > 0) notes.push(`${step.tally.stale} late from an earlier step`)
  return `| ${step.setup} | ${integer(step.rate)} | ${integer(step.deliveredPerSecond)} | ${ms(step.latency.p50)} | ${ms(step.latency.p99)} | ${ms(step.latency.p999)} | ${ms(step.latency.max)} | ` +
    `${step.tally.lost} | ${step.tally.duplicated} | ${step.tally.reordered} | ${step.tally.errors} | ${decimal(step.serverCores)} | ${decimal(step.generatorCores)} | ${decimal(step.backendCores)} | ${decimal(step.otherCores)} | ` +
    `${ms(step.sendLag.p99)} | ${decimal(step.cpuPerMessageMicros, 1)} | ${integer(step.serverHeapUsed / 2 ** 20)} | ${step.capacityPass ? 'pass' : 'fail'} | ${step.sustainable ? 'pass' : 'fail'} | ${notes.join('; ')} |`
}

function memoryLines (results: RunResults): string[] {
  const kinds = results.servers.filter((kind) => results.idle[kind] !== undefined)
  if (kinds.length === 0) return []
  const lines = ['| server | connect rate (sockets/s) | server CPU per connection (µs) | server cores busy meanwhile | generator cores busy meanwhile |', '|---|---|---|---|---|']
  for (const kind of kinds) {
    const idle = results.idle[kind] as IdleResult
    const busier = idle.connectServerCores !== null && idle.connectGeneratorCores !== null && idle.connectGeneratorCores > idle.connectServerCores
    lines.push(`| ${SERVER_LABELS[kind]} | ${integer(idle.connectRate)} | ${integer(cpuPerConnect(idle))} | ${decimal(idle.connectServerCores)} | ${decimal(idle.connectGeneratorCores)}${busier ? ' (generator busier than server)' : ''} |`)
  }
  lines.push('', '| server | sockets | RSS (MiB) | JS heap used (MiB) |', '|---|---|---|---|')
  for (const kind of kinds) {
    const idle = results.idle[kind] as IdleResult
    for (const point of idle.points) {
      lines.push(`| ${SERVER_LABELS[kind]} | ${integer(point.sockets)} | ${decimal(point.rss / 2 ** 20, 1)} | ${decimal(point.heapUsed / 2 ** 20, 1)} |`)
    }
    if (idle.failed > 0) lines.push(`| ${SERVER_LABELS[kind]} | ${idle.failed} sockets failed to open: ${idle.firstError ?? ''} | | |`)
  }
  return lines
}

function allSteps (results: RunResults): StepResult[] {
  const runs = [...results.servers.map((kind) => results.throughput[kind]), results.mysql, results.cluster]
  return runs.flatMap((run) => ran(run) ? run.steps : [])
}

export function renderReport (results: RunResults): string {
  const { machine } = results
  const steps = allSteps(results)
  const busier = steps.filter((step) => step.generatorBusier)
  const nearlyFull = steps.filter((step) => !step.generatorBusier && (step.generatorCores ?? 0) >= GENERATOR_NEARLY_FULL)
  const disturbed = steps.filter((step) => (step.otherCores ?? 0) > FOREIGN_LOAD_CORES)
  const skipped = [['MariaDB', results.mysql], ['two nodes', results.cluster]].filter(([, value]) => typeof value === 'string') as Array<[string, string]>
  return [
    '# Switchboard side by side with a bare ws server and Socket.IO',
    '',
    `- date: ${results.startedAt.toISOString()}`,
    `- machine: ${machine.cores} cores (nproc), ${machine.cpu}, ${machine.memoryGiB} GiB; Node ${machine.node}`,
    `- command: \`${results.command}\``,
    `- code: ${results.revision}`,
    `- run time: ${Math.round(results.elapsedSeconds)} s`,
    ...results.settings.map((line) => `- ${line}`),
    '',
    '## Side by side',
    '',
    ...sideBySide(results),
    '',
    ...(storageAndNodes(results).length === 0 ? [] : ['## Switchboard: storage and nodes', '', ...storageAndNodes(results), '']),
    ...skipped.map(([name, why]) => `- ${name}: skipped, ${why}`),
    ...(skipped.length === 0 ? [] : ['']),
    ...(targetLines(results).length === 0
      ? []
      : [
          '## Targets',
          '',
          ...(results.quick ? ['A quick run (short steps, few idle sockets) is a smoke test: judge the targets by a full run.', ''] : []),
          ...targetLines(results),
          ''
        ]),
    ...(memoryLines(results).length === 0 ? [] : ['## Connecting, and idle memory (after a forced GC)', '', ...memoryLines(results), '']),
    '## Every step',
    '',
    busier.length === 0
      ? 'In no step did the generators use more CPU than the server.'
      : `In ${busier.length} of ${steps.length} steps the generators used more CPU than the server (flagged below): there the figure may be the generator's limit, not the server's.`,
    ...(nearlyFull.length === 0 ? [] : [`In ${nearlyFull.length} more the generators' core was at least ${GENERATOR_NEARLY_FULL * 100}% busy (flagged too).`]),
    disturbed.length === 0
      ? 'No step saw other work on the machine.'
      : `${disturbed.length} of ${steps.length} steps saw other work on the machine (over ${FOREIGN_LOAD_CORES} cores besides the servers, generators, MariaDB and Redis; flagged below): their figures are less certain.`,
    '',
    ...stepHeader(),
    ...steps.map(stepLine),
    ''
  ].join('\n')
}
