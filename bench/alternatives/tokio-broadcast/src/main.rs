//! A tokio-tungstenite fan-out proxy: the Rust peer fxbench measures fxproxy against, written
//! the way a Rust user choosing tokio for speed would write it.
//!
//! One upstream connection feeds a `tokio::sync::broadcast` channel; each client is a task on the
//! multi-threaded runtime that authenticates the first message and then forwards every frame.
//! A frame is received once as `Utf8Bytes` (a reference-counted `Bytes`) and every client task
//! gets a clone of the same buffer: no per-client copy or re-serialisation of the quote, only
//! the WebSocket header that tungstenite writes around it. A client task that finds several
//! frames waiting queues them all and flushes once (one write for the lot). A receiver that
//! falls more than the channel's capacity behind skips what it missed (`Lagged`) and goes on,
//! as tokio's broadcast docs suggest; the load generator counts the skipped quotes as lost.
//!
//! Greeting and auth as in the other alternatives: no greeting, the first message must be
//! `{"userKey": KEY}`, else close 1008 (`Failed to authenticate` / `Authentication failed`)
//! after at most 10 s.
//!
//!   tokio-broadcast --upstream ws://127.0.0.1:FEEDPORT --port 8765 --key benchkey-0001

use std::process::ExitCode;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

/// Frames a client may fall behind before it skips ahead: fxproxy's default client_queue_len.
const CAPACITY: usize = 1024;
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);

struct Options {
    upstream: String,
    port: u16,
    key: String,
    symbols: String,
    api_key: String,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        upstream: String::new(),
        port: 0,
        key: String::new(),
        symbols: "EURUSD".into(),
        api_key: String::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--upstream" => o.upstream = v,
            "--port" => o.port = v.parse().map_err(|_| format!("--port: {v:?}"))?,
            "--key" => o.key = v,
            "--symbols" => o.symbols = v,
            "--api-key" => o.api_key = v,
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    if o.upstream.is_empty() || o.port == 0 || o.key.is_empty() {
        return Err(
            "usage: tokio-broadcast --upstream URL --port P --key KEY [--symbols A,B]".into(),
        );
    }
    Ok(o)
}

#[tokio::main]
async fn main() -> ExitCode {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("tokio-broadcast: {e}");
            return ExitCode::from(2);
        }
    };
    match run(o).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tokio-broadcast: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(o: Options) -> Result<(), String> {
    let (tx, _) = broadcast::channel::<Utf8Bytes>(CAPACITY);
    let listener = TcpListener::bind(("127.0.0.1", o.port))
        .await
        .map_err(|e| format!("cannot listen on 127.0.0.1:{}: {e}", o.port))?;
    let (mut up, _) = tokio_tungstenite::connect_async(o.upstream.as_str())
        .await
        .map_err(|e| format!("upstream {}: {e}", o.upstream))?;
    let subscribe = serde_json::json!({ "userKey": o.api_key, "symbol": o.symbols }).to_string();
    up.send(Message::text(subscribe))
        .await
        .map_err(|e| format!("upstream subscribe: {e}"))?;
    eprintln!("tokio-broadcast: listening on 127.0.0.1:{}", o.port);

    let accept = {
        let tx = tx.clone();
        let key: std::sync::Arc<str> = o.key.into();
        async move {
            loop {
                match listener.accept().await {
                    Ok((tcp, _)) => {
                        tokio::spawn(client(tcp, tx.clone(), key.clone()));
                    }
                    // Out of descriptors, usually: back off instead of spinning on the error.
                    Err(e) => {
                        eprintln!("tokio-broadcast: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    };
    tokio::spawn(accept);

    loop {
        match up.next().await {
            // Quotes are JSON objects; the upstream's `Connected` greeting is not one.
            Some(Ok(Message::Text(t))) if t.as_str().starts_with('{') => {
                // An error only means that no client is subscribed yet.
                let _ = tx.send(t);
            }
            Some(Ok(Message::Close(_))) | None => return Err("upstream closed".into()),
            Some(Err(e)) => return Err(format!("upstream: {e}")),
            Some(Ok(_)) => {}
        }
    }
}

async fn client(tcp: TcpStream, tx: broadcast::Sender<Utf8Bytes>, key: std::sync::Arc<str>) {
    let _ = tcp.set_nodelay(true);
    // Clients send one small message: a 4 KiB read buffer instead of the 128 KiB default keeps
    // 15,000 connections to tens of MB.
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(tcp, Some(config)).await else {
        return;
    };
    // The first data message; pings before it are answered, not judged.
    let first = tokio::time::timeout(AUTH_TIMEOUT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => return other,
            }
        }
    })
    .await;
    let verdict = match first {
        Ok(Some(Ok(Message::Text(t)))) => match serde_json::from_str::<serde_json::Value>(&t)
            .ok()
            .as_ref()
            .and_then(|v| v.get("userKey"))
            .and_then(|k| k.as_str())
        {
            Some(k) if k == &*key => Ok(()),
            Some(_) => Err("Authentication failed"),
            None => Err("Failed to authenticate"),
        },
        Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => return,
        _ => Err("Failed to authenticate"),
    };
    if let Err(reason) = verdict {
        let _ = ws
            .close(Some(CloseFrame {
                code: CloseCode::Policy,
                reason: reason.into(),
            }))
            .await;
        return;
    }
    // Subscribed only now: frames published before the key was checked are not this client's.
    let mut rx = tx.subscribe();
    drop(tx);
    let _ = forward(&mut ws, &mut rx).await;
}

async fn forward(
    ws: &mut WebSocketStream<TcpStream>,
    rx: &mut broadcast::Receiver<Utf8Bytes>,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    loop {
        tokio::select! {
            r = rx.recv() => match r {
                Ok(frame) => {
                    ws.feed(Message::Text(frame)).await?;
                    loop {
                        match rx.try_recv() {
                            Ok(frame) => ws.feed(Message::Text(frame)).await?,
                            Err(TryRecvError::Lagged(_)) => continue,
                            Err(_) => break,
                        }
                    }
                    ws.flush().await?;
                }
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return Ok(()),
            },
            m = ws.next() => match m {
                // tungstenite has queued the close reply; send it.
                Some(Ok(Message::Close(_))) => return ws.flush().await,
                Some(Err(_)) | None => return Ok(()),
                // Pings are answered by tungstenite on the next flush.
                Some(Ok(_)) => {}
            },
        }
    }
}
