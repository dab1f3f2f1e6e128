// nexxus client: live collections over the nexxus-worker WebSocket protocol (CONTRACT section 7).
// A dependency-free ES module: no build step, runs in current browsers and in Node 20+ (give it a
// WebSocket constructor there). Usage and semantics: docs/client.md.

/**
 * @typedef {{model: string, context?: string, user?: string, parent?: {model: string, id: string}, id?: string}} Channel
 * @typedef {{and: any[]} | {or: any[]}} Filter  Telepat filter (CONTRACT section 4)
 * @typedef {{op: 'replace'|'increment'|'append'|'remove', path: string, value: any}} Patch
 * @typedef {{op: 'create'|'update'|'delete', object?: Record<string, any>, patch?: Patch,
 *   subscriptions: string[], application_id: string, timestamp: number, version: number}} Delta
 * @typedef {'connecting'|'connected'|'reconnecting'|'closed'} Status
 * @typedef {{type: string, message: string, code?: string|number, subscription?: Subscription, detail?: any}} ClientError
 * @typedef {{created: string[], updated: string[], deleted: string[], reason: 'delta'|'snapshot'}} Change
 * @typedef {{
 *   wsUrl: string,
 *   token?: string,
 *   getToken?: () => Promise<string>|string,
 *   fetchSnapshot?: boolean,
 *   httpBase?: string,
 *   WebSocket?: any,
 *   fetch?: typeof fetch,
 *   onStatus?: (status: Status, detail: object) => void,
 *   onError?: (error: ClientError) => void,
 *   backoff?: {initialMs?: number, maxMs?: number, factor?: number, jitter?: number},
 *   readyTimeoutMs?: number,
 *   maxTombstones?: number,
 * }} ConnectOptions
 */

const DEFAULT_BACKOFF = { initialMs: 500, maxMs: 30000, factor: 2, jitter: 0.5 };

/** Connects and returns a client that keeps reconnecting until `close()`.
 * @param {ConnectOptions} options */
export function connect(options) {
  return new Client(options);
}

/** A small event emitter: `on(name, fn)` returns a function that removes `fn`. */
class Emitter {
  constructor() { /** @type {Map<string, Set<Function>>} */ this._handlers = new Map(); }
  /** @param {string} name @param {Function} fn @returns {() => void} */
  on(name, fn) {
    if (!this._handlers.has(name)) this._handlers.set(name, new Set());
    this._handlers.get(name).add(fn);
    return () => this.off(name, fn);
  }
  /** @param {string} name @param {Function} fn */
  off(name, fn) { this._handlers.get(name)?.delete(fn); }
  _emit(name, ...args) {
    for (const fn of [...(this._handlers.get(name) || [])]) {
      try { fn(...args); } catch (e) { console.error(`nexxus client: '${name}' handler threw`, e); }
    }
  }
}

export class Client extends Emitter {
  /** @param {ConnectOptions} options */
  constructor(options) {
    super();
    if (!options || typeof options.wsUrl !== 'string') throw new TypeError('connect: wsUrl is required');
    if (!options.token && !options.getToken) throw new TypeError('connect: token or getToken is required');
    this.options = options;
    this._WS = options.WebSocket || globalThis.WebSocket;
    if (!this._WS) throw new TypeError('connect: no WebSocket constructor (pass options.WebSocket)');
    this._fetch = options.fetch || (globalThis.fetch && globalThis.fetch.bind(globalThis));
    this._httpBase = options.httpBase ?? (globalThis.location?.origin || null);
    this._snapshots = options.fetchSnapshot !== false && !!this._httpBase && !!this._fetch;
    this._backoff = { ...DEFAULT_BACKOFF, ...(options.backoff || {}) };
    this._token = options.token || null;
    this._tokenStale = !this._token;
    /** @type {Status} */
    this.status = 'connecting';
    /** The device id the server confirmed in `ready`, once connected. */
    this.deviceId = null;
    /** @type {Set<Subscription>} */
    this._subs = new Set();
    /** Subscriptions ended while offline, still stored server-side: unsubscribed on the next ready. */
    this._orphans = [];
    this._pending = []; // replies expected on this connection, in order: {type, sub?}
    this._ws = null;
    this._ready = false;
    this._attempt = 0;
    this._epoch = 0; // counts connections; async work of an older connection is discarded
    this._timer = null;
    this._closed = false;
    this._open();
  }

