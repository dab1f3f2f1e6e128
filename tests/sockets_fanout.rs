//! Channel-addressed fan-out with real clients, Kafka, Redis, Cassandra and every role its own
//! process: many clients on one channel on each of two sockets transports, with a filter
//! entered, left and re-entered, a user-scoped channel, devices on two channels at once, a
//! subscription made through the `track` role (which the transport does not see) and an
//! unsubscribe through the socket. Every client receives exactly the frames a device list
//! would have given it, each once, and nothing else.

mod common;

use common::stack::{pipeline_topics, TestStack};
use common::ws::Client;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::join_all;
use nexxus_worker::model::{Channel, Filter};
use nexxus_worker::registry::Registry;
use nexxus_worker::transport::jwt::{self, Claims};
use nexxus_worker::workers::transport_manager::SOCKETS_BY_CHANNEL_MIN;
use serde_json::{json, Value};
use tokio::net::TcpStream;

const SECRET: &str = "secret-of-the-fanout-app";

/// What a client subscribes to.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Plain,
    Filtered,
    Both,
    User1,
    User2,
    Elsewhere,
    /// A plain client that unsubscribed.
    Left,
}

/// Clients of each kind on each transport: the plain channel alone has more members than the
/// threshold, as has the user channel.
const COUNTS: [(Kind, usize); 6] = [
    (Kind::Plain, 40),
    (Kind::Filtered, 35),
    (Kind::Both, 3),
    (Kind::User1, 34),
    (Kind::User2, 2),
    (Kind::Elsewhere, 1),
];

struct Keys {
    plain: String,
    filtered: String,
    user1: String,
}

/// A frame reduced to (kind, version, subscriptions) per delta, in order.
type Seen = Vec<(String, u64, Vec<String>)>;

fn reduce(frame: &Value) -> Seen {
    assert_eq!(frame["event"], "message", "{frame}");
    let mut out = Vec::new();
    for kind in ["new", "updated", "deleted"] {
        for d in frame["data"][kind].as_array().expect("deltas") {
            let subs = d["subscriptions"].as_array().expect("subscriptions");
            let subs = subs.iter().map(|s| s.as_str().unwrap_or_default().to_string()).collect();
            out.push((kind.to_string(), d["version"].as_u64().expect("version"), subs));
        }
    }
    out
}

fn token(app: &str, device: &str, user: Option<&str>) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 600;
    jwt::sign(
        &Claims { application_id: app.into(), device_id: device.into(), exp, user_id: user.map(String::from) },
        SECRET,
    )
}

fn filter() -> Value {
    json!({"and":[{"is":{"status":"open"}}]})
}

async fn listen(stack: &TestStack, index: u32) -> (common::Reaper, u16) {
    let port = common::free_port();
    let proc = stack.start("sockets_transport", index, &[("TP_SCKT_PORT", port.to_string())]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "sockets_transport-{index} did not listen");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (proc, port)
}

/// Connects and subscribes one client of `kind`.
async fn client(app: &str, port: u16, index: u32, kind: Kind, n: usize) -> (Kind, Client) {
    let device = format!("i{index}-{kind:?}-{n}").to_lowercase();
    let user = match kind {
        Kind::User1 => Some("u1"),
        Kind::User2 => Some("u2"),
        _ => None,
    };
    let mut c = Client::ready(port, &token(app, &device, user)).await;
    let context = |ctx: &str| json!({"model":"task","context":ctx});
    let subs = match kind {
        Kind::Plain => vec![(context("c1"), None)],
        Kind::Filtered => vec![(context("c1"), Some(filter()))],
        Kind::Both => vec![(context("c1"), None), (context("c1"), Some(filter()))],
        Kind::User1 => vec![(json!({"model":"task","context":"c1","user":"u1"}), None)],
        Kind::User2 => vec![(json!({"model":"task","context":"c1","user":"u2"}), None)],
        Kind::Elsewhere => vec![(context("c2"), None)],
        Kind::Left => Vec::new(),
    };
    for (channel, filters) in subs {
        let r = c.subscribe(channel, filters).await;
        assert_eq!(r["event"], "subscribed", "{device}: {r}");
    }
    (kind, c)
}

