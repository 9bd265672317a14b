//! The backbone as Redis really fails: restarted empty, restored from an older copy, cut off
//! from the holder while the provider keeps sending, slow to answer, failed over by Redis
//! Sentinel; and reached over TLS. Real redis-server processes on loopback, real fxproxy
//! processes, and a source that allows one connection per provider key, as TraderMade does
//! (a second is refused with `User Key Used to many times`). Needs `redis-server` (skipped
//! without it, except under CI).

mod common;

use common::cluster::{
    all_see_more, assert_increasing, finish_connected, gauge, instance_config, lock_token,
    redis_available, stream_numbers, stream_numbers_at, subscribe, wait_for_holder, Bed,
    RedisServer, SentinelSet, Source, Subscriber, CLIENT_KEY, EVERY, SEE_WITHIN,
};
use common::process::{poll, temp_dir, write_keys, Proxy};
use common::relay::{Mode, Relay};
use common::tls::TestCa;
use std::time::{Duration, Instant};

const LOCK_HELD: &str = "fxproxy_backbone_lock_held";
const FENCED: &str = "fxproxy_backbone_frames_fenced_total";

/// What a user who sets nothing gets: a refused key waits the longest back-off, 60 s.
const DEFAULT_BACKOFF: &str = "upstream_backoff_min_ms = 1000\nupstream_backoff_max_secs = 60\n";

fn refs(subs: &[Subscriber]) -> Vec<&Subscriber> {
    subs.iter().collect()
}

/// Waits until every subscriber has a frame taken after `mark` (a source number); how long
/// that took from `since`.
fn resumed_after(subs: &[Subscriber], mark: u64, since: Instant) -> Duration {
    for s in subs {
        assert!(
            s.wait_past(mark + 1, SEE_WITHIN),
            "{}: no quote after frame {mark} (last {:?})",
            s.name,
            s.last()
        );
    }
    since.elapsed()
}

#[test]
fn redis_restarted_empty_costs_no_outage_and_the_provider_never_sees_two_connections() {
    let Some(Bed {
        mut redis,
        keys,
        source,
        ..
    }) = Bed::start("backbone_redis::restarted_empty")
    else {
        return;
    };
    // The holder reaches Redis through a relay, so that the test can make it the last to
    // come back, as in the outage reported: the others find Redis empty first.
    let relay = Relay::start(redis.addr());
    let holder = Proxy::spawn(&instance_config(
        &source.url(),
        &format!("redis://{}", relay.addr()),
        "empty",
        &keys,
        DEFAULT_BACKOFF,
    ));
    assert_eq!(wait_for_holder(&[&holder]), 0);
    let conf = instance_config(&source.url(), &redis.url(), "empty", &keys, DEFAULT_BACKOFF);
    let standbys: Vec<Proxy> = (0..2).map(|_| Proxy::spawn(&conf)).collect();
    let all: Vec<&Proxy> = std::iter::once(&holder).chain(&standbys).collect();
    let subs = subscribe(&all);
    all_see_more(&refs(&subs), &source, 25);

    // Killed and started again at once, empty, as a cache host runs it; the standbys are
    // back on it before the holder.
    relay.set_mode(Mode::BlackHole);
    redis.crash();
    redis.restart();
    let back = Instant::now();
    let mark = source.next_number();
    assert!(
        poll(Duration::from_secs(10), || redis
            .command(&["GET", "empty:lock"])
            != ["(nil)"]),
        "no standby came back to Redis"
    );
    relay.set_mode(Mode::PassThrough);
    let at_once = resumed_after(&subs, mark, back);
    all_see_more(&refs(&subs), &source, 25);

    // Down long enough for the holder's lock to lapse here: the provider connection is
    // closed, and whoever wins next connects.
    redis.crash();
    assert!(
        poll(Duration::from_secs(10), || all
            .iter()
            .all(|p| gauge(p, LOCK_HELD) == 0.0)),
        "the lock did not lapse while Redis was away"
    );
    redis.restart();
    let back = Instant::now();
    let after_lapse = resumed_after(&subs, source.next_number(), back);
    println!(
        "Redis restarted empty: quotes resumed on every instance {:.2} s after Redis was back (restarted at once), {:.2} s (restarted after the lock had lapsed)",
        at_once.as_secs_f64(),
        after_lapse.as_secs_f64()
    );
    assert!(at_once < Duration::from_secs(5), "{at_once:?}");
    assert!(after_lapse < Duration::from_secs(5), "{after_lapse:?}");
    assert_eq!(
        source.refused(),
        0,
        "an instance connected while another's connection was open"
    );
    assert_eq!(source.most_at_once(), 1);
    all_see_more(&refs(&subs), &source, 25);
    finish_connected(subs, assert_increasing);
    assert_increasing("the stream", &stream_numbers(&redis, "empty"));
}

