//! Several instances on a Redis backbone, as the real binary runs them: one provider connection
//! whatever happens (a source that refuses a second one per key, as providers do), every
//! client on every instance getting the same frames in the same order, takeover after
//! `kill -9` within 5 s, a paused or cut-off ingest fenced out, Redis restarted under load, a
//! late edge with a warm snapshot. Needs `redis-server` (skipped without it, except under CI).

mod common;

use common::cluster::{
    all_see_more, assert_consecutive, assert_increasing, finish, finish_connected, gauge,
    instance_config, stream_numbers, subscribe, wait_for_holder, Bed, Ended, Subscriber,
    SEE_WITHIN,
};
use common::process::{poll, Proxy};
use common::relay::{Mode, Relay};
use std::time::{Duration, Instant};

const LOCK_HELD: &str = "fxproxy_backbone_lock_held";

#[test]
fn three_instances_share_one_provider_connection_and_a_standby_takes_over_after_kill_9() {
    let Some(Bed {
        redis,
        keys,
        source,
        ..
    }) = Bed::start("backbone::three_instances")
    else {
        return;
    };
    let conf = instance_config(&source.url(), &redis.url(), "three", &keys, "");
    let proxies: Vec<Proxy> = (0..3).map(|_| Proxy::spawn(&conf)).collect();
    let all: Vec<&Proxy> = proxies.iter().collect();
    let holder = wait_for_holder(&all);
    let subs = subscribe(&all);
    all_see_more(&subs.iter().collect::<Vec<_>>(), &source, 25);
    assert_eq!(source.subscriptions(), 1, "one provider connection");
    assert_eq!(source.refused(), 0, "no standby tried to connect");

    let killed_at = Instant::now();
    proxies[holder].signal("KILL");
    let last_before = source.next_number();
    assert!(
        poll(Duration::from_secs(10), || source.subscriptions() == 2),
        "no standby took the provider connection over"
    );
    let took = source.accepted_at(1).expect("a second subscription") - killed_at;
    let (gone, rest): (Vec<Subscriber>, Vec<Subscriber>) = subs
        .into_iter()
        .partition(|s| s.name.starts_with(&format!("instance{holder}-")));
    let survivors: Vec<&Subscriber> = rest.iter().collect();
    for s in &survivors {
        assert!(
            s.wait_past(last_before, SEE_WITHIN),
            "{}: no quotes after the takeover",
            s.name
        );
    }
    let resumed = killed_at.elapsed();
    println!(
        "kill -9 of the ingest: a standby held the provider connection after {:.2} s; quotes resumed on every surviving client within {:.2} s",
        took.as_secs_f64(),
        resumed.as_secs_f64()
    );
    assert!(took < Duration::from_secs(5), "takeover took {took:?}");
    all_see_more(&survivors, &source, 25);
    assert_eq!(
        source.refused(),
        0,
        "nobody connected while another held the key"
    );
    assert_eq!(source.most_at_once(), 1);

    let survivors_proxies: Vec<&Proxy> = proxies
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != holder)
        .map(|(_, p)| p)
        .collect();
    wait_for_holder(&survivors_proxies);
    finish_connected(rest, |name, numbers| {
        assert_increasing(name, numbers);
        // Consecutive but for one jump: what the source sent the dead ingest was never added.
        let jumps = numbers.windows(2).filter(|w| w[1] != w[0] + 1).count();
        assert!(jumps <= 1, "{name}: {jumps} gaps in {numbers:?}");
    });
    for p in &survivors_proxies {
        assert!(gauge(p, "fxproxy_backbone_frames_received_total") > 50.0);
        assert!(gauge(p, "fxproxy_backbone_lag_frames") < 100.0);
        assert_eq!(gauge(p, "fxproxy_backbone_duplicates_dropped_total"), 0.0);
    }
    for (name, numbers, ended) in finish(gone) {
        assert!(
            matches!(ended, Ended::Closed(_)),
            "{name}: its instance was killed"
        );
        assert_consecutive(&name, &numbers);
    }
    assert_increasing("the stream", &stream_numbers(&redis, "three"));
}

