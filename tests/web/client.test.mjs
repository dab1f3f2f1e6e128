// Unit tests of web/client.js: a fake WebSocket constructor stands in for the server (Node 20 has
// no global WebSocket); the tests play the server's frames, snapshots and catch-ups included
// (docs/protocol.md). Run: cd tests/web && npm test
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { connect, applyPatch, matchesFilter, backoffDelay } from '../../web/client.js';

const CHANNEL = { model: 'task', parent: { model: 'list', id: 'demo' } };
const KEY = 'blg:demo:list:demo:task';
const OTHER = { model: 'task', parent: { model: 'list', id: 'other' } };
const OTHER_KEY = 'blg:demo:list:other:task';
const keyOf = (data) => (data.channel.parent?.id === 'other' ? OTHER_KEY : KEY);

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
  /** Answers every subscribe/unsubscribe sent so far that has no answer yet (`subscribed` only:
   * snapshots and catch-ups are sent by the test). */
  answer(keyFor = keyOf) {
    this.answered ??= 0;
    for (; this.answered < this.sent.length; this.answered++) {
      const f = this.sent[this.answered];
      this.receive({ event: `${f.event}d`, data: { channel: keyFor(f.data) } });
    }
  }
  /** Sends the snapshot `items` ([object, version] pairs) in pages of `pageSize`, then its end. */
  snapshot(items, { key = KEY, cursor = 'c1', pageSize = 200 } = {}) {
    for (let i = 0; i < items.length; i += pageSize) this.page('snapshot', items.slice(i, i + pageSize), [], key);
    this.receive({ event: 'snapshot_end', data: { channel: key, cursor, count: items.length } });
  }
  /** Sends one `snapshot` or `catchup` page. */
  page(event, items, gone = [], key = KEY) {
    const data = { channel: key, objects: items.map(([object, version]) => ({ object, version })) };
    if (event === 'catchup') data.deleted = gone.map(([id, version]) => ({ id, model: 'task', version }));
    this.receive({ event, data });
  }
  /** A whole catch-up: one page (when there is anything) and its end. */
  catchup(items = [], gone = [], { key = KEY, cursor = 'c2' } = {}) {
    if (items.length || gone.length) this.page('catchup', items, gone, key);
    this.receive({ event: 'catchup_end', data: { channel: key, cursor, count: items.length + gone.length } });
  }
  cursor(cursor) { this.receive({ event: 'cursor', data: { cursor } }); }
  sentEvents(name) { return this.sent.filter((f) => f.event === name); }
}

const task = (id, extra = {}) => ({ id, type: 'task', application_id: 'demo', context_id: 'demo', list_id: 'demo', title: id, votes: 0, ...extra });

const delta = (op, fields) => ({ op, subscriptions: [KEY], application_id: 'demo', timestamp: 1, ...fields });
const created = (obj, version = 1, keys = [KEY]) => delta('create', { object: obj, version, subscriptions: keys });
const patched = (id, field, op, value, version, keys = [KEY]) =>
  delta('update', { patch: { op, path: `task/${id}/${field}`, value }, version, subscriptions: keys });
const deleted = (obj, version, keys = [KEY]) => delta('delete', { object: obj, version, subscriptions: keys });
const message = ({ news = [], updated = [], gone = [] }) => ({ event: 'message', data: { new: news, updated, deleted: gone } });
const subscribeFrame = (channel, extra = { snapshot: true }) => ({ event: 'subscribe', data: { channel, ...extra } });

const settle = (ms = 5) => new Promise((r) => setTimeout(r, ms));
async function waitFor(cond, what, ms = 2000) {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
    await settle(2);
  }
}

/** A client with a fake server; returns helpers. */
function setup(opts = {}) {
  FakeSocket.reset();
  const errors = [];
  const statuses = [];
  const client = connect({
    wsUrl: 'ws://127.0.0.1:3000/',
    token: 'tok1',
    WebSocket: FakeSocket,
    backoff: { initialMs: 10, maxMs: 80, factor: 2, jitter: 0 },
    onError: (e) => errors.push(e),
    onStatus: (s, d) => statuses.push([s, d]),
    ...opts,
  });
  return { client, errors, statuses };
}

/** Connects, subscribes, and completes the subscription with a one-page snapshot of `items`. */
async function live(env, channel = CHANNEL, opts = {}, items = [], cursor = 'c1') {
  const sub = env.client.subscribe(channel, opts);
  const ws = FakeSocket.last();
  if (!env.client._ready) ws.ready();
  ws.answer();
  ws.snapshot(items, { key: keyOf({ channel }), cursor });
  await sub.ready;
  return { sub, ws };
}

/** Drops the connection and answers `ready` on the next one. */
async function reconnect(env, ws) {
  const n = FakeSocket.all.length;
  ws.serverClose(1001);
  await waitFor(() => FakeSocket.all.length === n + 1, 'the reconnect');
  const ws2 = FakeSocket.last();
  ws2.ready();
  return ws2;
}

