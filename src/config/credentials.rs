//! Where credentials come from when proxy.conf does not hold them itself: a key file, systemd's
//! `LoadCredential=` directory (`${CREDENTIALS_DIRECTORY}`), the environment. Resolved once the
//! file is parsed; the TLS files may come as credentials too.

use crate::config::error::ConfigError;
use crate::config::model::Config;
use crate::config::secret::Secret;
use crate::config::value::CREDENTIALS_PLACEHOLDER;
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};

/// Expands `${CREDENTIALS_DIRECTORY}` in a path and resolves the result against `base`; paths
/// without the placeholder were resolved when the file was parsed and are returned as they are.
fn expand_credentials(
    path: &Path,
    credentials_dir: Option<&OsStr>,
    base: &Path,
) -> Result<PathBuf, String> {
    // Placeholder paths come from a &str in `value::credential_path`, so they are valid UTF-8.
    let Some(text) = path
        .to_str()
        .filter(|t| t.contains(CREDENTIALS_PLACEHOLDER))
    else {
        return Ok(path.to_path_buf());
    };
    let Some(dir) = credentials_dir.filter(|d| !d.is_empty()) else {
        return Err(
            "uses ${CREDENTIALS_DIRECTORY} but that environment variable is not set \
             (it is set by systemd's LoadCredential=)"
                .to_string(),
        );
    };
    let mut expanded = OsString::new();
    for (i, piece) in text.split(CREDENTIALS_PLACEHOLDER).enumerate() {
        if i > 0 {
            expanded.push(dir);
        }
        expanded.push(piece);
    }
    // The directory is joined as an OsString so a non-UTF-8 path survives intact.
    Ok(base.join(expanded))
}

/// Expands `${CREDENTIALS_DIRECTORY}` in the TLS file paths (systemd's `LoadCredential=`),
/// the backbone's CA among them.
pub fn resolve_tls_paths(
    config: &mut Config,
    credentials_dir: Option<&OsStr>,
) -> Result<(), ConfigError> {
    let base = config.file.parent().unwrap_or(Path::new("")).to_path_buf();
    let expand = |config: &Config, key: &str, path: &Option<PathBuf>| {
        path.as_ref()
            .map(|p| expand_credentials(p, credentials_dir, &base))
            .transpose()
            .map_err(|m| config.error_at(key, m))
    };
    let cert = expand(config, "tls_cert_file", &config.tls_cert_file)?;
    let key = expand(config, "tls_key_file", &config.tls_key_file)?;
    let client_ca = expand(config, "tls_client_ca_file", &config.tls_client_ca_file)?;
    let upstream_ca = expand(config, "upstream_ca_file", &config.upstream_ca_file)?;
    let backbone_ca = expand(config, "backbone_ca_file", &config.backbone_ca_file)?;
    config.tls_cert_file = cert;
    config.tls_key_file = key;
    config.tls_client_ca_file = client_ca;
    config.upstream_ca_file = upstream_ca;
    config.backbone_ca_file = backbone_ca;
    Ok(())
}

/// Fills `config.upstream_api_key`: an explicit `upstream_api_key` (even empty) wins; else the
/// key file's contents with trailing whitespace trimmed; else `env_key`.
pub fn resolve_api_key(
    config: &mut Config,
    credentials_dir: Option<&OsStr>,
    env_key: Option<String>,
    read: impl Fn(&Path) -> io::Result<String>,
) -> Result<(), ConfigError> {
    const KEY: &str = "upstream_api_key_file";
    if let Some(path) = config.upstream_api_key_file.clone() {
        let base = config.file.parent().unwrap_or(Path::new("")).to_path_buf();
        let path = expand_credentials(&path, credentials_dir, &base)
            .map_err(|m| config.error_at(KEY, m))?;
        let text = read(&path)
            .map_err(|e| config.error_at(KEY, format!("cannot read {}: {e}", path.display())))?;
        let key = text.trim_end();
        if key.is_empty() {
            return Err(config.error_at(KEY, format!("{} is empty", path.display())));
        }
        config.upstream_api_key = Secret::new(key);
        config.upstream_api_key_file = Some(path);
    } else if config.line_of("upstream_api_key").is_none() {
        if let Some(key) = env_key {
            config.upstream_api_key = Secret::new(key.trim());
        }
    }
    Ok(())
}

