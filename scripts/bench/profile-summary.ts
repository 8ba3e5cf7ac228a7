/**
 * Reads a V8 CPU profile (`npm run bench -- --cpu-prof` writes one per
 * process to scripts/bench/results/profiles/) and prints where the busy time
 * went: per function, its own time and the time of everything it called.
 *
 *   node dist/scripts/bench/profile-summary.js <file.cpuprofile> [--top 40] [--match 'src/|prom-client']
 */
import { readFileSync } from 'node:fs'
import { parseArgs } from 'node:util'

interface ProfileNode {
  id: number
  callFrame: { functionName: string, url: string, lineNumber: number }
  children?: number[]
}

interface CpuProfile {
  nodes: ProfileNode[]
  samples: number[]
  timeDeltas: number[]
}

/** Idle time is the event loop waiting: not work. */
const IDLE = '(idle)'

function frameName ({ functionName, url, lineNumber }: ProfileNode['callFrame']): string {
  // Paths shortened to what tells them apart: the package, or the file under dist/.
  const where = url.replace(/^.*node_modules\//, '').replace(/^file:\/\/.*\/dist\//, '')
  return `${functionName === '' ? '(anonymous)' : functionName} ${where}${where === '' ? '' : `:${lineNumber + 1}`}`
}

export function summarizeProfile (profile: CpuProfile): { busyMicros: number, self: Map<string, number>, total: Map<string, number> } {
  const byId = new Map(profile.nodes.map((node) => [node.id, node]))
  const parentOf = new Map<number, number>()
  for (const node of profile.nodes) for (const child of node.children ?? []) parentOf.set(child, node.id)
  const sampled = new Map<number, number>()
  profile.samples.forEach((id, index) => sampled.set(id, (sampled.get(id) ?? 0) + (profile.timeDeltas[index] ?? 0)))
  const self = new Map<string, number>()
  const total = new Map<string, number>()
  let busyMicros = 0
  for (const [id, micros] of sampled) {
    const leaf = byId.get(id) as ProfileNode
    if (leaf.callFrame.functionName === IDLE) continue
    busyMicros += micros
    const leafName = frameName(leaf.callFrame)
    self.set(leafName, (self.get(leafName) ?? 0) + micros)
    // Each function once per sample, however deep it recurses.
    const seen = new Set<string>()
    for (let at: number | undefined = id; at !== undefined; at = parentOf.get(at)) {
      const name = frameName((byId.get(at) as ProfileNode).callFrame)
      if (seen.has(name)) continue
      seen.add(name)
      total.set(name, (total.get(name) ?? 0) + micros)
    }
  }
  return { busyMicros, self, total }
}

function main (): void {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: { top: { type: 'string', default: '30' }, match: { type: 'string', default: '' } }
  })
  const file = positionals[0]
  if (file === undefined) throw new Error('usage: profile-summary <file.cpuprofile> [--top n] [--match regexp]')
  const { busyMicros, self, total } = summarizeProfile(JSON.parse(readFileSync(file, 'utf8')) as CpuProfile)
  const top = Number(values.top)
  const match = new RegExp(values.match)
  const share = (micros: number): string => `${(100 * micros / busyMicros).toFixed(1).padStart(5)}%`
  console.log(`busy: ${(busyMicros / 1e6).toFixed(2)} s (idle left out); shares are of the busy time`)
  for (const [title, map] of [['own time', self], ['with callees', total]] as const) {
    console.log(`\n${title}:`)
    const rows = [...map].filter(([name]) => match.test(name)).sort((a, b) => b[1] - a[1]).slice(0, top)
    for (const [name, micros] of rows) console.log(`${share(micros)}  ${name}`)
  }
}

main()