test('connects with the token, subscribes with a snapshot after ready, goes live at snapshot_end', async () => {
  const env = setup();
  const sub = env.client.subscribe(CHANNEL);
  const ws = FakeSocket.last();
  assert.equal(ws.url, 'ws://127.0.0.1:3000/?token=tok1');
  assert.equal(ws.sent.length, 0, 'nothing is sent before ready');
  ws.ready();
  assert.equal(env.client.status, 'connected');
  assert.equal(env.client.deviceId, 'd1');
  assert.deepEqual(ws.sent, [subscribeFrame(CHANNEL)]);
  assert.equal(sub.state, 'subscribing');
  const changes = [];
  let synced = 0;
  let isReady = false;
  sub.on('change', (c) => changes.push(c));
  sub.on('synced', () => synced++);
  sub.ready.then(() => { isReady = true; });
  ws.answer();
  assert.equal(sub.key, KEY);
  assert.equal(sub.state, 'syncing');
  ws.page('snapshot', [[task('a'), 3], [task('b'), 1]]);
  await settle();
  assert.equal(isReady, false, 'not ready before snapshot_end');
  assert.equal(sub.state, 'syncing');
  assert.deepEqual([...sub.objects.keys()], ['a', 'b'], 'a page shows as it arrives');
  ws.receive({ event: 'snapshot_end', data: { channel: KEY, cursor: 'c1', count: 2 } });
  await sub.ready;
  assert.equal(sub.state, 'live');
  assert.equal(synced, 1);
  assert.equal(sub.cursor, 'c1');
  assert.equal(sub.version('a'), 3);
  assert.deepEqual(changes, [{ created: ['a', 'b'], updated: [], deleted: [], reason: 'snapshot' }]);
  assert.deepEqual(env.errors, []);
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

test('paged snapshot: pages accumulate, newer versions and tombstones win, the removal pass runs at the end', async () => {
  const env = setup();
  const { sub, ws } = await live(env, CHANNEL, {}, [[task('t1'), 1], [task('t2'), 1], [task('t3'), 1], [task('t4'), 1]]);
  ws.receive(message({ gone: [deleted(task('t1'), 2)] }));
  // A resync: a snapshot subscribe on the same connection, answered again by the server.
  sub.resync();
  assert.deepEqual(ws.sent.at(-1), subscribeFrame(CHANNEL));
  assert.equal(sub.state, 'syncing');
  ws.answer();
  const changes = [];
  sub.on('change', (c) => changes.push(c));
  // t2 is updated live before its page comes with an older version; t5 is created meanwhile.
  ws.receive(message({ news: [created(task('t5'), 1)], updated: [patched('t2', 'title', 'replace', 'new', 2)] }));
  ws.page('snapshot', [[task('t1'), 1], [task('t2'), 1]]); // read before the delete and the update
  ws.page('snapshot', [[task('t3', { votes: 4 }), 2]]);
  assert.ok(sub.objects.has('t4'), 'nothing is removed before snapshot_end');
  assert.ok(!sub.objects.has('t1'), 'the deleted object stays deleted');
  assert.equal(sub.objects.get('t2').title, 'new', 'the newer local version wins');
  assert.equal(sub.objects.get('t3').votes, 4, 'the newer snapshot version wins');
  ws.receive({ event: 'snapshot_end', data: { channel: KEY, cursor: 'c2', count: 3 } });
  assert.equal(sub.state, 'live');
  assert.equal(sub.cursor, 'c2');
  // t4 was in no page (deleted, its delete lost): removed. t2 from page 1 is kept (ids of every
  // page count), t5 too (created while the snapshot was in flight).
  assert.deepEqual([...sub.objects.keys()], ['t2', 't3', 't5']);
  assert.equal(sub.tombstones.get('t4'), 1);
  assert.deepEqual(changes.at(-1), { created: [], updated: [], deleted: ['t4'], reason: 'snapshot' });
  assert.ok(changes.every((c) => c.reason !== 'snapshot' || !c.created.includes('t1')));
  // A late create of the deleted t1 does not bring it back either.
  ws.receive(message({ news: [created(task('t1'), 1)] }));
  assert.ok(!sub.objects.has('t1'));
  // A snapshot of many objects arrives in several pages and is whole only at its end.
  const many = Array.from({ length: 450 }, (_, i) => [task(`m${String(i).padStart(3, '0')}`), 1]);
  sub.resync();
  ws.answer();
  ws.snapshot(many, { cursor: 'c3', pageSize: 200 });
  assert.equal(sub.objects.size, 450, 'the removal pass removed what no page held');
  // The same objects again, unchanged, in three pages: the ids of every page count.
  sub.resync();
  ws.answer();
  ws.snapshot(many, { cursor: 'c4', pageSize: 200 });
  assert.equal(sub.objects.size, 450, 'objects of the first pages are kept');
  assert.equal(sub.cursor, 'c4');
  assert.deepEqual(env.errors, []);
  env.client.close();
});

test('resync() while a snapshot is in flight asks again once it is in; `synced` follows each', async () => {
  const env = setup();
  const { sub, ws } = await live(env, CHANNEL, {}, [[task('t1'), 1]]);
  const states = [];
  sub.on('synced', () => states.push('synced'));
  sub.resync();
  sub.resync();
  assert.equal(ws.sentEvents('subscribe').length, 2, 'one request at a time');
  assert.equal(sub.state, 'syncing');
  ws.answer();
  ws.snapshot([[task('t1'), 1]], { cursor: 'c2' });
  assert.deepEqual(states, ['synced']);
  assert.equal(ws.sentEvents('subscribe').length, 3, 'the second resync, after the first');
  assert.equal(sub.state, 'syncing');
  ws.answer();
  ws.snapshot([[task('t1'), 1]], { cursor: 'c3' });
  assert.deepEqual(states, ['synced', 'synced']);
  assert.equal(sub.state, 'live');
  assert.equal(ws.sentEvents('subscribe').length, 3);
  env.client.close();
});

test('the settle catch-up after a snapshot applies a late change and moves the cursor', async () => {
  const env = setup();
  const { sub, ws } = await live(env, CHANNEL, {}, [[task('t1'), 1]]);
  const changes = [];
  sub.on('change', (c) => changes.push(c));
  // Two seconds later (server side): t1 changed and t2 was created around the subscribe, both
  // stored after the snapshot was read; the live deltas never came.
  ws.catchup([[task('t1', { title: 'late' }), 2], [task('t2'), 1]], [], { cursor: 'c2' });
  assert.equal(sub.objects.get('t1').title, 'late');
  assert.equal(sub.version('t1'), 2);
  assert.ok(sub.objects.has('t2'));
  assert.deepEqual(changes, [{ created: ['t2'], updated: ['t1'], deleted: [], reason: 'catchup' }]);
  assert.equal(sub.cursor, 'c2');
  assert.equal(sub.state, 'live');
  assert.equal(ws.sentEvents('subscribe').length, 1, 'no resync');
  // The live stream goes on from there.
  ws.receive(message({ updated: [patched('t1', 'votes', 'increment', 1, 3)] }));
  assert.equal(sub.objects.get('t1').votes, 1);
  assert.deepEqual(env.errors, []);
  env.client.close();
});

test('duplicates are dropped: live deltas and catch-up states the snapshot already covers', async () => {
  const env = setup();
  const { sub, ws } = await live(env, CHANNEL, {}, [[task('t1', { votes: 2 }), 3]]);
  const changes = [];
  sub.on('change', (c) => changes.push(c));
  // The queued live deltas of changes the snapshot already holds.
  ws.receive(message({
    news: [created(task('t1'), 1)],
    updated: [patched('t1', 'votes', 'increment', 1, 2), patched('t1', 'votes', 'increment', 1, 3)],
  }));
  assert.deepEqual(changes, []);
  assert.equal(sub.objects.get('t1').votes, 2);
  assert.equal(sub.version('t1'), 3);
  // The next one applies; its redelivery does not.
  ws.receive(message({ updated: [patched('t1', 'votes', 'increment', 1, 4)] }));
  ws.receive(message({ updated: [patched('t1', 'votes', 'increment', 1, 4)] }));
  assert.equal(sub.objects.get('t1').votes, 3);
  assert.equal(changes.length, 1);
  // A catch-up overlapping what is held (it starts before its cursor) changes nothing.
  ws.catchup([[task('t1', { votes: 2 }), 3], [task('t1', { votes: 3 }), 4]], []);
  assert.equal(changes.length, 1);
  assert.equal(sub.objects.get('t1').votes, 3);
  assert.equal(ws.sentEvents('subscribe').length, 1);
  assert.deepEqual(env.errors, []);
  env.client.close();
});

test('a gap is held, then covered by a catch-up full state and the kept patches that follow it', async () => {
  const env = setup();
  const { sub, ws } = await live(env, CHANNEL, {}, [[task('t1'), 2]]);
  const gaps = [];
  sub.on('gap', (g) => gaps.push(g));
  const changes = [];
  sub.on('change', (c) => changes.push(c));
  // Version 3 is lost; 4, 5 and 6 arrive (6 before 5).
  ws.receive(message({
    updated: [
      patched('t1', 'title', 'replace', 'v4', 4),
      patched('t1', 'votes', 'increment', 10, 6),
      patched('t1', 'votes', 'increment', 1, 5),
    ],
  }));
  assert.deepEqual(gaps, [{ id: 't1', version: 4, have: 2 }, { id: 't1', version: 6, have: 2 }, { id: 't1', version: 5, have: 2 }]);
  assert.equal(sub.objects.get('t1').title, 't1', 'nothing after the gap is applied');
  assert.equal(sub.version('t1'), 2);
  assert.deepEqual(changes, []);
  assert.equal(ws.sentEvents('subscribe').length, 1, 'no immediate resync');
  // The settle catch-up brings t1 at version 4: 4 is dropped (covered), 5 and 6 apply in order.
  ws.catchup([[task('t1', { title: 'v4', votes: 0 }), 4]], []);
  assert.equal(sub.version('t1'), 6);
  assert.deepEqual(sub.objects.get('t1'), task('t1', { title: 'v4', votes: 11 }));
  assert.deepEqual(changes, [{ created: [], updated: ['t1'], deleted: [], reason: 'catchup' }]);
  assert.equal(sub._held.size, 0);
  await settle(20);
  assert.equal(ws.sentEvents('subscribe').length, 1, 'a covered gap takes no snapshot');
  // An update of an object not held is a gap too, covered by its `new` delta arriving late.
  ws.receive(message({ updated: [patched('t2', 'votes', 'increment', 1, 2)] }));
  assert.equal(gaps.at(-1).id, 't2');
  assert.ok(!sub.objects.has('t2'));
  ws.receive(message({ news: [created(task('t2'), 1)] }));
  assert.equal(sub.version('t2'), 2);
  assert.equal(sub.objects.get('t2').votes, 1);
  // A late patch that closes a gap applies the kept one after it.
  ws.receive(message({ updated: [patched('t2', 'votes', 'increment', 1, 4)] }));
  ws.receive(message({ updated: [patched('t2', 'votes', 'increment', 1, 3)] }));
  assert.equal(sub.version('t2'), 4);
  assert.equal(sub.objects.get('t2').votes, 3);
  assert.deepEqual(env.errors, []);
  env.client.close();
});

test('a gap the settle catch-up does not cover, or still open after gapTimeoutMs, takes a snapshot', async () => {
  const env = setup({ gapTimeoutMs: 40 });
  const { sub, ws } = await live(env, CHANNEL, {}, [[task('t1'), 1]]);
  ws.receive(message({ updated: [patched('t1', 'title', 'replace', 'v3', 3)] }));
  // The settle catch-up ends without t1: a snapshot subscribe follows at once.
  ws.catchup([], []);
  assert.deepEqual(ws.sent.at(-1), subscribeFrame(CHANNEL));
  assert.equal(sub.state, 'syncing');
  ws.answer();
  ws.snapshot([[task('t1', { title: 'v3' }), 3]], { cursor: 'c2' });
  assert.equal(sub.objects.get('t1').title, 'v3');
  assert.equal(sub._held.size, 0);
  ws.catchup([], [], { cursor: 'c3' }); // its settle catch-up: nothing open
  assert.equal(ws.sentEvents('subscribe').length, 2);
  // Later a gap stays open: gapTimeoutMs after it, a snapshot is asked.
  const t0 = Date.now();
  ws.receive(message({ updated: [patched('t1', 'title', 'replace', 'v5', 5)] }));
  await waitFor(() => ws.sentEvents('subscribe').length === 3, 'the resync after the timeout');
  assert.ok(Date.now() - t0 >= 35, 'not before the timeout');
  assert.deepEqual(ws.sent.at(-1), subscribeFrame(CHANNEL));
  // That snapshot does not have version 5 either, nor its settle catch-up: the gap is given up
  // (reported) instead of resyncing for ever.
  ws.answer();
  ws.snapshot([[task('t1', { title: 'v3' }), 3]], { cursor: 'c4' });
  ws.catchup([], [], { cursor: 'c5' });
  assert.equal(sub._held.size, 0);
  assert.ok(env.errors.some((e) => e.type === 'gap' && e.detail.id === 't1' && e.detail.version === 5));
  await settle(60);
  assert.equal(ws.sentEvents('subscribe').length, 3);
  assert.equal(sub.state, 'live');
  env.client.close();
});

test('resume after a reconnect sends the latest cursor; cursors apply to subscriptions whole on the connection', async () => {
  const env = setup();
  const { sub: a, ws } = await live(env, CHANNEL, {}, [[task('t1'), 1], [task('t2'), 1]], 'c1');
  assert.equal(a.cursor, 'c1');
  ws.cursor('c2');
  assert.equal(a.cursor, 'c2', 'a cursor frame applies to a subscription whose snapshot is done');
  // b's snapshot is still in flight: the connection's cursors are not yet its own.
  const b = env.client.subscribe(OTHER);
  ws.answer();
  ws.page('snapshot', [[task('o1'), 1]], [], OTHER_KEY);
  ws.cursor('c3');
  assert.equal(a.cursor, 'c3');
  assert.equal(b.cursor, null);
  // The connection drops; while offline t1 is deleted and t3 created.
  let synced = 0;
  a.on('synced', () => synced++);
  const ws2 = await reconnect(env, ws);
  assert.deepEqual(ws2.sent, [subscribeFrame(CHANNEL, { resume: 'c3' }), subscribeFrame(OTHER)]);
  assert.equal(a.state, 'syncing');
  ws2.answer();
  ws2.cursor('c4'); // during the resume: not taken
  assert.equal(a.cursor, 'c3');
  const changes = [];
  a.on('change', (c) => changes.push(c));
  ws2.page('catchup', [[task('t3'), 1], [task('t2'), 1]], [['t1', 2]]);
  assert.deepEqual(changes, [{ created: ['t3'], updated: [], deleted: ['t1'], reason: 'catchup' }]);
  ws2.receive({ event: 'catchup_end', data: { channel: KEY, cursor: 'c5', count: 3 } });
  assert.equal(a.state, 'live');
  assert.equal(synced, 1, '`synced` again once the resume is complete');
  assert.equal(a.cursor, 'c5');
  assert.deepEqual([...a.objects.keys()], ['t2', 't3']);
  ws2.snapshot([[task('o1'), 1], [task('o2'), 1]], { key: OTHER_KEY, cursor: 'c6' });
  await b.ready;
  assert.equal(b.cursor, 'c6');
  ws2.cursor('c7');
  assert.deepEqual([a.cursor, b.cursor], ['c7', 'c7']);
  // The next reconnect resumes both with the latest cursor.
  const ws3 = await reconnect(env, ws2);
  assert.deepEqual(ws3.sent, [subscribeFrame(CHANNEL, { resume: 'c7' }), subscribeFrame(OTHER, { resume: 'c7' })]);
  assert.deepEqual(env.errors, []);
  env.client.close();
});

test('offline: a gap kept across a reconnect is covered by the resume; resync() offline takes a snapshot', async () => {
  const env = setup({ gapTimeoutMs: 30 });
  const { sub, ws } = await live(env, CHANNEL, {}, [[task('t1'), 1]], 'c1');
  ws.receive(message({ updated: [patched('t1', 'votes', 'increment', 1, 3)] })); // 2 is lost
  const ws2 = await reconnect(env, ws);
  assert.deepEqual(ws2.sent, [subscribeFrame(CHANNEL, { resume: 'c1' })]);
  ws2.answer();
  ws2.catchup([[task('t1', { votes: 1 }), 2]], [], { cursor: 'c2' });
  assert.equal(sub.version('t1'), 3, 'the catch-up state, then the kept patch');
  assert.equal(sub.objects.get('t1').votes, 2);
  await settle(50);
  assert.equal(ws2.sentEvents('subscribe').length, 1, 'no snapshot: the gap is covered');
  // A gap the resume does not cover: gapTimeoutMs after the resume, a snapshot.
  ws2.receive(message({ updated: [patched('t1', 'votes', 'increment', 1, 5)] }));
  const ws3 = await reconnect(env, ws2);
  ws3.answer();
  ws3.catchup([], [], { cursor: 'c3' });
  await waitFor(() => ws3.sentEvents('subscribe').length === 2, 'the snapshot after the timeout');
  assert.deepEqual(ws3.sent.at(-1), subscribeFrame(CHANNEL));
  ws3.answer();
  ws3.snapshot([[task('t1', { votes: 4 }), 5]], { cursor: 'c4' });
  assert.equal(sub.version('t1'), 5);
  // resync() while offline: the next connection asks for a snapshot instead of resuming.
  ws3.serverClose(1001);
  sub.resync();
  await waitFor(() => FakeSocket.all.length === 4, 'the reconnect');
  FakeSocket.last().ready();
  assert.deepEqual(FakeSocket.last().sent, [subscribeFrame(CHANNEL)]);
  assert.deepEqual(env.errors, []);
  env.client.close();
});

test('the browser going offline closes the socket at once; back online it reconnects and resumes', async () => {
  const win = new EventTarget();
  win.navigator = { onLine: true };
  const env = setup({ window: win });
  const { sub, ws } = await live(env, CHANNEL, {}, [[task('t1'), 1]], 'c1');
  const sockets = FakeSocket.all.length;
  win.navigator.onLine = false;
  win.dispatchEvent(new Event('offline'));
  assert.equal(env.client.status, 'offline');
  assert.equal(ws.closed, 1000, 'the open socket is closed, not left to time out');
  await settle(60);
  assert.equal(FakeSocket.all.length, sockets, 'no attempt while offline');
  win.navigator.onLine = true;
  win.dispatchEvent(new Event('online'));
  await waitFor(() => FakeSocket.all.length === sockets + 1, 'the reconnect once online');
  const ws2 = FakeSocket.last();
  ws2.ready();
  assert.deepEqual(ws2.sent, [subscribeFrame(CHANNEL, { resume: 'c1' })]);
  ws2.answer();
  ws2.catchup([[task('t2'), 1]], [['t1', 2]], { cursor: 'c2' });
  assert.deepEqual([...sub.objects.keys()], ['t2']);
  assert.equal(sub.cursor, 'c2');
  // A connection that fails while the browser is offline waits for `online` instead of a timer.
  win.navigator.onLine = false;
  ws2.serverClose(1006);
  assert.equal(env.client.status, 'offline');
  env.client.close();
  win.dispatchEvent(new Event('online'));
  await settle(20);
  assert.equal(FakeSocket.all.length, sockets + 1, 'closed for good: `online` does nothing');
});

test('RESYNC_REQUIRED answers a resume: the client subscribes again with a snapshot', async () => {
  const env = setup();
  const { sub: a, ws } = await live(env, CHANNEL, {}, [[task('old'), 1], [task('t1'), 1]], 'c1');
  const { sub: b } = await live(env, OTHER, {}, [[task('o1'), 1]], 'c1');
  const ws2 = await reconnect(env, ws);
  assert.deepEqual(ws2.sent, [subscribeFrame(CHANNEL, { resume: 'c1' }), subscribeFrame(OTHER, { resume: 'c1' })]);
  // The server restarted long ago (or the cursor is too old): a's resume is refused; b's answered.
  ws2.receive({ event: 'error', data: { code: 'RESYNC_REQUIRED', message: 'the cursor is older than the resume window', channel: KEY } });
  assert.deepEqual(ws2.sent.at(-1), subscribeFrame(CHANNEL), 'a snapshot subscribe at once');
  assert.equal(a.cursor, null);
  assert.equal(a.state, 'syncing');
  ws2.answered = 2;
  ws2.receive({ event: 'subscribed', data: { channel: OTHER_KEY } }); // b's answer, in order
  assert.equal(b.state, 'syncing');
  ws2.catchup([], [], { key: OTHER_KEY, cursor: 'c2' });
  assert.equal(b.state, 'live');
  // The channel is subscribed nonetheless: a live delta arrives before the snapshot.
  ws2.receive(message({ news: [created(task('t7'), 1)] }));
  assert.ok(a.objects.has('t7'));
  // The disconnect comes before the snapshot: the next connection asks for one again.
  const ws3 = await reconnect(env, ws2);
  assert.deepEqual(ws3.sent, [subscribeFrame(CHANNEL), subscribeFrame(OTHER, { resume: 'c2' })]);
  ws3.answer();
  ws3.snapshot([[task('t1', { title: 'now' }), 2], [task('t7'), 1]], { cursor: 'c9' });
  assert.equal(a.state, 'live');
  assert.equal(a.cursor, 'c9');
  assert.deepEqual([...a.objects.keys()], ['t1', 't7'], 'what the snapshot does not have is gone');
  assert.equal(a.objects.get('t1').title, 'now');
  assert.deepEqual(env.errors, [], 'RESYNC_REQUIRED is handled, not reported');
  env.client.close();
});

test('resync_required (a snapshot broke off, a settle catch-up failed) takes a fresh snapshot', async () => {
  const env = setup();
  const { sub: a, ws } = await live(env, CHANNEL, {}, [[task('t1'), 1], [task('t2'), 1]], 'c1');
  const b = env.client.subscribe(CHANNEL);
  ws.answer();
  // b's snapshot breaks off after one page (the store went down): no snapshot_end will come.
  ws.page('snapshot', [[task('t1'), 1]]);
  ws.receive({ event: 'resync_required', data: { channel: KEY, code: 'RESYNC_REQUIRED', message: 'the snapshot broke off' } });
  assert.deepEqual(ws.sent.at(-1), subscribeFrame(CHANNEL), 'b asks again');
  assert.equal(ws.sentEvents('subscribe').length, 3, 'a, whole, does not');
  assert.equal(b.state, 'syncing');
  assert.deepEqual([...a.objects.keys()], ['t1', 't2'], 'a broken snapshot removes nothing');
  assert.ok(env.errors.some((e) => e.code === 'RESYNC_REQUIRED'));
  ws.answer();
  ws.snapshot([[task('t1'), 1], [task('t2'), 1]], { cursor: 'c2' });
  await b.ready;
  assert.deepEqual([...b.objects.keys()], ['t1', 't2']);
  // Its settle catch-up fails: every subscription of the key takes a snapshot.
  ws.receive({ event: 'resync_required', data: { channel: KEY, code: 'RESYNC_REQUIRED', message: 'the catch-up after the snapshot failed' } });
  assert.deepEqual(ws.sent.slice(-2), [subscribeFrame(CHANNEL), subscribeFrame(CHANNEL)]);
  ws.answer();
  ws.snapshot([[task('t2'), 1]], { cursor: 'c3' });
  ws.snapshot([[task('t2'), 1]], { cursor: 'c4' });
  assert.deepEqual([a.state, b.state], ['live', 'live']);
  assert.deepEqual([...a.objects.keys()], ['t2']);
  assert.deepEqual([...b.objects.keys()], ['t2']);
  // a's own resync snapshot breaks off after a page without t3: t3 is not removed for it.
  ws.receive(message({ news: [created(task('t3'), 1)] }));
  a.resync();
  ws.answer();
  ws.page('snapshot', [[task('t2'), 1]]);
  ws.receive({ event: 'resync_required', data: { channel: KEY, code: 'RESYNC_REQUIRED', message: 'the snapshot broke off' } });
  assert.deepEqual([...a.objects.keys()], ['t2', 't3']);
  assert.equal(a.state, 'syncing');
  assert.deepEqual(ws.sent.at(-1), subscribeFrame(CHANNEL));
  ws.answer();
  ws.snapshot([[task('t2'), 1]], { cursor: 'c5' });
  assert.deepEqual([...a.objects.keys()], ['t2'], 'the whole snapshot does remove it');
  assert.equal(a.state, 'live');
  env.client.close();
});

test('catch-up deletions remove at or above the held version and leave tombstones', async () => {
  const env = setup();
  const { sub, ws } = await live(env, CHANNEL, {}, [[task('t1'), 3], [task('t2'), 5]]);
  const changes = [];
  sub.on('change', (c) => changes.push(c));
  ws.page('catchup', [], [['t1', 3], ['t2', 4], ['t3', 7]]);
  assert.deepEqual(changes, [{ created: [], updated: [], deleted: ['t1'], reason: 'catchup' }]);
  assert.ok(!sub.objects.has('t1'), 'a deletion at the held version removes it');
  assert.equal(sub.tombstones.get('t1'), 3);
  assert.equal(sub.version('t2'), 5, 'a deletion older than the held state is ignored');
  assert.ok(!sub.tombstones.has('t2'));
  assert.equal(sub.tombstones.get('t3'), 7, 'a deletion of an object not held is remembered');
  // A stale state of t3 (read before its deletion) does not bring it back; a newer one does.
  ws.page('catchup', [[task('t3'), 6]], []);
  assert.ok(!sub.objects.has('t3'));
  ws.page('catchup', [], [['t1', 9]]);
  assert.equal(sub.tombstones.get('t1'), 9, 'the tombstone is refreshed');
  ws.page('catchup', [[task('t1'), 8], [task('t3'), 8]], []);
  assert.ok(!sub.objects.has('t1'));
  assert.equal(sub.version('t3'), 8);
  ws.receive({ event: 'catchup_end', data: { channel: KEY, cursor: 'c2', count: 0 } });
  assert.equal(sub.cursor, 'c2');
  // Kept patches of a deleted object are dropped with it.
  ws.receive(message({ updated: [patched('t3', 'votes', 'increment', 1, 10)] }));
  assert.equal(sub._held.size, 1);
  ws.page('catchup', [], [['t3', 10]]);
  assert.equal(sub._held.size, 0);
  assert.deepEqual(env.errors, []);
  env.client.close();
});

test('two subscriptions of one channel share its key and both receive the snapshot', async () => {
  const env = setup();
  const a = env.client.subscribe(CHANNEL);
  const b = env.client.subscribe(CHANNEL);
  const ws = FakeSocket.last();
  ws.ready();
  assert.deepEqual(ws.sent, [subscribeFrame(CHANNEL), subscribeFrame(CHANNEL)]);
  // The server answers both subscribes first (repeated: idempotent), then a snapshot for each.
  ws.answer();
  ws.snapshot([[task('t1'), 1]], { cursor: 'c1' });
  await a.ready;
  assert.equal(b.state, 'syncing', 'b waits for the snapshot its own subscribe opened');
  assert.equal(b.cursor, null);
  ws.snapshot([[task('t1'), 1], [task('t2'), 1]], { cursor: 'c2' });
  await b.ready;
  assert.deepEqual([...a.objects.keys()], ['t1', 't2']);
  assert.deepEqual([...b.objects.keys()], ['t1', 't2']);
  assert.deepEqual([a.cursor, b.cursor], ['c2', 'c2']);
  // A third one later: its snapshot (read now) reaches every subscription with the key.
  const c = env.client.subscribe(CHANNEL);
  assert.deepEqual(ws.sent.at(-1), subscribeFrame(CHANNEL));
  ws.answer();
  assert.equal(c.key, KEY);
  ws.snapshot([[task('t1'), 1], [task('t2', { title: 'two' }), 2], [task('t3'), 1]], { cursor: 'c3' });
  await c.ready;
  for (const s of [a, b, c]) {
    assert.deepEqual([...s.objects.keys()], ['t1', 't2', 't3']);
    assert.equal(s.objects.get('t2').title, 'two');
    assert.equal(s.cursor, 'c3');
  }
  // Its settle catch-up too; then deltas reach all three.
  ws.catchup([[task('t4'), 1]], []);
  ws.receive(message({ updated: [patched('t4', 'votes', 'increment', 1, 2)] }));
  for (const s of [a, b, c]) assert.equal(s.objects.get('t4').votes, 1);
  c.unsubscribe();
  b.unsubscribe();
  assert.equal(ws.sentEvents('unsubscribe').length, 0, 'a still uses the channel');
  assert.deepEqual(env.errors, []);
  env.client.close();
});

test('filtered subscriptions: the server filters the snapshot; enter, leave and re-enter as deltas', async () => {
  const filters = { and: [{ range: { votes: { gte: 5 } } }] };
  const env = setup();
  const sub = env.client.subscribe(CHANNEL, { filters });
  const ws = FakeSocket.last();
  ws.ready();
  assert.deepEqual(ws.sent[0], { event: 'subscribe', data: { channel: CHANNEL, filters, snapshot: true } });
  ws.answer();
  // What the server sends is taken as it is: the client does not filter it again (`warm` fails
  // the filter as the client would evaluate it; the server is the judge).
  ws.snapshot([[task('hot', { votes: 7 }), 3], [task('warm', { votes: 4 }), 2]]);
  await sub.ready;
  assert.deepEqual([...sub.objects.keys()], ['hot', 'warm']);
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
  // A catch-up says warm no longer matches (a deletion at its current version).
  ws.catchup([], [['warm', 4]]);
  assert.ok(!sub.objects.has('warm'));
  assert.deepEqual(env.errors, []);
  env.client.close();
});

test('routes a delta only to the subscriptions its `subscriptions` names', async () => {
  const env = setup();
  const a = env.client.subscribe(CHANNEL);
  const b = env.client.subscribe(OTHER);
  const ws = FakeSocket.last();
  ws.ready();
  ws.answer();
  ws.snapshot([], { key: KEY });
  ws.snapshot([[task('o1'), 1]], { key: OTHER_KEY });
  await Promise.all([a.ready, b.ready]);
  assert.equal(b.key, OTHER_KEY);
  assert.deepEqual([...a.objects.keys()], [], 'a snapshot goes to the subscriptions of its key only');
  ws.receive(message({ news: [created(task('x'), 1, [OTHER_KEY])] }));
  ws.receive(message({ news: [created(task('y'), 1, [KEY, OTHER_KEY])] }));
  ws.receive(message({ news: [created(task('z'), 1, ['blg:demo:list:nobody:task'])] }));
  assert.deepEqual([...a.objects.keys()], ['y']);
  assert.deepEqual([...b.objects.keys()], ['o1', 'x', 'y']);
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

test('reconnects with capped exponential backoff, then resumes with a catch-up', async () => {
  const env = setup();
  const { sub, ws } = await live(env, CHANNEL, {}, [[task('t1'), 1]], 'c1');
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
  assert.equal(sub.state, 'live', 'offline, the subscription shows its last state');
  // Meanwhile t1 was deleted and t2 created; the new connection resumes from the cursor.
  const ws2 = FakeSocket.last();
  assert.equal(ws2.url, 'ws://127.0.0.1:3000/?token=tok1');
  ws2.ready();
  assert.deepEqual(ws2.sent, [subscribeFrame(CHANNEL, { resume: 'c1' })]);
  ws2.answer();
  ws2.catchup([[task('t2'), 1]], [['t1', 2]], { cursor: 'c2' });
  assert.deepEqual([...sub.objects.keys()], ['t2']);
  assert.equal(sub.state, 'live');
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
    { event: 'snapshot', data: { objects: [{ object: task('nokey'), version: 1 }] } },
    { event: 'snapshot', data: { channel: KEY, objects: 'all' } },
    { event: 'snapshot', data: { channel: KEY, objects: [null, { object: task('nov') }, { object: { title: 'noid' }, version: 2 }] } },
    { event: 'catchup', data: { channel: KEY, objects: [], deleted: {} } },
    { event: 'catchup', data: { channel: KEY, deleted: [{ id: 'x' }, 'y'] } },
    { event: 'catchup_end', data: {} },
    { event: 'cursor', data: { cursor: 5 } },
  ];
  for (const frame of junk) assert.doesNotThrow(() => ws.receive(frame));
  assert.ok(env.errors.length >= junk.length, `${env.errors.length} errors reported`);
  assert.equal(sub.objects.size, 0);
  assert.equal(sub.cursor, 'c1');
  // A patch that cannot apply (increment of a string) is reported and held as a gap, not thrown.
  ws.receive(message({ news: [created(task('s', { title: 'x' }), 1)] }));
  assert.doesNotThrow(() => ws.receive(message({ updated: [patched('s', 'title', 'increment', 1, 2)] })));
  assert.ok(env.errors.some((e) => e.type === 'patch'));
  assert.equal(sub.objects.get('s').title, 'x');
  assert.ok(sub._held.has('s'));
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
  ws.snapshot([]);
  ws.snapshot([]);
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
  assert.deepEqual(ws.sent.at(-1), subscribeFrame(CHANNEL));
  ws.answered = 2;
  ws.answer();
  ws.snapshot([]);
  await ok.ready;
  assert.equal(ok.key, KEY);
  ws.serverClose(1001);
  await waitFor(() => FakeSocket.all.length === 2, 'the reconnect');
  FakeSocket.last().ready();
  assert.deepEqual(FakeSocket.last().sent, [subscribeFrame(CHANNEL, { resume: 'c1' })], 'only the accepted subscription is renewed');
  env.client.close();
});

test('with snapshots off a subscription goes live on `subscribed`; its gaps are reported, not repaired', async () => {
  const env = setup({ snapshots: false, gapTimeoutMs: 10 });
  const sub = env.client.subscribe({ model: 'task', context: 'c1' });
  const ws = FakeSocket.last();
  ws.ready();
  assert.deepEqual(ws.sent, [{ event: 'subscribe', data: { channel: { model: 'task', context: 'c1' } } }]);
  ws.answer(() => KEY);
  await sub.ready;
  assert.equal(sub.state, 'live');
  ws.receive(message({ news: [created(task('t'), 1)] }));
  assert.ok(sub.objects.has('t'));
  const gaps = [];
  sub.on('gap', (g) => gaps.push(g));
  ws.receive(message({ updated: [patched('t', 'votes', 'increment', 1, 3)] }));
  assert.equal(gaps.length, 1);
  ws.cursor('c1');
  assert.equal(sub.cursor, null);
  sub.resync();
  await settle(30);
  assert.equal(ws.sentEvents('subscribe').length, 1, 'nothing to resync with');
  const ws2 = await reconnect(env, ws);
  assert.deepEqual(ws2.sent, [{ event: 'subscribe', data: { channel: { model: 'task', context: 'c1' } } }]);
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