#[test]
fn a_new_holder_the_provider_refuses_tries_again_within_seconds_not_a_minute() {
    let Some(Bed {
        redis,
        keys,
        source,
        ..
    }) = Bed::start("backbone_redis::refused_takeover")
    else {
        return;
    };
    // A provider that notices a vanished client only after 4 s: whoever takes over is refused
    // until then.
    source.linger(Duration::from_secs(4));
    let conf = instance_config(
        &source.url(),
        &redis.url(),
        "refused",
        &keys,
        DEFAULT_BACKOFF,
    );
    let proxies: Vec<Proxy> = (0..2).map(|_| Proxy::spawn(&conf)).collect();
    let holder = wait_for_holder(&proxies.iter().collect::<Vec<_>>());
    let other = &proxies[1 - holder];
    let sub = Subscriber::start("stays", other.addr);
    assert!(sub.wait_past(source.next_number() + 10, SEE_WITHIN));

    let killed = Instant::now();
    proxies[holder].signal("KILL");
    assert!(
        poll(Duration::from_secs(30), || source.subscriptions() == 2),
        "the new holder never got the provider connection"
    );
    let took = source.accepted_at(1).expect("a second subscription") - killed;
    println!(
        "takeover refused by the provider while it held the dead holder's connection (4 s): refused {} time(s), connected {:.2} s after the kill",
        source.refused(),
        took.as_secs_f64()
    );
    assert!(source.refused() >= 1, "the new holder was never refused");
    assert!(
        took < Duration::from_secs(12),
        "the new holder waited {took:?}"
    );
    assert!(other.stderr_text().contains("trying again in"));
    assert!(sub.wait_past(source.next_number() + 10, SEE_WITHIN));
    let (numbers, _) = sub.finish();
    assert_increasing("stays", &numbers);
    assert_eq!(source.most_at_once(), 1);
}

#[test]
fn fencing_tokens_keep_growing_when_redis_comes_back_from_an_older_copy() {
    let Some(Bed {
        mut redis,
        keys,
        source,
        ..
    }) = Bed::start("backbone_redis::rollback")
    else {
        return;
    };
    let conf = instance_config(&source.url(), &redis.url(), "rollback", &keys, "");
    let first = Proxy::spawn(&conf);
    assert_eq!(wait_for_holder(&[&first]), 0);
    let second = Proxy::spawn(&conf);
    let edge = Proxy::spawn(&instance_config(
        &source.url(),
        &redis.url(),
        "rollback",
        &keys,
        "backbone_role = edge\n",
    ));
    let subs = subscribe(&[&second, &edge]);
    all_see_more(&refs(&subs), &source, 25);
    let token_saved = lock_token(redis.addr(), "rollback");
    // The copy Redis will come back from: the first holder's token.
    redis.save();

    first.signal("KILL");
    assert!(poll(Duration::from_secs(10), || gauge(&second, LOCK_HELD) == 1.0));
    let token_later = lock_token(redis.addr(), "rollback");
    assert!(token_later > token_saved);
    // Long enough that the readers remember a high number under the later token.
    all_see_more(&refs(&subs), &source, 100);

    // Redis dies and comes back from the older copy after the lock has lapsed, so somebody
    // must win it again.
    redis.crash();
    assert!(poll(Duration::from_secs(10), || gauge(&second, LOCK_HELD) == 0.0));
    redis.restart();
    let back = Instant::now();
    let resumed = resumed_after(&subs, source.next_number(), back);
    let token_now = lock_token(redis.addr(), "rollback");
    println!(
        "Redis restored from an older copy (fencing token {token_saved}, after {token_later} was used): token {token_now} taken; quotes resumed on every instance {:.2} s after Redis was back",
        resumed.as_secs_f64()
    );
    assert!(
        token_now > token_later,
        "token {token_now} after {token_later}: a token was used twice or went back"
    );
    assert!(resumed < Duration::from_secs(5), "{resumed:?}");
    assert_eq!(source.refused(), 0);
    assert_eq!(source.most_at_once(), 1);
    all_see_more(&refs(&subs), &source, 25);
    finish_connected(subs, assert_increasing);
    assert_increasing("the stream", &stream_numbers(&redis, "rollback"));
}