  /** Subscribes to a channel and returns its live collection.
   * @param {Channel} channel @param {{filters?: Filter}} [opts] */
  subscribe(channel, opts = {}) {
    if (!channel || typeof channel !== 'object' || typeof channel.model !== 'string') {
      throw new TypeError('subscribe: channel must be an object with a model');
    }
    const sub = new Subscription(this, channel, opts.filters || null);
    this._subs.add(sub);
    if (this._ready) this._sendSubscribe(sub);
    return sub;
  }

  /** Closes the connection for good; subscriptions stay stored server-side for the device. */
  close() {
    this._closed = true;
    clearTimeout(this._timer);
    clearTimeout(this._readyTimer);
    const ws = this._ws;
    this._ws = null;
    this._ready = false;
    if (ws) { try { ws.close(1000); } catch { /* already closed */ } }
    for (const sub of this._subs) sub._disconnected();
    this._setStatus('closed', { reason: 'closed by client' });
  }

  /** The bearer token currently in use (for the app's own HTTP calls). */
  get token() { return this._token; }

  // --- connection --------------------------------------------------------------------------

  async _open() {
    if (this._closed) return;
    const epoch = ++this._epoch;
    this._setStatus('connecting', { attempt: this._attempt });
    if (this._tokenStale) {
      if (!this.options.getToken) {
        this._report({ type: 'auth', message: 'the token was refused and there is no getToken to renew it' });
        return this.close();
      }
      try {
        const t = await this.options.getToken();
        if (typeof t !== 'string' || !t) throw new Error('getToken returned no token');
        this._token = t;
        this._tokenStale = false;
      } catch (e) {
        if (epoch !== this._epoch || this._closed) return;
        this._report({ type: 'auth', message: `getToken failed: ${e?.message || e}` });
        return this._retry({ reason: 'getToken failed' });
      }
      if (epoch !== this._epoch || this._closed) return;
    }
    const url = this.options.wsUrl + (this.options.wsUrl.includes('?') ? '&' : '?') + 'token=' + encodeURIComponent(this._token);
    let ws;
    try {
      ws = new this._WS(url);
    } catch (e) {
      this._report({ type: 'socket', message: `cannot open ${this.options.wsUrl}: ${e?.message || e}` });
      return this._retry({ reason: 'open failed' });
    }
    this._ws = ws;
    this._ready = false;
    this._pending = [];
    let closeCode = 0; // a TOKEN_EXPIRED/UNAUTHORIZED error frame names the reason before the close
    clearTimeout(this._readyTimer);
    const readyTimer = this._readyTimer = setTimeout(() => {
      if (this._ws === ws && !this._ready) {
        this._report({ type: 'socket', message: 'no ready frame in time' });
        this._drop(ws, { reason: 'ready timeout' });
      }
    }, this.options.readyTimeoutMs ?? 15000);
    ws.onmessage = (ev) => {
      if (this._ws !== ws) return;
      const frame = parseFrame(ev.data);
      if (!frame) return this._report({ type: 'bad_frame', message: 'ignored a malformed frame', detail: ev.data });
      if (frame.event === 'error' && (frame.data.code === 'TOKEN_EXPIRED' || frame.data.code === 'UNAUTHORIZED')) {
        closeCode = frame.data.code === 'TOKEN_EXPIRED' ? 4002 : 4001;
      }
      try {
        this._onFrame(frame);
      } catch (e) {
        this._report({ type: 'bad_frame', message: `frame not applied: ${e?.message || e}`, detail: ev.data });
      }
    };
    ws.onerror = () => { /* the close event that follows carries what matters */ };
    ws.onclose = (ev) => {
      clearTimeout(readyTimer);
      if (this._ws !== ws) return;
      this._ws = null;
      this._ready = false;
      this._pending = [];
      const code = ev?.code === 4001 || ev?.code === 4002 ? ev.code : closeCode || ev?.code || 0;
      this._onClose(code, ev?.reason || '');
    };
  }

