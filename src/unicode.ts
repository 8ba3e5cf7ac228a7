/** A UTF-16 surrogate without its partner: JSON can carry one, UTF-8 (and so storage) cannot. */
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/

/** Whether `text` holds a lone surrogate: it could not be stored, or hashed, as it is. */
export function hasLoneSurrogate (text: string): boolean {
  return LONE_SURROGATE.test(text)
}
