//! `Registry::subscribe_device` and `unsubscribe_device`: the one subscribe rule of the
//! `track` role and of a socket's own frames.

use super::*;

every_topology!(device_subscription: device_subscription_single, device_subscription_cluster, device_subscription_memory);
async fn device_subscription(topology: Topology) {
    let (reg, raw, app) = setup(topology).await;
    let key = context_channel("c1").key(&app, None).unwrap();
    // No record and no socket asking: nothing to subscribe with, and nothing is written.
    assert!(!reg.subscribe_device(&app, "d1", &key, None).await.unwrap());
    assert!(raw.keys_of(&app).await.is_empty(), "left: {:?}", raw.keys_of(&app).await);

    // A registered device subscribes with its push token.
    reg.put_device(&device(&app, "d1", "tok1")).await.unwrap();
    assert!(reg.subscribe_device(&app, "d1", &key, None).await.unwrap());
    let push = format!("ios_transport|d1|tok1|{app}");
    assert_eq!(raw.smembers(key.as_str()).await, set(&[&push]));
    assert_eq!(reg.device_subscriptions(&app, "d1").await.unwrap(), vec![key.to_string()]);

    // A socket's frame adds the socket's own address, whether the record names it or not.
    let sock = addr(&app, Transport::Sockets(2), "d1", "life");
    assert!(reg.subscribe_device(&app, "d1", &key, Some(&sock)).await.unwrap());
    assert_eq!(raw.smembers(key.as_str()).await, set(&[&push, &sock.to_string()]));
    let lone = addr(&app, Transport::Sockets(2), "d2", "life");
    assert!(reg.subscribe_device(&app, "d2", &key, Some(&lone)).await.unwrap());
    assert_eq!(raw.smembers(key.as_str()).await, set(&[&push, &sock.to_string(), &lone.to_string()]));

    // Leaving removes every address of the device that leaves, and only those.
    reg.unsubscribe_device(&app, "d1", &key, Some(&sock)).await.unwrap();
    assert_eq!(raw.smembers(key.as_str()).await, set(&[&lone.to_string()]));
    assert!(reg.device_subscriptions(&app, "d1").await.unwrap().is_empty());
    reg.unsubscribe_device(&app, "d2", &key, Some(&lone)).await.unwrap();
    reg.unsubscribe_device(&app, "d2", &key, Some(&lone)).await.unwrap(); // idempotent
    reg.delete_device(&app, "d1").await.unwrap();
    assert!(raw.keys_of(&app).await.is_empty(), "left: {:?}", raw.keys_of(&app).await);
    raw.cleanup(&app).await;
}

every_topology!(subscribe_racing_attach: subscribe_racing_attach_single, subscribe_racing_attach_cluster, subscribe_racing_attach_memory);
/// A subscribe and a socket attaching, at once, for many devices: whichever runs second sees
/// the other, so the channel ends with every address of every device.
async fn subscribe_racing_attach(topology: Topology) {
    let (reg, raw, app) = setup(topology).await;
    let key = context_channel("c1").key(&app, None).unwrap();
    let mut races = Vec::new();
    let mut wanted = BTreeSet::new();
    for i in 0..80 {
        let dev = format!("d{i}");
        reg.put_device(&device(&app, &dev, &format!("tok{i}"))).await.unwrap();
        let sock = addr(&app, Transport::Sockets(1), &dev, "life");
        wanted.insert(format!("ios_transport|{dev}|tok{i}|{app}"));
        wanted.insert(sock.to_string());
        // Half of them asked by another socket of the device (the sockets transport's frame).
        let via = (i % 8 >= 4).then(|| addr(&app, Transport::Sockets(0), &dev, "other"));
        wanted.extend(via.iter().map(ToString::to_string));
        let (reg, app, key) = (reg.clone(), app.clone(), key.clone());
        races.push(tokio::spawn(async move {
            // Started a few round trips apart, so the two meet at different steps.
            let late = async {
                for _ in 0..i % 4 {
                    reg.ping().await.unwrap();
                }
                reg.subscribe_device(&app, &dev, &key, via.as_ref()).await
            };
            let (subscribed, attached) = tokio::join!(late, reg.attach_socket(&sock));
            assert!(subscribed.unwrap());
            attached.unwrap();
        }));
    }
    for race in races {
        race.await.unwrap();
    }
    let members = raw.smembers(key.as_str()).await;
    let missing: Vec<&String> = wanted.difference(&members).collect();
    assert!(missing.is_empty(), "addresses a race lost: {missing:?}");
    raw.cleanup(&app).await;
}
