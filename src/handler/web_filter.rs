//! The filter every request of a web page goes through: an HTTP proxy on loopback inside the
//! handler, which WebKit is pointed at (`http_proxy`, set by the service when it spawns a web
//! handler, see `actors::pipeline::web_filter_env`). It admits a request only when its host is
//! in `sources.allowed_web_hosts` and, unless the operator listed that host itself, resolves to
//! no loopback, private or link-local address (`model::hosts`); it then connects to the very
//! address it checked, so a name cannot resolve differently a moment later. Redirects,
//! subresources, `fetch`, WebSockets (`ws://` as absolute-URI requests) and `https://`/`wss://`
//! (CONNECT) all pass here: WebKit resolves no name itself when it has a proxy.
//!
//! A refused request gets an empty 403, so the page shows nothing of what it asked for.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use slog::{Logger, info, warn};

use crate::model::hosts::{self, Listed};

/// The env var that carries the listening socket's fd from the service to the handler.
pub const FD_ENV: &str = "EGRESS_WEB_FILTER_FD";

/// Connections served at once at most (a page that opens more waits for a free one).
const MAX_CONNECTIONS: usize = 64;
/// A request head larger than this is refused.
const MAX_HEAD: usize = 64 * 1024;

/// The running filter: what it admitted and the last thing it refused.
pub struct Filter {
    /// Where it listens (the preflight's proxy too).
    pub addr: SocketAddr,
    allowed: Vec<String>,
    admitted: AtomicUsize,
    refused: Mutex<Option<String>>,
    open: AtomicUsize,
    log: Logger,
}

impl Filter {
    /// Requests admitted so far (the page's own first).
    pub fn admitted(&self) -> usize {
        self.admitted.load(Ordering::Relaxed)
    }

    /// Starts counting again (after the preflight: the page's own requests count from here).
    pub fn reset_count(&self) {
        self.admitted.store(0, Ordering::Relaxed);
    }

    /// Why the last request was refused.
    pub fn last_refusal(&self) -> Option<String> {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The address to connect to for `host:port`, or why not.
    fn admit(&self, host: &str, port: u16) -> Result<SocketAddr, String> {
        let listed = hosts::listed(host, &self.allowed);
        if listed == Listed::No {
            return Err(format!("host '{host}' is not in sources.allowed_web_hosts"));
        }
        let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => (host, port)
                .to_socket_addrs()
                .map_err(|e| format!("host '{host}' does not resolve: {e}"))?
                .collect(),
        };
        if listed != Listed::Exact
            && let Some(a) = addrs.iter().find(|a| hosts::is_internal(a.ip()))
        {
            return Err(format!(
                "host '{host}' resolves to {}, an internal address: list '{host}' itself in sources.allowed_web_hosts to allow it",
                a.ip()
            ));
        }
        addrs
            .first()
            .copied()
            .ok_or_else(|| format!("host '{host}' has no address"))
    }
}

/// Serves `listener` on a thread of its own for the life of the process.
pub fn start(listener: TcpListener, allowed: Vec<String>, log: &Logger) -> Arc<Filter> {
    let addr = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
    let filter = Arc::new(Filter {
        addr,
        allowed,
        admitted: AtomicUsize::new(0),
        refused: Mutex::new(None),
        open: AtomicUsize::new(0),
        log: log.new(slog::o!("task" => "web_filter")),
    });
    let f = filter.clone();
    let _ = std::thread::Builder::new()
        .name("web-filter".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                while f.open.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
                    std::thread::sleep(Duration::from_millis(20));
                }
                f.open.fetch_add(1, Ordering::Relaxed);
                let f = f.clone();
                let spawned = std::thread::Builder::new()
                    .name("web-filter-conn".into())
                    .spawn(move || {
                        serve(&f, conn);
                        f.open.fetch_sub(1, Ordering::Relaxed);
                    });
                if spawned.is_err() {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        });
    filter
}

/// The listener the service handed over (`FD_ENV`); None when there is none.
pub fn inherited() -> Option<TcpListener> {
    use std::os::fd::FromRawFd;
    let fd: i32 = std::env::var(FD_ENV).ok()?.parse().ok()?;
    // SAFETY: fstat on any integer is safe; it fails unless fd is open.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if fd < 3
        || unsafe { libc::fstat(fd, &mut st) } != 0
        || st.st_mode & libc::S_IFMT != libc::S_IFSOCK
    {
        return None;
    }
    // SAFETY: the fd is an open socket this process owns from now on (the service passed it
    // for this use only and closed its own copy).
    let l = unsafe { TcpListener::from_raw_fd(fd) };
    // The page's WebKit processes must not inherit it.
    // SAFETY: fcntl on an open fd.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    Some(l)
}