  _onClose(code, reason) {
    for (const sub of this._subs) sub._disconnected();
    if (this._closed) return;
    if (code === 4001 || code === 4002) {
      this._report({ type: 'auth', code, message: code === 4002 ? 'token expired' : 'token refused' });
      if (!this.options.getToken) return this.close();
      this._tokenStale = true;
    }
    this._retry({ code, reason });
  }

  /** Closes a connection that misbehaves and retries. */
  _drop(ws, detail) {
    try { ws.close(); } catch { /* ignore */ }
    if (this._ws !== ws) return;
    this._ws = null;
    this._ready = false;
    this._pending = [];
    for (const sub of this._subs) sub._disconnected();
    this._retry(detail);
  }

  _retry(detail) {
    if (this._closed) return;
    const delayMs = backoffDelay(this._backoff, this._attempt++);
    this._setStatus('reconnecting', { ...detail, attempt: this._attempt, delayMs });
    clearTimeout(this._timer);
    this._timer = setTimeout(() => this._open(), delayMs);
  }

  _setStatus(status, detail = {}) {
    const changed = status !== this.status;
    this.status = status;
    if (changed || status === 'reconnecting') {
      try { this.options.onStatus?.(status, detail); } catch (e) { console.error('nexxus client: onStatus threw', e); }
      this._emit('status', status, detail);
    }
  }

  /** @param {ClientError} err */
  _report(err) {
    try { this.options.onError?.(err); } catch (e) { console.error('nexxus client: onError threw', e); }
    this._emit('error', err);
  }

  _send(event, data) {
    try {
      this._ws.send(JSON.stringify({ event, data }));
      return true;
    } catch (e) {
      this._report({ type: 'socket', message: `send failed: ${e?.message || e}` });
      return false;
    }
  }

  _sendSubscribe(sub) {
    const data = { channel: sub.channel };
    if (sub.filters) data.filters = sub.filters;
    if (this._send('subscribe', data)) this._pending.push({ type: 'subscribe', sub });
  }

  _sendUnsubscribe(channel, filters) {
    const data = { channel };
    if (filters) data.filters = filters;
    if (this._send('unsubscribe', data)) this._pending.push({ type: 'unsubscribe' });
  }

  /** A subscription ended: tell the server unless another live subscription shares its channel. */
  _removeSub(sub) {
    this._subs.delete(sub);
    const same = [...this._subs].some((s) => s._identity === sub._identity);
    if (same) return;
    if (this._ready) this._sendUnsubscribe(sub.channel, sub.filters);
    else this._orphans.push({ channel: sub.channel, filters: sub.filters, identity: sub._identity });
  }

