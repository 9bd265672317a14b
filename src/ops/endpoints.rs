//! What a plain HTTP request is answered, on the client port (run on the `http` thread, see
//! `clients::answering`) and on `admin_listen` (the `admin` thread, see [`super::admin`]):
//!
//! | path | client port | admin address |
//! | --- | --- | --- |
//! | `/livez` | with `http_endpoints` | yes |
//! | `/readyz`, `/healthz` | with `http_endpoints` | yes |
//! | `/metrics` | with `http_endpoints`, unless `admin_listen` is set | yes |
//! | `/debug/state` | never | yes |
//! | `/` (the quotes page) | with `page` | no |
//!
//! Every response closes its connection.

use crate::clients::admission::Asker;
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

/// The client port's answers: what the server plugs into the context as `answer_http`.
pub fn respond(ctx: &Context, request: &Request) -> Vec<u8> {
    answer(ctx, None, request)
}

/// The admin address's answers; `asker` reaches the admission loop for the state dump.
pub fn respond_admin(ctx: &Context, asker: &Asker, request: &Request) -> Vec<u8> {
    answer(ctx, Some(asker), request)
}

/// `admin`: the admission loop's asker when the request came in on the admin address.
fn answer(ctx: &Context, admin: Option<&Asker>, request: &Request) -> Vec<u8> {
    ctx.metrics.http_requests.fetch_add(1, Ordering::Relaxed);
    let head_only = request.method == "HEAD";
    if request.method != "GET" && !head_only {
        return http::response(405, "text/plain", "only GET is served here\n", false);
    }
    let config = ctx.config();
    let on_admin = admin.is_some();
    let endpoints = on_admin || config.http_endpoints;
    let metrics_here = on_admin || (config.http_endpoints && config.admin_listen.is_none());
    match request.route() {
        "/healthz" | "/readyz" if endpoints => {
            let (status, body) = readiness(ctx);
            http::response(status, "application/json", &body, head_only)
        }
        "/livez" if endpoints => http::response(
            200,
            "application/json",
            "{\"status\":\"alive\"}\n",
            head_only,
        ),
        "/metrics" if metrics_here => http::response(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            &metrics_text(ctx),
            head_only,
        ),
        "/debug/state" => match admin {
            Some(asker) => http::response(
                200,
                "text/plain; charset=utf-8",
                &crate::ops::dump::text(ctx, asker),
                head_only,
            ),
            None => not_found(head_only),
        },
        "/" if config.page && !on_admin => {
            let page = crate::ops::page::render(&config.market());
            let headers = crate::ops::page::headers(&page);
            http::response_with(200, &headers, "text/html; charset=utf-8", &page, head_only)
        }
        _ => not_found(head_only),
    }
}

fn not_found(head_only: bool) -> Vec<u8> {
    http::response(404, "text/plain", "not found\n", head_only)
}

/// `/readyz` (and `/healthz`, its older name): whether this instance serves fresh quotes, the
/// one verdict of `feed::health` (or the backbone's).
fn readiness(ctx: &Context) -> (u16, String) {
    let config = ctx.config();
    let (market, stale, now) = (config.market(), config.upstream_stale, ctx.metrics.now_ms());
    match &ctx.backbone {
        Some(backbone) => backbone.health(&ctx.metrics, &market, stale, now),
        None => crate::feed::health::health(&ctx.metrics, &market, stale, now),
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