#[test]
fn a_holder_cut_off_from_redis_at_5000_frames_a_second_hands_over_within_5_s() {
    let Some(Bed {
        redis,
        keys,
        source,
        ..
    }) = Bed::start_with("backbone_redis::partition", &[], Duration::from_micros(200))
    else {
        return;
    };
    // The first instance reaches Redis through a relay the test can cut, not the provider.
    let relay = Relay::start(redis.addr());
    let cut_off = Proxy::spawn(&instance_config(
        &source.url(),
        &format!("redis://{}", relay.addr()),
        "cut5k",
        &keys,
        "",
    ));
    assert_eq!(wait_for_holder(&[&cut_off]), 0);
    let other = Proxy::spawn(&instance_config(
        &source.url(),
        &redis.url(),
        "cut5k",
        &keys,
        "",
    ));
    let sub = Subscriber::start("other", other.addr);
    assert!(sub.wait_past(source.next_number() + 2000, SEE_WITHIN));

    // The holder goes on taking 5,000 frames a second it cannot publish: its queue to Redis
    // (8,192) is full within two seconds, before its lock lapses.
    relay.set_mode(Mode::BlackHole);
    let cut = Instant::now();
    assert!(
        poll(Duration::from_secs(15), || source.subscriptions() == 2),
        "the other instance never got the provider connection"
    );
    let took = source.accepted_at(1).expect("a second subscription") - cut;
    assert!(sub.wait_past(source.next_number() + 2000, SEE_WITHIN));
    relay.set_mode(Mode::PassThrough);
    assert!(
        poll(Duration::from_secs(15), || gauge(&cut_off, FENCED)
            >= 8192.0),
        "the cut-off instance's full queue was not refused by the fence: {}",
        gauge(&cut_off, FENCED)
    );
    println!(
        "partition at 5,000 frames/s: the provider connection handed over {:.2} s after the cut; {} frame(s) of the cut-off holder refused",
        took.as_secs_f64(),
        gauge(&cut_off, FENCED)
    );
    assert!(took < Duration::from_secs(5), "handover took {took:?}");
    assert_eq!(source.refused(), 0);
    assert_eq!(source.most_at_once(), 1);
    let (numbers, _) = sub.finish();
    assert_increasing("other", &numbers);
}

#[test]
fn a_renewal_answered_after_1_6_s_keeps_the_provider_connection() {
    let Some(Bed {
        redis,
        keys,
        source,
        ..
    }) = Bed::start("backbone_redis::slow_redis")
    else {
        return;
    };
    let conf = instance_config(&source.url(), &redis.url(), "slow", &keys, "");
    let proxies: Vec<Proxy> = (0..2).map(|_| Proxy::spawn(&conf)).collect();
    let all: Vec<&Proxy> = proxies.iter().collect();
    let holder = wait_for_holder(&all);
    let subs = subscribe(&all);
    all_see_more(&refs(&subs), &source, 25);
    // Redis stalls (a fork for BGSAVE, an fsync): whatever is in flight then, a renewal among
    // it, is answered 1.6 s later.
    for _ in 0..3 {
        let stalled = Instant::now();
        assert_eq!(redis.command(&["DEBUG", "SLEEP", "1.6"]), ["OK"]);
        assert!(stalled.elapsed() >= Duration::from_millis(1600));
        all_see_more(&refs(&subs), &source, 10);
    }
    assert_eq!(
        source.subscriptions(),
        1,
        "the provider connection was kept"
    );
    assert_eq!(gauge(all[holder], LOCK_HELD), 1.0);
    assert!(!all[holder].stderr_text().contains("lapsed here"));
    finish_connected(subs, common::cluster::assert_consecutive);
}

