// Unit tests of web/client.js: a fake WebSocket constructor and a fake fetch stand in for the
// server (Node 20 has no global WebSocket). Run: cd tests/web && npm test
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { connect, applyPatch, matchesFilter, backoffDelay } from '../../web/client.js';

const CHANNEL = { model: 'task', parent: { model: 'list', id: 'demo' } };
const KEY = 'blg:demo:list:demo:task';

/** A WebSocket stand-in: the test plays the server through it. */
class FakeSocket {
  static all = [];
  constructor(url) {
    this.url = url;
    this.sent = [];
    this.closed = null;
    FakeSocket.all.push(this);
  }
  static last() { return FakeSocket.all[FakeSocket.all.length - 1]; }
  static reset() { FakeSocket.all = []; }
  send(text) {
    if (this.closed) throw new Error('closed');
    this.sent.push(JSON.parse(text));
  }
  close(code = 1005) {
    if (this.closed) return;
    this.closed = code;
    setTimeout(() => this.onclose?.({ code, reason: '' }), 0);
  }
  // server side
  receive(frame) { this.onmessage?.({ data: typeof frame === 'string' ? frame : JSON.stringify(frame) }); }
  ready(device = 'd1') { this.receive({ event: 'ready', data: { device_id: device, server: 'sockets_transport-0' } }); }
  serverClose(code) {
    this.closed = code;
    this.onclose?.({ code, reason: '' });
  }
  /** Answers every subscribe/unsubscribe sent so far that has no answer yet. */
  answer(keyFor = () => KEY) {
    this.answered ??= 0;
    for (; this.answered < this.sent.length; this.answered++) {
      const f = this.sent[this.answered];
      this.receive({ event: `${f.event}d`, data: { channel: keyFor(f.data) } });
    }
  }
  sentEvents(name) { return this.sent.filter((f) => f.event === name); }
}

/** A fetch stand-in: `handler(url, init)` returns {status, body} (or a promise of it). */
function fakeFetch(handler) {
  const calls = [];
  const fn = async (url, init) => {
    calls.push({ url, init });
    const { status = 200, body } = await handler(url, init, calls.length);
    return { status, ok: status >= 200 && status < 300, json: async () => body };
  };
  fn.calls = calls;
  return fn;
}

const snapshot = (items) => ({ status: 200, body: { channel: KEY, objects: items.map(([object, version]) => ({ object, version })) } });
const task = (id, extra = {}) => ({ id, type: 'task', application_id: 'demo', context_id: 'demo', list_id: 'demo', title: id, votes: 0, ...extra });

const delta = (op, fields) => ({ op, subscriptions: [KEY], application_id: 'demo', timestamp: 1, ...fields });
const created = (obj, version = 1, keys = [KEY]) => delta('create', { object: obj, version, subscriptions: keys });
const patched = (id, field, op, value, version, keys = [KEY]) =>
  delta('update', { patch: { op, path: `task/${id}/${field}`, value }, version, subscriptions: keys });
const deleted = (obj, version, keys = [KEY]) => delta('delete', { object: obj, version, subscriptions: keys });
const message = ({ news = [], updated = [], gone = [] }) => ({ event: 'message', data: { new: news, updated, deleted: gone } });

const settle = (ms = 5) => new Promise((r) => setTimeout(r, ms));
async function waitFor(cond, what, ms = 2000) {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
    await settle(2);
  }
}

/** A client with a fake server; returns helpers. */
function setup({ fetchHandler = () => snapshot([]), ...opts } = {}) {
  FakeSocket.reset();
  const errors = [];
  const statuses = [];
  const fetch = fakeFetch(fetchHandler);
  const client = connect({
    wsUrl: 'ws://127.0.0.1:3000/',
    token: 'tok1',
    httpBase: 'http://127.0.0.1:8080',
    WebSocket: FakeSocket,
    fetch,
    backoff: { initialMs: 10, maxMs: 80, factor: 2, jitter: 0 },
    onError: (e) => errors.push(e),
    onStatus: (s, d) => statuses.push([s, d]),
    ...opts,
  });
  return { client, fetch, errors, statuses };
}

