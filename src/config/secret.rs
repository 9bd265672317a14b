//! Credentials in the configuration, the provider key and the proxy's password among them:
//! kept out of `Debug` output, and read only where they are sent. Where they come from when
//! proxy.conf does not hold them is `credentials`.

use crate::base::logsafe::redacted_key;
use std::fmt;

/// The environment variable that supplies the upstream key when the file sets neither
/// `upstream_api_key` nor `upstream_api_key_file`.
pub const API_KEY_ENV: &str = "FXPROXY_UPSTREAM_API_KEY";

/// A credential that never appears in full in `Debug` output; read it with [`Secret::expose`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for sending upstream; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", redacted_key(&self.0))
    }
}
