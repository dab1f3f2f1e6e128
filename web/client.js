// nexxus client: live collections over the nexxus-worker WebSocket protocol (CONTRACT section 7,
// with the snapshot and resume frames of docs/protocol.md).
// A dependency-free ES module: no build step, runs in current browsers and in Node 20+ (give it a
// WebSocket constructor there). Usage and semantics: docs/client.md.

/**
 * @typedef {{model: string, context?: string, user?: string, parent?: {model: string, id: string}, id?: string}} Channel
 * @typedef {{and: any[]} | {or: any[]}} Filter  Telepat filter (CONTRACT section 4)
 * @typedef {{op: 'replace'|'increment'|'append'|'remove', path: string, value: any}} Patch
 * @typedef {{op: 'create'|'update'|'delete', object?: Record<string, any>, patch?: Patch,
 *   subscriptions: string[], application_id: string, timestamp: number, version: number}} Delta
 * @typedef {'connecting'|'connected'|'reconnecting'|'offline'|'closed'} Status
 * @typedef {{type: string, message: string, code?: string|number, subscription?: Subscription, detail?: any}} ClientError
 * @typedef {{created: string[], updated: string[], deleted: string[], reason: 'delta'|'snapshot'|'catchup'}} Change
 * @typedef {{
 *   wsUrl: string,
 *   token?: string,
 *   getToken?: () => Promise<string>|string,
 *   snapshots?: boolean,
 *   WebSocket?: any,
 *   onStatus?: (status: Status, detail: object) => void,
 *   onError?: (error: ClientError) => void,
 *   backoff?: {initialMs?: number, maxMs?: number, factor?: number, jitter?: number},
 *   readyTimeoutMs?: number,
 *   gapTimeoutMs?: number,
 *   maxTombstones?: number,
 * }} ConnectOptions
 */

