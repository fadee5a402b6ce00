//! The three demo backends of the sample (ABC, PQR, XYZ): names, IDs, ports, paths and
//! the push message each one sends.

use std::fmt;
use std::str::FromStr;

use crate::DemoError;

/// Which demo backend.
///
/// The gateway routes by [`Backend::id`] and the sample's `Config.toml` points each ID
/// at `ws://localhost:<default_port><path>`; everything that differs between the three
/// services is derived from this one value so they cannot drift apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// `Backend_ABC`, port 8081, path `/backend/abc`.
    Abc,
    /// `Backend_PQR`, port 8082, path `/backend/pqr`.
    Pqr,
    /// `Backend_XYZ`, port 8083, path `/backend/xyz`.
    Xyz,
}

impl Backend {
    /// All three backends, in port order, so callers can start or route to every one.
    pub const ALL: [Backend; 3] = [Backend::Abc, Backend::Pqr, Backend::Xyz];

    /// The short display name used in the push message and in logs: "ABC", "PQR", "XYZ".
    pub fn name(self) -> &'static str {
        match self {
            Backend::Abc => "ABC",
            Backend::Pqr => "PQR",
            Backend::Xyz => "XYZ",
        }
    }

    /// The routing ID clients put in the gateway's `ID` header: "Backend_ABC", ...
    pub fn id(self) -> &'static str {
        match self {
            Backend::Abc => "Backend_ABC",
            Backend::Pqr => "Backend_PQR",
            Backend::Xyz => "Backend_XYZ",
        }
    }

    /// The port the sample's `Config.toml` expects this backend on: 8081, 8082, 8083.
    pub fn default_port(self) -> u16 {
        match self {
            Backend::Abc => 8081,
            Backend::Pqr => 8082,
            Backend::Xyz => 8083,
        }
    }

    /// The only request path this backend upgrades: "/backend/abc", ...
    pub fn path(self) -> &'static str {
        match self {
            Backend::Abc => "/backend/abc",
            Backend::Pqr => "/backend/pqr",
            Backend::Xyz => "/backend/xyz",
        }
    }

    /// The exact text message pushed every push interval, e.g.
    /// `{"message":"Hello from ABC Backend"}`; a constant so pushing never allocates and
    /// clients can tell pushes from echoes by comparing bytes.
    pub fn push_text(self) -> &'static str {
        match self {
            Backend::Abc => r#"{"message":"Hello from ABC Backend"}"#,
            Backend::Pqr => r#"{"message":"Hello from PQR Backend"}"#,
            Backend::Xyz => r#"{"message":"Hello from XYZ Backend"}"#,
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Accepts the name in any case ("abc", "ABC") or the routing ID ("Backend_ABC"), so a
/// CLI or config can use whichever the user knows.
impl FromStr for Backend {
    type Err = DemoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Backend::ALL
            .into_iter()
            .find(|b| b.name().eq_ignore_ascii_case(s) || b.id().eq_ignore_ascii_case(s))
            .ok_or_else(|| DemoError::UnknownBackend(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_ids_ports_paths_match_the_sample() {
        let rows: Vec<_> = Backend::ALL
            .iter()
            .map(|b| (b.name(), b.id(), b.default_port(), b.path()))
            .collect();
        assert_eq!(
            rows,
            [
                ("ABC", "Backend_ABC", 8081, "/backend/abc"),
                ("PQR", "Backend_PQR", 8082, "/backend/pqr"),
                ("XYZ", "Backend_XYZ", 8083, "/backend/xyz"),
            ]
        );
    }

    #[test]
    fn push_text_names_the_backend() {
        for b in Backend::ALL {
            assert_eq!(
                b.push_text(),
                format!(r#"{{"message":"Hello from {} Backend"}}"#, b.name())
            );
        }
    }

    #[test]
    fn parses_names_and_ids() {
        assert_eq!("abc".parse::<Backend>().ok(), Some(Backend::Abc));
        assert_eq!("PQR".parse::<Backend>().ok(), Some(Backend::Pqr));
        assert_eq!("Backend_XYZ".parse::<Backend>().ok(), Some(Backend::Xyz));
        assert!("nope".parse::<Backend>().is_err());
    }
}
