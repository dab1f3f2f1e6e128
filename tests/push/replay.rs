//! An upstream replay reaches each device once: the push transports drop a transport message
//! identical to one they pushed, and push every other one (another device chunk, another
//! version).

use std::time::Duration;

use serde_json::Value;

use super::{common, eventually, message_at, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replayed_transport_message_is_pushed_once_per_device() {
    let stack = Stack::new("push-replay", false).await;
    let app = stack.apps[0].clone();
    let platforms = [("ios", "ios_transport"), ("android", "android_transport")];
    let device = |d: &str, platform: &str| (format!("{d}-{platform}"), format!("ok-{d}-{app}-{platform}"));
    // What a crashed upstream role sends again is the same bytes: `v1` four times, the repeats
    // in the same batch as the first and (below) in a later one. The other device chunk of
    // version 1 and version 2 are different messages and must be pushed.
    let v1 = |p: &str| message_at(&app, "o1", 1, "v1", &[device("d1", p), device("d2", p)]);
    for (p, topic) in platforms {
        let other_chunk = message_at(&app, "o1", 1, "v1", &[device("d3", p)]);
        let v2 = message_at(&app, "o1", 2, "v2", &[device("d1", p)]);
        stack.send(topic, "o1", &[v1(p), v1(p), other_chunk, v2, v1(p)]).await;
    }
    let ports = [common::free_port(), common::free_port()];
    let with_http = |port: u16| [("TP_HTTP_PORT", port.to_string()), ("TP_HTTP_HOST", "127.0.0.1".to_string())];
    let _ios = stack.start("ios_transport", 0, &with_http(ports[0]));
    let _android = stack.start("android_transport", 0, &with_http(ports[1]));
    // Per device and version, APNs gets a silent push and an alert, FCM one data message.
    eventually("the first pushes", || stack.apns.delivered().len() >= 8 && stack.fcm.delivered().len() >= 4).await;
    // The replay after its pushes ended, then version 3: once 3 arrived (same key, in order),
    // the replay before it was handled.
    for (p, topic) in platforms {
        stack.send(topic, "o1", &[v1(p), message_at(&app, "o1", 3, "v3", &[device("d1", p)])]).await;
    }
    eventually("version 3", || stack.apns.delivered().len() >= 10 && stack.fcm.delivered().len() >= 5).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Each (device, version) once: a silent push and an alert on APNs, a data message on FCM.
    let wanted = [("d1", 1), ("d2", 1), ("d3", 1), ("d1", 2), ("d1", 3)];
    let expect = |p: &str, kinds: &[&str]| {
        let mut e: Vec<(String, String, u64)> =
            kinds.iter().flat_map(|k| wanted.map(|(d, v)| (k.to_string(), device(d, p).1, v))).collect();
        e.sort();
        e
    };
    let version = |delta: &Value| delta["new"][0]["version"].as_u64().unwrap();
    let mut apns: Vec<(String, String, u64)> = (stack.apns.delivered().into_iter())
        .map(|r| match r.headers["apns-push-type"].as_str() {
            "alert" => {
                assert!(r.headers.contains_key("apns-collapse-id"), "an alert collapses with its own repeats");
                ("alert".into(), r.token, r.body["aps"]["alert"].as_str().unwrap()[1..].parse().unwrap())
            }
            kind => (kind.into(), r.token, version(&r.body["data"])),
        })
        .collect();
    apns.sort();
    assert_eq!(apns, expect("ios", &["alert", "background"]));
    let mut fcm: Vec<(String, String, u64)> = (stack.fcm.delivered().into_iter())
        .map(|r| ("data".into(), r.token, version(&serde_json::from_str(&r.data["data"]).unwrap())))
        .collect();
    fcm.sort();
    assert_eq!(fcm, expect("android", &["data"]));

    for (port, provider) in ports.into_iter().zip(["apns", "fcm"]) {
        let series = format!("nexxus_push_replays_suppressed_total{{provider=\"{provider}\"}} 3");
        common::wait_until(Duration::from_secs(30), &format!("three {provider} replays suppressed"), || {
            common::http_get(port, "/metrics").is_some_and(|(_, b)| b.lines().any(|l| l == series))
        })
        .await;
    }
}