  _onFrame({ event, data }) {
    switch (event) {
      case 'ready': {
        clearTimeout(this._readyTimer);
        this._ready = true;
        this._attempt = 0;
        this.deviceId = typeof data.device_id === 'string' ? data.device_id : null;
        this._setStatus('connected', { deviceId: this.deviceId, server: data.server });
        const orphans = this._orphans;
        this._orphans = [];
        for (const o of orphans) {
          if (![...this._subs].some((s) => s._identity === o.identity)) this._sendUnsubscribe(o.channel, o.filters);
        }
        for (const sub of this._subs) this._sendSubscribe(sub);
        return;
      }
      case 'subscribed':
      case 'unsubscribed': {
        const want = event === 'subscribed' ? 'subscribe' : 'unsubscribe';
        const head = this._pending.shift();
        if (!head || head.type !== want) {
          return this._report({ type: 'protocol', message: `unexpected ${event} frame`, detail: data });
        }
        if (head.sub && this._subs.has(head.sub)) {
          if (typeof data.channel !== 'string') {
            return this._report({ type: 'bad_frame', message: 'subscribed without a channel key', detail: data });
          }
          head.sub._subscribed(data.channel);
        }
        return;
      }
      case 'error': {
        const code = data.code;
        const message = typeof data.message === 'string' ? data.message : String(code);
        // Before ready an error is about the connection; after it, the answer to the oldest request.
        if (this._ready && this._pending.length && code !== 'TOKEN_EXPIRED' && code !== 'UNAUTHORIZED') {
          const head = this._pending.shift();
          if (head.sub && this._subs.has(head.sub)) {
            if (code !== 'UNAVAILABLE') return head.sub._failed(code, message);
            // The server's registry is unavailable for now: ask again later on this connection.
            const ws = this._ws;
            const sub = head.sub;
            setTimeout(() => {
              if (this._ws === ws && this._ready && this._subs.has(sub)) this._sendSubscribe(sub);
            }, backoffDelay(this._backoff, sub._subscribeAttempt++));
          }
        }
        return this._report({ type: 'server', code, message });
      }
      case 'message':
        return this._onMessage(data);
      case 'broadcast':
        return this._onBroadcast(data);
      default:
        return this._report({ type: 'bad_frame', message: `unknown event ${JSON.stringify(event)}` });
    }
  }

  /** A broadcast (an ephemeral object, never stored): to the client, and to each subscription its
   * `subscriptions` names. It changes no collection. */
  _onBroadcast(data) {
    if (!isPlainObject(data) || !isPlainObject(data.object) || !Array.isArray(data.subscriptions)) {
      return this._report({ type: 'bad_frame', message: 'broadcast without an object and its subscriptions', detail: data });
    }
    const event = { object: data.object, subscriptions: data.subscriptions, timestamp: data.timestamp };
    this._emit('broadcast', event);
    for (const sub of this._subs) {
      if (sub.key && data.subscriptions.includes(sub.key)) sub._emit('broadcast', event);
    }
  }

  _onMessage(data) {
    /** @type {Map<string, Subscription[]>} */
    const byKey = new Map();
    for (const sub of this._subs) {
      if (!sub.key) continue;
      if (!byKey.has(sub.key)) byKey.set(sub.key, []);
      byKey.get(sub.key).push(sub);
    }
    const touched = new Set();
    for (const kind of ['new', 'updated', 'deleted']) {
      const list = data[kind];
      if (list === undefined) continue;
      if (!Array.isArray(list)) {
        this._report({ type: 'bad_frame', message: `message.${kind} is not an array` });
        continue;
      }
      for (const delta of list) {
        const why = invalidDelta(delta, kind);
        if (why) {
          this._report({ type: 'bad_frame', message: `ignored a delta: ${why}`, detail: delta });
          continue;
        }
        const targets = new Set();
        for (const key of delta.subscriptions) for (const sub of byKey.get(key) || []) targets.add(sub);
        for (const sub of targets) {
          sub._applyDelta(kind, delta);
          touched.add(sub);
        }
      }
    }
    for (const sub of touched) sub._flush('delta');
  }

  // --- snapshots ---------------------------------------------------------------------------

  /** GET /objects for a channel; returns the parsed body, or throws an Error with `.status`. */
  async _getObjects(channel, retriedAuth = false) {
    const url = this._httpBase.replace(/\/+$/, '') + '/objects?channel=' + encodeURIComponent(JSON.stringify(channel));
    const res = await this._fetch(url, { headers: { Authorization: `Bearer ${this._token}` } });
    if ((res.status === 401) && !retriedAuth && this.options.getToken) {
      const t = await this.options.getToken();
      if (typeof t === 'string' && t) this._token = t;
      return this._getObjects(channel, true);
    }
    let body = null;
    try { body = await res.json(); } catch { /* not JSON */ }
    if (!res.ok) {
      const err = new Error(`GET /objects: HTTP ${res.status}${body?.error ? `: ${body.error}` : ''}`);
      err.status = res.status;
      throw err;
    }
    if (!body || !Array.isArray(body.objects)) {
      const err = new Error('GET /objects: the answer has no objects array');
      err.status = 0;
      throw err;
    }
    return body;
  }
}

