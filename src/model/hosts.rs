//! Hosts a request may make the node connect to: a web egress's page (and every request the
//! page makes), a request's upload endpoint. Both are allow-lists (`sources.allowed_web_hosts`,
//! `storage.allowed_endpoints`: `*`, `*.example.com`, `host`), and both refuse a host that
//! resolves to a loopback, private or link-local address unless the operator listed that host
//! itself (a pattern such as `*` does not count): an allowed name must not lead to the node's
//! own API or its network's internal services.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, ToSocketAddrs};

/// How an allow-list names a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listed {
    No,
    /// Through `*` or `*.domain`.
    Pattern,
    /// By its own name (or address): internal addresses are then allowed.
    Exact,
}

/// How `allowed` names `host` (compared case-insensitively).
pub fn listed(host: &str, allowed: &[String]) -> Listed {
    let host = host.to_ascii_lowercase();
    let mut found = Listed::No;
    for a in allowed {
        let a = a.to_ascii_lowercase();
        if a == host {
            return Listed::Exact;
        }
        if a == "*"
            || a.strip_prefix("*.")
                .is_some_and(|d| host == d || host.ends_with(&format!(".{d}")))
        {
            found = Listed::Pattern;
        }
    }
    found
}

/// The host (lowercase, an IPv6 address without brackets) and port of an `http(s)://` URL,
/// the port defaulting by scheme.
pub fn host_port(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let default = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let hp = authority.rsplit('@').next().unwrap_or("");
    let (host, port) = if let Some(v6) = hp.strip_prefix('[') {
        let (h, after) = v6.split_once(']')?;
        (h, after.strip_prefix(':'))
    } else {
        match hp.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hp, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => default,
    };
    Some((host.to_ascii_lowercase(), port))
}

/// Loopback, private (RFC 1918, unique local), link-local, shared (CGNAT), unspecified,
/// multicast or broadcast: addresses a request must not reach unless their host is listed.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4_internal(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return v4_internal(v4);
            }
            let seg0 = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg0 & 0xfe00) == 0xfc00
                || (seg0 & 0xffc0) == 0xfe80
                || v6 == Ipv6Addr::from([0, 0, 0, 0, 0, 0, 0, 1])
        }
    }
}

fn v4_internal(v4: Ipv4Addr) -> bool {
    let o = v4.octets();
    v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_multicast()
        || v4.is_broadcast()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64)
}

/// Resolves `host` (blocking: call it off an async thread) and refuses it when any of its
/// addresses is internal; `key` names the allow-list for the message.
pub fn check_resolved(host: &str, port: u16, key: &str) -> Result<(), String> {
    let addrs: Vec<IpAddr> = match (host, port).to_socket_addrs() {
        Ok(a) => a.map(|a| a.ip()).collect(),
        Err(e) => return Err(format!("host '{host}' does not resolve: {e}")),
    };
    match addrs.into_iter().find(|ip| is_internal(*ip)) {
        Some(ip) => Err(format!(
            "host '{host}' resolves to {ip}, an internal address: list '{host}' itself in {key} to allow it"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_name_hosts_exactly_or_by_pattern() {
        let l = |h, a: &[&str]| listed(h, &a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(l("a.example.com", &["*.example.com"]), Listed::Pattern);
        assert_eq!(l("example.com", &["*.example.com"]), Listed::Pattern);
        assert_eq!(l("badexample.com", &["*.example.com"]), Listed::No);
        assert_eq!(l("127.0.0.1", &["*"]), Listed::Pattern);
        assert_eq!(l("127.0.0.1", &["*", "127.0.0.1"]), Listed::Exact);
        assert_eq!(l("Cam.Local", &["cam.local"]), Listed::Exact);
        assert_eq!(l("x", &[]), Listed::No);
    }

    #[test]
    fn internal_addresses_are_known() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::",
        ] {
            assert!(is_internal(a.parse().unwrap()), "{a}");
        }
        for a in ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "172.32.0.1"] {
            assert!(!is_internal(a.parse().unwrap()), "{a}");
        }
    }

    #[test]
    fn host_and_port_of_a_url() {
        assert_eq!(host_port("http://a:b@H:81/x"), Some(("h".into(), 81)));
        assert_eq!(host_port("https://h/x?y"), Some(("h".into(), 443)));
        assert_eq!(host_port("http://[::1]:8080/"), Some(("::1".into(), 8080)));
        assert_eq!(host_port("http://[::1]/"), Some(("::1".into(), 80)));
        assert_eq!(host_port("ftp://h/"), None);
        assert_eq!(host_port("http:///x"), None);
    }

    #[test]
    fn a_name_for_loopback_is_refused_once_resolved() {
        let e = check_resolved("localhost", 80, "k").unwrap_err();
        assert!(
            e.contains("internal address") && e.contains("'localhost'"),
            "{e}"
        );
    }
}
