import { monitorEventLoopDelay } from 'node:perf_hooks'
import { Counter, Gauge, Histogram, Registry, type Metric } from 'prom-client'
import type { DeliveryRoute } from './connections.js'

export interface MetricSources {
  /** Open WebSocket connections on this node. */
  connections: () => number
  /** Users with at least one connection on this node. */
  onlineUsers: () => number
}

/** From half a millisecond (same node, idle) to seconds (a backed-up bus). */
const DELIVERY_LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5]
/** How often the event-loop delay is sampled, in ms. */
const EVENT_LOOP_RESOLUTION_MS = 10
const NS_PER_SECOND = 1e9

/**
 * This node's Prometheus metrics. Each call has its own registry, never
 * prom-client's global one, so several apps in one process (tests, a host
 * app embedding Switchboard) keep their numbers apart.
 *
 * prom-client's default process metrics are left out: each registration
 * starts an event-loop monitor and a GC observer that nothing can stop, so
 * every app built and closed in a process would leave two behind.
 */
export function createMetrics () {
  const registry = new Registry()
  // Each metric joins the registry at the end, in the order listed there; never prom-client's default.
  const registers: Registry[] = []
  let sources: MetricSources = { connections: () => 0, onlineUsers: () => 0 }

  const connections = new Gauge({
    name: 'switchboard_connections',
    help: 'Open WebSocket connections on this node',
    registers,
    collect () { this.set(sources.connections()) }
  })
  const onlineUsers = new Gauge({
    name: 'switchboard_online_users',
    help: 'Users with at least one WebSocket connection on this node',
    registers,
    collect () { this.set(sources.onlineUsers()) }
  })

  const accepted = new Counter({
    name: 'switchboard_messages_accepted_total',
    help: 'Messages stored and acknowledged to their sender',
    registers
  })

  const delivered = new Counter({
    name: 'switchboard_messages_delivered_total',
    help: 'Messages written to a recipient\'s socket on this node; route "remote" came from another node through Redis',
    labelNames: ['route'] as const,
    registers
  })
  const deliveryLatency = new Histogram({
    name: 'switchboard_delivery_latency_seconds',
    help: 'From a message being accepted to its delivery to the recipient\'s socket',
    labelNames: ['route'] as const,
    buckets: DELIVERY_LATENCY_BUCKETS,
    registers
  })

  const busMessages = new Counter({
    name: 'switchboard_bus_messages_total',
    help: 'Messages this node published to, or received from, the Redis bus',
    labelNames: ['direction'] as const,
    registers
  })
  const busErrors = new Counter({
    name: 'switchboard_bus_errors_total',
    help: 'Failures publishing to or subscribing on the Redis bus',
    registers
  })
  const busUp = new Gauge({
    name: 'switchboard_bus_up',
    help: '1 while this node can reach the Redis bus (or needs none), 0 otherwise',
    registers
  })

  // Every label value is listed from the start, so dashboards see 0 rather than no series.
  for (const route of ['local', 'remote'] as const) {
    delivered.inc({ route }, 0)
    deliveryLatency.zero({ route })
  }
  for (const direction of ['published', 'received'] as const) busMessages.inc({ direction }, 0)
  // Bound once: looking a label set up costs more than the count itself, on every message.
  const deliveredOn = { local: delivered.labels({ route: 'local' }), remote: delivered.labels({ route: 'remote' }) }
  const latencyOn = { local: deliveryLatency.labels({ route: 'local' }), remote: deliveryLatency.labels({ route: 'remote' }) }
  busUp.set(1)

  const eventLoopDelay = monitorEventLoopDelay({ resolution: EVENT_LOOP_RESOLUTION_MS })
  eventLoopDelay.enable()
  const eventLoopDelayMax = new Gauge({
    name: 'switchboard_event_loop_delay_max_seconds',
    help: 'Longest event-loop delay since the previous scrape',
    registers
  })
  const eventLoopDelayQuantiles = new Gauge({
    name: 'switchboard_event_loop_delay_seconds',
    help: 'Event-loop delay since the previous scrape, by quantile',
    labelNames: ['quantile'] as const,
    registers,
    // One reading feeds both gauges, then the next interval starts; so this
    // gauge is registered before the max gauge, which a scrape reads after it.
    collect () {
      // An empty histogram answers its lowest bucket (511 ns), not 0, for any percentile.
      const seconds = (nanoseconds: number): number => eventLoopDelay.count === 0 ? 0 : nanoseconds / NS_PER_SECOND
      this.set({ quantile: '0.5' }, seconds(eventLoopDelay.percentile(50)))
      this.set({ quantile: '0.99' }, seconds(eventLoopDelay.percentile(99)))
      eventLoopDelayMax.set(seconds(eventLoopDelay.max))
      eventLoopDelay.reset()
    }
  })

  const ordered: Metric[] = [
    connections, onlineUsers, accepted, delivered, deliveryLatency,
    busMessages, busErrors, busUp, eventLoopDelayQuantiles, eventLoopDelayMax
  ]
  for (const metric of ordered) registry.registerMetric(metric)

  return {
    registry,
    contentType: registry.contentType,
    render: (): Promise<string> => registry.metrics(),
    /** Where the connection gauges read from at each scrape. */
    observe (next: MetricSources): void {
      sources = next
    },
    messageAccepted (): void {
      accepted.inc()
    },
    messageDelivered (route: DeliveryRoute, latencyMs: number): void {
      deliveredOn[route].inc()
      // A remote latency spans two clocks; skew between nodes must not make it negative.
      if (Number.isFinite(latencyMs)) latencyOn[route].observe(Math.max(0, latencyMs) / 1000)
    },
    busPublished (count = 1): void {
      busMessages.inc({ direction: 'published' }, count)
    },
    busReceived (count = 1): void {
      busMessages.inc({ direction: 'received' }, count)
    },
    busError (): void {
      busErrors.inc()
    },
    busState (up: boolean): void {
      busUp.set(up ? 1 : 0)
    },
    /** Stops the event-loop monitor. */
    close (): void {
      eventLoopDelay.disable()
    }
  }
}

export type Metrics = ReturnType<typeof createMetrics>
