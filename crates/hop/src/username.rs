//! Usernames are short ASCII identifiers. Both hops apply the same rule, so a name k_proxy
//! accepted is never refused (or read differently) by k_server.

pub const MAX_USERNAME_LEN: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UsernameError {
    #[error("the username is empty")]
    Empty,
    #[error("the username is longer than {MAX_USERNAME_LEN} characters")]
    TooLong,
    #[error("the username must start with a letter or digit and contain only letters, digits, '.', '_' and '-'")]
    BadCharacters,
}

/// 1 to 64 characters of `[A-Za-z0-9._-]`, starting with a letter or digit.
pub fn validate_username(name: &str) -> Result<&str, UsernameError> {
    if name.is_empty() {
        return Err(UsernameError::Empty);
    }
    if name.len() > MAX_USERNAME_LEN {
        return Err(UsernameError::TooLong);
    }
    let bytes = name.as_bytes();
    let allowed = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
    if !bytes[0].is_ascii_alphanumeric() || !bytes.iter().all(allowed) {
        return Err(UsernameError::BadCharacters);
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for name in ["alice", "Bob", "a", "user.name_1-x", &"a".repeat(64)] {
            assert_eq!(validate_username(name), Ok(name));
        }
    }

    #[test]
    fn refuses_the_rest() {
        assert_eq!(validate_username(""), Err(UsernameError::Empty));
        assert_eq!(
            validate_username(&"a".repeat(65)),
            Err(UsernameError::TooLong)
        );
        for name in [".hidden", "-x", "a b", "a/b", "ä", "a\n", "a:b", "_x"] {
            assert_eq!(
                validate_username(name),
                Err(UsernameError::BadCharacters),
                "{name:?}"
            );
        }
    }
}
