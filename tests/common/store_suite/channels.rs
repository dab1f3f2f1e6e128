//! The channel index part of the suite ([`Store::channel_page`], [`Store::channel_changes`] and
//! what `put_objects` keeps in them), with the helpers the store-specific tests share.

use std::time::Duration;

use nexxus_worker::model::{clock, Channel, ChannelKey, ParentRef};
use nexxus_worker::store::{ChannelIndexWrite, ChannelRow, ObjectWrite, Store};
use serde_json::json;

use super::{key, object, write};

/// `w` putting its object on `channels` and off `left` at `changed_at`.
pub fn indexed(mut w: ObjectWrite, channels: &[&ChannelKey], left: &[&ChannelKey], changed_at: u64) -> ObjectWrite {
    let keys = |cs: &[&ChannelKey]| cs.iter().map(|&c| c.clone()).collect();
    w.index = ChannelIndexWrite { channels: keys(channels), left: keys(left), changed_at };
    w
}

/// The `task` channel of context `ctx` in `app`.
pub fn context_channel(app: &str, ctx: &str) -> ChannelKey {
    Channel { model: "task".into(), context: Some(ctx.into()), ..Channel::default() }.key(app, None).unwrap()
}

/// The `task` channel of project `project` in `app`.
pub fn project_channel(app: &str, project: &str) -> ChannelKey {
    let parent = Some(ParentRef { model: "project".into(), id: project.into() });
    Channel { model: "task".into(), parent, ..Channel::default() }.key(app, None).unwrap()
}

/// A live task `id` at `version` on `channels`, changed at `at`.
pub fn task_on(id: &str, version: u64, channels: &[&ChannelKey], left: &[&ChannelKey], at: u64) -> ObjectWrite {
    let obj = object("task", id, version, json!({"title": format!("{id} v{version}")}), Some(version as i64));
    indexed(write("task", obj, false, &[]), channels, left, at)
}

/// The entry a live write leaves in a channel.
pub fn live_entry(w: &ObjectWrite) -> ChannelRow {
    let o = &w.row.object;
    let (model, id) = w.key();
    ChannelRow { model, id, body: Some(o.object.clone()), version: o.version, changed_at: w.index.changed_at }
}

/// The entry a write leaving a channel leaves there.
pub fn tombstone_entry(w: &ObjectWrite) -> ChannelRow {
    ChannelRow { body: None, ..live_entry(w) }
}

/// Every live entry of `channel`, walking pages of `limit`.
pub async fn all_pages<S: Store>(store: &S, app: &str, channel: &ChannelKey, limit: usize) -> Vec<ChannelRow> {
    let mut all: Vec<ChannelRow> = Vec::new();
    loop {
        let after = all.last().map(|r| r.id.clone());
        let page = store.channel_page(app, channel, after.as_deref(), limit).await.unwrap();
        assert!(page.len() <= limit);
        let done = page.len() < limit;
        all.extend(page);
        if done {
            return all;
        }
    }
}

/// `channel_changes`, sorted by id, unwrapped: the test expects no overflow.
pub async fn changes<S: Store>(store: &S, app: &str, channel: &ChannelKey, since: u64) -> Vec<ChannelRow> {
    let mut rows = store.channel_changes(app, channel, since, 1000).await.unwrap().expect("no overflow");
    rows.sort_by(|a, b| a.id.cmp(&b.id));
    rows
}

/// Pages list live entries only, by id, `after` continuing where the last page ended; other
/// channels and other applications (even under the same key) never show.
pub async fn channel_pages_in_id_order_without_tombstones<S: Store>(store: &S) {
    let (app, c1, c2) = ("app1", context_channel("app1", "c1"), context_channel("app1", "c2"));
    // Written out of id order and over several calls.
    let writes: Vec<ObjectWrite> =
        (0..23).rev().map(|i| task_on(&format!("t{i:02}"), 2, &[&c1], &[], 1000 + i)).collect();
    for chunk in writes.chunks(5) {
        store.put_objects(app, chunk).await.unwrap();
    }
    let gone = [3, 10, 22].map(|i| task_on(&format!("t{i:02}"), 3, &[], &[&c1], 2000));
    let deleted = indexed(write("task", object("task", "t15", 3, json!({}), Some(3)), true, &[]), &[], &[&c1], 2000);
    store.put_objects(app, &[gone.to_vec(), vec![deleted]].concat()).await.unwrap();
    store.put_objects(app, &[task_on("x1", 1, &[&c2], &[], 1000)]).await.unwrap();
    store
        .put_objects("app2", &[task_on("t05", 9, &[&c1], &[], 1000), task_on("y1", 1, &[&c1], &[], 1000)])
        .await
        .unwrap();

    let mut expected: Vec<ChannelRow> = writes.iter().map(live_entry).collect();
    expected.retain(|r| !["t03", "t10", "t15", "t22"].contains(&r.id.as_str()));
    expected.sort_by(|a, b| a.id.cmp(&b.id));
    for limit in [1, 4, 19, 100] {
        assert_eq!(all_pages(store, app, &c1, limit).await, expected, "pages of {limit}");
    }
    let page = store.channel_page(app, &c1, Some("t07"), 3).await.unwrap();
    assert_eq!(page.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["t08", "t09", "t11"]);
    assert!(store.channel_page(app, &c1, Some("t21"), 5).await.unwrap().is_empty(), "t22 is a tombstone");
    assert!(store.channel_page(app, &c1, None, 0).await.unwrap().is_empty());
    assert_eq!(all_pages(store, app, &c2, 10).await, vec![live_entry(&task_on("x1", 1, &[&c2], &[], 1000))]);
    assert!(store.channel_page(app, &context_channel(app, "nope"), None, 10).await.unwrap().is_empty());
    let other: Vec<String> = all_pages(store, "app2", &c1, 10).await.into_iter().map(|r| r.id).collect();
    assert_eq!(other, ["t05", "y1"]);
}

