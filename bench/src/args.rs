//! Command-line options, parsed by hand (a load generator needs no argument framework).

use std::path::PathBuf;

pub const USAGE: &str = "\
fxbench — load generator and benchmark for fxproxy (and any proxy speaking its protocol)

USAGE:
  fxbench [OPTIONS]                       spawn fxproxy (--proxy-bin) with a generated config
  fxbench --peer 'CMD' [OPTIONS]          spawn another proxy: {feed} {port} {key} {self} are substituted
  fxbench --url ws://127.0.0.1:P/ [OPTIONS]   measure a running proxy (point its upstream at the feed)
  fxbench mini-proxy --upstream URL --port P --key K   a minimal in-bench fan-out proxy (self-test)

TARGET:
  --proxy-bin PATH        fxproxy binary (default: ../target/release/fxproxy or target/release/fxproxy)
  --proxy-set KEY=VALUE   extra/overriding proxy.conf line; KEY= (empty) drops a generated key; repeatable
  --peer CMD              command line of another proxy (run with sh -c 'exec CMD')
  --url URL               an already-running proxy on loopback (ws:// or wss://)
  --tls                   serve TLS: a certificate is made for the run; fxproxy gets tls_cert_file and
                          tls_key_file, a --peer command {tls_cert} and {tls_key}; clients use wss://
  --ca-file PEM           with --url wss://: the CA (or certificate) the clients trust
  --pid PID               its process id, for CPU/RSS/threads (with --url)
  --label NAME            implementation name in the report (default: fxproxy / peer / url)
  --key KEY               client key (default benchkey-0001)
  --feed-port P           port of the feed source (default: any free port)
  --upstream-wait SECS    how long to wait for the proxy to subscribe to the feed (default 15; 300 with --url)

LOAD:
  --clients N             clients to connect (default 100)
  --rate R                quotes per second from the feed, all symbols together; 0 = idle (default 200)
  --symbols A,B           symbols the feed streams and the proxy subscribes to (default EURUSD)
  --warmup SECS           after connecting, before recording (default 2)
  --duration SECS         recording window (default 10)
  --connect-concurrency N connection attempts in flight at once (default 200); 0 = a storm:
                          every client connects at once, as a fleet does after a restart
  --connect-timeout SECS  limit for the whole connect phase (default 120)
  --loadgen-threads N     client runtime threads, one current-thread runtime each (default 1)
  --v2-share F            this share of the clients (0 to 1) speak TraderMade's v2 protocol: log in,
                          subscribe to every symbol, read v2 ticks. The feed then also writes each
                          quote's seq and sent_ns into its bid and ask (v2 ticks carry only prices and
                          a millisecond time), for every client alike: give --v2-share 0 for the
                          all-v1 arm of an A/B

SCRAPES (a Prometheus-like scraper beside the clients, for the whole run):
  --scrape R              GET /metrics R times a second, on a new connection each (default 0: none)
  --scrape-path PATH      what to get instead of /metrics
  --scrape-addr ADDR      where instead of the target's client port (e.g. its admin_listen)

OUTPUT:
  --json FILE             append one JSON line of the figures to FILE
  -h, --help              this text
";

#[derive(Debug, Clone)]
pub enum Target {
    ProxyBin(Option<PathBuf>),
    Peer(String),
    Url(String),
}

#[derive(Debug, Clone)]
pub struct Options {
    pub target: Target,
    pub proxy_set: Vec<(String, String)>,
    pub pid: Option<u32>,
    pub label: Option<String>,
    pub key: String,
    pub feed_port: u16,
    pub upstream_wait: Option<f64>,
    pub clients: usize,
    pub rate: f64,
    pub symbols: Vec<String>,
    pub warmup: f64,
    pub duration: f64,
    /// Connection attempts in flight at once; 0 = no cap (a storm).
    pub connect_concurrency: usize,
    pub connect_timeout: f64,
    pub loadgen_threads: usize,
    pub json: Option<PathBuf>,
    pub tls: bool,
    pub ca_file: Option<PathBuf>,
    /// Scrapes a second; 0: none.
    pub scrape: f64,
    pub scrape_path: String,
    pub scrape_addr: Option<std::net::SocketAddr>,
    /// `--v2-share`: the share of clients that speak v2; set, the feed tags its prices.
    pub v2_share: Option<f64>,
}

impl Options {
    /// How many of `n` clients speak v2.
    pub fn v2_clients(&self, n: usize) -> usize {
        v2_clients(n, self.v2_share.unwrap_or(0.0))
    }