/** Connects, subscribes and syncs a subscription to the snapshot the fetch handler gives. */
async function live(env, channel = CHANNEL, opts = {}) {
  const sub = env.client.subscribe(channel, opts);
  const ws = FakeSocket.last();
  if (!env.client._ready) ws.ready();
  ws.answer();
  await sub.ready;
  return { sub, ws };
}

test('connects with the token, subscribes after ready, loads the snapshot', async () => {
  const env = setup({ fetchHandler: () => snapshot([[task('a'), 3], [task('b'), 1]]) });
  const sub = env.client.subscribe(CHANNEL);
  const ws = FakeSocket.last();
  assert.equal(ws.url, 'ws://127.0.0.1:3000/?token=tok1');
  assert.equal(ws.sent.length, 0, 'nothing is sent before ready');
  ws.ready();
  assert.equal(env.client.status, 'connected');
  assert.equal(env.client.deviceId, 'd1');
  assert.deepEqual(ws.sent, [{ event: 'subscribe', data: { channel: CHANNEL } }]);
  const changes = [];
  sub.on('change', (c) => changes.push(c));
  ws.answer();
  assert.equal(sub.key, KEY);
  await sub.ready;
  assert.equal(sub.state, 'live');
  assert.deepEqual([...sub.objects.keys()], ['a', 'b']);
  assert.equal(sub.version('a'), 3);
  assert.deepEqual(changes, [{ created: ['a', 'b'], updated: [], deleted: [], reason: 'snapshot' }]);
  const call = env.fetch.calls[0];
  assert.equal(call.url, `http://127.0.0.1:8080/objects?channel=${encodeURIComponent(JSON.stringify(CHANNEL))}`);
  assert.equal(call.init.headers.Authorization, 'Bearer tok1');
  env.client.close();
  assert.equal(env.client.status, 'closed');
});

test('applies new, updated and deleted deltas with every patch op', async () => {
  const env = setup();
  const { sub, ws } = await live(env);
  const changes = [];
  sub.on('change', (c) => changes.push(c));
  ws.receive(message({ news: [created(task('t1', { tags: ['x', 'y', 'x'], note: 'ab' }), 1)] }));
  assert.deepEqual(changes.pop(), { created: ['t1'], updated: [], deleted: [], reason: 'delta' });
  ws.receive(message({
    updated: [
      patched('t1', 'title', 'replace', 'renamed', 2),
      patched('t1', 'votes', 'increment', 2, 3),
      patched('t1', 'tags', 'remove', 'x', 4),
      patched('t1', 'tags', 'append', 'z', 5),
      patched('t1', 'note', 'append', 7, 6),
      patched('t1', 'fresh', 'increment', 5, 7),
    ],
  }));
  assert.deepEqual(changes.pop(), { created: [], updated: ['t1'], deleted: [], reason: 'delta' });
  assert.deepEqual(sub.objects.get('t1'), { ...task('t1'), title: 'renamed', votes: 2, tags: ['y', 'x', 'z'], note: 'ab7', fresh: 5 });
  assert.equal(sub.version('t1'), 7);
  ws.receive(message({ gone: [deleted(task('t1'), 8)] }));
  assert.deepEqual(changes.pop(), { created: [], updated: [], deleted: ['t1'], reason: 'delta' });
  assert.equal(sub.objects.size, 0);
  assert.equal(sub.tombstones.get('t1'), 8);
  assert.deepEqual(env.errors, []);
  env.client.close();
});