#[test]
fn through_sentinel_a_killed_master_is_followed_and_quotes_resume_within_10_s() {
    if !redis_available("backbone_redis::sentinel") {
        return;
    }
    let dir = temp_dir();
    let mut set = SentinelSet::start(&dir);
    let keys = write_keys(&dir, &[CLIENT_KEY]);
    let source = Source::start(EVERY);
    let conf = instance_config(&source.url(), &set.url(), "ha", &keys, "");
    let proxies: Vec<Proxy> = (0..2).map(|_| Proxy::spawn(&conf)).collect();
    let all: Vec<&Proxy> = proxies.iter().collect();
    wait_for_holder(&all);
    let subs = subscribe(&all);
    all_see_more(&refs(&subs), &source, 25);
    let old_master = set.master.addr();
    let token_before = lock_token(old_master, "ha");
    assert!(token_before > 0);

    set.master.crash();
    let killed = Instant::now();
    let resumed = resumed_after(&subs, source.next_number(), killed);
    let new_master = set.master_addr().expect("the sentinels name a master");
    println!(
        "Sentinel failover: the master killed, {new_master} promoted; quotes resumed on every instance {:.2} s after the kill",
        resumed.as_secs_f64()
    );
    assert_ne!(new_master, old_master);
    assert!(resumed < Duration::from_secs(10), "{resumed:?}");
    assert!(lock_token(new_master, "ha") >= token_before);
    assert_eq!(source.refused(), 0);
    assert_eq!(source.most_at_once(), 1);
    all_see_more(&refs(&subs), &source, 25);
    finish_connected(subs, assert_increasing);
    assert_increasing("the stream", &stream_numbers_at(new_master, "ha"));
    for p in &all {
        assert!(p.stderr_text().contains("the sentinels name"));
    }
}

#[test]
fn rediss_with_a_ca_file_carries_the_feed_and_an_unknown_ca_is_named_in_healthz() {
    if !redis_available("backbone_redis::tls") {
        return;
    }
    let dir = temp_dir();
    let ca = TestCa::new("redis");
    let cert = ca.server(&dir, "redis", (2040, 1, 1));
    let ca_file = ca.write(&dir.join("redis-ca.pem"));
    let path = |p: &std::path::Path| p.display().to_string();
    let redis = RedisServer::start_with(
        &dir,
        &[
            "--tls-port",
            "{port}",
            "--tls-cert-file",
            &path(&cert.cert_file),
            "--tls-key-file",
            &path(&cert.key_file),
            "--tls-ca-cert-file",
            &path(&ca_file),
            "--tls-auth-clients",
            "no",
        ],
    );
    let url = format!(
        "rediss://127.0.0.1:{}",
        redis.option("--tls-port").expect("a TLS port")
    );
    let keys = write_keys(&dir, &[CLIENT_KEY]);
    let source = Source::start(EVERY);
    let proxy = Proxy::spawn(&instance_config(
        &source.url(),
        &url,
        "tls",
        &keys,
        &format!("backbone_ca_file = {}\n", path(&ca_file)),
    ));
    assert_eq!(wait_for_holder(&[&proxy]), 0);
    let sub = Subscriber::start("over-tls", proxy.addr);
    assert!(sub.wait_past(source.next_number() + 10, SEE_WITHIN));
    // What the client got went through Redis: the stream holds it.
    assert!(stream_numbers(&redis, "tls").len() >= 10);

    // An instance trusting another CA does not connect, and says why.
    let stranger_ca = TestCa::new("stranger").write(&dir.join("stranger-ca.pem"));
    let stranger = Proxy::spawn(&instance_config(
        &source.url(),
        &url,
        "tls",
        &keys,
        &format!(
            "backbone_role = edge\nbackbone_ca_file = {}\n",
            path(&stranger_ca)
        ),
    ));
    let mut health = (0, String::new());
    assert!(
        poll(Duration::from_secs(10), || {
            health = common::healthz(stranger.addr);
            health.1.contains("certificate")
        }),
        "{health:?}"
    );
    println!(
        "an instance trusting another CA: /healthz {}",
        health.1.trim()
    );
    assert_eq!(health.0, 503, "{health:?}");
    assert!(health.1.contains("\"status\":\"degraded\""), "{health:?}");
    assert!(health.1.contains(&url), "{health:?}");
    let (numbers, _) = sub.finish();
    assert_increasing("over-tls", &numbers);
}
