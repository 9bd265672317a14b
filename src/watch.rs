//! TEMPORARY stand-in until the watch client lands.
pub struct WatchOptions {
    pub url: String,
    pub key: String,
    pub symbols: Option<Vec<String>>,
}
#[derive(Debug)]
pub struct WatchError;
impl std::fmt::Display for WatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("x")
    }
}
pub fn run(
    _o: &WatchOptions,
    _out: &mut dyn std::io::Write,
    _s: &std::sync::atomic::AtomicBool,
) -> Result<(), WatchError> {
    Ok(())
}
