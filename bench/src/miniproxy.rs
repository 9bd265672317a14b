//! A minimal fan-out proxy inside the bench (`fxbench mini-proxy`), speaking the client protocol:
//! a self-test target for the tool that needs neither fxproxy nor Python nor Node.
//! Run it through `--peer '{self} mini-proxy --upstream {feed} --port {port} --key {key}'`.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::args::MiniProxyOptions;

pub fn run(o: MiniProxyOptions) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(serve(o))
}

async fn serve(o: MiniProxyOptions) -> Result<(), String> {
    let (tx, _) = broadcast::channel::<Utf8Bytes>(1024);
    let (mut up, _) = tokio_tungstenite::connect_async(o.upstream.as_str())
        .await
        .map_err(|e| format!("upstream {}: {e}", o.upstream))?;
    let sub = serde_json::json!({ "userKey": "", "symbol": o.symbols }).to_string();
    up.send(Message::text(sub))
        .await
        .map_err(|e| e.to_string())?;
    let utx = tx.clone();
    tokio::spawn(async move {
        while let Some(Ok(m)) = up.next().await {
            if let Message::Text(t) = m {
                if t.as_str().starts_with('{') {
                    let _ = utx.send(t);
                }
            }
        }
        eprintln!("mini-proxy: upstream closed");
        std::process::exit(1);
    });

    let listener = TcpListener::bind(("127.0.0.1", o.port))
        .await
        .map_err(|e| e.to_string())?;
    eprintln!("mini-proxy: listening on 127.0.0.1:{}", o.port);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let mut rx = tx.subscribe();
        let key = o.key.clone();
        tokio::spawn(async move {
            let wsc = WebSocketConfig::default()
                .read_buffer_size(4096)
                .write_buffer_size(0);
            let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(tcp, Some(wsc)).await
            else {
                return;
            };
            let first = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
            let ok = match first {
                Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str::<serde_json::Value>(&t)
                    .ok()
                    .and_then(|v| v.get("userKey").and_then(|k| k.as_str()).map(|k| k == key))
                    .unwrap_or(false),
                _ => false,
            };
            if !ok {
                let _ = ws
                    .close(Some(CloseFrame {
                        code: CloseCode::Policy,
                        reason: "Authentication failed".into(),
                    }))
                    .await;
                return;
            }
            loop {
                tokio::select! {
                    m = rx.recv() => match m {
                        Ok(t) => if ws.send(Message::Text(t)).await.is_err() { return },
                        Err(_) => return,
                    },
                    m = ws.next() => match m {
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                        _ => {}
                    },
                }
            }
        });
    }
}
