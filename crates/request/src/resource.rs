//! The resource path a client asks k_proxy to forward. Dot segments and encoded
//! separators are refused rather than normalised: k_server must see exactly the path
//! k_proxy checked (and authorised by its first segment).

use chromecard_http::ApiError;

/// No dot or empty segments, no backslash, and no %2e, %2f or %5c in either case (checked
/// without lowercasing a copy of the path).
pub fn resource_path_is_clean(path: &str) -> bool {
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
    path.trim_start_matches("/resource/")
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
    }
}
