/**
 * The parent's side of its children: starting them pinned to a core with an
 * IPC channel, waiting for their replies, reading their CPU time from /proc,
 * and making sure none outlives the run.
 */
import { execFileSync, spawn, type ChildProcess, type StdioOptions } from 'node:child_process'
import { once } from 'node:events'
import { readdirSync, readFileSync } from 'node:fs'

const running = new Set<ChildProcess>()

/** Clock ticks per second of /proc's CPU times (USER_HZ, 100 on Linux). */
const TICKS_PER_SECOND = ((): number => {
  try {
    const ticks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim())
    return Number.isInteger(ticks) && ticks > 0 ? ticks : 100
  } catch {
    return 100
  }
})()

export interface PinnedOptions {
  /** The CPU core the process may run on (taskset -c). */
  core: number
  env: NodeJS.ProcessEnv
  execArgv?: string[]
  /** Where the child's stdout goes (its logs): a file descriptor, or inherit. */
  stdout?: number | 'inherit' | 'ignore'
}

/** Starts `node <script>` under `taskset`, which execs node: the child's pid is node's. */
export function startPinned (script: string, { core, env, execArgv = [], stdout = 'inherit' }: PinnedOptions): ChildProcess {
  const stdio: StdioOptions = ['ignore', stdout, 'inherit', 'ipc']
  const child = spawn('taskset', ['-c', String(core), process.execPath, ...execArgv, script], { env, stdio })
  running.add(child)
  child.once('exit', () => running.delete(child))
  return child
}

/** The next IPC message of `type` from `child`; rejects if the child exits first or nothing comes in time. */
export function nextMessage<T extends { type: string }> (child: ChildProcess, type: T['type'], timeoutMs: number): Promise<T> {
  return new Promise((resolve, reject) => {
    const onMessage = (message: { type?: unknown }): void => {
      if (message.type !== type) return
      cleanup()
      resolve(message as T)
    }
    const onExit = (code: number | null, signal: string | null): void => {
      cleanup()
      reject(new Error(`child ${child.pid} exited (${signal ?? code}) while waiting for "${type}"`))
    }
    const timer = setTimeout(() => {
      cleanup()
      reject(new Error(`child ${child.pid} sent no "${type}" within ${timeoutMs} ms`))
    }, timeoutMs)
    const cleanup = (): void => {
      clearTimeout(timer)
      child.off('message', onMessage)
      child.off('exit', onExit)
    }
    child.on('message', onMessage)
    child.once('exit', onExit)
  })
}

/** Sends `message` and waits for the reply of `replyType`. */
export async function request<T extends { type: string }> (child: ChildProcess, message: object, replyType: T['type'], timeoutMs: number): Promise<T> {
  const reply = nextMessage<T>(child, replyType, timeoutMs)
  child.send(message)
  return await reply
}

function exited (child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null
}

export function sleep (ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

/** SIGTERM, then SIGKILL if it is still there after `graceMs`. */
export async function stop (child: ChildProcess, graceMs = 5000): Promise<void> {
  if (exited(child)) return
  const gone = once(child, 'exit')
  child.kill('SIGTERM')
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs)
  await gone
  clearTimeout(timer)
}

/** Last resort, on the way out: every child still running is killed at once. */
export function killAll (): void {
  for (const child of running) if (!exited(child)) child.kill('SIGKILL')
}

/** CPU time (user + system, every thread) a process has used so far, in µs, or null where /proc cannot tell. */
export function cpuMicros (pid: number | undefined): number | null {
  if (pid === undefined) return null
  try {
    // The command name, in parentheses, may hold spaces: count fields after it. utime and stime are fields 14 and 15.
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? []
    return (Number(fields[11]) + Number(fields[12])) * 1e6 / TICKS_PER_SECOND
  } catch {
    return null
  }
}

/**
 * Busy CPU time of the whole machine so far, all cores, in µs, or null:
 * user, nice, system, irq, softirq and steal (loopback traffic is handled in softirq).
 */
export function machineBusyMicros (): number | null {
  try {
    const fields = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]?.split(/ +/).slice(1).map(Number) ?? []
    const [user = 0, nice = 0, system = 0, , , irq = 0, softirq = 0, steal = 0] = fields
    return (user + nice + system + irq + softirq + steal) * 1e6 / TICKS_PER_SECOND
  } catch {
    return null
  }
}

/** Processes of the machine whose command name is one of `names` (the shared MariaDB and Redis servers, say). */
export function pidsNamed (names: readonly string[]): number[] {
  try {
    return readdirSync('/proc').filter((entry) => /^\d+$/.test(entry)).flatMap((entry) => {
      try {
        return names.includes(readFileSync(`/proc/${entry}/comm`, 'utf8').trim()) ? [Number(entry)] : []
      } catch {
        // It ended meanwhile.
        return []
      }
    })
  } catch {
    return []
  }
}