#[test]
fn an_ingest_paused_past_its_lock_expiry_adds_nothing_after_its_successor() {
    let Some(Bed {
        redis,
        keys,
        source,
        ..
    }) = Bed::start("backbone::paused_ingest")
    else {
        return;
    };
    let conf = instance_config(&source.url(), &redis.url(), "paused", &keys, "");
    let proxies: Vec<Proxy> = (0..2).map(|_| Proxy::spawn(&conf)).collect();
    let all: Vec<&Proxy> = proxies.iter().collect();
    let holder = wait_for_holder(&all);
    let other = 1 - holder;
    let subs = subscribe(&all);
    all_see_more(&subs.iter().collect::<Vec<_>>(), &source, 25);

    proxies[holder].signal("STOP");
    let paused_at = Instant::now();
    // Past the lock's expiry: the other instance wins it.
    assert!(
        poll(Duration::from_secs(10), || gauge(
            &proxies[other],
            LOCK_HELD
        ) == 1.0),
        "the other instance did not take the lock"
    );
    println!(
        "SIGSTOP: the other instance held the lock {:.2} s after the pause",
        paused_at.elapsed().as_secs_f64()
    );
    proxies[holder].signal("CONT");
    // The paused one finds its lock gone and closes its provider connection, which the
    // source held open meanwhile (refusing the successor, as a provider would).
    assert!(
        poll(Duration::from_secs(15), || source.subscriptions() == 2),
        "the successor never got the provider connection"
    );
    all_see_more(&subs.iter().collect::<Vec<_>>(), &source, 25);
    assert_eq!(gauge(&proxies[holder], LOCK_HELD), 0.0);
    assert_eq!(source.most_at_once(), 1);
    let fenced = gauge(&proxies[holder], "fxproxy_backbone_frames_fenced_total");
    println!("SIGCONT: {fenced} frame(s) of the paused ingest refused by the fence");
    finish_connected(subs, assert_increasing);
    assert_increasing("the stream", &stream_numbers(&redis, "paused"));
}

#[test]
fn an_ingest_cut_off_from_redis_is_fenced_out_when_it_comes_back() {
    let Some(Bed {
        redis,
        keys,
        source,
        ..
    }) = Bed::start("backbone::partitioned_ingest")
    else {
        return;
    };
    // The first instance reaches Redis through a relay the test can cut.
    let relay = Relay::start(redis.addr());
    let via_relay = format!("redis://{}", relay.addr());
    let first = Proxy::spawn(&instance_config(
        &source.url(),
        &via_relay,
        "cut",
        &keys,
        "",
    ));
    assert_eq!(wait_for_holder(&[&first]), 0);
    let second = Proxy::spawn(&instance_config(
        &source.url(),
        &redis.url(),
        "cut",
        &keys,
        "",
    ));
    let subs = subscribe(&[&first, &second]);
    all_see_more(&subs.iter().collect::<Vec<_>>(), &source, 25);

    // A partition: the holder goes on taking frames it cannot publish, until its lock lapses
    // and it closes the provider connection; the other wins the lock and connects.
    relay.set_mode(Mode::BlackHole);
    assert!(
        poll(Duration::from_secs(10), || source.subscriptions() == 2),
        "the other instance never took over"
    );
    assert!(subs[2].wait_past(source.next_number() + 10, SEE_WITHIN));
    // Healed: the frames it queued are refused by the fence, not added after the new ones.
    relay.set_mode(Mode::PassThrough);
    assert!(
        poll(Duration::from_secs(10), || gauge(
            &first,
            "fxproxy_backbone_frames_fenced_total"
        ) > 0.0),
        "the cut-off instance had frames queued, and the fence should have refused them"
    );
    all_see_more(&subs.iter().collect::<Vec<_>>(), &source, 25);
    println!(
        "partition: {} frame(s) refused by the fence",
        gauge(&first, "fxproxy_backbone_frames_fenced_total")
    );
    assert_eq!(source.most_at_once(), 1);
    finish_connected(subs, assert_increasing);
    assert_increasing("the stream", &stream_numbers(&redis, "cut"));
}

