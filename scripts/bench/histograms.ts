/**
 * Latency histograms (HDR, microseconds). Each generator process records its
 * own and sends it encoded; the parent decodes and adds them, so percentiles
 * are read off the merged counts and never averaged.
 */
import { build, decodeFromCompressedBase64, encodeIntoCompressedBase64, type Histogram } from 'hdr-histogram-js'

/** One minute: anything later than that is a failed step anyway, and still counted (clamped). */
const HIGHEST_MICROS = 60_000_000

export function latencyHistogram (): Histogram {
  return build({ lowestDiscernibleValue: 1, highestTrackableValue: HIGHEST_MICROS, numberOfSignificantValueDigits: 3, autoResize: false })
}

/** Records one latency; below 1 µs counts as 1 and past the top as the top, so no sample is dropped. */
export function recordMicros (histogram: Histogram, micros: number): void {
  histogram.recordValue(Math.min(HIGHEST_MICROS, Math.max(1, Math.round(micros))))
}

export function encodeHistogram (histogram: Histogram): string {
  return encodeIntoCompressedBase64(histogram)
}

/** Decodes every process's histogram and adds them into one. */
export function mergeHistograms (encoded: readonly string[]): Histogram {
  const merged = latencyHistogram()
  for (const text of encoded) {
    const part = decodeFromCompressedBase64(text)
    merged.add(part)
    part.destroy()
  }
  return merged
}

export interface LatencySummary {
  count: number
  /** Milliseconds. */
  p50: number
  p99: number
  p999: number
  max: number
}

export function summarize (histogram: Histogram): LatencySummary {
  const ms = (micros: number): number => micros / 1000
  return {
    count: histogram.totalCount,
    p50: ms(histogram.getValueAtPercentile(50)),
    p99: ms(histogram.getValueAtPercentile(99)),
    p999: ms(histogram.getValueAtPercentile(99.9)),
    max: ms(histogram.maxValue)
  }
}
