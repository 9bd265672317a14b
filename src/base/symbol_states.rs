//! What the provider answered about each configured symbol: accepted, denied (with its
//! reason), invalid, or not acknowledged (not yet, or the provider never says). The upstream
//! thread writes it when an acknowledgement arrives; `/metrics`, `/healthz`, the admission of
//! clients and their writers read it. Also the number of symbols the provider's plan allows,
//! when its login says.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// One symbol's standing with the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SymbolState {
    /// No acknowledgement names it (yet, or the provider gives none): quotes may flow.
    Unacknowledged,
    Accepted,
    /// Refused, with the provider's reason.
    Denied(String),
    /// The provider does not know it.
    Invalid,
}

impl SymbolState {
    /// The `state` label of `fxproxy_upstream_symbol`.
    pub fn label(&self) -> &'static str {
        match self {
            SymbolState::Unacknowledged => "unacknowledged",
            SymbolState::Accepted => "accepted",
            SymbolState::Denied(_) => "denied",
            SymbolState::Invalid => "invalid",
        }
    }

    /// Denied or invalid: no quote of it will come.
    pub fn is_refused(&self) -> bool {
        matches!(self, SymbolState::Denied(_) | SymbolState::Invalid)
    }

    /// Why no quote of it comes, in a few words; `None` while quotes may.
    pub fn why_refused(&self) -> Option<String> {
        match self {
            SymbolState::Denied(reason) if reason.is_empty() => {
                Some("denied by the provider".into())
            }
            SymbolState::Denied(reason) => Some(format!("denied by the provider: {reason}")),
            SymbolState::Invalid => Some("invalid at the provider".into()),
            _ => None,
        }
    }
}

#[derive(Default)]
struct Table {
    symbols: Vec<String>,
    states: Vec<SymbolState>,
    limit: Option<u64>,
}

/// Every configured symbol's [`SymbolState`], by its position in `symbols`.
#[derive(Default)]
pub struct SymbolStates {
    table: Mutex<Table>,
    /// Whether any symbol is refused: looked at without the lock on every client's admission.
    any_refused: AtomicBool,
}

impl SymbolStates {
    /// Starts every one of `symbols` unacknowledged.
    pub fn configure(&self, symbols: &[String]) {
        let mut t = self.table.lock();
        t.symbols = symbols.to_vec();
        t.states = vec![SymbolState::Unacknowledged; symbols.len()];
        self.any_refused.store(false, Ordering::SeqCst);
    }

    /// An acknowledgement's verdict on every symbol, by position (as [`configure`]d).
    ///
    /// [`configure`]: SymbolStates::configure
    pub fn set(&self, states: Vec<SymbolState>) {
        let mut t = self.table.lock();
        if states.len() != t.symbols.len() {
            return;
        }
        let refused = states.iter().any(SymbolState::is_refused);
        t.states = states;
        self.any_refused.store(refused, Ordering::SeqCst);
    }

    /// Each symbol with its state, in the configured order.
    pub fn all(&self) -> Vec<(String, SymbolState)> {
        let t = self.table.lock();
        t.symbols
            .iter()
            .cloned()
            .zip(t.states.iter().cloned())
            .collect()
    }

    /// The state of the symbol at `id`.
    pub fn state(&self, id: usize) -> SymbolState {
        let t = self.table.lock();
        t.states
            .get(id)
            .cloned()
            .unwrap_or(SymbolState::Unacknowledged)
    }

    /// By position: whether the provider refused the symbol. Empty when none is refused.
    pub fn refused(&self) -> Vec<bool> {
        if !self.any_refused.load(Ordering::SeqCst) {
            return Vec::new();
        }
        let t = self.table.lock();
        t.states.iter().map(SymbolState::is_refused).collect()
    }

    pub fn any_refused(&self) -> bool {
        self.any_refused.load(Ordering::SeqCst)
    }

    /// Whether quotes of some symbol may still come (not every one is refused).
    pub fn some_flow(&self) -> bool {
        let t = self.table.lock();
        t.states.is_empty() || t.states.iter().any(|s| !s.is_refused())
    }

    /// The number of symbols the provider's plan allows, when its login said.
    pub fn set_limit(&self, limit: u64) {
        self.table.lock().limit = Some(limit);
    }

    pub fn limit(&self) -> Option<u64> {
        self.table.lock().limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_by_position() {
        let s = SymbolStates::default();
        s.configure(&["EURUSD".into(), "XAUUSD".into()]);
        assert!(!s.any_refused() && s.some_flow());
        assert_eq!(s.refused(), Vec::<bool>::new());
        s.set(vec![
            SymbolState::Accepted,
            SymbolState::Denied("not in your plan".into()),
        ]);
        assert!(s.any_refused() && s.some_flow());
        assert_eq!(s.refused(), vec![false, true]);
        assert_eq!(
            s.state(1).why_refused().unwrap(),
            "denied by the provider: not in your plan"
        );
        assert_eq!(s.all()[0], ("EURUSD".into(), SymbolState::Accepted));
        s.set(vec![
            SymbolState::Invalid,
            SymbolState::Denied(String::new()),
        ]);
        assert!(!s.some_flow());
        assert_eq!(s.state(0).label(), "invalid");
        // A verdict of the wrong length changes no state.
        s.set(vec![SymbolState::Accepted]);
        assert_eq!(s.state(0), SymbolState::Invalid);
        assert_eq!(s.limit(), None);
        s.set_limit(54);
        assert_eq!(s.limit(), Some(54));
    }
}
