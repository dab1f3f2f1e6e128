//! `Registry::subscribe` within `Limits` (issue 14 item 5, the registry's side): subscriptions
//! per device and distinct filters per channel, sequentially and under concurrent subscribes.

use nexxus_worker::config::Limits;

use super::*;

fn limited(reg: Registry, device_subscriptions: usize, channel_filters: usize) -> Registry {
    reg.with_limits(Limits { device_subscriptions, channel_filters })
}

fn is_limit(r: Result<(), RegistryError>) -> bool {
    matches!(r, Err(RegistryError::LimitExceeded(_)))
}

every_topology!(subscriptions_per_device: device_limit_single, device_limit_cluster, device_limit_memory);
async fn subscriptions_per_device(topology: Topology) {
    let (reg, raw, app) = setup(topology).await;
    let reg = limited(reg, 3, 100);
    let a = addr(&app, Transport::Ios, "d1", "t1");
    let keys: Vec<_> = (0..4).map(|i| context_channel(&format!("c{i}")).key(&app, None).unwrap()).collect();
    for k in &keys[..3] {
        reg.subscribe(&app, "d1", k, std::slice::from_ref(&a)).await.unwrap();
    }
    let err = reg.subscribe(&app, "d1", &keys[3], std::slice::from_ref(&a)).await.unwrap_err();
    assert!(matches!(&err, RegistryError::LimitExceeded(m) if m.contains("TP_MAX_DEVICE_SUBSCRIPTIONS")), "{err}");
    assert_eq!(reg.device_subscriptions(&app, "d1").await.unwrap().len(), 3, "nothing left behind");
    assert!(!raw.exists(keys[3].as_str()).await, "the refused channel got no address");
    // Subscribing again to a held channel is always fine, and another device has its own bound.
    reg.subscribe(&app, "d1", &keys[0], std::slice::from_ref(&a)).await.unwrap();
    reg.subscribe(&app, "d2", &keys[3], &[]).await.unwrap();
    // Room again after an unsubscribe.
    reg.unsubscribe(&app, "d1", &keys[0], std::slice::from_ref(&a)).await.unwrap();
    reg.subscribe(&app, "d1", &keys[3], std::slice::from_ref(&a)).await.unwrap();
    assert_eq!(raw.smembers(keys[3].as_str()).await, set(&[&a.to_string()]));
    raw.cleanup(&app).await;
}

every_topology!(filters_per_channel: filter_limit_single, filter_limit_cluster, filter_limit_memory);
async fn filters_per_channel(topology: Topology) {
    let (reg, raw, app) = setup(topology).await;
    let reg = limited(reg, 100, 2);
    let channel = context_channel("c1");
    let base = channel.key(&app, None).unwrap();
    let index = format!("blg:{app}:filters|{base}");
    let variant = |n| channel.key(&app, Some(&filter(n))).unwrap();
    reg.subscribe(&app, "d1", &variant(1), &[]).await.unwrap();
    reg.subscribe(&app, "d2", &variant(2), &[]).await.unwrap();
    let err = reg.subscribe(&app, "d3", &variant(3), &[]).await.unwrap_err();
    assert!(matches!(&err, RegistryError::LimitExceeded(m) if m.contains("TP_MAX_CHANNEL_FILTERS")), "{err}");
    assert_eq!(raw.smembers(&index).await.len(), 2);
    assert!(reg.device_subscriptions(&app, "d3").await.unwrap().is_empty(), "nothing left behind");
    // An existing variant is fine for any device; so are unfiltered channels and other channels.
    reg.subscribe(&app, "d3", &variant(1), &[]).await.unwrap();
    reg.subscribe(&app, "d3", &base, &[]).await.unwrap();
    reg.subscribe(&app, "d3", &context_channel("c2").key(&app, Some(&filter(3))).unwrap(), &[]).await.unwrap();
    assert_eq!(reg.device_subscriptions(&app, "d3").await.unwrap().len(), 3);
    raw.cleanup(&app).await;
}

every_topology!(limits_under_concurrency: concurrent_limits_single, concurrent_limits_cluster, concurrent_limits_memory);
/// Forty subscribes at once over four connections (so that their commands interleave), one
/// device over distinct channels and forty devices over distinct filters of one channel: at
/// rest neither set is over its bound (act-then-check with undo), and every subscribe that
/// succeeded is in place.
async fn limits_under_concurrency(topology: Topology) {
    let (reg, raw, app) = setup(topology).await;
    let mut regs = vec![limited(reg.clone(), 5, 5)];
    if topology != Topology::Memory {
        for _ in 0..3 {
            let more = Registry::connect(&url(topology == Topology::Cluster)).await.unwrap();
            regs.push(limited(more, 5, 5));
        }
    }
    let channel = context_channel("c1");
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let (reg, app, channel) = (regs[i as usize % regs.len()].clone(), app.clone(), channel.clone());
            tokio::spawn(async move {
                let own = context_channel(&format!("own{i}")).key(&app, None).unwrap();
                let one = reg.subscribe(&app, "d1", &own, &[]).await;
                let variant = channel.key(&app, Some(&filter(i))).unwrap();
                let two = reg.subscribe(&app, &format!("v{i}"), &variant, &[]).await;
                for r in [&one, &two] {
                    assert!(r.is_ok() || is_limit(r.clone()), "{r:?}");
                }
                (one.is_ok(), two.is_ok().then(|| (format!("v{i}"), variant)))
            })
        })
        .collect();
    let mut held = 0;
    let mut variants = Vec::new();
    for t in tasks {
        let (one, two) = t.await.unwrap();
        held += usize::from(one);
        variants.extend(two);
    }
    let subs = reg.device_subscriptions(&app, "d1").await.unwrap();
    // Two racing for the last place may both be refused, so fewer than 5 is possible; more never.
    assert!(subs.len() <= 5, "{} subscriptions held", subs.len());
    assert_eq!(subs.len(), held, "every accepted subscribe is held, every refused one undone");
    let base = channel.key(&app, None).unwrap();
    let index = raw.smembers(&format!("blg:{app}:filters|{base}")).await;
    assert!(index.len() <= 5, "{} filters listed", index.len());
    for (device, variant) in &variants {
        assert!(index.contains(variant.as_str()), "{device}'s accepted {variant} is routed");
    }
    raw.cleanup(&app).await;
}