/** A live collection of the objects on one channel (optionally filtered). */
export class Subscription extends Emitter {
  /** @param {Client} client @param {Channel} channel @param {Filter|null} filters */
  constructor(client, channel, filters) {
    super();
    this.client = client;
    this.channel = channel;
    this.filters = filters;
    /** The server's channel key, known once subscribed. */
    this.key = null;
    /** @type {'subscribing'|'syncing'|'live'|'failed'|'closed'} */
    this.state = 'subscribing';
    /** Live objects: id → object. Replace, never mutate, objects you take from it. */
    this.objects = new Map();
    /** @type {Map<string, number>} id → version of each live object */
    this.versions = new Map();
    /** @type {Map<string, number>} id → version of its deletion (or of leaving the filter) */
    this.tombstones = new Map();
    this._identity = canonical({ channel, filters });
    this._syncGen = 0; // increases per resync; an answer for an older one is dropped
    this._syncing = false;
    this._touched = new Set(); // ids changed by deltas while a snapshot is in flight
    this._gaps = []; // [id, version] of deltas that could not be applied
    this._resyncTimer = null;
    this._resyncAttempt = 0;
    this._subscribeAttempt = 0;
    this._changes = { created: new Set(), updated: new Set(), deleted: new Set() };
    this._maxTombstones = client.options.maxTombstones ?? 10000;
    let resolve, reject;
    /** Resolves when the subscription first holds the channel's state; rejects if refused. */
    this.ready = new Promise((a, b) => { resolve = a; reject = b; });
    this.ready.catch(() => {});
    this._resolveReady = resolve;
    this._rejectReady = reject;
  }

  /** The objects as an array, in insertion order. */
  list() { return [...this.objects.values()]; }

  /** The version held for `id` (0 if none). */
  version(id) { return this.versions.get(id) || 0; }

  /** Ends the subscription: no more changes, and the server stops sending its channel. */
  unsubscribe() {
    if (this.state === 'closed') return;
    this.state = 'closed';
    clearTimeout(this._resyncTimer);
    this._syncGen++;
    this.client._removeSub(this);
    this._rejectReady(new Error('unsubscribed'));
  }

  /** Fetches the channel's objects again (what a gap or a reconnect does by itself). */
  resync() {
    if (this.state === 'closed' || !this.key) return;
    if (!this.client._snapshots || this._noSnapshot) {
      this._setLive();
      return;
    }
    if (this._syncing) {
      this._again = true;
      return;
    }
    clearTimeout(this._resyncTimer);
    this._resyncTimer = null;
    this._syncing = true;
    this._again = false;
    this._touched = new Set();
    this._gaps = [];
    if (this.state !== 'live') this.state = 'syncing';
    const gen = ++this._syncGen;
    const epoch = this.client._epoch;
    this.client._getObjects(this.channel).then(
      (body) => {
        if (gen !== this._syncGen || this.state === 'closed') return;
        this._syncing = false;
        if (epoch !== this.client._epoch) return; // reconnected meanwhile: that connection resyncs
        this._resyncAttempt = 0;
        this._applySnapshot(body.objects);
        this._setLive();
        if (this._again || this._uncoveredGap()) this._scheduleResync();
      },
      (err) => {
        if (gen !== this._syncGen || this.state === 'closed') return;
        this._syncing = false;
        if (err?.status === 400) {
          // This channel shape has no snapshot: live changes only.
          this.client._report({ type: 'snapshot', code: 400, subscription: this, message: `${err.message} (live changes only)` });
          this._noSnapshot = true;
          this._setLive();
          return;
        }
        this.client._report({ type: 'snapshot', code: err?.status, subscription: this, message: String(err?.message || err) });
        this._scheduleResync();
      },
    );
  }

  _setLive() {
    const first = this.state !== 'live';
    this.state = 'live';
    if (first) this._emit('synced');
    this._resolveReady(this);
  }

