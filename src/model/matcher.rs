//! Compiled string and header matchers (Envoy's `StringMatcher`, `HeaderMatcher`), used by
//! routes and filters.

use regex::Regex;

/// A string matcher (Envoy's `StringMatcher`).
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Regex(Regex),
}

/// A compiled `StringMatcher` with its case rule.
pub struct StringMatcher {
    pub pattern: StringMatch,
    pub ignore_case: bool,
}

impl StringMatcher {
    /// Whether `value` matches.
    pub fn matches(&self, value: &[u8]) -> bool {
        let eq = |a: &[u8], b: &[u8]| {
            if self.ignore_case {
                a.eq_ignore_ascii_case(b)
            } else {
                a == b
            }
        };
        match &self.pattern {
            StringMatch::Exact(s) => eq(value, s.as_bytes()),
            StringMatch::Prefix(s) => value.len() >= s.len() && eq(&value[..s.len()], s.as_bytes()),
            StringMatch::Suffix(s) => {
                value.len() >= s.len() && eq(&value[value.len() - s.len()..], s.as_bytes())
            }
            StringMatch::Contains(s) => {
                let n = s.len();
                n == 0 || value.windows(n).any(|w| eq(w, s.as_bytes()))
            }
            StringMatch::Regex(re) => std::str::from_utf8(value).is_ok_and(|v| re.is_match(v)),
        }
    }
}

/// A header condition.
pub struct HeaderMatch {
    /// Lower-cased; `:method`, `:path`, `:authority`, `:scheme` for pseudo-headers.
    pub name: String,
    pub kind: HeaderMatchKind,
    pub invert: bool,
    pub treat_missing_as_empty: bool,
}

/// What a header must look like.
pub enum HeaderMatchKind {
    Present(bool),
    String(StringMatcher),
}

/// How a route matches the path (query string excluded).
pub enum PathMatch {
    Prefix(String),
    Exact(String),
    /// `path_separated_prefix`: the prefix, then end of path or `/`.
    Separated(String),
    Regex(Regex),
    /// `connect_matcher`: CONNECT requests only.
    Connect,
}

/// A query parameter condition.
pub struct QueryMatch {
    pub name: String,
    /// `None`: the parameter must be present.
    pub value: Option<StringMatcher>,
}
