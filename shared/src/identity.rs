//! Identities: a `(platform, user)` pair, each part a validated newtype (SPEC 1).

use std::fmt;

/// Why a platform name or user id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("platform {0:?} must match ^[a-z][a-z0-9_-]{{0,31}}$")]
    Platform(String),
    #[error("user id must be 1..=64 bytes without control characters")]
    User,
    #[error("identity {0:?} must look like <platform>:<user>")]
    Syntax(String),
}

/// A platform name: `^[a-z][a-z0-9_-]{0,31}$`. Any such name is a platform; nothing
/// about a new one needs code.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Platform(String);

impl Platform {
    pub fn parse(s: &str) -> Result<Self, IdentityError> {
        let b = s.as_bytes();
        let ok = (1..=32).contains(&b.len())
            && b[0].is_ascii_lowercase()
            && b[1..]
                .iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdentityError::Platform(s.chars().take(40).collect()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A platform's own user id (snowflake, Telegram id, account id, e-mail):
/// 1..=64 bytes, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PlatformUser(String);

impl PlatformUser {
    pub fn parse(s: &str) -> Result<Self, IdentityError> {
        if (1..=64).contains(&s.len()) && !s.chars().any(char::is_control) {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdentityError::User)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One person's account on one platform.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Identity {
    pub platform: Platform,
    pub user: PlatformUser,
}

impl Identity {
    pub fn new(platform: &str, user: &str) -> Result<Self, IdentityError> {
        Ok(Self {
            platform: Platform::parse(platform)?,
            user: PlatformUser::parse(user)?,
        })
    }

    /// Parses the `<platform>:<user>` form used on command lines. The user part may
    /// itself contain `:`.
    pub fn parse(s: &str) -> Result<Self, IdentityError> {
        let (platform, user) = s
            .split_once(':')
            .ok_or_else(|| IdentityError::Syntax(s.chars().take(80).collect()))?;
        Self::new(platform, user)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.platform.0, self.user.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_names_follow_the_spec_pattern() {
        for ok in [
            "discord",
            "telegram",
            "website",
            "a",
            "x1_-",
            &"a".repeat(32),
        ] {
            assert!(Platform::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Discord",
            "1abc",
            "_a",
            "a.b",
            "a b",
            &"a".repeat(33),
            "é",
        ] {
            assert!(Platform::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn user_ids_are_bounded_and_free_of_control_characters() {
        assert!(PlatformUser::parse("123456789012345678").is_ok());
        assert!(PlatformUser::parse("alice@example.org").is_ok());
        assert!(PlatformUser::parse(&"x".repeat(64)).is_ok());
        assert!(PlatformUser::parse(&"x".repeat(65)).is_err());
        assert!(PlatformUser::parse("").is_err());
        assert!(PlatformUser::parse("a\nb").is_err());
    }

    #[test]
    fn identities_parse_from_the_command_line_form() {
        let id = Identity::parse("website:a:b").expect("valid");
        assert_eq!(id.platform.as_str(), "website");
        assert_eq!(id.user.as_str(), "a:b");
        assert_eq!(id.to_string(), "website:a:b");
        assert!(Identity::parse("nocolon").is_err());
        assert!(Identity::parse("Bad:1").is_err());
    }
}