fn serve(f: &Filter, conn: TcpStream) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(read_half) = conn.try_clone() else {
        return;
    };
    let mut r = BufReader::new(read_half);
    let Some(head) = read_head(&mut r) else {
        return;
    };
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (method, target, version) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or("HTTP/1.1"),
    );
    let connect = method.eq_ignore_ascii_case("CONNECT");
    let parsed = if connect {
        authority(target, 443)
    } else {
        absolute(target)
    };
    let Some((host, port, path)) = parsed else {
        refuse(f, conn, target, format!("not a proxy request: {method}"));
        return;
    };
    let addr = match f.admit(&host, port) {
        Ok(a) => a,
        Err(why) => {
            refuse(f, conn, target, why);
            return;
        }
    };
    let Ok(mut upstream) = TcpStream::connect_timeout(&addr, Duration::from_secs(10)) else {
        let _ = (&conn).write_all(
            b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        return;
    };
    f.admitted.fetch_add(1, Ordering::Relaxed);
    if connect {
        if (&conn)
            .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            .is_err()
        {
            return;
        }
    } else {
        // One request per upstream connection: the next one may be for another host and
        // must be checked too.
        let upgrade = lines
            .clone()
            .any(|l| l.to_ascii_lowercase().starts_with("upgrade:"));
        let mut out = format!("{method} {path} {version}\r\n");
        for l in lines.filter(|l| !l.is_empty()) {
            let name = l
                .split(':')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if name.starts_with("proxy-")
                || name == "keep-alive"
                || (name == "connection" && !upgrade)
            {
                continue;
            }
            out.push_str(l);
            out.push_str("\r\n");
        }
        if !upgrade {
            out.push_str("Connection: close\r\n");
        }
        out.push_str("\r\n");
        if upstream.write_all(out.as_bytes()).is_err() {
            return;
        }
    }
    // What the client sent after its head (a body's first bytes) goes first.
    let buffered = r.buffer().to_vec();
    if !buffered.is_empty() && upstream.write_all(&buffered).is_err() {
        return;
    }
    let _ = conn.set_read_timeout(None);
    splice(conn, upstream);
}

fn read_head(r: &mut BufReader<TcpStream>) -> Option<String> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 || head.len() + line.len() > MAX_HEAD {
            return None;
        }
        if line == "\r\n" || line == "\n" {
            return Some(head.trim_end().to_string());
        }
        head.push_str(line.trim_end_matches(['\r', '\n']));
        head.push_str("\r\n");
    }
}

/// `host:port` (IPv6 in brackets) with a default port.
fn authority(a: &str, default: u16) -> Option<(String, u16, String)> {
    let (host, port) = if let Some(v6) = a.strip_prefix('[') {
        let (h, rest) = v6.split_once(']')?;
        (h.to_string(), rest.strip_prefix(':').map(str::to_string))
    } else {
        match a.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p.to_string())),
            None => (a.to_string(), None),
        }
    };
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => default,
    };
    (!host.is_empty()).then(|| (host.to_ascii_lowercase(), port, String::new()))
}

/// `http://host[:port]/path` or `ws://...`: host, port and the origin-form path.
fn absolute(target: &str) -> Option<(String, u16, String)> {
    let (scheme, rest) = target.split_once("://")?;
    let default = match scheme.to_ascii_lowercase().as_str() {
        "http" | "ws" => 80,
        _ => return None,
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let auth = &rest[..end];
    let auth = auth.rsplit('@').next().unwrap_or(auth);
    let path = match &rest[end..] {
        "" => "/".to_string(),
        p if p.starts_with('?') => format!("/{p}"),
        p => p.to_string(),
    };
    let (host, port, _) = authority(auth, default)?;
    Some((host, port, path))
}

fn refuse(f: &Filter, conn: TcpStream, target: &str, why: String) {
    warn!(f.log, "page request refused"; "request" => crate::model::redact::url(target), "why" => &why);
    *f.refused.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    let _ = (&conn)
        .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let _ = conn.shutdown(Shutdown::Both);
}

/// Copies both ways until either side ends, then closes both.
fn splice(client: TcpStream, upstream: TcpStream) {
    let (Ok(c2), Ok(u2)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut (&c2), &mut (&u2));
        let _ = u2.shutdown(Shutdown::Write);
    });
    let _ = std::io::copy(&mut (&upstream), &mut (&client));
    let _ = client.shutdown(Shutdown::Both);
    let _ = upstream.shutdown(Shutdown::Both);
    let _ = up.join();
}

/// Logs what the filter did, once the page is done.
pub fn report(f: &Filter) {
    info!(f.log, "page requests"; "admitted" => f.admitted(), "last_refused" => f.last_refusal());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_targets_are_parsed() {
        assert_eq!(
            absolute("http://H:81/x?y"),
            Some(("h".into(), 81, "/x?y".into()))
        );
        assert_eq!(absolute("http://h"), Some(("h".into(), 80, "/".into())));
        assert_eq!(
            absolute("ws://[::1]:9/ws"),
            Some(("::1".into(), 9, "/ws".into()))
        );
        assert_eq!(
            absolute("http://u:p@h/x"),
            Some(("h".into(), 80, "/x".into()))
        );
        assert_eq!(absolute("https://h/"), None);
        assert_eq!(absolute("/relative"), None);
        assert_eq!(
            authority("h:443", 443),
            Some(("h".into(), 443, String::new()))
        );
        assert_eq!(
            authority("[::1]:8443", 443),
            Some(("::1".into(), 8443, String::new()))
        );
        assert_eq!(authority(":443", 443), None);
    }
}