const DEFAULT_BACKOFF = { initialMs: 500, maxMs: 30000, factor: 2, jitter: 0.5 };
/** Patches kept per subscription while they wait for a full state to cover their gap. */
const MAX_HELD = 1000;

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
    // In-band snapshots and resumes (docs/protocol.md); `fetchSnapshot` is the option's former name.
    this._snapshots = (options.snapshots ?? options.fetchSnapshot) !== false;
    this._gapTimeoutMs = options.gapTimeoutMs ?? 5000;
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
    this._pending = []; // replies expected on this connection, in order: {type, sub?, mode?}
    /** Per channel key, on this connection: snapshots and resume catch-ups answered with
     * `subscribed` whose `snapshot_end` / `catchup_end` has not arrived yet.
     * @type {Map<string, {snap: number, catchup: number}>} */
    this._streams = new Map();
    this._ws = null;
    this._ready = false;
    this._attempt = 0;
    this._epoch = 0; // counts connections; async work of an older connection is discarded
    this._timer = null;
    this._closed = false;
    // A browser going offline rarely breaks an open WebSocket at once (it may stay silent for
    // minutes): the client closes it on `offline` and resumes on `online`.
    this._window = options.window ?? (typeof window !== 'undefined' ? window : null);
    this._onOffline = () => this._goOffline();
    this._onOnline = () => this._goOnline();
    this._window?.addEventListener?.('offline', this._onOffline);
    this._window?.addEventListener?.('online', this._onOnline);
    this._open();
  }

  /** Whether the environment says there is no network (browsers' `navigator.onLine`). */
  _offline() {
    return this._window?.navigator?.onLine === false;
  }

  _goOffline() {
    if (this._closed) return;
    this._hangUp();
    this._setStatus('offline', { reason: 'the browser is offline' });
  }

  /** Ends the current connection (if any) on our side, with nothing scheduled after it. */
  _hangUp() {
    clearTimeout(this._timer);
    clearTimeout(this._readyTimer);
    const ws = this._ws;
    this._ws = null;
    this._ready = false;
    this._pending = [];
    this._streams = new Map();
    if (ws) { try { ws.close(1000); } catch { /* already closed */ } }
    for (const sub of this._subs) sub._disconnected();
  }

  _goOnline() {
    if (this._closed || this.status !== 'offline') return;
    this._attempt = 0;
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
    this._window?.removeEventListener?.('offline', this._onOffline);
    this._window?.removeEventListener?.('online', this._onOnline);
    this._hangUp();
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
    this._streams = new Map();
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
      this._streams = new Map();
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
    this._streams = new Map();
    for (const sub of this._subs) sub._disconnected();
    this._retry(detail);
  }

  _retry(detail) {
    if (this._closed) return;
    if (this._offline()) return this._goOffline();
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

  /** Sends `subscribe` for `sub`: with `resume` when it holds a cursor (and needs no fresh
   * snapshot), otherwise with `snapshot: true`; without either when snapshots are off. */
  _sendSubscribe(sub) {
    const data = { channel: sub.channel };
    if (sub.filters) data.filters = sub.filters;
    let mode = 'plain';
    if (this._snapshots) {
      if (sub.cursor && !sub._needSnapshot) {
        data.resume = sub.cursor;
        mode = 'resume';
      } else {
        data.snapshot = true;
        mode = 'snapshot';
      }
    }
    if (!this._send('subscribe', data)) return;
    this._pending.push({ type: 'subscribe', sub, mode });
    sub._requestSent(mode);
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

  /** The open snapshots and catch-ups of a channel key on this connection. */
  _stream(key) {
    let s = this._streams.get(key);
    if (!s) this._streams.set(key, s = { snap: 0, catchup: 0 });
    return s;
  }

  /** The subscriptions a snapshot/catch-up frame is for: every one with its channel key (two
   * subscriptions with the same channel and filters share the key). Null if the frame has none. */
  _subsOfFrame(event, data) {
    if (typeof data.channel !== 'string') {
      this._report({ type: 'bad_frame', message: `${event} without a channel key`, detail: data });
      return null;
    }
    return [...this._subs].filter((s) => s.key === data.channel);
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
        const key = typeof data.channel === 'string' ? data.channel : null;
        if (event === 'unsubscribed') {
          // Nothing of this channel is expected any more.
          if (key && ![...this._subs].some((s) => s.key === key)) this._streams.delete(key);
          return;
        }
        // The snapshot or catch-up this answer opens follows it, whoever is still interested.
        if (key && head.mode === 'snapshot') this._stream(key).snap++;
        if (key && head.mode === 'resume') this._stream(key).catchup++;
        if (head.sub && this._subs.has(head.sub)) {
          if (!key) return this._report({ type: 'bad_frame', message: 'subscribed without a channel key', detail: data });
          head.sub._subscribed(key, head.mode);
        }
        return;
      }
      case 'error': {
        const code = data.code;
        const message = typeof data.message === 'string' ? data.message : String(code);
        // Before ready an error is about the connection; after it, the answer to the oldest request.
        if (this._ready && this._pending.length && code !== 'TOKEN_EXPIRED' && code !== 'UNAUTHORIZED') {
          const head = this._pending.shift();
          if (code === 'RESYNC_REQUIRED' && head.type === 'subscribe') {
            // The cursor cannot be resumed; the channel is subscribed nonetheless: take a snapshot.
            if (head.sub && this._subs.has(head.sub)) head.sub._resyncRequired(data.channel);
            return;
          }
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
      case 'snapshot': {
        const subs = this._subsOfFrame(event, data);
        const items = subs && this._items(event, data.objects);
        if (!items) return;
        for (const sub of subs) sub._snapshotPage(items);
        return;
      }
      case 'catchup': {
        const subs = this._subsOfFrame(event, data);
        const items = subs && this._items(event, data.objects);
        const gone = items && this._gone(data.deleted);
        if (!gone) return;
        for (const sub of subs) sub._catchupPage(items, gone);
        return;
      }
      case 'snapshot_end':
      case 'catchup_end': {
        const subs = this._subsOfFrame(event, data);
        if (!subs) return;
        const cursor = typeof data.cursor === 'string' && data.cursor ? data.cursor : null;
        if (!cursor) this._report({ type: 'bad_frame', message: `${event} without a cursor`, detail: data });
        const s = this._stream(data.channel);
        const kind = event === 'snapshot_end' ? 'snap' : 'catchup';
        if (s[kind] > 0) s[kind]--;
        for (const sub of subs) {
          if (event === 'snapshot_end') sub._snapshotEnd(cursor);
          else sub._catchupEnd(cursor);
        }
        return;
      }
      case 'resync_required': {
        // Not an answer: a snapshot broke off half sent, or the settle catch-up after one failed
        // (the server's store); what the channel's subscriptions hold may be incomplete.
        const subs = this._subsOfFrame(event, data);
        if (!subs) return;
        const s = this._stream(data.channel);
        const broken = s.snap > 0; // a snapshot is open: it is the one that broke off
        if (broken) s.snap--;
        this._report({ type: 'server', code: 'RESYNC_REQUIRED', message: typeof data.message === 'string' ? data.message : 'resync required' });
        for (const sub of subs) sub._syncBroken(broken);
        return;
      }
      case 'cursor': {
        if (typeof data.cursor !== 'string' || !data.cursor) {
          return this._report({ type: 'bad_frame', message: 'cursor frame without a cursor', detail: data });
        }
        for (const sub of this._subs) sub._cursorFrame(data.cursor);
        return;
      }
      default:
        return this._report({ type: 'bad_frame', message: `unknown event ${JSON.stringify(event)}` });
    }
  }

  /** The valid `[{object, version}]` items of a snapshot or catch-up page as `{id, object,
   * version}`; malformed ones are reported and skipped. Null if `objects` is not a list. */
  _items(event, list) {
    if (list === undefined) return [];
    if (!Array.isArray(list)) {
      this._report({ type: 'bad_frame', message: `${event}.objects is not an array` });
      return null;
    }
    const items = [];
    for (const item of list) {
      const obj = item?.object;
      const v = item?.version;
      if (!isPlainObject(obj) || typeof obj.id !== 'string' || !Number.isSafeInteger(v) || v < 1) {
        this._report({ type: 'bad_frame', message: `ignored a malformed ${event} object`, detail: item });
        continue;
      }
      items.push({ id: obj.id, object: obj, version: v });
    }
    return items;
  }

  /** The valid `deleted` entries `{id, model, version}` of a catch-up page. */
  _gone(list) {
    if (list === undefined) return [];
    if (!Array.isArray(list)) {
      this._report({ type: 'bad_frame', message: 'catchup.deleted is not an array' });
      return null;
    }
    return list.filter((d) => {
      const ok = isPlainObject(d) && typeof d.id === 'string' && Number.isSafeInteger(d.version) && d.version >= 1;
      if (!ok) this._report({ type: 'bad_frame', message: 'ignored a malformed catchup deletion', detail: d });
      return ok;
    });
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
    /** The latest resume cursor of this subscription (opaque), or null: sent as `resume` when
     * the client reconnects. */
    this.cursor = null;
    this._identity = canonical({ channel, filters });
    this._requested = null; // the mode of the subscribe sent and not completed: 'snapshot'|'resume'|'plain'
    this._needSnapshot = false; // the next subscribe asks for a snapshot even with a cursor
    this._again = false; // resync() while a request was in flight: take a snapshot after it
    this._snapWait = 0; // snapshot_end frames to wait for before this subscription's snapshot is whole
    this._resumeWait = 0; // catchup_end frames to wait for before its resume is complete
    this._seen = null; // ids in the snapshot pages, while _snapWait > 0
    this._touched = new Set(); // ids changed otherwise while a snapshot is in flight
    this._settleWait = false; // its snapshot is done, the settle catch-up not yet
    this._snapDoneAt = 0;
    this._completeEpoch = -1; // the connection on which a snapshot or resume completed
    /** Gaps: id → {since, asked, max, patches}: the patches that could not apply yet, in version
     * order; `max` the highest version seen; `asked` once a snapshot was requested after it. */
    this._held = new Map();
    this._heldCount = 0;
    this._gapTimer = null;
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
    this._stopGapTimer();
    this.client._removeSub(this);
    this._rejectReady(new Error('unsubscribed'));
  }

  /** Asks the server for the channel's snapshot again now (what an uncovered gap does by itself).
   * Offline, the next connection takes a snapshot instead of resuming. */
  resync() {
    if (this.state === 'closed' || this.state === 'failed' || !this.client._snapshots) return;
    this._stopGapTimer();
    this._needSnapshot = true;
    if (this._requested) {
      this._again = true;
      return;
    }
    if (this.client._ready) this.client._sendSubscribe(this);
  }

  // --- requests and their answers ------------------------------------------------------------

  /** A `subscribe` went out in `mode`. */
  _requestSent(mode) {
    this._requested = mode;
    if (mode === 'snapshot') {
      this._needSnapshot = false;
      this._again = false;
      this._settleWait = false;
      for (const e of this._held.values()) e.asked = true;
      this._stopGapTimer();
    }
    if (this.state === 'live' && mode !== 'plain') this.state = 'syncing';
  }

  _subscribed(key, mode) {
    this.key = key;
    this._subscribeAttempt = 0;
    if (mode === 'plain') {
      this._requested = null;
      this._emit('subscribed', key);
      return this._setLive();
    }
    this.state = 'syncing';
    const s = this.client._stream(key);
    if (mode === 'snapshot') {
      if (!this._snapWait) {
        this._seen = new Set();
        this._touched = new Set();
      }
      // Complete at the end of every snapshot of this key open now, its own the last.
      this._snapWait = s.snap;
    } else {
      this._resumeWait = s.catchup;
    }
    this._emit('subscribed', key);
  }

  /** `RESYNC_REQUIRED` answered the resume: the cursor is useless; subscribe with a snapshot. */
  _resyncRequired(key) {
    if (typeof key === 'string') this.key = key;
    this.cursor = null;
    this._requested = null;
    this._needSnapshot = true;
    this.client._sendSubscribe(this);
  }

  _failed(code, message) {
    this.state = 'failed';
    this._stopGapTimer();
    this.client._subs.delete(this);
    const err = { type: 'subscribe', code, message, subscription: this };
    this._emit('error', err);
    this.client._report(err);
    this._rejectReady(Object.assign(new Error(`${code}: ${message}`), { code }));
  }

  /** The connection is gone: snapshots and catch-ups in flight are dropped; the next connection
   * resumes from the cursor (or takes a snapshot). Objects stay as they were. */
  _disconnected() {
    this._stopGapTimer();
    this._requested = null;
    this._snapWait = 0;
    this._resumeWait = 0;
    this._seen = null;
    this._touched = new Set();
    this._settleWait = false;
    for (const e of this._held.values()) e.asked = false; // no snapshot will answer for them
  }

  /** Cursors of this connection apply once the subscription is whole on it. */
  _takesCursors() {
    return this._completeEpoch === this.client._epoch && this._resumeWait === 0;
  }

  _snapshotPage(items) {
    for (const { id, object, version } of items) {
      if (this._seen) this._seen.add(id);
      this._applyFull(id, object, version);
    }
    this._flush('snapshot');
  }

  _snapshotEnd(cursor) {
    if (this._snapWait > 0) {
      if (--this._snapWait === 0) this._snapshotDone(cursor);
      return;
    }
    if (cursor && this._takesCursors()) this.cursor = cursor;
  }

  /** The whole snapshot is in: objects held but in none of its pages, and untouched meanwhile,
   * are gone. */
  _snapshotDone(cursor) {
    const seen = this._seen || new Set();
    const touched = this._touched;
    this._seen = null;
    this._touched = new Set();
    for (const id of [...this.objects.keys()]) {
      if (!seen.has(id) && !touched.has(id)) this._bury(id, this.versions.get(id) || 0);
    }
    this._flush('snapshot');
    if (cursor) this.cursor = cursor;
    this._settleWait = true;
    this._snapDoneAt = Date.now();
    this._completed();
  }

  _catchupPage(items, gone) {
    for (const { id, object, version } of items) this._applyFull(id, object, version);
    for (const { id, version } of gone) this._applyGone(id, version);
    this._flush('catchup');
  }

  _catchupEnd(cursor) {
    if (this._resumeWait > 0) {
      if (--this._resumeWait === 0) {
        if (cursor) this.cursor = cursor;
        // A settle catch-up follows a resume too: gaps left then take a snapshot.
        this._settleWait = true;
        this._completed();
      }
      return;
    }
    if (cursor && this._takesCursors()) this.cursor = cursor;
    if (this._settleWait) {
      // The settle catch-up after the snapshot: gaps it did not cover take a snapshot.
      this._settleWait = false;
      this._checkGaps('settle');
    }
  }

  /** `resync_required` for this key: a snapshot broke off (`broken`: it will not end), or a
   * settle catch-up failed. Takes a fresh snapshot when this subscription may lack something. */
  _syncBroken(broken) {
    if (broken) {
      // Pages of another subscription's snapshot only added newer states; a later snapshot of
      // its own is still to come when it waits for more than this one.
      if (this._snapWait === 0 || --this._snapWait > 0) return;
      // Its own snapshot broke off: not whole, so no removal pass.
      this._seen = null;
      this._touched = new Set();
      this._requested = null;
    }
    this._settleWait = false;
    this.resync();
  }

  _cursorFrame(cursor) {
    if (this._takesCursors()) this.cursor = cursor;
  }

  /** A snapshot or a resume is complete on this connection. */
  _completed() {
    this._completeEpoch = this.client._epoch;
    this._requested = null;
    this._setLive();
    if (this._again) this.resync();
    else this._armGapTimer();
  }

  _setLive() {
    const first = this.state !== 'live';
    this.state = 'live';
    if (first) this._emit('synced');
    this._resolveReady(this);
  }

  // --- applying changes ----------------------------------------------------------------------

  /** Applies one delta of kind `new`, `updated` or `deleted`. */
  _applyDelta(kind, delta) {
    const v = delta.version;
    if (kind === 'new') return this._applyFull(delta.object.id, delta.object, v);
    if (kind === 'deleted') return this._applyGone(delta.object.id, v);
    const id = delta.patch.path.split('/')[1];
    if ((this.tombstones.get(id) || 0) >= v) return; // a change of an object already gone
    const have = this.versions.get(id);
    if (have !== undefined && v <= have) return; // duplicate
    if (have === undefined || v > have + 1) return this._hold(id, delta, true);
    if (!this._patch(id, delta)) return this._hold(id, delta, false);
    this._drain(id);
  }

  /** A full state (snapshot or catch-up object, `new` delta): taken when its version is above the
   * one held and the tombstone's; then the patches kept for the object that follow it apply. */
  _applyFull(id, object, v) {
    const have = this.versions.get(id);
    if ((this.tombstones.get(id) || 0) < v && (have === undefined || v > have)) {
      this.objects.set(id, { ...object });
      this.versions.set(id, v);
      this.tombstones.delete(id);
      this._touch(id, have === undefined ? 'created' : 'updated');
    }
    this._drain(id);
  }

  /** A deletion (or leaving the channel/filter) at version `v` (delta or catch-up entry): removes
   * the object when `v` is at or above the version held, and leaves a tombstone at `v`. */
  _applyGone(id, v) {
    if ((this.tombstones.get(id) || 0) < v) {
      const have = this.versions.get(id);
      if (have !== undefined && v < have) return; // a newer state is held
      this._bury(id, v);
    }
    this._drain(id);
  }

  /** Applies one patch at the version held plus one; false (reported) if it cannot. */
  _patch(id, delta) {
    const field = delta.patch.path.split('/')[2];
    const next = { ...this.objects.get(id) };
    try {
      applyPatch(next, field, delta.patch);
    } catch (e) {
      this.client._report({ type: 'patch', subscription: this, message: `${delta.patch.path}: ${e.message}`, detail: delta });
      return false;
    }
    this.objects.set(id, next);
    this.versions.set(id, delta.version);
    this._touch(id, 'updated');
    return true;
  }

  _bury(id, v) {
    const had = this.objects.delete(id);
    this.versions.delete(id);
    this.tombstones.delete(id); // re-inserted last: the Map's order is the pruning order
    this.tombstones.set(id, v);
    while (this.tombstones.size > this._maxTombstones) this.tombstones.delete(this.tombstones.keys().next().value);
    if (this._snapWait) this._touched.add(id);
    if (had) {
      this._changes.created.delete(id);
      this._changes.updated.delete(id);
      this._changes.deleted.add(id);
    }
  }

  _touch(id, how) {
    if (this._snapWait) this._touched.add(id);
    this._changes.deleted.delete(id);
    if (how === 'created' || this._changes.created.has(id)) this._changes.created.add(id);
    else this._changes.updated.add(id);
  }

  // --- gaps ----------------------------------------------------------------------------------

  /** A patch that cannot apply yet (above the held version plus one, an object not held, or one
   * that failed): kept (`keep`) until a full state covers its gap. */
  _hold(id, delta, keep) {
    const v = delta.version;
    let e = this._held.get(id);
    let overflow = false;
    if (!e && this._held.size >= MAX_HELD) {
      overflow = true;
    } else {
      if (!e) this._held.set(id, e = { since: Date.now(), asked: false, max: 0, patches: [] });
      if (v > e.max) e.max = v;
      if (keep && !e.patches.some((p) => p.version === v)) {
        if (this._heldCount >= MAX_HELD) {
          overflow = true;
        } else {
          const at = e.patches.findIndex((p) => p.version > v);
          e.patches.splice(at < 0 ? e.patches.length : at, 0, delta);
          this._heldCount++;
        }
      }
    }
    this._emit('gap', { id, version: v, have: this.version(id) });
    // Too many to keep: a snapshot is cheaper than tracking them.
    if (overflow) return this._requested ? undefined : this.resync();
    this._armGapTimer();
  }

  /** After the held version (or tombstone) of `id` changed: drops the kept patches it covers and
   * applies those that now follow it, in order. */
  _drain(id) {
    const e = this._held.get(id);
    if (!e) return;
    const floor = () => Math.max(this.versions.get(id) ?? 0, this.tombstones.get(id) || 0);
    while (e.patches.length) {
      const p = e.patches[0];
      const have = this.versions.get(id);
      if (p.version <= floor()) {
        e.patches.shift();
        this._heldCount--;
      } else if (have !== undefined && p.version === have + 1) {
        e.patches.shift();
        this._heldCount--;
        this._patch(id, p); // one that fails leaves the gap open (max stays above)
      } else {
        break;
      }
    }
    if (e.max <= floor()) this._dropHeld(id);
  }

  _dropHeld(id) {
    const e = this._held.get(id);
    if (!e) return;
    this._heldCount -= e.patches.length;
    this._held.delete(id);
  }

  _uncovered(id, e) {
    return e.max > Math.max(this.versions.get(id) ?? 0, this.tombstones.get(id) || 0);
  }

  _stopGapTimer() {
    clearTimeout(this._gapTimer);
    this._gapTimer = null;
  }

  /** Checks the gaps when the next one is due (`gapTimeoutMs` after it, or after the snapshot
   * requested for it). Not while a request is in flight: its completion arms it again. */
  _armGapTimer() {
    if (this._gapTimer || !this._held.size || !this.client._snapshots || this._requested || !this.client._ready) return;
    if (this.state === 'closed' || this.state === 'failed') return;
    const timeout = this.client._gapTimeoutMs;
    let due = Infinity;
    for (const e of this._held.values()) due = Math.min(due, (e.asked ? this._snapDoneAt : e.since) + timeout);
    this._gapTimer = setTimeout(() => {
      this._gapTimer = null;
      this._checkGaps('timer');
    }, Math.max(0, due - Date.now()));
  }

  /** Gaps still open after the settle catch-up (`settle`) or their timeout (`timer`) take a
   * snapshot; those a snapshot was already taken for are given up (reported). */
  _checkGaps(trigger) {
    this._stopGapTimer();
    if (this.state === 'closed' || this.state === 'failed' || !this.client._snapshots) return;
    if (this._requested || !this.client._ready) return;
    const now = Date.now();
    const timeout = this.client._gapTimeoutMs;
    let resync = false;
    for (const [id, e] of [...this._held]) {
      if (!this._uncovered(id, e)) {
        this._dropHeld(id);
      } else if (e.asked) {
        if (trigger === 'settle' || now - this._snapDoneAt >= timeout) {
          this._dropHeld(id);
          this.client._report({
            type: 'gap', subscription: this, detail: { id, version: e.max, have: this.version(id) },
            message: `${id}: version ${e.max} is in no snapshot or catch-up; its kept patches are dropped`,
          });
        }
      } else if (trigger === 'settle' || now - e.since >= timeout) {
        resync = true;
      }
    }
    if (resync) this.resync();
    else this._armGapTimer();
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
 * The client does not use it: the server filters deltas, snapshots and catch-ups itself. Kept for
 * applications that want to test an object against a subscription's filter. */
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
