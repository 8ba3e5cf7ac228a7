/**
 * Finds the highest message rate that passes a test, with as few measured
 * steps as it can: up by `factor` from `start` until a step fails (or down
 * until one passes), then halving the gap (geometrically) between the
 * highest pass and the lowest failure until they are within `tolerance`.
 * Steps measured before (by another search over the same runs) are reused.
 */

export interface StepVerdict {
  rate: number
  pass: boolean
}

export interface SearchOptions {
  /** Measures one step at `rate` and says whether it passed. */
  measure: (rate: number) => Promise<boolean>
  start: number
  /** Growth per step while no step has failed yet (> 1). */
  factor: number
  /** Stop once lowest failure / highest pass <= 1 + tolerance. */
  tolerance: number
  /** Steps measured by this search at most. */
  maxSteps: number
  /** Never asks for less than this; a failure there means no rate passes. */
  minRate?: number
  /** Never asks for more than this; a pass there ends the search. */
  maxRate?: number
  /** Earlier verdicts, taken as measured. */
  known?: readonly StepVerdict[]
  /** How a computed rate is rounded before it is measured. */
  round?: (rate: number) => number
}

export interface SearchResult {
  /** The highest rate that passed, or null when none did. */
  best: number | null
  /** The lowest rate that failed above `best`, or null when none did. */
  failedAt: number | null
  /** The steps this search measured, in order. */
  measured: StepVerdict[]
}

/** Rates round to two significant figures (12,000 not 12,345): steps are easier to read and to repeat. */
export function roundRate (rate: number): number {
  if (rate <= 0) return 0
  const unit = 10 ** Math.max(0, Math.floor(Math.log10(rate)) - 1)
  return Math.round(rate / unit) * unit
}

/**
 * The bracket the verdicts give: the highest pass, and the lowest failure
 * above it. A failure below a pass is taken for noise (a GC pause that
 * spoiled one step's p99): a pass is an observation that the rate can be
 * served, while a failure may be bad luck.
 */
export function bracket (verdicts: readonly StepVerdict[]): { pass: number | null, fail: number | null } {
  let best: number | null = null
  for (const { rate, pass } of verdicts) if (pass && (best === null || rate > best)) best = rate
  let fail: number | null = null
  for (const { rate, pass } of verdicts) {
    if (!pass && (best === null || rate > best) && (fail === null || rate < fail)) fail = rate
  }
  return { pass: best, fail }
}

/** The next rate to measure, or null when the bracket is narrow enough or hit a bound. */
export function nextRate (verdicts: readonly StepVerdict[], options: Omit<SearchOptions, 'measure' | 'maxSteps' | 'known'>): number | null {
  const { start, factor, tolerance, minRate = 1, maxRate = Infinity, round = roundRate } = options
  const { pass, fail } = bracket(verdicts)
  let rate: number
  if (pass === null && fail === null) rate = start
  else if (pass === null) {
    if ((fail as number) <= minRate) return null
    rate = Math.max(minRate, (fail as number) / factor)
  } else if (fail === null) {
    if (pass >= maxRate) return null
    rate = Math.min(maxRate, pass * factor)
  } else {
    if (fail / pass <= 1 + tolerance) return null
    rate = Math.sqrt(pass * fail)
  }
  const rounded = Math.min(maxRate, Math.max(minRate, round(rate)))
  // Rounding may land on a rate already measured: the bracket is as narrow as rounding allows.
  if (verdicts.some((verdict) => verdict.rate === rounded)) return null
  return rounded
}

export async function searchHighest (options: SearchOptions): Promise<SearchResult> {
  const verdicts: StepVerdict[] = [...(options.known ?? [])]
  const measured: StepVerdict[] = []
  while (measured.length < options.maxSteps) {
    const rate = nextRate(verdicts, options)
    if (rate === null) break
    const verdict = { rate, pass: await options.measure(rate) }
    verdicts.push(verdict)
    measured.push(verdict)
  }
  const { pass, fail } = bracket(verdicts)
  return { best: pass, failedAt: fail, measured }
}