    /// A storm: every client's connection attempt starts at once.
    pub fn storm(&self) -> bool {
        self.connect_concurrency == 0
    }

    /// How the clients connect, for the report: `storm` or `paced N`.
    pub fn connect_mode(&self) -> String {
        if self.storm() {
            "storm".into()
        } else {
            format!("paced {}", self.connect_concurrency)
        }
    }
}

#[derive(Debug, Clone)]
pub struct MiniProxyOptions {
    pub upstream: String,
    pub port: u16,
    pub key: String,
    pub symbols: String,
}

pub enum Command {
    Bench(Box<Options>),
    MiniProxy(MiniProxyOptions),
    Help,
}

pub fn parse(args: Vec<String>) -> Result<Command, String> {
    let mut it = args.into_iter().peekable();
    if it.peek().map(String::as_str) == Some("mini-proxy") {
        it.next();
        return parse_mini(it).map(Command::MiniProxy);
    }
    let mut o = Options {
        target: Target::ProxyBin(None),
        proxy_set: Vec::new(),
        pid: None,
        label: None,
        key: "benchkey-0001".into(),
        feed_port: 0,
        upstream_wait: None,
        clients: 100,
        rate: 200.0,
        symbols: vec!["EURUSD".into()],
        warmup: 2.0,
        duration: 10.0,
        connect_concurrency: 200,
        connect_timeout: 120.0,
        loadgen_threads: 1,
        json: None,
        tls: false,
        ca_file: None,
        scrape: 0.0,
        scrape_path: "/metrics".into(),
        scrape_addr: None,
        v2_share: None,
    };
    let mut targets = 0;
    while let Some(flag) = it.next() {
        let mut val = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--proxy-bin" => {
                o.target = Target::ProxyBin(Some(val(&flag)?.into()));
                targets += 1;
            }
            "--peer" => {
                o.target = Target::Peer(val(&flag)?);
                targets += 1;
            }
            "--url" => {
                o.target = Target::Url(val(&flag)?);
                targets += 1;
            }
            "--proxy-set" => {
                let kv = val(&flag)?;
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| format!("--proxy-set wants KEY=VALUE, got {kv:?}"))?;
                o.proxy_set.push((k.trim().into(), v.trim().into()));
            }
            "--pid" => o.pid = Some(num(&flag, &val(&flag)?)?),
            "--label" => o.label = Some(val(&flag)?),
            "--key" => o.key = val(&flag)?,
            "--feed-port" => o.feed_port = num(&flag, &val(&flag)?)?,
            "--upstream-wait" => o.upstream_wait = Some(num(&flag, &val(&flag)?)?),
            "--clients" => o.clients = num(&flag, &val(&flag)?)?,
            "--rate" => o.rate = num(&flag, &val(&flag)?)?,
            "--symbols" => {
                o.symbols = val(&flag)?
                    .split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            }
            "--warmup" => o.warmup = num(&flag, &val(&flag)?)?,
            "--duration" => o.duration = num(&flag, &val(&flag)?)?,
            "--connect-concurrency" => o.connect_concurrency = num(&flag, &val(&flag)?)?,
            "--connect-timeout" => o.connect_timeout = num(&flag, &val(&flag)?)?,
            "--loadgen-threads" => o.loadgen_threads = num(&flag, &val(&flag)?)?,
            "--json" => o.json = Some(val(&flag)?.into()),
            "--tls" => o.tls = true,
            "--ca-file" => o.ca_file = Some(val(&flag)?.into()),
            "--scrape" => o.scrape = num(&flag, &val(&flag)?)?,
            "--scrape-path" => o.scrape_path = val(&flag)?,
            "--scrape-addr" => o.scrape_addr = Some(num(&flag, &val(&flag)?)?),
            "--v2-share" => o.v2_share = Some(num(&flag, &val(&flag)?)?),
            _ => return Err(format!("unknown argument {flag:?} (see --help)")),
        }
    }
    if targets > 1 {
        return Err("give only one of --proxy-bin, --peer, --url".into());
    }
    if o.symbols.is_empty() {
        return Err("--symbols is empty".into());
    }
    if !(o.rate >= 0.0 && o.rate.is_finite()) {
        return Err("--rate must be 0 or more".into());
    }
    if o.duration <= 0.0 || o.warmup < 0.0 {
        return Err("--duration must be > 0 and --warmup >= 0".into());
    }
    if !(o.scrape >= 0.0 && o.scrape.is_finite()) {
        return Err("--scrape must be 0 or more scrapes a second".into());
    }
    if o.loadgen_threads == 0 {
        return Err("--loadgen-threads must be at least 1".into());
    }
    if o.v2_share.is_some_and(|f| !(0.0..=1.0).contains(&f)) {
        return Err("--v2-share must be from 0 to 1".into());
    }
    if let Target::Url(url) = &o.target {
        if o.tls {
            return Err(
                "--tls is for a spawned target; for --url give a wss:// URL and --ca-file".into(),
            );
        }
        if url.starts_with("wss://") != o.ca_file.is_some() {
            return Err(
                "--url wss://… needs --ca-file PEM (and --ca-file needs a wss:// URL)".into(),
            );
        }
    } else if o.ca_file.is_some() {
        return Err(
            "--ca-file is for --url wss://…; with --tls the run makes its own certificate".into(),
        );
    }
    if o.pid.is_some() && !matches!(o.target, Target::Url(_)) {
        return Err("--pid is only for --url (a spawned proxy's pid is known)".into());
    }
    Ok(Command::Bench(Box::new(o)))
}