test('drops duplicates and resyncs on a gap', async () => {
  let objects = [];
  const env = setup({ fetchHandler: () => snapshot(objects) });
  const { sub, ws } = await live(env);
  ws.receive(message({ news: [created(task('t1'), 1)] }));
  ws.receive(message({ updated: [patched('t1', 'votes', 'increment', 1, 2)] }));
  // The same deltas again (a redelivery): nothing changes.
  const changes = [];
  sub.on('change', (c) => changes.push(c));
  ws.receive(message({ news: [created(task('t1'), 1)], updated: [patched('t1', 'votes', 'increment', 1, 2)] }));
  assert.equal(sub.objects.get('t1').votes, 1);
  assert.deepEqual(changes, []);
  assert.equal(env.fetch.calls.length, 1);
  // Version 3 is lost; 4 arrives: a gap, fixed from the snapshot.
  const gaps = [];
  sub.on('gap', (g) => gaps.push(g));
  objects = [[task('t1', { votes: 3, title: 'v4' }), 4]];
  ws.receive(message({ updated: [patched('t1', 'title', 'replace', 'v4', 4)] }));
  assert.deepEqual(gaps, [{ id: 't1', version: 4, have: 2 }]);
  assert.equal(sub.objects.get('t1').title, 't1', 'the delta after the gap is not applied');
  await waitFor(() => sub.version('t1') === 4, 'the resync');
  assert.equal(env.fetch.calls.length, 2);
  assert.deepEqual(sub.objects.get('t1'), task('t1', { votes: 3, title: 'v4' }));
  // An update of an object never seen is a gap too.
  objects = [[task('t1', { votes: 3, title: 'v4' }), 4], [task('t2', { votes: 9 }), 5]];
  ws.receive(message({ updated: [patched('t2', 'votes', 'increment', 1, 5)] }));
  await waitFor(() => sub.version('t2') === 5, 'the second resync');
  assert.equal(sub.objects.get('t2').votes, 9);
  env.client.close();
});

test('tombstones keep a stale snapshot from resurrecting a deleted object', async () => {
  let release;
  let objects = [[task('t1'), 1], [task('t2'), 1]];
  const env = setup({
    fetchHandler: (url, init, n) => (n === 1 ? snapshot(objects) : new Promise((r) => { release = () => r(snapshot(objects)); })),
  });
  const { sub, ws } = await live(env);
  assert.deepEqual([...sub.objects.keys()], ['t1', 't2']);
  ws.receive(message({ gone: [deleted(task('t1'), 2)] }));
  // A resync starts (as after a reconnect) and answers with a snapshot read before the delete.
  sub.resync();
  // While it is in flight: t3 is created and t2 updated by live deltas.
  ws.receive(message({ news: [created(task('t3'), 1)], updated: [patched('t2', 'title', 'replace', 'new', 2)] }));
  objects = [[task('t1'), 1], [task('t2'), 1]];
  release();
  await waitFor(() => !sub._syncing, 'the snapshot');
  assert.ok(!sub.objects.has('t1'), 'the deleted object stays deleted');
  assert.equal(sub.objects.get('t2').title, 'new', 'the newer local version wins');
  assert.ok(sub.objects.has('t3'), 'an object created during the fetch is kept');
  // A later snapshot without t3 (deleted meanwhile, its delete lost) removes it.
  objects = [[task('t2', { title: 'new' }), 2]];
  sub.resync();
  release();
  await waitFor(() => !sub._syncing && !sub.objects.has('t3'), 'the second snapshot');
  assert.deepEqual([...sub.objects.keys()], ['t2']);
  // A late create of the deleted t1 does not bring it back either.
  ws.receive(message({ news: [created(task('t1'), 1)] }));
  assert.ok(!sub.objects.has('t1'));
  env.client.close();
});

