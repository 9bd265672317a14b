//! What a plain HTTP request on the client port is answered: `/healthz`, `/metrics` and the
//! quotes page at `/`. Every response closes its connection.

use crate::admission::LISTEN_BACKLOG;
use crate::context::Context;
use crate::http::{self, Request};
use crate::metrics::View;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

/// The whole response to `request`, ready to write.
pub fn respond(ctx: &Context, request: &Request) -> Vec<u8> {
    ctx.metrics.http_requests.fetch_add(1, Ordering::Relaxed);
    let head_only = request.method == "HEAD";
    if request.method != "GET" && !head_only {
        return http::response(405, "text/plain", "only GET is served here\n", false);
    }
    let config = ctx.config();
    match request.route() {
        "/healthz" if config.http_endpoints => {
            let (status, body) = ctx.metrics.health(
                &config.market(),
                config.upstream_stale,
                ctx.metrics.now_ms(),
            );
            http::response(status, "application/json", &body, head_only)
        }
        "/metrics" if config.http_endpoints => http::response(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            &metrics_text(ctx),
            head_only,
        ),
        "/" if config.page => {
            let page = crate::page::render(&config.market());
            http::response(200, "text/html; charset=utf-8", &page, head_only)
        }
        _ => http::response(404, "text/plain", "not found\n", head_only),
    }
}

fn metrics_text(ctx: &Context) -> String {
    let queues = ctx.hub.queue_stats();
    let symbols = ctx.hub.last_quotes();
    let market = ctx.config().market();
    ctx.metrics.render(&View {
        market: &market,
        symbols: &symbols,
        batching: ctx.hub.batching(),
        queues: &queues,
        backlog: listen_queue(ctx.listen),
        places: (ctx.places.taken() as u64, ctx.places.limit() as u64),
        threads_live: ctx.threads.live() as u64,
        now_ms: ctx.metrics.now_ms(),
    })
}

/// The kernel's listen queue for `addr`: connections waiting for `accept`, and the queue's
/// length (what fxproxy asks for, capped by `net.core.somaxconn`).
pub fn listen_queue(addr: SocketAddr) -> Option<(u64, u64)> {
    let file = if addr.is_ipv4() {
        "/proc/self/net/tcp"
    } else {
        "/proc/self/net/tcp6"
    };
    let used = listen_queue_in(&std::fs::read_to_string(file).ok()?, addr.port())?;
    let somaxconn: u64 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some((used, somaxconn.min(LISTEN_BACKLOG as u64)))
}

/// Connections waiting for `accept` on `port`, from the text of `/proc/net/tcp`: for the
/// first socket in state LISTEN (`0A`) there, `rx_queue` is that count.
pub fn listen_queue_in(table: &str, port: u16) -> Option<u64> {
    let port = format!(":{port:04X}");
    table.lines().skip(1).find_map(|line| {
        let mut fields = line.split_whitespace();
        let local = fields.nth(1)?;
        let state = fields.nth(1)?;
        if state != "0A" || !local.ends_with(&port) {
            return None;
        }
        let (_, rx) = fields.next()?.split_once(':')?;
        u64::from_str_radix(rx, 16).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_listen_queue_of_a_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
            0: 0100007F:223D 00000000:0000 0A 00001000:00000003 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n   \
            1: 0100007F:223D 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0\n";
        assert_eq!(listen_queue_in(table, 8765), Some(3));
        assert_eq!(listen_queue_in(table, 8766), None);
    }

    #[test]
    fn a_real_listener_shows_its_queue() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let _waiting = std::net::TcpStream::connect(addr).unwrap();
        let (used, max) = listen_queue(addr).expect("the listener is in /proc/net/tcp");
        assert_eq!(used, 1);
        assert!(max >= 128, "somaxconn is {max}");
    }
}
