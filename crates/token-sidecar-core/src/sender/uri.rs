//! The `htu` comparison (RFC 9449 §4.3 step 9): the URI without query and fragment, with the
//! scheme and host compared case-insensitively and a default port the same as none (RFC 3986
//! §6.2.2–6.2.3).

/// `uri` normalised for comparison, or None when it is not an absolute http(s) URI.
pub fn normalize_htu(uri: &str) -> Option<String> {
    let uri = uri.split(['?', '#']).next().unwrap_or_default();
    let (scheme, rest) = uri.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => "80",
        "https" => "443",
        _ => return None,
    };
    let (authority, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let authority = authority.to_ascii_lowercase();
    // An IPv6 literal holds colons of its own: the port follows the closing bracket.
    let host_end = if authority.starts_with('[') {
        authority.find(']')? + 1
    } else {
        authority.find(':').unwrap_or(authority.len())
    };
    let (host, port) = authority.split_at(host_end);
    let port = match port.strip_prefix(':') {
        None | Some("") => None,
        Some(p) if p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.trim_start_matches('0').to_owned()).filter(|p| p != default_port)
        }
        Some(_) => return None,
    };
    if host.is_empty() {
        return None;
    }
    let path = if path.is_empty() { "/" } else { path };
    Some(match port {
        Some(port) => format!("{scheme}://{host}:{port}{path}"),
        None => format!("{scheme}://{host}{path}"),
    })
}

#[cfg(test)]
mod tests {
    use super::normalize_htu;

    #[test]
    fn scheme_host_and_default_port_are_normalised_and_the_query_dropped() {
        let n = |u| normalize_htu(u);
        assert_eq!(
            n("https://API.Example.com/a/B?x=1#f"),
            n("https://api.example.com/a/B")
        );
        assert_eq!(
            n("HTTPS://api.example.com:443/a"),
            n("https://api.example.com/a")
        );
        assert_eq!(n("http://h:80"), n("http://h/"));
        assert_ne!(n("https://h/a"), n("https://h/A"));
        assert_ne!(n("https://h/a"), n("https://other/a"));
        assert_ne!(n("https://h:8443/a"), n("https://h/a"));
        assert_ne!(n("http://h/a"), n("https://h/a"));
        assert_eq!(n("https://[::1]:443/a"), n("https://[::1]/a"));
        for bad in [
            "",
            "/a",
            "ftp://h/a",
            "https:///a",
            "https://u@h/a",
            "https://h:x/a",
        ] {
            assert_eq!(n(bad), None, "{bad}");
        }
    }
}