test('filtered subscriptions: enter, leave, re-enter, and the snapshot filtered locally', async () => {
  const filters = { and: [{ range: { votes: { gte: 5 } } }] };
  const env = setup({ fetchHandler: () => snapshot([[task('hot', { votes: 7 }), 3], [task('cold', { votes: 1 }), 2]]) });
  const { sub, ws } = await live(env, CHANNEL, { filters });
  assert.deepEqual(ws.sent[0], { event: 'subscribe', data: { channel: CHANNEL, filters } });
  assert.deepEqual([...sub.objects.keys()], ['hot'], 'the snapshot is filtered');
  // cold gets 4 votes at version 3: it enters, in `new`, as a whole object.
  ws.receive(message({ news: [created(task('cold', { votes: 5 }), 3)] }));
  assert.equal(sub.objects.get('cold').votes, 5);
  // it drops below at version 4: it leaves, in `deleted`, with its before-image.
  ws.receive(message({ gone: [deleted(task('cold', { votes: 5 }), 4)] }));
  assert.ok(!sub.objects.has('cold'));
  // updates while outside never reach this subscription; it re-enters at version 7.
  ws.receive(message({ news: [created(task('cold', { votes: 6 }), 7)] }));
  assert.equal(sub.objects.get('cold').votes, 6);
  assert.equal(sub.version('cold'), 7);
  assert.deepEqual(env.errors, []);
  env.client.close();
});

test('routes a delta only to the subscriptions its `subscriptions` names', async () => {
  const env = setup();
  const other = { model: 'task', parent: { model: 'list', id: 'other' } };
  const keys = { demo: KEY, other: 'blg:demo:list:other:task' };
  const a = env.client.subscribe(CHANNEL);
  const b = env.client.subscribe(other);
  const ws = FakeSocket.last();
  ws.ready();
  ws.answer((data) => keys[data.channel.parent.id]);
  await Promise.all([a.ready, b.ready]);
  assert.equal(b.key, keys.other);
  ws.receive(message({ news: [created(task('x'), 1, [keys.other])] }));
  ws.receive(message({ news: [created(task('y'), 1, [KEY, keys.other])] }));
  ws.receive(message({ news: [created(task('z'), 1, ['blg:demo:list:nobody:task'])] }));
  assert.deepEqual([...a.objects.keys()], ['y']);
  assert.deepEqual([...b.objects.keys()], ['x', 'y']);
  env.client.close();
});

test('a broadcast reaches the client and the subscriptions it names, and changes no collection', async () => {
  const env = setup();
  const { sub } = await live(env);
  const [toClient, toSub] = [[], []];
  env.client.on('broadcast', (b) => toClient.push(b));
  sub.on('broadcast', (b) => toSub.push(b.object.typing));
  const ws = FakeSocket.last();
  const cursor = { type: 'task', list_id: 'demo', typing: 'u1' };
  ws.receive({ event: 'broadcast', data: { object: cursor, subscriptions: [KEY], application_id: 'demo', timestamp: 5 } });
  ws.receive({ event: 'broadcast', data: { object: { type: 'task', text: 'all' }, subscriptions: [], application_id: 'demo', timestamp: 6 } });
  ws.receive({ event: 'broadcast', data: { object: 'not an object', subscriptions: [] } });
  assert.deepEqual(toClient.map((b) => b.timestamp), [5, 6]);
  assert.deepEqual(toSub, ['u1']);
  assert.equal(sub.objects.size, 0);
  assert.deepEqual(env.errors.map((e) => e.type), ['bad_frame']);
  env.client.close();
});

test('reconnects with capped exponential backoff, resubscribes and resyncs', async () => {
  let objects = [[task('t1'), 1]];
  const env = setup({ fetchHandler: () => snapshot(objects) });
  const { sub, ws } = await live(env);
  const t0 = Date.now();
  ws.serverClose(1001);
  assert.equal(env.client.status, 'reconnecting');
  // Four refused attempts in a row (closed before ready): delays 10, 20, 40, 80, 80.
  for (let i = 1; i <= 4; i++) {
    await waitFor(() => FakeSocket.all.length === i + 1, `attempt ${i}`);
    FakeSocket.last().serverClose(1006);
  }
  await waitFor(() => FakeSocket.all.length === 6, 'attempt 5');
  assert.ok(Date.now() - t0 >= 10 + 20 + 40 + 80 + 80 - 5, 'the delays grew');
  const delays = env.statuses.filter(([s]) => s === 'reconnecting').map(([, d]) => d.delayMs);
  assert.deepEqual(delays, [10, 20, 40, 80, 80]);
  // Meanwhile t1 was deleted and t2 created; the new connection resubscribes and resyncs.
  objects = [[task('t2'), 1]];
  const ws2 = FakeSocket.last();
  assert.equal(ws2.url, 'ws://127.0.0.1:3000/?token=tok1');
  ws2.ready();
  assert.deepEqual(ws2.sent, [{ event: 'subscribe', data: { channel: CHANNEL } }]);
  ws2.answer();
  await waitFor(() => sub.objects.has('t2') && !sub.objects.has('t1'), 'the resync');
  // The next drop starts from the initial delay again.
  ws2.serverClose(1001);
  assert.equal(env.statuses.at(-1)[1].delayMs, 10);
  env.client.close();
});