fn parse_mini(it: impl Iterator<Item = String>) -> Result<MiniProxyOptions, String> {
    let mut it = it;
    let mut o = MiniProxyOptions {
        upstream: String::new(),
        port: 0,
        key: "benchkey-0001".into(),
        symbols: "EURUSD".into(),
    };
    while let Some(flag) = it.next() {
        let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--upstream" => o.upstream = v,
            "--port" => o.port = num(&flag, &v)?,
            "--key" => o.key = v,
            "--symbols" => o.symbols = v,
            _ => return Err(format!("mini-proxy: unknown argument {flag:?}")),
        }
    }
    if o.upstream.is_empty() || o.port == 0 {
        return Err("mini-proxy needs --upstream URL and --port P".into());
    }
    Ok(o)
}

/// How many of `n` clients speak v2 at `share` (rounded to the nearest client).
pub fn v2_clients(n: usize, share: f64) -> usize {
    ((n as f64 * share).round() as usize).min(n)
}

fn num<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("{flag}: {v:?} is not a valid number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn defaults_and_overrides() {
        let Ok(Command::Bench(o)) = parse(args(
            "--clients 1000 --rate 0 --proxy-set a=b --proxy-set c=",
        )) else {
            panic!()
        };
        assert_eq!((o.clients, o.rate, o.duration), (1000, 0.0, 10.0));
        assert_eq!(
            o.proxy_set,
            vec![("a".into(), "b".into()), ("c".into(), "".into())]
        );
        assert!(matches!(o.target, Target::ProxyBin(None)));
    }

    #[test]
    fn storm_is_concurrency_zero() {
        let Ok(Command::Bench(o)) = parse(args("--connect-concurrency 0")) else {
            panic!()
        };
        assert!(o.storm());
        assert_eq!(o.connect_mode(), "storm");
        let Ok(Command::Bench(o)) = parse(args("")) else {
            panic!()
        };
        assert!(!o.storm());
        assert_eq!(o.connect_mode(), "paced 200");
        assert!(parse(args("--loadgen-threads 0")).is_err());
    }

    #[test]
    fn scrapes() {
        let Ok(Command::Bench(o)) = parse(args("--scrape 50 --scrape-addr 127.0.0.1:9187")) else {
            panic!()
        };
        assert_eq!(o.scrape, 50.0);
        assert_eq!(o.scrape_path, "/metrics");
        assert_eq!(o.scrape_addr, Some("127.0.0.1:9187".parse().unwrap()));
        assert!(parse(args("--scrape -1")).is_err());
        assert!(parse(args("--scrape-addr localhost")).is_err());
    }

    #[test]
    fn a_share_of_the_clients_speaks_v2() {
        let Ok(Command::Bench(o)) = parse(args("--clients 1000 --v2-share 0.5")) else {
            panic!()
        };
        assert_eq!(o.v2_share, Some(0.5));
        assert_eq!(o.v2_clients(1000), 500);
        assert_eq!(v2_clients(3, 0.5), 2, "rounded");
        assert_eq!(v2_clients(7, 1.0), 7);
        let Ok(Command::Bench(o)) = parse(args("")) else {
            panic!()
        };
        assert_eq!((o.v2_share, o.v2_clients(100)), (None, 0));
        assert!(parse(args("--v2-share 1.5")).is_err());
        assert!(parse(args("--v2-share -0.1")).is_err());
    }

    #[test]
    fn one_target_only() {
        assert!(parse(args("--url ws://127.0.0.1:1/ --peer x")).is_err());
        assert!(parse(args("--pid 5")).is_err());
        assert!(parse(args("--bogus")).is_err());
    }
}
