//! The live quotes page served at `/`: src/page.html with the market-hours rule written into
//! it, so the page knows when the market is closed from the page itself. It talks to the proxy
//! over its WebSocket only, and `/healthz` may be turned off.

use crate::market::Market;

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
    use crate::market::MarketHours;

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
}