test('jitter keeps delays between (1 - jitter) and 1 of the capped delay', () => {
  const b = { initialMs: 100, maxMs: 1000, factor: 2, jitter: 0.5 };
  for (let attempt = 0; attempt < 40; attempt++) {
    const cap = Math.min(1000, 100 * 2 ** attempt);
    const d = backoffDelay(b, attempt);
    assert.ok(d >= cap * 0.5 - 1 && d <= cap, `attempt ${attempt}: ${d}`);
  }
});

test('TOKEN_EXPIRED / 4002: a new token from getToken, then reconnect', async () => {
  let n = 0;
  const env = setup({ getToken: async () => `tok${++n + 1}` });
  const { ws } = await live(env);
  ws.receive({ event: 'error', data: { code: 'TOKEN_EXPIRED', message: 'expired' } });
  ws.serverClose(4002);
  await waitFor(() => FakeSocket.all.length === 2, 'the reconnect');
  assert.equal(n, 1);
  assert.equal(FakeSocket.last().url, 'ws://127.0.0.1:3000/?token=tok2');
  assert.equal(env.client.token, 'tok2');
  assert.ok(env.errors.some((e) => e.type === 'auth' && e.code === 4002));
  // An abnormal close after a TOKEN_EXPIRED frame is taken as 4002 too.
  const ws2 = FakeSocket.last();
  ws2.receive({ event: 'error', data: { code: 'TOKEN_EXPIRED', message: 'expired' } });
  ws2.serverClose(1006);
  await waitFor(() => FakeSocket.all.length === 3, 'the second reconnect');
  assert.equal(FakeSocket.last().url, 'ws://127.0.0.1:3000/?token=tok3');
  env.client.close();
});

test('getToken alone supplies the first token; a refused token without getToken closes', async () => {
  FakeSocket.reset();
  const c = connect({ wsUrl: 'ws://h/', getToken: () => 'first', WebSocket: FakeSocket, fetchSnapshot: false });
  await waitFor(() => FakeSocket.all.length === 1, 'the connection');
  assert.equal(FakeSocket.last().url, 'ws://h/?token=first');
  c.close();
  const env = setup();
  FakeSocket.last().receive({ event: 'error', data: { code: 'UNAUTHORIZED', message: 'bad signature' } });
  FakeSocket.last().serverClose(4001);
  assert.equal(env.client.status, 'closed');
  await settle(30);
  assert.equal(FakeSocket.all.length, 1, 'no retry with a token known to be bad');
});

test('a 401 on /objects renews the token once and retries', async () => {
  const env = setup({
    getToken: () => 'fresh',
    fetchHandler: (url, init) => (init.headers.Authorization === 'Bearer fresh' ? snapshot([[task('a'), 1]]) : { status: 401, body: { error: 'expired' } }),
  });
  const { sub } = await live(env);
  assert.ok(sub.objects.has('a'));
  assert.equal(env.fetch.calls.length, 2);
  env.client.close();
});

