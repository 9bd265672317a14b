//! What a plain HTTP request on the client port is answered: `/healthz`, `/metrics` and the
//! quotes page at `/`. Run on the `http` thread (see `clients::answering`), never on the
//! admission thread. Every response closes its connection.

use crate::clients::context::Context;
use crate::clients::http::{self, Request};
use crate::clients::listener;
use crate::ops::metrics::{self, View};
use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How long the listen queue's figures are reused: they come from `/proc/self/net/tcp`, which
/// lists every TCP socket of the host's network namespace (thirty thousand lines with fifteen
/// thousand clients on loopback), far too much to read for every scrape of a busy scraper.
const BACKLOG_READ_EVERY: Duration = Duration::from_secs(1);

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
            let (market, stale, now) =
                (config.market(), config.upstream_stale, ctx.metrics.now_ms());
            let (status, body) = match &ctx.backbone {
                Some(backbone) => backbone.health(&ctx.metrics, &market, stale, now),
                None => crate::feed::health::health(&ctx.metrics, &market, stale, now),
            };
            http::response(status, "application/json", &body, head_only)
        }
        "/metrics" if config.http_endpoints => http::response(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            &metrics_text(ctx),
            head_only,
        ),
        "/" if config.page => {
            let page = crate::ops::page::render(&config.market());
            let headers = crate::ops::page::headers(&page);
            http::response_with(200, &headers, "text/html; charset=utf-8", &page, head_only)
        }
        _ => http::response(404, "text/plain", "not found\n", head_only),
    }
}

fn metrics_text(ctx: &Context) -> String {
    let queues = ctx.hub.queue_stats();
    let symbols = ctx.hub.last_quotes();
    let market = ctx.config().market();
    let text = metrics::render(
        &ctx.metrics,
        &View {
            market: &market,
            symbols: &symbols,
            batching: ctx.hub.batching(),
            queues: &queues,
            backlog: backlog(ctx.listen),
            places: (ctx.places.taken() as u64, ctx.places.limit() as u64),
            threads_live: ctx.threads.live() as u64,
            process: &crate::ops::process::read(),
            now_ms: ctx.metrics.now_ms(),
        },
    );
    match &ctx.backbone {
        Some(backbone) => text + &backbone.render(),
        None => text,
    }
}

/// The listen queue of `addr`, read at most once per [`BACKLOG_READ_EVERY`].
fn backlog(addr: SocketAddr) -> Option<(u64, u64)> {
    type Reading = (SocketAddr, Instant, Option<(u64, u64)>);
    // Keyed by address: tests run several proxies in one process.
    static LAST: Mutex<Option<Reading>> = Mutex::new(None);
    let mut last = LAST.lock();
    if let Some((at, when, value)) = *last {
        if at == addr && when.elapsed() < BACKLOG_READ_EVERY {
            return value;
        }
    }
    let value = listener::queue(addr);
    *last = Some((addr, Instant::now(), value));
    value
}
