//! The resource path a client asks k_proxy to forward. Dot segments and encoded
//! separators are refused rather than normalised: k_server must see exactly the path
//! k_proxy checked (and authorised by its first segment).

use chromecard_http::ApiError;

/// No dot or empty segments, no backslash, and no %2e, %2f or %5c in either case. One
/// pass over the bytes, without lowercasing a copy: it runs on every forwarded request.
pub fn resource_path_is_clean(path: &str) -> bool {
    let bytes = path.as_bytes();
    // Where the segment being read starts: none before the first '/'.
    let mut segment_start = None;
    for (at, &byte) in bytes.iter().enumerate() {
        match byte {
            b'/' => {
                if segment_start.is_some_and(|start| !segment_is_clean(&bytes[start..at])) {
                    return false;
                }
                segment_start = Some(at + 1);
            }
            b'\\' => return false,
            b'%' if is_encoded_separator(&bytes[at + 1..]) => return false,
            _ => {}
        }
    }
    segment_start.is_none_or(|start| segment_is_clean(&bytes[start..]))
}

fn segment_is_clean(segment: &[u8]) -> bool {
    !matches!(segment, b"" | b"." | b"..")
}

/// Whether the two bytes after a '%' encode '.', '/' or '\\'.
fn is_encoded_separator(after_percent: &[u8]) -> bool {
    matches!(
        after_percent,
        [b'2', b'e' | b'E' | b'f' | b'F', ..] | [b'5', b'c' | b'C', ..]
    )
}

/// The path and query to forward, or 400 `invalid_path`.
pub fn checked_resource_path(uri: &http::Uri) -> Result<String, ApiError> {
    let path = uri.path();
    if !resource_path_is_clean(path) {
        return Err(ApiError::bad_request(
            "invalid_path",
            "The resource path has dot segments, empty segments or encoded separators.",
        ));
    }
    Ok(uri
        .path_and_query()
        .map(|pq| pq.as_str().to_owned())
        .unwrap_or_else(|| path.to_owned()))
}

/// The resource a path names: the first segment after `/resource/`.
pub fn resource_name(path: &str) -> &str {
    path.strip_prefix("/resource/")
        .unwrap_or(path)
        .split('/')
        .next()
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_paths() {
        assert!(resource_path_is_clean("/resource/counter"));
        assert!(resource_path_is_clean("/resource/a%20b/c"));
        assert!(resource_path_is_clean("/resource/100%25"));
        for bad in [
            "/resource/../session/login",
            "/resource/./counter",
            "/resource//counter",
            "/resource/counter/",
            "/resource/%2e%2e/x",
            "/resource/%2E%2E/x",
            "/resource/a%2fb",
            "/resource/a%2Fb",
            "/resource/a%5cb",
            "/resource/a%5Cb",
            "/resource/a\\b",
        ] {
            assert!(!resource_path_is_clean(bad), "{bad}");
        }
    }

    #[test]
    fn resource_names() {
        assert_eq!(resource_name("/resource/counter"), "counter");
        assert_eq!(resource_name("/resource/secrets/a/b"), "secrets");
        assert_eq!(resource_name("/resource/"), "");
        // The prefix is taken once: a name that repeats it is a name of its own.
        assert_eq!(resource_name("/resource/resource/x"), "resource");
        assert_eq!(resource_name("/other"), "");
    }

    /// The rule as first written (split into segments, then scan for escapes), against
    /// the one-pass version, over every path of up to four characters from an alphabet
    /// that covers each branch.
    #[test]
    fn one_pass_matches_the_rule_as_written() {
        fn as_written(path: &str) -> bool {
            let encoded_separator = path.as_bytes().windows(3).any(|w| {
                w[0] == b'%'
                    && matches!(
                        (w[1], w[2].to_ascii_lowercase()),
                        (b'2', b'e' | b'f') | (b'5', b'c')
                    )
            });
            !(path
                .split('/')
                .skip(1)
                .any(|segment| segment == "." || segment == ".." || segment.is_empty())
                || encoded_separator
                || path.contains('\\'))
        }
        let alphabet = ['/', '.', '%', '2', '5', 'e', 'F', 'c', '\\', 'a'];
        let mut paths = vec![String::new()];
        let mut checked = 0;
        for _ in 0..4 {
            paths = paths
                .iter()
                .flat_map(|p| alphabet.iter().map(move |c| format!("{p}{c}")))
                .collect();
            for path in &paths {
                for full in [path.clone(), format!("/resource/{path}")] {
                    assert_eq!(resource_path_is_clean(&full), as_written(&full), "{full:?}");
                    checked += 1;
                }
            }
        }
        assert!(checked > 20_000);
    }
}