/// Fills `config.upstream_proxy_password`: the contents of `upstream_proxy_password_file`
/// (trailing whitespace trimmed, `${CREDENTIALS_DIRECTORY}` expanded), else `env_password`.
/// Which proxy URL it goes to is `config::proxy`'s call; a password in the URL itself wins.
pub fn resolve_proxy_password(
    config: &mut Config,
    credentials_dir: Option<&OsStr>,
    env_password: Option<String>,
    read: impl Fn(&Path) -> io::Result<String>,
) -> Result<(), ConfigError> {
    const KEY: &str = "upstream_proxy_password_file";
    let Some(path) = config.upstream_proxy_password_file.clone() else {
        if let Some(password) = env_password.filter(|p| !p.trim().is_empty()) {
            config.upstream_proxy_password = Secret::new(password.trim());
        }
        return Ok(());
    };
    let base = config.file.parent().unwrap_or(Path::new("")).to_path_buf();
    let path =
        expand_credentials(&path, credentials_dir, &base).map_err(|m| config.error_at(KEY, m))?;
    let text = read(&path)
        .map_err(|e| config.error_at(KEY, format!("cannot read {}: {e}", path.display())))?;
    let password = text.trim_end();
    if password.is_empty() {
        return Err(config.error_at(KEY, format!("{} is empty", path.display())));
    }
    config.upstream_proxy_password = Secret::new(password);
    config.upstream_proxy_password_file = Some(path);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse::parse;
    use std::collections::HashMap;

    const MINIMAL: &str = "upstream_url = sim\nsymbols = EURUSD\nuser_keys_file = users.keys\n";

    fn reader(files: &[(&str, &str)]) -> impl Fn(&Path) -> io::Result<String> {
        let files: HashMap<PathBuf, String> = files
            .iter()
            .map(|(p, t)| (PathBuf::from(p), t.to_string()))
            .collect();
        move |p: &Path| {
            files
                .get(p)
                .cloned()
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "not found"))
        }
    }

    fn resolved(extra: &str, cred: Option<&str>, env: Option<&str>) -> Result<Config, ConfigError> {
        let mut c = parse(
            &format!("{MINIMAL}{extra}"),
            Path::new("/etc/fxproxy/proxy.conf"),
        )?;
        let files = reader(&[
            ("/etc/fxproxy/key.txt", "from-file\n"),
            ("/run/creds/upkey", "from-creds \r\n"),
            ("/etc/fxproxy/empty", "\n"),
        ]);
        resolve_api_key(&mut c, cred.map(OsStr::new), env.map(str::to_string), files)?;
        Ok(c)
    }

    #[test]
    fn api_key_precedence() {
        let key = |extra: &str, cred, env| {
            resolved(extra, cred, env)
                .unwrap()
                .upstream_api_key
                .expose()
                .to_string()
        };
        assert_eq!(
            key("upstream_api_key = inline\n", None, Some("env")),
            "inline"
        );
        // Set explicitly, even to nothing, the file's value wins over the environment.
        assert_eq!(key("upstream_api_key =\n", None, Some("env")), "");
        assert_eq!(
            key("upstream_api_key_file = key.txt\n", None, Some("env")),
            "from-file"
        );
        assert_eq!(key("", None, Some(" env \n")), "env");
        assert_eq!(key("", None, None), "");
        assert_eq!(
            key(
                "upstream_api_key_file = ${CREDENTIALS_DIRECTORY}/upkey\n",
                Some("/run/creds"),
                None
            ),
            "from-creds"
        );
        let c = resolved(
            "upstream_api_key_file = ${CREDENTIALS_DIRECTORY}/upkey\n",
            Some("/run/creds"),
            None,
        )
        .unwrap();
        assert_eq!(
            c.upstream_api_key_file,
            Some(PathBuf::from("/run/creds/upkey"))
        );
    }

    #[test]
    fn the_proxy_password_comes_from_the_file_or_the_environment() {
        let password = |extra: &str, cred: Option<&str>, env: Option<&str>| {
            let mut c = parse(
                &format!("{MINIMAL}upstream_proxy = http://u@p:3128\n{extra}"),
                Path::new("/etc/fxproxy/proxy.conf"),
            )
            .unwrap();
            let files = reader(&[
                ("/etc/fxproxy/pw", "from-file\n"),
                ("/run/creds/proxy", "from-creds\n"),
                ("/etc/fxproxy/empty", " \n"),
            ]);
            resolve_proxy_password(&mut c, cred.map(OsStr::new), env.map(str::to_string), files)
                .map(|()| c.upstream_proxy_password.expose().to_string())
                .map_err(|e| e.to_string())
        };
        let file = "upstream_proxy_password_file = pw\n";
        assert_eq!(password(file, None, Some("env")).unwrap(), "from-file");
        assert_eq!(password("", None, Some(" env \n")).unwrap(), "env");
        assert_eq!(password("", None, None).unwrap(), "");
        assert_eq!(
            password(
                "upstream_proxy_password_file = ${CREDENTIALS_DIRECTORY}/proxy\n",
                Some("/run/creds"),
                None
            )
            .unwrap(),
            "from-creds"
        );
        assert_eq!(
            password("upstream_proxy_password_file = empty\n", None, None).unwrap_err(),
            "/etc/fxproxy/proxy.conf:5: key `upstream_proxy_password_file`: /etc/fxproxy/empty is empty"
        );
        assert!(
            password("upstream_proxy_password_file = gone\n", None, None)
                .unwrap_err()
                .contains("cannot read /etc/fxproxy/gone")
        );
    }

    #[test]
    fn api_key_errors() {
        let err = |extra: &str, cred| resolved(extra, cred, None).unwrap_err().to_string();
        assert_eq!(
            err("upstream_api_key = a\nupstream_api_key_file = key.txt\n", None),
            "/etc/fxproxy/proxy.conf:5: key `upstream_api_key_file`: `upstream_api_key` is already set on line 4; set only one of the two"
        );
        assert_eq!(
            err("upstream_api_key_file = missing\n", None),
            "/etc/fxproxy/proxy.conf:4: key `upstream_api_key_file`: cannot read /etc/fxproxy/missing: not found"
        );
        assert_eq!(
            err("upstream_api_key_file = empty\n", None),
            "/etc/fxproxy/proxy.conf:4: key `upstream_api_key_file`: /etc/fxproxy/empty is empty"
        );
        let m = err(
            "upstream_api_key_file = ${CREDENTIALS_DIRECTORY}/upkey\n",
            None,
        );
        assert!(m.starts_with("/etc/fxproxy/proxy.conf:4: key `upstream_api_key_file`: uses ${CREDENTIALS_DIRECTORY} but"), "{m}");
    }
}