  _scheduleResync() {
    if (this._resyncTimer || this.state === 'closed') return;
    const delay = backoffDelay(this.client._backoff, this._resyncAttempt++);
    this._resyncTimer = setTimeout(() => { this._resyncTimer = null; this.resync(); }, delay);
  }

  _uncoveredGap() {
    return this._gaps.some(([id, v]) => this.version(id) < v && (this.tombstones.get(id) || 0) < v);
  }

  _subscribed(key) {
    this.key = key;
    this._subscribeAttempt = 0;
    this._emit('subscribed', key);
    if (this._noSnapshot || !this.client._snapshots) return this._setLive();
    this.resync();
  }

  _failed(code, message) {
    this.state = 'failed';
    this.client._subs.delete(this);
    const err = { type: 'subscribe', code, message, subscription: this };
    this._emit('error', err);
    this.client._report(err);
    this._rejectReady(Object.assign(new Error(`${code}: ${message}`), { code }));
  }

  /** The connection is gone: snapshots in flight are dropped; the next connection resubscribes
   * and resyncs. Objects stay as they were (a `live` subscription shows its last state). */
  _disconnected() {
    clearTimeout(this._resyncTimer);
    this._resyncTimer = null;
    this._syncGen++;
    this._syncing = false;
  }

  /** Applies one delta of kind `new`, `updated` or `deleted`. */
  _applyDelta(kind, delta) {
    const v = delta.version;
    if (kind === 'updated') {
      const [, id, field] = delta.patch.path.split('/');
      if ((this.tombstones.get(id) || 0) >= v) return; // a change of an object already gone
      const have = this.versions.get(id);
      if (have !== undefined && v <= have) return; // duplicate
      if (have === undefined || v > have + 1) return this._gap(id, v);
      const next = { ...this.objects.get(id) };
      try {
        applyPatch(next, field, delta.patch);
      } catch (e) {
        this.client._report({ type: 'patch', subscription: this, message: `${delta.patch.path}: ${e.message}`, detail: delta });
        return this._gap(id, v);
      }
      this.objects.set(id, next);
      this.versions.set(id, v);
      this._touch(id, 'updated');
      return;
    }
    const id = delta.object.id;
    if ((this.tombstones.get(id) || 0) >= v) return; // stale: deleted (or left) at or after it
    const have = this.versions.get(id);
    if (have !== undefined && v <= have) return; // duplicate or stale
    if (kind === 'new') {
      this.objects.set(id, { ...delta.object });
      this.versions.set(id, v);
      this.tombstones.delete(id);
      this._touch(id, have === undefined ? 'created' : 'updated');
    } else {
      this._bury(id, v);
    }
  }

  _bury(id, v) {
    const had = this.objects.delete(id);
    this.versions.delete(id);
    this.tombstones.delete(id); // re-inserted last: the Map's order is the pruning order
    this.tombstones.set(id, v);
    while (this.tombstones.size > this._maxTombstones) this.tombstones.delete(this.tombstones.keys().next().value);
    if (this._syncing) this._touched.add(id);
    if (had) {
      this._changes.created.delete(id);
      this._changes.updated.delete(id);
      this._changes.deleted.add(id);
    }
  }

  _touch(id, how) {
    if (this._syncing) this._touched.add(id);
    this._changes.deleted.delete(id);
    if (how === 'created' || this._changes.created.has(id)) this._changes.created.add(id);
    else this._changes.updated.add(id);
  }

  _gap(id, v) {
    this._gaps.push([id, v]);
    this._emit('gap', { id, version: v, have: this.version(id) });
    if (!this._syncing && this.client._snapshots && !this._noSnapshot) this.resync();
  }

