//! The pooling modes ([`Pool`], public as `aiec::Pool` and `aiec::config::Pool`),
//! apart from the configuration so that the error type can name them without
//! an import circle.

use std::fmt;

/// How the activation is pooled into one `[C]` vector per sample, with the input
/// layout each mode takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pool {
    /// `[B, T, C]`: `v[b, c] = y[b, 0, c]` (the class token).
    Token,
    /// `[B, T, C]`: `v[b, c] = mean over t of y[b, t, c]`.
    AvgToken,
    /// `[B, C, H, W]`: `v[b, c] = mean over h, w of y[b, c, h, w]`.
    AvgHw,
    /// `[B, C]`: `v = y`.
    None,
}

impl Pool {
    /// Every mode, in a fixed order (for tests and tables).
    pub const ALL: [Pool; 4] = [Pool::Token, Pool::AvgToken, Pool::AvgHw, Pool::None];

    /// The spec's name of the mode (`token`, `avg_token`, `avg_hw`, `none`).
    pub fn name(self) -> &'static str {
        match self {
            Pool::Token => "token",
            Pool::AvgToken => "avg_token",
            Pool::AvgHw => "avg_hw",
            Pool::None => "none",
        }
    }

    /// Parses a spec name back into a mode.
    pub fn from_name(name: &str) -> Option<Pool> {
        Pool::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The input layout this mode takes, as text.
    pub fn layout(self) -> &'static str {
        match self {
            Pool::Token | Pool::AvgToken => "[B, T, C]",
            Pool::AvgHw => "[B, C, H, W]",
            Pool::None => "[B, C]",
        }
    }

    /// Number of input dimensions.
    pub fn rank(self) -> usize {
        match self {
            Pool::Token | Pool::AvgToken => 3,
            Pool::AvgHw => 4,
            Pool::None => 2,
        }
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