/// A move between parents leaves a tombstone in the old channel and a live entry in the new;
/// moving back makes the entry live again; a delete tombstones it everywhere.
pub async fn channel_entries_follow_moves_reentries_and_deletes<S: Store>(store: &S) {
    let (app, ctx, p1, p2) =
        ("app1", context_channel("app1", "c1"), project_channel("app1", "p1"), project_channel("app1", "p2"));
    let first = task_on("t1", 1, &[&ctx, &p1], &[], 100);
    store.put_objects(app, std::slice::from_ref(&first)).await.unwrap();
    assert_eq!(all_pages(store, app, &p1, 10).await, vec![live_entry(&first)]);

    let moved = task_on("t1", 2, &[&ctx, &p2], &[&p1], 200);
    store.put_objects(app, std::slice::from_ref(&moved)).await.unwrap();
    assert!(all_pages(store, app, &p1, 10).await.is_empty());
    assert_eq!(changes(store, app, &p1, 0).await, vec![tombstone_entry(&moved)]);
    assert_eq!(all_pages(store, app, &p2, 10).await, vec![live_entry(&moved)]);
    assert_eq!(all_pages(store, app, &ctx, 10).await, vec![live_entry(&moved)]);

    let back = task_on("t1", 3, &[&ctx, &p1], &[&p2], 300);
    store.put_objects(app, std::slice::from_ref(&back)).await.unwrap();
    assert_eq!(all_pages(store, app, &p1, 10).await, vec![live_entry(&back)], "re-entry replaces the tombstone");
    assert_eq!(changes(store, app, &p1, 0).await, vec![live_entry(&back)]);
    assert_eq!(changes(store, app, &p2, 0).await, vec![tombstone_entry(&back)]);

    let obj = object("task", "t1", 4, json!({}), Some(4));
    let delete = indexed(write("task", obj, true, &[]), &[], &[&ctx, &p1], 400);
    store.put_objects(app, std::slice::from_ref(&delete)).await.unwrap();
    for channel in [&ctx, &p1] {
        assert!(all_pages(store, app, channel, 10).await.is_empty());
        assert_eq!(changes(store, app, channel, 0).await, vec![tombstone_entry(&delete)]);
    }
    assert_eq!(changes(store, app, &p2, 0).await, vec![tombstone_entry(&back)], "untouched");

    let again = task_on("t1", 5, &[&p2], &[], 500);
    store.put_objects(app, std::slice::from_ref(&again)).await.unwrap();
    assert_eq!(all_pages(store, app, &p2, 10).await, vec![live_entry(&again)], "a deleted id may come back");
}

/// The entries changed at or after `since`, each object once as it is now, whatever the number
/// of its writes; more than `limit` objects is `None`.
pub async fn channel_changes_since_a_time_each_object_once<S: Store>(store: &S) {
    let (app, c1, c2) = ("app1", context_channel("app1", "c1"), context_channel("app1", "c2"));
    store.put_objects(app, &[task_on("a", 1, &[&c1], &[], 100), task_on("b", 1, &[&c1], &[], 200)]).await.unwrap();
    store.put_objects(app, &[task_on("c", 1, &[&c1], &[], 300)]).await.unwrap();
    store.put_objects(app, &[task_on("b", 2, &[&c1], &[], 400)]).await.unwrap();
    let b3 = task_on("b", 3, &[&c1], &[], 500);
    store.put_objects(app, std::slice::from_ref(&b3)).await.unwrap();
    store.put_objects(app, &[task_on("d", 1, &[&c2], &[], 450), task_on("e", 1, &[&c2], &[&c1], 460)]).await.unwrap();
    store.put_objects("app2", &[task_on("f", 1, &[&c1], &[], 450)]).await.unwrap();

    let ids = |rows: Vec<ChannelRow>| rows.into_iter().map(|r| (r.id, r.version, r.body.is_some())).collect::<Vec<_>>();
    let all = vec![("a".into(), 1, true), ("b".into(), 3, true), ("c".into(), 1, true), ("e".into(), 1, false)];
    assert_eq!(ids(changes(store, app, &c1, 0).await), all);
    assert_eq!(ids(changes(store, app, &c1, 300).await), all[1..].to_vec(), "at `since` counts");
    assert_eq!(ids(changes(store, app, &c1, 301).await), vec![all[1].clone(), all[3].clone()]);
    assert_eq!(changes(store, app, &c1, 461).await, vec![live_entry(&b3)]);
    assert!(changes(store, app, &c1, 501).await.is_empty());
    assert_eq!(ids(changes(store, app, &c2, 0).await), [("d".into(), 1, true), ("e".into(), 1, true)]);
    assert_eq!(ids(changes(store, "app2", &c1, 0).await), [("f".into(), 1, true)]);
    assert!(changes(store, "app3", &c1, 0).await.is_empty());

    assert_eq!(store.channel_changes(app, &c1, 0, 4).await.unwrap().map(|r| r.len()), Some(4), "exactly the limit");
    assert_eq!(store.channel_changes(app, &c1, 0, 3).await.unwrap(), None, "one too many");
    assert_eq!(store.channel_changes(app, &c1, 301, 1).await.unwrap(), None);
    assert_eq!(store.channel_changes(app, &c1, 461, 1).await.unwrap().map(|r| r.len()), Some(1), "b once");
    assert_eq!(store.channel_changes(app, &c1, 501, 0).await.unwrap(), Some(Vec::new()));
}