test('malformed frames and deltas are ignored and reported, never thrown', async () => {
  const env = setup();
  const { sub, ws } = await live(env);
  const junk = [
    'not json',
    '[1,2]',
    '{"data":{}}',
    '{"event":"message","data":[]}',
    '{"event":"nonsense","data":{}}',
    { event: 'message', data: { new: 'x' } },
    { event: 'message', data: { new: [null, 7, { op: 'create' }, created({ type: 'task' }, 1), created(task('v0'), 0)] } },
    { event: 'message', data: { updated: [{ ...patched('t', 'title', 'replace', 1, 2), patch: { op: 'explode', path: 'task/t/title', value: 1 } }] } },
    { event: 'message', data: { updated: [{ ...patched('t', 'title', 'replace', 1, 2), patch: { op: 'replace', path: 'nope', value: 1 } }] } },
    { event: 'message', data: { deleted: [{ ...deleted(task('t'), 2), subscriptions: 'all' }] } },
    { event: 'message', data: { new: [{ ...created(task('t'), 1), op: 'delete' }] } },
    { event: 'subscribed', data: { channel: 'unexpected' } },
  ];
  for (const frame of junk) assert.doesNotThrow(() => ws.receive(frame));
  assert.ok(env.errors.length >= junk.length, `${env.errors.length} errors reported`);
  assert.equal(sub.objects.size, 0);
  // A patch that cannot apply (increment of a string) is reported and resynced, not thrown.
  ws.receive(message({ news: [created(task('s', { title: 'x' }), 1)] }));
  assert.doesNotThrow(() => ws.receive(message({ updated: [patched('s', 'title', 'increment', 1, 2)] })));
  assert.ok(env.errors.some((e) => e.type === 'patch'));
  assert.equal(sub.objects.get('s').title, 'x');
  // Frames still work afterwards, and a throwing change handler does not break the client.
  sub.on('change', () => { throw new Error('app bug'); });
  const err = console.error;
  console.error = () => {};
  try {
    ws.receive(message({ news: [created(task('ok'), 1)] }));
  } finally {
    console.error = err;
  }
  assert.ok(sub.objects.has('ok'));
  assert.equal(env.client.status, 'connected');
  env.client.close();
});

test('unsubscribe: sent once per channel, and after reconnecting if it happened offline', async () => {
  const env = setup();
  const a = env.client.subscribe(CHANNEL);
  const b = env.client.subscribe(CHANNEL);
  const ws = FakeSocket.last();
  ws.ready();
  ws.answer();
  await Promise.all([a.ready, b.ready]);
  a.unsubscribe();
  assert.equal(ws.sentEvents('unsubscribe').length, 0, 'b still uses the channel');
  ws.receive(message({ news: [created(task('t'), 1)] }));
  assert.equal(a.objects.size, 0);
  assert.equal(b.objects.size, 1);
  ws.serverClose(1001);
  b.unsubscribe();
  await waitFor(() => FakeSocket.all.length === 2, 'the reconnect');
  const ws2 = FakeSocket.last();
  ws2.ready();
  assert.deepEqual(ws2.sent, [{ event: 'unsubscribe', data: { channel: CHANNEL } }]);
  ws2.answer();
  assert.deepEqual(env.errors, []);
  env.client.close();
});

test('a refused subscribe rejects `ready` and is not retried; UNAVAILABLE is retried', async () => {
  const env = setup();
  const sub = env.client.subscribe({ model: 'task', user: 'someone-else' });
  const ok = env.client.subscribe(CHANNEL);
  const ws = FakeSocket.last();
  ws.ready();
  ws.receive({ event: 'error', data: { code: 'FORBIDDEN', message: "another user's channel" } });
  await assert.rejects(sub.ready, /FORBIDDEN/);
  assert.equal(sub.state, 'failed');
  ws.receive({ event: 'error', data: { code: 'UNAVAILABLE', message: 'redis down' } });
  await waitFor(() => ws.sentEvents('subscribe').length === 3, 'the retried subscribe');
  ws.answered = 2;
  ws.answer();
  await ok.ready;
  assert.equal(ok.key, KEY);
  ws.serverClose(1001);
  await waitFor(() => FakeSocket.all.length === 2, 'the reconnect');
  FakeSocket.last().ready();
  assert.equal(FakeSocket.last().sentEvents('subscribe').length, 1, 'only the accepted subscription is renewed');
  env.client.close();
});