#[test]
fn redis_restarted_under_load_loses_and_repeats_nothing() {
    let Some(Bed {
        mut redis,
        keys,
        source,
        ..
    }) = Bed::start("backbone::redis_restart")
    else {
        return;
    };
    let conf = instance_config(&source.url(), &redis.url(), "restart", &keys, "");
    let proxies: Vec<Proxy> = (0..2).map(|_| Proxy::spawn(&conf)).collect();
    let all: Vec<&Proxy> = proxies.iter().collect();
    wait_for_holder(&all);
    let subs = subscribe(&all);
    all_see_more(&subs.iter().collect::<Vec<_>>(), &source, 25);

    redis.shutdown();
    for p in &proxies {
        let (mut code, mut body) = (0, String::new());
        assert!(
            poll(Duration::from_secs(5), || {
                (code, body) = common::healthz(p.addr);
                body.contains("\"status\":\"degraded\"")
            }),
            "/healthz did not say degraded: {body}"
        );
        assert!(body.contains("unreachable"), "{body}");
        assert_eq!(code, 503);
    }
    redis.restart();
    all_see_more(&subs.iter().collect::<Vec<_>>(), &source, 50);
    for p in &proxies {
        let mut body = String::new();
        assert!(
            poll(Duration::from_secs(5), || {
                body = common::healthz(p.addr).1;
                body.contains("\"status\":\"ok\"")
            }),
            "/healthz did not recover: {body}"
        );
    }
    assert_eq!(
        source.subscriptions(),
        1,
        "the provider connection was kept"
    );
    finish_connected(subs, assert_consecutive);
    let stream = stream_numbers(&redis, "restart");
    assert_consecutive("the stream", &stream);
}

