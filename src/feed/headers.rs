//! The extra headers of the upstream's WebSocket handshake: the provider template's `header`
//! lines, then proxy.conf's `upstream_header` (which replaces a template's header of the same
//! name), with `{api_key}` replaced by the provider key, so a key can travel as a header
//! without being written twice. Worked out once at start-up; what they hold is never logged,
//! only their names.

use crate::config::value::Header;

/// A header ready to send: its value may hold the provider key, so it has no `Debug`.
pub struct Filled {
    pub name: String,
    pub value: String,
}

/// The template's headers not named in `configured`, then `configured`, each value with
/// `{api_key}` replaced by `key`. An error names the header when the key cannot go in it
/// (a header value is printable ASCII), without showing the key.
pub fn filled(
    template: &[Header],
    configured: &[Header],
    key: &str,
) -> Result<Vec<Filled>, String> {
    let replaced = |t: &Header| {
        !configured
            .iter()
            .any(|c| c.name.eq_ignore_ascii_case(&t.name))
    };
    template
        .iter()
        .filter(|t| replaced(t))
        .chain(configured)
        .map(|h| {
            let value = h.value.replace("{api_key}", key);
            if !value.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)) {
                return Err(format!(
                    "the header `{}` holds {{api_key}}, and the provider key has a character a header cannot carry (printable ASCII only)",
                    h.name
                ));
            }
            Ok(Filled {
                name: h.name.clone(),
                value,
            })
        })
        .collect()
}

/// The names of `headers`, for the log.
pub fn names(headers: &[Filled]) -> String {
    headers
        .iter()
        .map(|h| h.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::value::upstream_header;

    fn headers(lines: &[&str]) -> Vec<Header> {
        lines.iter().map(|l| upstream_header(l).unwrap()).collect()
    }

    #[test]
    fn proxy_conf_s_headers_follow_and_replace_the_template_s() {
        let template = headers(&["X-Api-Key: {api_key}", "User-Agent: template", "X-Id: 1"]);
        let configured = headers(&["user-agent: desk 4", "Authorization: Bearer {api_key}"]);
        let got = filled(&template, &configured, "k3y").unwrap();
        let pairs: Vec<(&str, &str)> = got
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("X-Api-Key", "k3y"),
                ("X-Id", "1"),
                ("user-agent", "desk 4"),
                ("Authorization", "Bearer k3y"),
            ]
        );
        assert_eq!(names(&got), "X-Api-Key, X-Id, user-agent, Authorization");
        assert!(filled(&[], &[], "k").unwrap().is_empty());
    }

    #[test]
    fn a_key_that_cannot_go_in_a_header_is_refused_without_showing_it() {
        let e = filled(&[], &headers(&["X-Key: {api_key}"]), "bad\nkey")
            .err()
            .unwrap();
        assert!(e.starts_with("the header `X-Key` holds {api_key}"), "{e}");
        assert!(!e.contains("bad"), "{e}");
        // Without {api_key}, the key does not matter.
        assert!(filled(&[], &headers(&["X-Id: 1"]), "bad\nkey").is_ok());
    }
}