  /** Merges a snapshot `[{object, version}]`: newer versions win, tombstones block stale ones. */
  _applySnapshot(items) {
    const seen = new Set();
    for (const item of items) {
      const obj = item && item.object;
      const v = item && item.version;
      if (!isPlainObject(obj) || typeof obj.id !== 'string' || !Number.isSafeInteger(v)) {
        this.client._report({ type: 'snapshot', subscription: this, message: 'ignored a malformed snapshot item', detail: item });
        continue;
      }
      if (this.filters && !matchesFilter(this.filters, obj)) continue;
      const id = obj.id;
      seen.add(id);
      if ((this.tombstones.get(id) || 0) >= v) continue;
      const have = this.versions.get(id);
      if (have !== undefined && have >= v) continue;
      this.objects.set(id, { ...obj });
      this.versions.set(id, v);
      this.tombstones.delete(id);
      this._touch(id, have === undefined ? 'created' : 'updated');
    }
    for (const id of [...this.objects.keys()]) {
      if (!seen.has(id) && !this._touched.has(id)) this._bury(id, this.versions.get(id) || 0);
    }
    this._flush('snapshot');
  }

  /** Emits one `change` event for what changed since the last one. */
  _flush(reason) {
    const c = this._changes;
    if (!c.created.size && !c.updated.size && !c.deleted.size) return;
    this._changes = { created: new Set(), updated: new Set(), deleted: new Set() };
    this._emit('change', { created: [...c.created], updated: [...c.updated], deleted: [...c.deleted], reason });
  }
}

// --- helpers ------------------------------------------------------------------------------------

/** Delay before retry number `attempt` (0-based): exponential, capped, minus up to `jitter` of it. */
export function backoffDelay({ initialMs, maxMs, factor, jitter }, attempt) {
  const base = Math.min(maxMs, initialMs * Math.pow(factor, Math.min(attempt, 30)));
  return Math.round(base * (1 - jitter * Math.random()));
}