#[test]
fn an_edge_started_later_serves_a_warm_snapshot_and_an_ingest_serves_no_clients() {
    let Some(Bed {
        redis,
        keys,
        source,
        ..
    }) = Bed::start("backbone::late_edge")
    else {
        return;
    };
    let ingest = Proxy::spawn(&instance_config(
        &source.url(),
        &redis.url(),
        "late",
        &keys,
        "backbone_role = ingest\n",
    ));
    assert_eq!(wait_for_holder(&[&ingest]), 0);
    let mut health = (0, String::new());
    assert!(
        poll(Duration::from_secs(5), || {
            health = common::healthz(ingest.addr);
            health.0 == 200
        }),
        "{health:?}"
    );
    let health = health.1;
    assert!(health.contains("\"role\":\"ingest\""), "{health}");
    // An ingest serves no quotes: a client is told to go to an edge.
    let refused = common::http_get(
        ingest.addr,
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    assert_eq!(common::status_of(&refused), 503, "{refused}");
    assert!(refused.contains("connect to an edge"));

    assert!(poll(Duration::from_secs(10), || redis
        .command(&["XLEN", "late:stream"])
        .first()
        .is_some_and(|n| n.parse::<u64>().unwrap_or(0) > 10)));
    source.pause(true);
    let last = source.next_number() - 1;
    assert!(poll(Duration::from_secs(5), || {
        gauge(&ingest, "fxproxy_backbone_frames_published_total") as u64 >= last
    }));
    let edge = Proxy::spawn(&instance_config(
        &source.url(),
        &redis.url(),
        "late",
        &keys,
        "backbone_role = edge\n",
    ));
    // The feed is paused: what the client gets at once can only be the snapshot.
    let client = Subscriber::start("late-client", edge.addr);
    assert!(
        client.wait_past(last, SEE_WITHIN),
        "no snapshot: {:?}",
        client.numbers()
    );
    assert_eq!(client.numbers(), vec![last]);
    source.pause(false);
    assert!(client.wait_past(last + 20, SEE_WITHIN));
    let (numbers, _) = client.finish();
    assert_consecutive("late-client", &numbers);
    assert_eq!(gauge(&edge, "fxproxy_backbone_role{role=\"edge\"}"), 1.0);
    assert_eq!(gauge(&edge, LOCK_HELD), 0.0);
    assert_eq!(source.subscriptions(), 1);
}

#[test]
fn an_edge_cut_off_from_redis_for_a_moment_resumes_without_a_gap() {
    let Some(Bed {
        redis,
        keys,
        source,
        ..
    }) = Bed::start("backbone::edge_disconnect")
    else {
        return;
    };
    let ingest = Proxy::spawn(&instance_config(
        &source.url(),
        &redis.url(),
        "blip",
        &keys,
        "",
    ));
    wait_for_holder(&[&ingest]);
    let relay = Relay::start(redis.addr());
    let edge = Proxy::spawn(&instance_config(
        &source.url(),
        &format!("redis://{}", relay.addr()),
        "blip",
        &keys,
        "backbone_role = edge\n",
    ));
    let subs = subscribe(&[&edge]);
    all_see_more(&subs.iter().collect::<Vec<_>>(), &source, 25);
    // Every connection to Redis reset, new ones too, for a moment.
    relay.set_mode(Mode::Reset);
    assert!(poll(Duration::from_secs(5), || gauge(
        &edge,
        "fxproxy_backbone_connected{link=\"read\"}"
    ) == 0.0));
    // Long enough for several failed attempts to reconnect.
    let reconnects = gauge(&edge, "fxproxy_backbone_reconnects_total");
    assert!(poll(Duration::from_secs(10), || gauge(
        &edge,
        "fxproxy_backbone_reconnects_total"
    ) >= reconnects + 3.0));
    relay.set_mode(Mode::PassThrough);
    all_see_more(&subs.iter().collect::<Vec<_>>(), &source, 25);
    for (name, numbers, ended) in finish(subs) {
        assert_eq!(ended, Ended::Stopped);
        assert_consecutive(&name, &numbers);
    }
    assert_eq!(gauge(&edge, "fxproxy_backbone_gap_frames_total"), 0.0);
}

#[test]
fn a_holder_stopped_cleanly_hands_over_at_once() {
    let Some(Bed {
        redis,
        keys,
        source,
        ..
    }) = Bed::start("backbone::clean_stop")
    else {
        return;
    };
    let conf = instance_config(&source.url(), &redis.url(), "handover", &keys, "");
    let mut proxies: Vec<Proxy> = (0..2).map(|_| Proxy::spawn(&conf)).collect();
    let holder = wait_for_holder(&proxies.iter().collect::<Vec<_>>());
    let other = Subscriber::start("stays", proxies[1 - holder].addr);
    assert!(other.wait_past(source.next_number() + 10, SEE_WITHIN));

    let stopped_at = Instant::now();
    proxies[holder].signal("TERM");
    let status = proxies[holder].wait_exit(Duration::from_secs(5));
    let exited = stopped_at.elapsed();
    assert!(
        status.is_some_and(|s| s.success()),
        "exit status {status:?}"
    );
    assert!(
        poll(Duration::from_secs(5), || source.subscriptions() == 2),
        "nobody took over"
    );
    let took = source.accepted_at(1).expect("a second subscription") - stopped_at;
    println!(
        "SIGTERM of the holder: exited in {:.2} s; the standby held the provider connection after {:.2} s",
        exited.as_secs_f64(),
        took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(2), "handover took {took:?}");
    assert!(proxies[holder]
        .stderr_text()
        .contains("lock released for a standby to take"));
    assert!(other.wait_past(source.next_number() + 10, SEE_WITHIN));
    let (numbers, ended) = other.finish();
    assert_eq!(ended, Ended::Stopped);
    assert_increasing("stays", &numbers);
    assert_eq!(source.most_at_once(), 1);
}