fn update(app: &str, patch: Value) -> Value {
    json!({"op":"update","application_id":app,"timestamp":1_700_000_000_000_100u64,"patches":[patch]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_clients_on_one_channel_on_two_transports_get_exactly_their_deliveries() {
    let mut topics = pipeline_topics(2);
    topics.extend([("sockets_transport-0", 1), ("sockets_transport-1", 1)]);
    let stack = TestStack::new("sock-fanout", true, &[("TP_SCKT_HOST", "127.0.0.1")], &topics).await;
    let app = format!("{}fan", stack.unique);
    common::app_put(&stack.env, &json!({"id": app, "jwt_secret": SECRET, "schema": {"task": {}}}));
    let _procs = ["aggregation", "write", "track"].map(|r| stack.start(r, 0, &[]));
    let tm_http = common::free_port();
    let _tm = stack.start("transport_manager", 0, &[("TP_HTTP_PORT", tm_http.to_string())]);
    let (_s0, p0) = listen(&stack, 0).await;
    let (_s1, p1) = listen(&stack, 1).await;
    let c1 = Channel { model: "task".into(), context: Some("c1".into()), ..Channel::default() };
    let keys = Keys {
        plain: c1.key(&app, None).unwrap().as_str().to_string(),
        filtered: c1.key(&app, Some(&Filter::parse(&filter()).unwrap())).unwrap().as_str().to_string(),
        user1: Channel { user: Some("u1".into()), ..c1.clone() }.key(&app, None).unwrap().as_str().to_string(),
    };
    assert!(COUNTS[0].1 >= SOCKETS_BY_CHANNEL_MIN && COUNTS[3].1 >= SOCKETS_BY_CHANNEL_MIN);

    let mut joins = Vec::new();
    for (index, port) in [(0, p0), (1, p1)] {
        for (kind, count) in COUNTS {
            joins.extend((0..count).map(|n| client(&app, port, index, kind, n)));
        }
    }
    let mut clients: Vec<(Kind, Client)> = join_all(joins).await;
    // One more per transport, subscribed later through the track role.
    let mut tracked = vec![
        Client::ready(p0, &token(&app, "tracked-0", None)).await,
        Client::ready(p1, &token(&app, "tracked-1", None)).await,
    ];

    let object = json!({"id":"t1","type":"task","context_id":"c1","user_id":"u1","status":"open","title":"x"});
    let create = json!({"op":"create","application_id":app,"timestamp":1_700_000_000_000_000u64,"object":object});
    stack.send("aggregation", "t1", &[create]).await;
    let expected_1 = |kind: Kind| -> Option<Seen> {
        let (p, f, u) = (&keys.plain, &keys.filtered, &keys.user1);
        match kind {
            Kind::Plain => Some(vec![("new".into(), 1, vec![p.clone()])]),
            Kind::Filtered => Some(vec![("new".into(), 1, vec![f.clone()])]),
            Kind::Both => Some(vec![("new".into(), 1, vec![p.clone(), f.clone()])]),
            Kind::User1 => Some(vec![("new".into(), 1, vec![u.clone()])]),
            Kind::User2 | Kind::Elsewhere | Kind::Left => None,
        }
    };
    expect(&mut clients, expected_1).await;

    // The track role subscribes the tracked devices: the transports' views of the plain
    // channel are now behind the registry, and must be read again.
    for i in 0..2 {
        let sub = json!({"op":"subscribe","application_id":app,"device_id":format!("tracked-{i}"),
            "channel":{"model":"task","context":"c1"}});
        stack.send("track", &format!("tracked-{i}"), &[sub]).await;
    }
    let registry = Registry::connect(&stack.cfg.redis_url).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let members = registry.channel_members(&[keys.plain.as_str()]).await.unwrap().remove(0);
        if (0..2).all(|i| members.iter().any(|m| m.contains(&format!("|tracked-{i}|")))) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "track subscriptions not applied");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    stack
        .send("aggregation", "t1", &[update(&app, json!({"op":"replace","path":"task/t1/status","value":"closed"}))])
        .await;
    let updated = |v: u64, k: &String| ("updated".to_string(), v, vec![k.clone()]);
    let expected_2 = |kind: Kind| -> Option<Seen> {
        match kind {
            Kind::Plain => Some(vec![updated(2, &keys.plain)]),
            Kind::Filtered => Some(vec![("deleted".into(), 2, vec![keys.filtered.clone()])]),
            Kind::Both => Some(vec![updated(2, &keys.plain), ("deleted".into(), 2, vec![keys.filtered.clone()])]),
            Kind::User1 => Some(vec![updated(2, &keys.user1)]),
            Kind::User2 | Kind::Elsewhere | Kind::Left => None,
        }
    };
    expect(&mut clients, expected_2).await;
    for t in &mut tracked {
        assert_eq!(reduce(&t.event().await), vec![updated(2, &keys.plain)]);
    }

    // The first plain client of each transport leaves through its socket.
    for (kind, c) in clients.iter_mut().filter(|(k, _)| *k == Kind::Plain).step_by(COUNTS[0].1) {
        c.send(json!({"event":"unsubscribe","data":{"channel":{"model":"task","context":"c1"}}})).await;
        assert_eq!(c.event().await["event"], "unsubscribed");
        *kind = Kind::Left;
    }
    assert_eq!(clients.iter().filter(|(k, _)| *k == Kind::Left).count(), 2);

    // Stays outside the filter, then re-enters it.
    stack.send("aggregation", "t1", &[update(&app, json!({"op":"increment","path":"task/t1/n","value":1}))]).await;
    stack
        .send("aggregation", "t1", &[update(&app, json!({"op":"replace","path":"task/t1/status","value":"open"}))])
        .await;
    let expected_3 = |kind: Kind| -> Option<Seen> {
        match kind {
            Kind::Plain | Kind::Both => Some(vec![updated(3, &keys.plain)]),
            Kind::User1 => Some(vec![updated(3, &keys.user1)]),
            _ => None,
        }
    };
    let expected_4 = |kind: Kind| -> Option<Seen> {
        let entered = ("new".to_string(), 4, vec![keys.filtered.clone()]);
        match kind {
            Kind::Plain => Some(vec![updated(4, &keys.plain)]),
            Kind::Filtered => Some(vec![entered]),
            Kind::Both => Some(vec![entered, updated(4, &keys.plain)]),
            Kind::User1 => Some(vec![updated(4, &keys.user1)]),
            _ => None,
        }
    };
    expect(&mut clients, expected_3).await;
    expect(&mut clients, expected_4).await;
    for t in &mut tracked {
        assert_eq!(reduce(&t.event().await), vec![updated(3, &keys.plain)]);
        assert_eq!(reduce(&t.event().await), vec![updated(4, &keys.plain)]);
    }

    // Nothing else, to anyone: no duplicate, nothing for the clients who left or never matched.
    let everyone = clients.iter_mut().map(|(_, c)| c).chain(tracked.iter_mut());
    for r in join_all(everyone.map(|c| c.silent(Duration::from_millis(1500)))).await {
        assert_eq!(r, Ok(()), "an extra frame");
    }
    // The audiences above the threshold went by channel, and the metric says so.
    let (status, body) = common::http_get(tm_http, "/metrics").expect("the transport manager's metrics");
    assert_eq!(status, 200);
    let counted = body
        .lines()
        .find_map(|l| l.strip_prefix("nexxus_transport_channel_messages_total "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert!(counted.is_some_and(|n| n >= 1.0), "channel-addressed messages counted: {counted:?}");
    stack.finish().await;
}

/// Every client whose `expected` is a delivery receives it as its next frame; the others are
/// checked to have received nothing at the end of the test.
async fn expect(clients: &mut [(Kind, Client)], expected: impl Fn(Kind) -> Option<Seen>) {
    let waits = clients.iter_mut().filter_map(|(kind, c)| expected(*kind).map(|e| (*kind, c, e)));
    let results = join_all(waits.map(|(kind, c, e)| async move { (kind, reduce(&c.event().await), e) })).await;
    for (kind, got, want) in results {
        assert_eq!(got, want, "{kind:?}");
    }
}