/// Replaying a call leaves the same index; within a call an object's last write wins and the
/// channels only an earlier write put it on are left.
pub async fn channel_index_replays_and_repeats_within_a_call<S: Store>(store: &S) {
    let (app, a, b, c) =
        ("app1", context_channel("app1", "a"), context_channel("app1", "b"), context_channel("app1", "c"));
    let batch = vec![
        task_on("t1", 1, &[&a], &[], 100),
        task_on("t2", 1, &[&a, &b], &[], 100),
        task_on("t1", 2, &[&b], &[&a], 110),
        task_on("t1", 3, &[&c], &[&b], 120),
        task_on("t3", 1, &[&a], &[], 130),
    ];
    store.put_objects(app, &batch).await.unwrap();
    let mut once = Vec::new();
    for channel in [&a, &b, &c] {
        once.push((all_pages(store, app, channel, 2).await, changes(store, app, channel, 0).await));
    }
    let t1 = &batch[3];
    assert_eq!(once[0].1.iter().find(|r| r.id == "t1"), Some(&tombstone_entry(t1)), "left by an earlier write");
    assert_eq!(once[1].1.iter().find(|r| r.id == "t1"), Some(&tombstone_entry(t1)));
    assert_eq!(once[2].0, vec![live_entry(t1)]);
    assert_eq!(once[0].0.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["t2", "t3"]);
    store.put_objects(app, &batch).await.unwrap();
    for (channel, (page, changed)) in [&a, &b, &c].into_iter().zip(&once) {
        assert_eq!(&all_pages(store, app, channel, 2).await, page, "a replay changes nothing");
        assert_eq!(&changes(store, app, channel, 0).await, changed);
    }
    assert_eq!(store.get_objects(app, &[key("task", "t1")]).await.unwrap()[&key("task", "t1")], t1.row);
}

/// Tombstones stay at least the retention, then go; live entries stay. `store` keeps tombstones
/// for `retention`, a few seconds at most. Changes from further back than the retention are not
/// asked for (the resume window keeps callers inside it), so only later ones are checked.
pub async fn channel_tombstones_expire_after_the_retention<S: Store>(store: &S, retention: Duration) {
    let (app, c1) = ("app1", context_channel("app1", "c1"));
    let now = || clock::now_millis() as u64;
    let kept = task_on("kept", 1, &[&c1], &[], now());
    let gone = task_on("gone", 2, &[], &[&c1], now());
    store.put_objects(app, &[kept.clone(), gone.clone(), task_on("back", 1, &[], &[&c1], now())]).await.unwrap();
    // Re-entering the channel: the entry is live again and must not expire as the tombstone would.
    let back = task_on("back", 2, &[&c1], &[], now());
    store.put_objects(app, std::slice::from_ref(&back)).await.unwrap();
    let expected = vec![live_entry(&back), tombstone_entry(&gone), live_entry(&kept)];
    assert_eq!(changes(store, app, &c1, 0).await, expected);

    tokio::time::sleep(retention + Duration::from_millis(1500)).await;
    // A write gives a store that purges on writes its chance.
    let later = task_on("later", 1, &[&c1], &[], now());
    store.put_objects(app, std::slice::from_ref(&later)).await.unwrap();
    let since = later.index.changed_at - 500;
    assert_eq!(changes(store, app, &c1, since).await, vec![live_entry(&later)]);
    let rows = store.channel_changes(app, &c1, 0, 100).await.unwrap().expect("no overflow");
    assert!(rows.iter().all(|r| r.id != "gone"), "the tombstone expired: {rows:?}");
    assert_eq!(all_pages(store, app, &c1, 10).await, vec![live_entry(&back), live_entry(&kept), live_entry(&later)]);
}