function isPlainObject(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/** Parses a text frame into `{event, data}`, or null if it is not one. */
function parseFrame(text) {
  if (typeof text !== 'string') return null;
  let v;
  try { v = JSON.parse(text); } catch { return null; }
  if (!isPlainObject(v) || typeof v.event !== 'string') return null;
  if (v.data === undefined || v.data === null) v.data = {};
  if (!isPlainObject(v.data)) return null;
  return v;
}

/** Why a delta cannot be applied, or '' if it can. */
function invalidDelta(d, kind) {
  if (!isPlainObject(d)) return 'not an object';
  const op = { new: 'create', updated: 'update', deleted: 'delete' }[kind];
  if (d.op !== op) return `op ${JSON.stringify(d.op)} in ${kind}`;
  if (!Array.isArray(d.subscriptions) || !d.subscriptions.every((s) => typeof s === 'string')) return 'no subscriptions';
  if (!Number.isSafeInteger(d.version) || d.version < 1) return 'no version';
  if (kind === 'updated') {
    const p = d.patch;
    if (!isPlainObject(p) || typeof p.path !== 'string' || p.path.split('/').length !== 3) return 'no patch path';
    if (!['replace', 'increment', 'append', 'remove'].includes(p.op)) return `unknown patch op ${JSON.stringify(p.op)}`;
    if (!('value' in p)) return 'patch without value';
  } else if (!isPlainObject(d.object) || typeof d.object.id !== 'string') {
    return 'no object id';
  }
  return '';
}

/** JSON deep equality, numbers by value. */
function jsonEqual(a, b) {
  if (a === b) return true;
  if (Array.isArray(a)) return Array.isArray(b) && a.length === b.length && a.every((x, i) => jsonEqual(x, b[i]));
  if (isPlainObject(a) && isPlainObject(b)) {
    const ka = Object.keys(a);
    return ka.length === Object.keys(b).length && ka.every((k) => k in b && jsonEqual(a[k], b[k]));
  }
  return false;
}

/** Applies one patch to `obj[field]` in place, as the server does (src/model/patch.rs); throws if it cannot. */
export function applyPatch(obj, field, patch) {
  const cur = obj[field] === null ? undefined : obj[field];
  const value = patch.value;
  switch (patch.op) {
    case 'replace':
      obj[field] = value;
      return;
    case 'increment':
      if (typeof value !== 'number') throw new Error('increment by a non-number');
      if (cur === undefined) obj[field] = value;
      else if (typeof cur === 'number') obj[field] = cur + value;
      else throw new Error('increment of a non-number');
      return;
    case 'append':
      if (cur === undefined) obj[field] = [value];
      else if (Array.isArray(cur)) obj[field] = [...cur, value];
      else if (typeof cur === 'string') {
        if (!['string', 'number', 'boolean'].includes(typeof value)) throw new Error('append of a non-scalar to a string');
        obj[field] = cur + String(value);
      } else throw new Error('append to a non-array');
      return;
    case 'remove': {
      if (cur === undefined) return;
      if (!Array.isArray(cur)) throw new Error('remove from a non-array');
      const i = cur.findIndex((x) => jsonEqual(x, value));
      if (i >= 0) obj[field] = cur.filter((_, j) => j !== i);
      return;
    }
    default:
      throw new Error(`unknown patch op ${patch.op}`);
  }
}

/** JSON with sorted keys: the identity of a channel + filter pair. */
function canonical(v) {
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  if (isPlainObject(v)) {
    return `{${Object.keys(v).sort().filter((k) => v[k] !== undefined).map((k) => `${JSON.stringify(k)}:${canonical(v[k])}`).join(',')}}`;
  }
  return JSON.stringify(v ?? null);
}

/** Evaluates a Telepat filter on an object as the server does (src/model/filter/eval.rs).
 * Used for snapshots of filtered subscriptions (the server filters deltas itself). */
export function matchesFilter(filter, obj) {
  if (!isPlainObject(filter) || !isPlainObject(obj)) return false;
  const connector = 'and' in filter ? 'and' : 'or';
  const items = filter[connector];
  return Array.isArray(items) && evalGroup(connector, items, obj);
}

function evalGroup(connector, items, obj) {
  return connector === 'and' ? items.every((e) => evalElement(e, connector, obj)) : items.some((e) => evalElement(e, connector, obj));
}

function combine(connector, fields, obj, test) {
  if (!isPlainObject(fields)) return false;
  const one = ([name, spec]) => obj[name] !== undefined && obj[name] !== null && test(obj[name], spec);
  const entries = Object.entries(fields);
  return connector === 'and' ? entries.every(one) : entries.some(one);
}

function evalElement(e, connector, obj) {
  if (!isPlainObject(e)) return false;
  const [op] = Object.keys(e);
  const body = e[op];
  switch (op) {
    case 'and':
    case 'or':
      return Array.isArray(body) && evalGroup(op, body, obj);
    case 'is':
      return combine(connector, body, obj, isEqual);
    case 'like':
      return combine(connector, body, obj, like);
    case 'range':
      return combine(connector, body, obj, inRange);
    case 'in_array':
      return combine(connector, body, obj, (v, list) => Array.isArray(list) && list.some((w) => isEqual(v, w)));
    case 'exists': {
      const field = typeof body === 'string' ? body : body?.field;
      return obj[field] !== undefined && obj[field] !== null;
    }
    case 'not':
      return !evalElement(body, 'and', obj);
    default:
      return false;
  }
}

function isEqual(stored, wanted) {
  if (jsonEqual(stored, wanted)) return true;
  return Array.isArray(stored) && !Array.isArray(wanted) && stored.some((i) => jsonEqual(i, wanted));
}

function like(stored, needle) {
  if (typeof needle !== 'string') return false;
  if (typeof stored === 'string') return stored.includes(needle);
  if (typeof stored === 'number' || typeof stored === 'boolean') return String(stored).includes(needle);
  if (Array.isArray(stored)) return stored.some((i) => i !== null && typeof i !== 'object' && like(i, needle));
  return false;
}

function inRange(x, b) {
  if (typeof x !== 'number' || !isPlainObject(b)) return false;
  return (b.gt === undefined || x > b.gt) && (b.gte === undefined || x >= b.gte)
    && (b.lt === undefined || x < b.lt) && (b.lte === undefined || x <= b.lte);
}