test('a channel without snapshots (400) goes live on deltas alone', async () => {
  const env = setup({ fetchHandler: () => ({ status: 400, body: { error: 'unsupported channel' } }) });
  const { sub, ws } = await live(env, { model: 'task', context: 'c1' });
  assert.equal(sub.state, 'live');
  assert.ok(env.errors.some((e) => e.type === 'snapshot' && e.code === 400));
  ws.receive(message({ news: [created(task('t'), 1)] }));
  assert.ok(sub.objects.has('t'));
  env.client.close();
});

test('applyPatch follows the server (src/model/patch.rs)', () => {
  const o = { n: 1, s: 'ab', a: [1, { x: 1 }, 1], nil: null };
  applyPatch(o, 'n', { op: 'increment', value: 2.5 });
  applyPatch(o, 'nil', { op: 'increment', value: 2 });
  applyPatch(o, 's', { op: 'append', value: true });
  applyPatch(o, 'a', { op: 'remove', value: { x: 1 } });
  applyPatch(o, 'a', { op: 'remove', value: 1 });
  applyPatch(o, 'missing', { op: 'remove', value: 1 });
  applyPatch(o, 'list', { op: 'append', value: 'first' });
  assert.deepEqual(o, { n: 3.5, s: 'abtrue', a: [1], nil: 2, list: ['first'] });
  assert.throws(() => applyPatch({ s: 'x' }, 's', { op: 'increment', value: 1 }));
  assert.throws(() => applyPatch({ n: 1 }, 'n', { op: 'increment', value: '1' }));
  assert.throws(() => applyPatch({ n: 3 }, 'n', { op: 'append', value: 1 }));
  assert.throws(() => applyPatch({ s: 'x' }, 's', { op: 'append', value: [1] }));
  assert.throws(() => applyPatch({ s: 'x' }, 's', { op: 'remove', value: 'x' }));
});

test('matchesFilter follows the server (src/model/filter/eval.rs)', () => {
  const obj = { title: 'Buy milk', votes: 3, tags: ['a', 'b'], done: false, none: null };
  const t = (f) => matchesFilter(f, obj);
  assert.equal(t({ and: [{ is: { votes: 3.0 } }] }), true);
  assert.equal(t({ and: [{ is: { votes: 3, done: true } }] }), false);
  assert.equal(t({ or: [{ is: { votes: 3, done: true } }] }), true, 'fields of an element join with the group connector');
  assert.equal(t({ and: [{ like: { title: 'milk' } }] }), true);
  assert.equal(t({ and: [{ like: { title: 'Milk' } }] }), false, 'like is case-sensitive');
  assert.equal(t({ and: [{ like: { title: '.*' } }] }), false, 'like is no regex');
  assert.equal(t({ and: [{ range: { votes: { gt: 2, lte: 3 } } }] }), true);
  assert.equal(t({ and: [{ range: { votes: { gt: 3 } } }] }), false);
  assert.equal(t({ and: [{ in_array: { votes: [1, 3] } }] }), true);
  assert.equal(t({ and: [{ is: { tags: 'b' } }] }), true, 'an array field matches any element');
  assert.equal(t({ and: [{ exists: { field: 'none' } }] }), false, 'null does not exist');
  assert.equal(t({ and: [{ exists: 'votes' }] }), true);
  assert.equal(t({ and: [{ is: { missing: 1 } }] }), false);
  assert.equal(t({ and: [{ not: { is: { missing: 1 } } }] }), true, 'a missing field is false except under not');
  assert.equal(t({ and: [{ or: [{ is: { done: true } }, { range: { votes: { gte: 3 } } }] }] }), true);
  assert.equal(t({ and: [{ bogus: {} }] }), false);
  assert.equal(matchesFilter(null, obj), false);
});
