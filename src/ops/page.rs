//! The live quotes page served at `/`: src/ops/page.html with the market-hours rule written into
//! it, so the page knows when the market is closed from the page itself. It talks to the proxy
//! over its WebSocket only, and `/healthz` may be turned off.
//!
//! The page handles a key, so it is served with a Content-Security-Policy that lets it run
//! only its own inline script and style (by their SHA-256, worked out from the page as
//! rendered, so an edit to page.html can never leave a stale hash), connect only back to this
//! origin, and be framed by nobody ([`headers`]).

use crate::base::market::Market;

/// The page as written, with [`RULE_SLOT`] where the rule goes.
pub const TEMPLATE: &str = include_str!("page.html");

/// The placeholder in the `<script id="market-rule" type="application/json">` element. It is
/// valid JSON itself, so the page served as a plain file (no rule) still runs: always open.
pub const RULE_SLOT: &str = "\"MARKET_RULE\"";

/// The page for `market`.
pub fn render(market: &Market) -> String {
    // The rule is numbers and fixed names; escaping `<` all the same means no text in it could
    // ever end the script element early.
    TEMPLATE.replacen(RULE_SLOT, &market.rule_json().replace('<', "\\u003c"), 1)
}

/// The header lines (each ending in CRLF) the page is served with: its Content-Security-Policy
/// and, for browsers older than `frame-ancestors`, `X-Frame-Options`.
pub fn headers(page: &str) -> String {
    format!(
        "Content-Security-Policy: {}\r\nX-Frame-Options: DENY\r\n",
        policy(page)
    )
}

/// `default-src 'none'`, and then only what the page needs: its inline scripts and style by
/// hash, WebSocket (and fetch) connections to its own origin, and the `data:` favicon. No
/// `<base>`, no form submission, no framing.
pub fn policy(page: &str) -> String {
    let hashes = |tag: &str| {
        elements(page, tag)
            .map(|text| {
                let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
                format!(
                    " 'sha256-{}'",
                    data_encoding::BASE64.encode(digest.as_ref())
                )
            })
            .collect::<String>()
    };
    format!(
        "default-src 'none'; script-src{}; style-src{}; connect-src 'self'; img-src data:; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hashes("script"),
        hashes("style")
    )
}

/// The text of each `<tag>` element of `page` that a browser runs: a script whose `type` is
/// JSON is data, not code, and the policy's `script-src` does not apply to it.
fn elements<'a>(page: &'a str, tag: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    let open = format!("<{tag}");
    let close = format!("</{tag}>");
    let mut rest = page;
    std::iter::from_fn(move || loop {
        let start = rest.find(&open)?;
        let after = &rest[start + open.len()..];
        // `<style>` or `<style id=...>`, not `<styles>`.
        if !after.starts_with(['>', ' ']) {
            rest = after;
            continue;
        }
        let tag_end = after.find('>')?;
        let attributes = &after[..tag_end];
        let body = &after[tag_end + 1..];
        let len = body.find(&close)?;
        rest = &body[len..];
        if attributes.contains("application/json") {
            continue;
        }
        return Some(&body[..len]);
    })
}

/// The text of the `<script>` element whose opening tag is `open_tag`, for tests that run the
/// page's own code.
pub fn script<'a>(page: &'a str, open_tag: &str) -> Option<&'a str> {
    let start = page.find(open_tag)? + open_tag.len();
    let len = page[start..].find("</script>")?;
    Some(&page[start..start + len])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::market::MarketHours;

    #[test]
    fn the_rule_is_written_into_the_page_once() {
        assert_eq!(TEMPLATE.matches(RULE_SLOT).count(), 1);
        let market = Market::new(MarketHours::Fx, &["2026-12-25".parse().unwrap()]);
        let page = render(&market);
        assert!(!page.contains(RULE_SLOT));
        let data = script(
            &page,
            r#"<script id="market-rule" type="application/json">"#,
        )
        .expect("the rule's script element");
        assert_eq!(data, market.rule_json());
        let code = script(&page, r#"<script id="market-js">"#).expect("the rule's code");
        assert!(code.contains("function marketState(rule, now)"));
        assert!(code.contains("function humanUtc(ms, now)"));
    }

    /// SHA-256 in base64, as a CSP hash source.
    fn csp_hash(text: &str) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
        format!("'sha256-{}'", data_encoding::BASE64.encode(digest.as_ref()))
    }

    #[test]
    fn the_policy_allows_the_pages_own_code_and_nothing_else() {
        let page = render(&Market::new(MarketHours::Fx, &[]));
        let policy = policy(&page);
        assert!(policy.starts_with("default-src 'none'; "), "{policy}");
        for part in [
            "connect-src 'self';",
            "frame-ancestors 'none'",
            "base-uri 'none';",
            "form-action 'none';",
        ] {
            assert!(policy.contains(part), "{part} missing: {policy}");
        }
        assert!(!policy.contains("unsafe"), "{policy}");
        // Every inline script that runs and the one style element, each by its hash.
        let rule_js = script(&page, r#"<script id="market-js">"#).unwrap();
        let main_js = script(&page, "<script>\n")
            .map(|s| format!("\n{s}"))
            .unwrap();
        let style = &page[page.find("<style>").unwrap() + 7..page.find("</style>").unwrap()];
        let script_src = format!("script-src {} {};", csp_hash(rule_js), csp_hash(&main_js));
        assert!(
            policy.contains(&script_src),
            "{script_src} missing: {policy}"
        );
        assert!(
            policy.contains(&format!("style-src {};", csp_hash(style))),
            "{policy}"
        );
        assert_eq!(
            page.matches("<script").count(),
            3,
            "a new script needs no change here"
        );
        // The rule is data: it may change with the config without changing the policy.
        let other = render(&Market::new(
            MarketHours::Always,
            &["2026-12-25".parse().unwrap()],
        ));
        assert_ne!(other, page);
        assert_eq!(crate::ops::page::policy(&other), policy);
        assert!(headers(&page).ends_with("\r\nX-Frame-Options: DENY\r\n"));
    }
}
