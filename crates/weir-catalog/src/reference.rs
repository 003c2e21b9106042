//! References: how a user names a version of a model, dataset or feature
//! view — `name` (the latest), `name@3` (a version; `name@v3` too) or
//! `name@champion` (an alias, for models).

use std::fmt;
use std::str::FromStr;

/// Which version a reference picks.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum At {
    /// The latest version.
    Latest,
    /// A version by number.
    Version(u64),
    /// The version an alias points at.
    Alias(String),
}

/// `name`, `name@version` or `name@alias`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    /// What it names.
    pub name: String,
    /// Which version.
    pub at: At,
}

/// A reference that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a reference: {reason} (write `name`, `name@version` or `name@alias`)")]
pub struct ReferenceError {
    /// What was given.
    pub text: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl Reference {
    /// The latest version of `name`.
    pub fn latest(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            at: At::Latest,
        }
    }

    /// Version `version` of `name`.
    pub fn version(name: impl Into<String>, version: u64) -> Self {
        Self {
            name: name.into(),
            at: At::Version(version),
        }
    }

    /// The version number, when it names one.
    pub fn number(&self) -> Option<u64> {
        match self.at {
            At::Version(version) => Some(version),
            _ => None,
        }
    }

    /// The version number, which must fit `T` (views and datasets number
    /// their versions in 32 bits).
    pub fn number_as<T: TryFrom<u64>>(&self) -> Result<Option<T>, ReferenceError> {
        self.number()
            .map(|n| {
                T::try_from(n).map_err(|_| ReferenceError {
                    text: self.to_string(),
                    reason: "the version is too large",
                })
            })
            .transpose()
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(text: &str) -> Result<Self, ReferenceError> {
        let error = |reason| ReferenceError {
            text: text.to_string(),
            reason,
        };
        let (name, at) = match text.rsplit_once('@') {
            None => (text, At::Latest),
            Some((name, "")) => {
                return Err(error(if name.is_empty() {
                    "it names nothing"
                } else {
                    "nothing follows `@`"
                }));
            }
            Some((name, which)) => {
                let number = which.strip_prefix('v').unwrap_or(which);
                let at = if !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()) {
                    At::Version(
                        number
                            .parse()
                            .map_err(|_| error("the version is too large"))?,
                    )
                } else if which == "latest" {
                    At::Latest
                } else {
                    At::Alias(which.to_string())
                };
                (name, at)
            }
        };
        if name.is_empty() {
            return Err(error("it names nothing"));
        }
        if name.contains(char::is_whitespace) {
            return Err(error("a name has no spaces"));
        }
        Ok(Self {
            name: name.to_string(),
            at,
        })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.at {
            At::Latest => write!(f, "{}", self.name),
            At::Version(version) => write!(f, "{}@{version}", self.name),
            At::Alias(alias) => write!(f, "{}@{alias}", self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Reference {
        text.parse().unwrap()
    }

    #[test]
    fn names_versions_and_aliases() {
        assert_eq!(parse("churn"), Reference::latest("churn"));
        assert_eq!(parse("churn@3"), Reference::version("churn", 3));
        assert_eq!(parse("churn@v3"), Reference::version("churn", 3));
        assert_eq!(parse("churn@latest"), Reference::latest("churn"));
        assert_eq!(
            parse("churn@champion").at,
            At::Alias("champion".to_string())
        );
        // An alias may look like a version's neighbour.
        assert_eq!(parse("churn@v3x").at, At::Alias("v3x".to_string()));
        // Names may hold `@` themselves: the last one splits.
        assert_eq!(parse("team@churn@2"), Reference::version("team@churn", 2));
    }

    #[test]
    fn printed_as_parsed() {
        for text in ["churn", "churn@3", "churn@champion"] {
            assert_eq!(parse(text).to_string(), text);
        }
        assert_eq!(parse("churn@v3").to_string(), "churn@3");
    }

    #[test]
    fn bad_references_say_why_and_how_to_write_one() {
        for (text, reason) in [
            ("", "it names nothing"),
            ("@3", "it names nothing"),
            ("churn@", "nothing follows `@`"),
            ("my model@1", "a name has no spaces"),
            ("churn@99999999999999999999", "the version is too large"),
        ] {
            let error = text.parse::<Reference>().unwrap_err();
            assert_eq!(error.reason, reason, "{text}");
            assert!(
                error
                    .to_string()
                    .ends_with("(write `name`, `name@version` or `name@alias`)"),
                "{error}"
            );
        }
        let error = parse("v@4294967296").number_as::<u32>().unwrap_err();
        assert_eq!(error.reason, "the version is too large");
    }
}
