/**
 * The two wire protocols the generator speaks, reduced to what it needs:
 * the URL, the frame that sends a message, and what an incoming frame is.
 * Frames are read with indexOf rather than JSON.parse, to keep the
 * generator cheaper than the servers it measures.
 *
 * json: Switchboard's protocol, which the bare ws baseline copies.
 * socketio: Engine.IO 4 / Socket.IO 5 packets over a plain WebSocket
 * (`0` open, `2`/`3` ping/pong, `40` connect, `42` event, `43` ack,
 * `44` connect error), as socket.io-client sends them with
 * `transports: ['websocket']`.
 */
import type { Dialect } from './ipc.js'

export type Incoming =
  /** A delivered message: `textAt` is where its text starts in the frame. */
  | { kind: 'message', from: number, textAt: number }
  | { kind: 'ack' }
  | { kind: 'error' }
  /** Socket.IO: the server said hello; answer with `reply`. */
  | { kind: 'handshake', reply: string }
  /** The socket is ready for messages. */
  | { kind: 'connected' }
  | { kind: 'refused', reason: string }
  | { kind: 'ping', reply: string }
  | { kind: 'other' }

export interface ClientDialect {
  url (base: string, token: string): string
  /** Request headers for the upgrade. */
  headers (token: string): Record<string, string>
  /** Whether the socket is ready at `open`, or only after the server accepts it in a frame. */
  readyAtOpen: boolean
  /** A message frame; `ackId` numbers Socket.IO's acknowledgements on this socket. */
  send (to: number, text: string, ref: string, ackId: number): string
  read (frame: string, token: string): Incoming
}

const MESSAGE_PREFIX = '{"type":"message"'
const ACK_PREFIX = '{"type":"ack"'
const ERROR_PREFIX = '{"type":"error"'
const FROM = '"from":'
const TEXT = '"text":"'

/** The sender and where the text starts, in a message object of either protocol. */
function readMessage (frame: string): Incoming {
  const fromAt = frame.indexOf(FROM)
  const textAt = frame.indexOf(TEXT)
  if (fromAt === -1 || textAt === -1) return { kind: 'other' }
  const from = Number.parseInt(frame.slice(fromAt + FROM.length, fromAt + FROM.length + 20), 10)
  return Number.isSafeInteger(from) ? { kind: 'message', from, textAt: textAt + TEXT.length } : { kind: 'other' }
}

const json: ClientDialect = {
  url: (base) => `${base}/ws`,
  headers: (token) => ({ authorization: `Bearer ${token}` }),
  readyAtOpen: true,
  send: (to, text, ref) => `{"type":"message","to":${to},"text":"${text}","id":"${ref}"}`,
  read (frame) {
    if (frame.startsWith(MESSAGE_PREFIX)) return readMessage(frame)
    if (frame.startsWith(ACK_PREFIX)) return { kind: 'ack' }
    if (frame.startsWith(ERROR_PREFIX)) return { kind: 'error' }
    return { kind: 'other' }
  }
}

const EVENT_PREFIX = '42["message",'

const socketio: ClientDialect = {
  url: (base) => `${base}/socket.io/?EIO=4&transport=websocket`,
  headers: () => ({}),
  readyAtOpen: false,
  send: (to, text, ref, ackId) => `42${ackId}["message",{"to":${to},"text":"${text}","id":"${ref}"}]`,
  read (frame, token) {
    if (frame.startsWith(EVENT_PREFIX)) return readMessage(frame)
    if (frame.startsWith('43')) return frame.includes('"error"') ? { kind: 'error' } : { kind: 'ack' }
    if (frame === '2') return { kind: 'ping', reply: '3' }
    if (frame.startsWith('0{')) return { kind: 'handshake', reply: `40${JSON.stringify({ token })}` }
    if (frame.startsWith('40')) return { kind: 'connected' }
    if (frame.startsWith('44')) return { kind: 'refused', reason: frame.slice(2, 200) }
    return { kind: 'other' }
  }
}

export function clientDialect (dialect: Dialect): ClientDialect {
  return dialect === 'json' ? json : socketio
}
