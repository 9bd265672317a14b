//! The command line: which command to run and with what, parsed without side effects so
//! tests can feed it argument lists.

use crate::watch::ProxyFlag;
use std::net::SocketAddr;
use std::path::PathBuf;

pub const USAGE: &str = "\
fxproxy — one Forex market-data WebSocket feed, fanned out to many authenticated clients

USAGE:
    fxproxy [--config FILE]                 run the proxy (default ./proxy.conf)
    fxproxy --check-config [--config FILE]  validate the configuration and exit (0 valid, 2 invalid)
    fxproxy sim [--listen ADDR] [--rate N] [--symbols A,B]
                                            a simulated Forex source speaking the upstream protocol
    fxproxy watch URL [--key KEY] [--symbols A,B] [--ca-file PEM] [--proxy URL|none]
                                            print quotes from a proxy (or the source) as they arrive;
                                            the key may come from FXPROXY_KEY instead of --key;
                                            --ca-file trusts a private CA for a wss:// URL;
                                            --proxy http://[USER:PASSWORD@]HOST:PORT connects through
                                            an HTTP proxy (without it HTTPS_PROXY, HTTP_PROXY and
                                            NO_PROXY are honoured; --proxy none ignores them)
    fxproxy --version | --help
";

pub const DEFAULT_SIM_LISTEN: &str = "127.0.0.1:8766";

#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Run {
        config: PathBuf,
    },
    CheckConfig {
        config: PathBuf,
    },
    Sim {
        listen: SocketAddr,
        rate: u32,
        symbols: Vec<String>,
    },
    Watch {
        url: String,
        key: Option<String>,
        symbols: Option<Vec<String>>,
        /// A CA (PEM) trusted for a `wss://` URL besides the bundled web PKI roots.
        ca_file: Option<PathBuf>,
        /// `--proxy`; not given, the environment decides.
        proxy: ProxyFlag,
    },
    Version,
    Help,
}

fn symbols(list: &str) -> Vec<String> {
    list.split(',')
        .map(|s| s.trim().to_ascii_uppercase())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Parses the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Command, String> {
    let mut it = args.iter().map(String::as_str);
    let value = |flag: &str, it: &mut dyn Iterator<Item = &str>| {
        it.next()
            .map(str::to_string)
            .ok_or_else(|| format!("{flag} needs a value"))
    };
    match args.first().map(String::as_str) {
        Some("sim") => {
            it.next();
            let mut listen = DEFAULT_SIM_LISTEN.to_string();
            let mut rate = "10".to_string();
            let mut syms = Vec::new();
            while let Some(arg) = it.next() {
                match arg {
                    "--listen" => listen = value(arg, &mut it)?,
                    "--rate" => rate = value(arg, &mut it)?,
                    "--symbols" => syms = symbols(&value(arg, &mut it)?),
                    other => return Err(format!("sim: unexpected argument {other:?}")),
                }
            }
            Ok(Command::Sim {
                listen: listen
                    .parse()
                    .map_err(|_| format!("--listen: not an address: {listen:?}"))?,
                rate: rate.parse().ok().filter(|r| *r > 0).ok_or_else(|| {
                    format!("--rate: expected quotes per second above 0, got {rate:?}")
                })?,
                symbols: syms,
            })
        }
        Some("watch") => {
            it.next();
            let mut url = None;
            let mut key = None;
            let mut syms = None;
            let mut ca_file = None;
            let mut proxy = ProxyFlag::Environment;
            while let Some(arg) = it.next() {
                match arg {
                    "--key" => key = Some(value(arg, &mut it)?),
                    "--proxy" => proxy = ProxyFlag::parse(&value(arg, &mut it)?)?,
                    "--ca-file" => ca_file = Some(PathBuf::from(value(arg, &mut it)?)),
                    "--symbols" => syms = Some(symbols(&value(arg, &mut it)?)),
                    other if url.is_none() && !other.starts_with('-') => {
                        url = Some(other.to_string())
                    }
                    other => return Err(format!("watch: unexpected argument {other:?}")),
                }
            }
            Ok(Command::Watch {
                url: url.ok_or("watch: the proxy's URL is required, e.g. ws://127.0.0.1:8765/")?,
                key,
                symbols: syms,
                ca_file,
                proxy,
            })
        }
        _ => {
            let mut config = PathBuf::from("proxy.conf");
            let mut check = false;
            while let Some(arg) = it.next() {
                match arg {
                    "--config" | "-c" => config = PathBuf::from(value(arg, &mut it)?),
                    "--check-config" => check = true,
                    "--version" | "-V" => return Ok(Command::Version),
                    "--help" | "-h" => return Ok(Command::Help),
                    other => return Err(format!("unexpected argument {other:?}")),
                }
            }
            Ok(if check {
                Command::CheckConfig { config }
            } else {
                Command::Run { config }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn commands() {
        assert_eq!(
            parse(&args("")),
            Ok(Command::Run {
                config: "proxy.conf".into()
            })
        );
        assert_eq!(
            parse(&args("--check-config --config /etc/fxproxy/proxy.conf")),
            Ok(Command::CheckConfig {
                config: "/etc/fxproxy/proxy.conf".into()
            })
        );
        assert_eq!(
            parse(&args("sim --rate 50 --symbols eurusd,GBPUSD")),
            Ok(Command::Sim {
                listen: DEFAULT_SIM_LISTEN.parse().unwrap(),
                rate: 50,
                symbols: vec!["EURUSD".into(), "GBPUSD".into()]
            })
        );
        assert_eq!(
            parse(&args(
                "watch ws://127.0.0.1:8765/ --key abc --symbols EURUSD"
            )),
            Ok(Command::Watch {
                url: "ws://127.0.0.1:8765/".into(),
                key: Some("abc".into()),
                symbols: Some(vec!["EURUSD".into()]),
                ca_file: None,
                proxy: ProxyFlag::Environment,
            })
        );
        assert_eq!(
            parse(&args("watch wss://fx.example:8765/ --ca-file /etc/ca.pem")),
            Ok(Command::Watch {
                url: "wss://fx.example:8765/".into(),
                key: None,
                symbols: None,
                ca_file: Some("/etc/ca.pem".into()),
                proxy: ProxyFlag::Environment,
            })
        );
        assert_eq!(
            parse(&args("watch ws://fx:8765/ --proxy none")),
            Ok(Command::Watch {
                url: "ws://fx:8765/".into(),
                key: None,
                symbols: None,
                ca_file: None,
                proxy: ProxyFlag::Off,
            })
        );
        let Ok(Command::Watch {
            proxy: ProxyFlag::Url(proxy),
            ..
        }) = parse(&args(
            "watch ws://fx:8765/ --proxy http://u:p@proxy.corp:3128",
        ))
        else {
            panic!("a proxy URL");
        };
        assert_eq!(proxy.shown(), "http://…@proxy.corp:3128");
        assert_eq!(parse(&args("--version")), Ok(Command::Version));
    }

    #[test]
    fn mistakes_are_explained() {
        assert!(parse(&args("--config"))
            .unwrap_err()
            .contains("needs a value"));
        assert!(parse(&args("--bogus")).unwrap_err().contains("--bogus"));
        assert!(parse(&args("sim --rate 0")).unwrap_err().contains("--rate"));
        assert!(parse(&args("watch"))
            .unwrap_err()
            .contains("URL is required"));
        assert!(parse(&args("watch ws://x/ --proxy socks5://p:1"))
            .unwrap_err()
            .starts_with("--proxy: expected http://"));
        assert!(parse(&args("watch ws://x/ --proxy"))
            .unwrap_err()
            .contains("needs a value"));
    }
}
