//! Recording every upstream frame (`record_file`, rotated at `record_max_bytes`; a full disk
//! or a vanished directory stops the recording, not the proxy) and playing a recording back
//! through the real path (`upstream_url = replay:PATH`, at the recorded pace, `speed=N`,
//! `speed=max`, `loop=1`).

mod common;

use common::fake_source::*;
use common::process::{write_keys, Proxy};
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tungstenite::Message;

/// The lines of a recording: receive time and text.
fn lines_of(path: &Path) -> Vec<(u64, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            (
                v["recv_ms"].as_u64().unwrap(),
                v["text"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn keys() -> String {
    format!("{KEY}\n")
}

#[test]
fn every_frame_is_recorded_with_its_receive_time() {
    let up = TestUpstream::start();
    let dir = temp_dir("record");
    let file = dir.join("feed.jsonl");
    let before = fxproxy::clock::now_ms();
    let proxy = TestProxy::start(
        &up.url(),
        &format!("record_file = {}\n", file.display()),
        &keys(),
    );
    up.expect_subscribe();
    let sent = [
        quote("EURUSD", 1),
        "a notice, not a quote".to_string(),
        quote("GBPUSD", 2),
    ];
    for text in &sent {
        up.send(text);
    }
    eventually("four frames recorded", || {
        metric_of(proxy.addr, "fxproxy_recorded_frames_total") >= 4.0
    });
    assert_eq!(metric_of(proxy.addr, "fxproxy_recording"), 1.0);
    let lines = lines_of(&file);
    let texts: Vec<&str> = lines.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(texts, ["Connected", &sent[0], &sent[1], &sent[2]]);
    let after = fxproxy::clock::now_ms();
    assert!(lines.iter().all(|(ms, _)| (before..=after).contains(ms)));
    assert!(lines.windows(2).all(|w| w[0].0 <= w[1].0), "in order");
}

#[test]
fn the_recording_rotates_at_record_max_bytes_keeping_the_previous_file() {
    let up = TestUpstream::start();
    let dir = temp_dir("rotate");
    let file = dir.join("feed.jsonl");
    let proxy = TestProxy::start(
        &up.url(),
        &format!(
            "record_file = {}\nrecord_max_bytes = 1024\n",
            file.display()
        ),
        &keys(),
    );
    up.expect_subscribe();
    let sent: Vec<String> = (1..=40).map(|n| quote("EURUSD", n)).collect();
    for text in &sent {
        up.send(text);
    }
    eventually("41 frames recorded", || {
        metric_of(proxy.addr, "fxproxy_recorded_frames_total") >= 41.0
    });
    let previous = PathBuf::from(format!("{}.1", file.display()));
    for f in [&file, &previous] {
        let size = std::fs::metadata(f).unwrap().len();
        assert!(size > 0 && size <= 1024, "{}: {size} bytes", f.display());
    }
    // The previous part then the current one: the newest frames, in order, without a gap.
    let mut kept = lines_of(&previous);
    kept.extend(lines_of(&file));
    let texts: Vec<String> = kept.into_iter().map(|(_, t)| t).collect();
    assert!(texts.len() >= 10, "{} lines kept", texts.len());
    assert_eq!(texts[..], sent[sent.len() - texts.len()..]);
}

#[test]
fn a_full_disk_stops_the_recording_and_serving_goes_on() {
    // /dev/full fails every write with ENOSPC, as a full disk does.
    let missing: Vec<String> = (!Path::new("/dev/full").exists())
        .then(|| "/dev/full".to_string())
        .into_iter()
        .collect();
    if !common::process::prerequisites_met("a full disk", &missing) {
        return;
    }
    let up = TestUpstream::start();
    let dir = temp_dir("full-disk");
    let keys = write_keys(&dir, &[KEY]);
    let proxy = Proxy::spawn(&format!(
        "upstream_url = {}\nsymbols = EURUSD\nuser_keys_file = {}\nrecord_file = /dev/full\nstatus_interval_secs = 0\n",
        up.url(),
        keys.display()
    ));
    up.expect_subscribe();
    let mut client = Client::auth(proxy.addr, KEY, None);
    eventually("the client registered", || {
        metric_of(proxy.addr, "fxproxy_clients_connected") == 1.0
    });
    for n in 1..=3 {
        up.send(&quote("EURUSD", n));
        assert_eq!(client.next_text(), quote("EURUSD", n));
    }
    assert!(
        proxy.wait_for_log(
            "recording to /dev/full stopped: No space left on device",
            DEADLINE
        ),
        "{}",
        proxy.stderr_text()
    );
    assert_eq!(metric_of(proxy.addr, "fxproxy_recording"), 0.0);
    for n in 4..=6 {
        up.send(&quote("EURUSD", n));
        assert_eq!(client.next_text(), quote("EURUSD", n));
    }
}

#[test]
fn a_directory_that_disappears_stops_the_recording_and_serving_goes_on() {
    let up = TestUpstream::start();
    let dir = temp_dir("gone");
    let sub = dir.join("records");
    std::fs::create_dir_all(&sub).unwrap();
    let proxy = TestProxy::start(
        &up.url(),
        &format!(
            "record_file = {}\nrecord_max_bytes = 1024\n",
            sub.join("feed.jsonl").display()
        ),
        &keys(),
    );
    up.expect_subscribe();
    let mut client = Client::auth(proxy.addr, KEY, None);
    proxy.wait_for_clients(1);
    up.send(&quote("EURUSD", 1));
    assert_eq!(client.next_text(), quote("EURUSD", 1));
    // Gone: at the next rotation the file cannot be renamed nor a new one made.
    std::fs::remove_dir_all(&sub).unwrap();
    for n in 2..=30 {
        up.send(&quote("EURUSD", n));
        assert_eq!(client.next_text(), quote("EURUSD", n));
    }
    eventually("the recording to stop", || {
        metric_of(proxy.addr, "fxproxy_recording") == 0.0
    });
    up.send(&quote("EURUSD", 31));
    assert_eq!(client.next_text(), quote("EURUSD", 31));
}

/// A recording by hand: `Connected`, then EURUSD quotes numbered from 1, the first `lead` ms
/// after it and `every` ms apart.
fn write_recording(path: &Path, count: u64, lead: u64, every: u64) {
    let start = 1_700_000_000_000u64;
    let mut text = format!("{{\"recv_ms\":{start},\"text\":\"Connected\"}}\n");
    for n in 1..=count {
        let line =
            serde_json::json!({"recv_ms": start + lead + n * every, "text": quote("EURUSD", n)});
        text.push_str(&format!("{line}\n"));
    }
    std::fs::write(path, text).unwrap();
}

/// The number of a `quote("EURUSD", n)`.
fn number(text: &str) -> u64 {
    let v: Value = serde_json::from_str(text).unwrap();
    v["ts"].as_str().unwrap().parse::<u64>().unwrap() - 1_700_000_000_000
}

/// Quotes a client gets until one numbered `last`, each with when it came.
fn until_number(client: &mut Client, last: u64) -> Vec<(u64, Instant)> {
    let mut got = Vec::new();
    loop {
        let n = number(&client.next_text());
        got.push((n, Instant::now()));
        if n == last {
            return got;
        }
    }
}

#[test]
fn a_recording_replays_at_its_pace_and_speed_multiplies_it() {
    let dir = temp_dir("replay-pace");
    let recording = dir.join("feed.jsonl");
    // 30 quotes 100 ms apart, the first a second after the connection.
    write_recording(&recording, 30, 1000, 100);
    for speed in [1.0, 4.0] {
        let proxy = TestProxy::start(
            &format!("replay:{}?speed={speed}", recording.display()),
            "",
            &keys(),
        );
        let mut client = Client::auth(proxy.addr, KEY, None);
        let got = until_number(&mut client, 30);
        // Past whatever snapshot it joined on, every quote, in order, at the recorded pace.
        let live = &got[1..];
        assert!(live.len() >= 10, "speed {speed}: only {got:?}");
        assert!(
            live.windows(2).all(|w| w[1].0 == w[0].0 + 1),
            "speed {speed}: {live:?}"
        );
        let span = live[live.len() - 1].1 - live[0].1;
        let recorded = Duration::from_millis(100 * (live.len() as u64 - 1)).div_f64(speed);
        assert!(
            span >= recorded.mul_f64(0.8) && span <= recorded + Duration::from_millis(1500),
            "speed {speed}: {} quotes took {span:?}, recorded {recorded:?}",
            live.len()
        );
        eprintln!(
            "speed {speed}: {} quotes in {span:?} (recorded {recorded:?})",
            live.len()
        );
    }
}

#[test]
fn speed_max_replays_as_fast_as_the_proxy_takes_it() {
    let dir = temp_dir("replay-max");
    let recording = dir.join("feed.jsonl");
    // 500 quotes 100 ms apart: 50 s at the recorded pace.
    write_recording(&recording, 500, 0, 100);
    let started = Instant::now();
    let proxy = TestProxy::start(
        &format!("replay:{}?speed=max", recording.display()),
        "",
        &keys(),
    );
    eventually("all 500 quotes", || {
        metric_of(proxy.addr, "fxproxy_quotes_received_total") == 500.0
    });
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // Then the source is silent, and a client gets the last quote as its snapshot.
    let mut client = Client::auth(proxy.addr, KEY, None);
    assert_eq!(client.next_text(), quote("EURUSD", 500));
}

#[test]
fn loop_starts_the_recording_again_at_its_end() {
    let dir = temp_dir("replay-loop");
    let recording = dir.join("feed.jsonl");
    write_recording(&recording, 20, 0, 10);
    let proxy = TestProxy::start(
        &format!("replay:{}?speed=2&loop=1", recording.display()),
        "",
        &keys(),
    );
    let mut client = Client::auth(proxy.addr, KEY, None);
    // The end of one pass, then the start of the next: 20, then 1 again.
    until_number(&mut client, 20);
    let again = until_number(&mut client, 20);
    assert!(again.iter().any(|(n, _)| *n == 1), "{again:?}");
    let numbers: Vec<u64> = again.iter().map(|(n, _)| *n).collect();
    let restart = numbers.iter().position(|n| *n == 1).unwrap();
    assert_eq!(numbers[restart..], (1..=20).collect::<Vec<u64>>()[..]);
}

#[test]
fn a_recorded_provider_replays_through_its_template() {
    let template = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("providers/polygon-forex.conf");
    let dir = temp_dir("replay-polygon");
    let recording = dir.join("polygon.jsonl");
    let provider = format!(
        "provider = custom\nprovider_template = {}\nupstream_api_key = poly-key-123456\n",
        template.display()
    );
    let ticks: Vec<Tick> = (1..=6)
        .map(|n| Tick::new(["EURUSD", "GBPUSD", "USDJPY"][n as usize % 3], n))
        .collect();
    {
        let source = FakeSource::start(Polygon::factory("poly-key-123456"));
        let proxy = TestProxy::start(
            &source.url(),
            &format!("{provider}record_file = {}\n", recording.display()),
            &keys(),
        );
        source.wait_heard(1, 2);
        source.ticks(&ticks[..3]);
        source.ticks(&ticks[3..]);
        // Connected, auth_success, three subscribed, two arrays of quotes.
        eventually("seven frames recorded", || {
            metric_of(proxy.addr, "fxproxy_recorded_frames_total") >= 7.0
        });
    }
    let texts: Vec<String> = lines_of(&recording).into_iter().map(|(_, t)| t).collect();
    assert!(texts[0].contains("\"connected\""), "{texts:?}");
    assert_eq!(texts.len(), 7, "{texts:?}");

    // Played back in a loop, the arrays become quotes in the v1 shape again; nothing is sent
    // to a recording, so nothing waits for the auth reply.
    let proxy = TestProxy::start(
        &format!("replay:{}?speed=20&loop=1", recording.display()),
        &provider,
        &keys(),
    );
    let mut client = Client::auth(proxy.addr, KEY, None);
    let expected: Vec<String> = ticks.iter().map(Tick::normalized).collect();
    let mut seen = Vec::new();
    while seen.len() < 24 {
        match client.next() {
            Some(Message::Text(t)) => seen.push(t.to_string()),
            Some(_) => {}
            None => panic!("no quote in time; got {seen:?}"),
        }
    }
    assert!(seen.iter().all(|s| expected.contains(s)), "{seen:?}");
    // A whole pass, in order, somewhere in there.
    let start = seen.iter().position(|s| *s == expected[0]).unwrap();
    assert_eq!(seen[start..start + 6], expected[..]);
}
