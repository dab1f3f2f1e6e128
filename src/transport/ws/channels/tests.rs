use super::*;

const K1: &str = "blg:app:context:c1:task";
const K2: &str = "blg:app:task";

fn addr(index: u32, device: &str, token: &str) -> DeviceAddress {
    DeviceAddress {
        transport: Transport::Sockets(index),
        device_id: device.into(),
        token: token.into(),
        application_id: "app".into(),
    }
}

async fn subscribe(registry: &Registry, key: &str, a: &DeviceAddress) {
    let key = ChannelKey::from_stored(key.into());
    registry.subscribe("app", &a.device_id, &key, std::slice::from_ref(a)).await.expect("subscribe");
}

/// The reference a transport manager would send after reading `key`'s members now.
async fn routed(registry: &Registry, key: &str) -> ChannelRef {
    let members = registry.channel_members(&[key]).await.expect("read").remove(0);
    let on_0 = members.iter().filter(|m| sockets_index(m) == Some(0)).map(String::as_str);
    ChannelRef { key: key.into(), members: MembersDigest::of(on_0) }
}

fn sorted(groups: Vec<(Vec<usize>, Vec<Arc<str>>)>) -> Vec<(Vec<usize>, Vec<String>)> {
    groups
        .into_iter()
        .map(|(held, devices)| {
            let mut ids: Vec<String> = devices.iter().map(|d| d.to_string()).collect();
            ids.sort();
            (held, ids)
        })
        .collect()
}

#[tokio::test]
async fn a_view_routed_by_is_used_and_any_other_is_read_again() {
    let registry = Registry::memory();
    let views = ChannelViews::new(0, "life".into(), 16);
    for d in ["d1", "d2"] {
        subscribe(&registry, K1, &addr(0, d, "life")).await;
    }
    // Not delivered to, but counted by both sides: an earlier life, another transport.
    subscribe(&registry, K1, &addr(0, "old", "earlier-life")).await;
    subscribe(&registry, K1, &addr(1, "elsewhere", "life")).await;

    let r = views.resolve(&registry, &[routed(&registry, K1).await]).await.expect("resolve");
    assert_eq!((r.read, sorted(r.groups)), (1, vec![(vec![0], vec!["d1".into(), "d2".into()])]));
    let r = views.resolve(&registry, &[routed(&registry, K1).await]).await.expect("resolve");
    assert_eq!(r.read, 0, "the view is the one routed by");

    // A subscription the transport did not see (the track role's): the digest differs, read again.
    subscribe(&registry, K1, &addr(0, "d3", "life")).await;
    let r = views.resolve(&registry, &[routed(&registry, K1).await]).await.expect("resolve");
    assert_eq!((r.read, sorted(r.groups)), (1, vec![(vec![0], vec!["d1".into(), "d2".into(), "d3".into()])]));

    // Its own connections' changes keep the view current without a read.
    let d4 = addr(0, "d4", "life");
    subscribe(&registry, K1, &d4).await;
    views.subscribed(K1, &d4);
    let r = views.resolve(&registry, &[routed(&registry, K1).await]).await.expect("resolve");
    assert_eq!((r.read, sorted(r.groups)[0].1.len()), (0, 4));
    let key = ChannelKey::from_stored(K1.into());
    registry.unsubscribe("app", "d1", &key, &[addr(0, "d1", "life")]).await.expect("unsubscribe");
    views.unsubscribed(K1, &addr(0, "d1", "life"));
    let r = views.resolve(&registry, &[routed(&registry, K1).await]).await.expect("resolve");
    assert_eq!((r.read, sorted(r.groups)), (0, vec![(vec![0], vec!["d2".into(), "d3".into(), "d4".into()])]));
}

#[tokio::test]
async fn a_message_routed_by_an_older_read_reaches_the_channel_as_it_is_now() {
    let registry = Registry::memory();
    let views = ChannelViews::new(0, "life".into(), 16);
    subscribe(&registry, K1, &addr(0, "d1", "life")).await;
    let before = routed(&registry, K1).await;
    let key = ChannelKey::from_stored(K1.into());
    registry.unsubscribe("app", "d1", &key, &[addr(0, "d1", "life")]).await.expect("unsubscribe");
    subscribe(&registry, K1, &addr(0, "d2", "life")).await;
    let r = views.resolve(&registry, &[before]).await.expect("resolve");
    assert_eq!(sorted(r.groups), vec![(vec![0], vec!["d2".into()])], "as if routed after both changes");
}

#[tokio::test]
async fn a_device_on_several_channels_is_in_one_group_by_the_channels_it_holds() {
    let registry = Registry::memory();
    let views = ChannelViews::new(0, "life".into(), 16);
    for (key, d) in [(K1, "a"), (K1, "both"), (K2, "both"), (K2, "b")] {
        subscribe(&registry, key, &addr(0, d, "life")).await;
    }
    let refs = [routed(&registry, K1).await, routed(&registry, K2).await];
    let r = views.resolve(&registry, &refs).await.expect("resolve");
    assert_eq!(
        sorted(r.groups),
        vec![(vec![0], vec!["a".into()]), (vec![0, 1], vec!["both".into()]), (vec![1], vec!["b".into()])]
    );
    views.detached(&addr(0, "both", "life"));
    for key in [K1, K2] {
        let k = ChannelKey::from_stored(key.into());
        registry.unsubscribe("app", "both", &k, &[addr(0, "both", "life")]).await.expect("unsubscribe");
    }
    let refs = [routed(&registry, K1).await, routed(&registry, K2).await];
    let r = views.resolve(&registry, &refs).await.expect("resolve");
    assert_eq!(r.read, 0, "a detach updates every view");
    assert_eq!(sorted(r.groups), vec![(vec![0], vec!["a".into()]), (vec![1], vec!["b".into()])]);
}

#[tokio::test]
async fn views_are_bounded() {
    let registry = Registry::memory();
    let views = ChannelViews::new(0, "life".into(), 1);
    subscribe(&registry, K1, &addr(0, "d1", "life")).await;
    subscribe(&registry, K2, &addr(0, "d2", "life")).await;
    let (r1, r2) = (routed(&registry, K1).await, routed(&registry, K2).await);
    assert_eq!(views.resolve(&registry, std::slice::from_ref(&r1)).await.map(|r| r.read).ok(), Some(1));
    assert_eq!(views.resolve(&registry, std::slice::from_ref(&r2)).await.map(|r| r.read).ok(), Some(1));
    assert_eq!(views.resolve(&registry, &[r1]).await.map(|r| r.read).ok(), Some(1), "K1 was forgotten");
}
