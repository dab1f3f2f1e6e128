use std::time::Duration;

use super::*;

fn topics(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn a_group_reads_in_order_and_commits_trim_the_log() {
    let broker = Broker::new(100);
    let c = broker.consumer("g", &topics(&["t"]));
    let first = broker.append("t", Some(b"k".to_vec()), b"1".to_vec()).await;
    let second = broker.append("t", None, b"2".to_vec()).await;
    assert_eq!(second, first + 1);
    let m = c.recv().await;
    assert_eq!((m.offset, m.payload.as_slice(), m.key.as_deref()), (first, &b"1"[..], Some(&b"k"[..])));
    assert_eq!(c.recv().await.payload, b"2");
    assert!(c.poll().is_none());
    assert_eq!(broker.lag("t")["g"], 2);
    assert!(!broker.is_idle());
    c.commit("t", second + 1);
    assert_eq!(broker.lag("t")["g"], 0);
    assert!(broker.is_idle());
    assert!(broker.tail("t", 10).is_empty(), "committed records are trimmed");
}

#[tokio::test]
async fn seek_redoes_a_batch_and_two_groups_each_see_everything() {
    let broker = Broker::new(100);
    let a = broker.consumer("a", &topics(&["t"]));
    let b = broker.consumer("b", &topics(&["t"]));
    let o = broker.append("t", None, b"x".to_vec()).await;
    broker.append("t", None, b"y".to_vec()).await;
    assert_eq!(a.recv().await.offset, o);
    assert_eq!(a.recv().await.offset, o + 1);
    a.seek("t", o);
    assert_eq!(a.recv().await.offset, o, "rewound to the batch start");
    a.commit("t", o + 2);
    // `b` has committed nothing, so the records stay for it.
    assert_eq!(b.recv().await.offset, o);
    assert_eq!(broker.tail("t", 10).len(), 2);
    b.commit("t", o + 2);
    assert!(broker.tail("t", 10).is_empty());
}

#[tokio::test]
async fn a_full_log_makes_producers_wait_until_a_commit() {
    let broker = Broker::new(2);
    let c = broker.consumer("g", &topics(&["t"]));
    broker.append("t", None, b"1".to_vec()).await;
    let last = broker.append("t", None, b"2".to_vec()).await;
    let b2 = broker.clone();
    let blocked = tokio::spawn(async move { b2.append("t", None, b"3".to_vec()).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!blocked.is_finished(), "the third append waits for room");
    c.recv().await;
    c.recv().await;
    c.commit("t", last + 1);
    let third = tokio::time::timeout(Duration::from_secs(5), blocked).await.expect("woken").expect("task");
    assert_eq!(third, last + 1);
}

#[tokio::test]
async fn a_topic_nobody_reads_keeps_its_newest_records() {
    let broker = Broker::new(3);
    for i in 0..5u8 {
        broker.append("dead_letter", None, vec![i]).await;
    }
    let kept: Vec<u8> = broker.tail("dead_letter", 10).iter().map(|m| m.payload[0]).collect();
    assert_eq!(kept, vec![2, 3, 4]);
    assert_eq!(broker.dropped("dead_letter"), 2);
}

#[tokio::test]
async fn a_waiting_consumer_wakes_on_any_of_its_topics() {
    let broker = Broker::new(10);
    let c = broker.consumer("g", &topics(&["own", "broadcast"]));
    let waiter = tokio::spawn(async move { c.recv().await.topic.to_string() });
    tokio::time::sleep(Duration::from_millis(20)).await;
    broker.append("broadcast", None, b"b".to_vec()).await;
    let topic = tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("woken").expect("task");
    assert_eq!(topic, "broadcast");
}

#[tokio::test]
async fn offsets_do_not_repeat_across_brokers_of_later_lives() {
    let first = Broker::new(10);
    let mut last = 0;
    for _ in 0..100 {
        last = first.append("t", None, b"x".to_vec()).await;
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
    let second = Broker::new(10);
    assert!(second.append("t", None, b"x".to_vec()).await > last);
}

#[tokio::test]
async fn topics_are_bounded_in_bytes_too() {
    let big = vec![b'x'; 1 << 20];
    // Nobody reads it: the newest records stay, within the byte bound.
    let broker = Broker::new(10_000);
    for _ in 0..100 {
        broker.append("dead", None, big.clone()).await;
    }
    let kept = broker.tail("dead", 10_000);
    assert_eq!(kept.len(), MAX_LOG_BYTES / (1 << 20));
    assert_eq!(broker.dropped("dead"), 100 - kept.len() as u64);
    // A consumed topic makes producers wait at the byte bound, and takes more once committed.
    let c = broker.consumer("g", &topics(&["t"]));
    for _ in 0..MAX_LOG_BYTES / (1 << 20) {
        broker.append("t", None, big.clone()).await;
    }
    let blocked = tokio::time::timeout(Duration::from_millis(100), broker.append("t", None, big.clone())).await;
    assert!(blocked.is_err(), "the 65th MiB waits for room");
    let last = c.recv().await.offset;
    c.commit("t", last + 1);
    tokio::time::timeout(Duration::from_secs(1), broker.append("t", None, big.clone()))
        .await
        .expect("room after a commit");
    // One record larger than the bound still goes into an empty log.
    let huge = vec![b'x'; MAX_LOG_BYTES + 1];
    let fresh = Broker::new(10);
    let _c = fresh.consumer("g", &topics(&["u"]));
    tokio::time::timeout(Duration::from_secs(1), fresh.append("u", None, huge)).await.expect("an empty log takes it");
}

#[tokio::test]
async fn a_batch_is_appended_whole_or_not_at_all() {
    let broker = Broker::new(4);
    let c = broker.consumer("g", &topics(&["t"]));
    let one = |b: u8| (None, vec![b]);
    assert_eq!(broker.append_all("t", vec![one(1), one(2)]).await, Ok(2));
    // Room for two more, not three: the batch waits, and nothing of it is visible meanwhile.
    let b2 = broker.clone();
    let blocked = tokio::spawn(async move { b2.append_all("t", vec![one(3), one(4), one(5)]).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!blocked.is_finished(), "waits for room for all three");
    assert_eq!(broker.tail("t", 10).len(), 2, "none of the batch is in");
    // Given up (as the ingress does after its wait): still nothing of it.
    let b3 = broker.clone();
    let gave_up = tokio::time::timeout(Duration::from_millis(50), async move {
        b3.append_all("t", vec![one(6), one(7), one(8)]).await
    })
    .await;
    assert!(gave_up.is_err());
    assert_eq!(broker.tail("t", 10).len(), 2);
    let first = c.recv().await;
    c.recv().await;
    c.commit("t", first.offset + 2);
    assert_eq!(tokio::time::timeout(Duration::from_secs(5), blocked).await.expect("woken").expect("task"), Ok(3));
    let all: Vec<u8> = broker.tail("t", 10).iter().map(|m| m.payload[0]).collect();
    assert_eq!(all, vec![3, 4, 5]);
    assert!(
        broker.append_all("t", (0..5).map(one).collect()).await.is_err_and(|e| e.contains("more than")),
        "never fits"
    );
}
