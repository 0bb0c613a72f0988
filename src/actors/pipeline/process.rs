//! How a handler process is launched: its command line, its log file, and for a web egress the
//! environment its page needs (the request filter's socket and proxy, glibc tunables).

use std::path::PathBuf;
use std::process::Stdio;

use super::PipelineSetup;

/// What launching a handler needs (taken out of a `PipelineSetup`, so it can go to a
/// blocking thread while the setup stays with the actor).
#[derive(Debug, Clone)]
pub struct Launch {
    pub egress_id: String,
    pub nice: i32,
    pub log_path: PathBuf,
    pub web: bool,
}

impl Launch {
    pub fn of(setup: &PipelineSetup) -> Launch {
        Launch {
            egress_id: setup.spec.egress_id.clone(),
            nice: setup.nice,
            log_path: setup.log_path.clone(),
            web: setup.spec.egress_type == crate::model::EgressType::Web,
        }
    }
}

/// Launches the handler process (fork, exec, its log file created): blocking, so the
/// Supervisor runs it in `spawn_blocking`. Returns it running (the caller makes the actor).
pub fn spawn_handler(setup: &Launch) -> std::io::Result<tokio::process::Child> {
    let exe = std::env::current_exe()?;
    let stderr = std::fs::File::create(&setup.log_path)?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("handler")
        .arg("--egress-id")
        .arg(&setup.egress_id)
        .arg("--nice")
        .arg(setup.nice.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .process_group(0)
        .kill_on_drop(false);
    // Held until the child has its own copy.
    let mut _filter = None;
    if setup.web {
        cmd.env(
            "GLIBC_TUNABLES",
            web_tunables(std::env::var("GLIBC_TUNABLES").ok()),
        );
        _filter = Some(web_filter_env(&mut cmd)?);
    }
    cmd.spawn()
}

/// Points every request of the handler's page at its filter (`handler::web_filter`): a
/// listening socket bound here, inherited by the handler, named to WebKit as its proxy. Why
/// the environment: wpesrc makes its own WebKit context, out of reach of any API; libproxy
/// (through GIO's resolver, chosen here explicitly) reads `http_proxy`/`https_proxy` and, with
/// `no_proxy` unset, sends loopback and every other address through the proxy too (seen: a
/// 302 to 127.0.0.1, images, `fetch`, `ws://`, `https://` all arrived as proxy requests). The
/// handler refuses to record a page whose requests never reached the filter.
fn web_filter_env(cmd: &mut tokio::process::Command) -> std::io::Result<std::net::TcpListener> {
    use std::os::fd::AsRawFd;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let fd = listener.as_raw_fd();
    let proxy = format!("http://127.0.0.1:{port}");
    for k in [
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ] {
        cmd.env(k, &proxy);
    }
    for k in ["no_proxy", "NO_PROXY", "XDG_CURRENT_DESKTOP"] {
        cmd.env_remove(k);
    }
    cmd.env("GIO_USE_PROXY_RESOLVER", "libproxy")
        .env(crate::handler::web_filter::FD_ENV, fd.to_string());
    // SAFETY: between fork and exec only fcntl(2), which is async-signal-safe, runs: it lets
    // the listening socket survive exec (std opens every fd close-on-exec).
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(listener)
}

/// glibc tunables for a handler that renders a page: every `malloc` returns zeroed memory
/// (`perturb` 255 fills it with !255; no per-thread cache, which would skip that). Why: in
/// GStreamer 1.22's wpesrc, `WPEContextThread::threading.ready` has no initializer; when the
/// heap gives it a non-zero byte, the WPE thread is not waited for and the page's view is made
/// on another thread, which froze or never loaded pages here (8 of 12 pages started three at
/// a time; none of 12 with these). The cost is a memset per allocation (see the README).
fn web_tunables(existing: Option<String>) -> String {
    const ZEROED: &str = crate::handler::WEB_MALLOC_TUNABLES;
    match existing.filter(|e| !e.is_empty()) {
        Some(e) => format!("{e}:{ZEROED}"),
        None => ZEROED.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::web_tunables;

    #[test]
    fn web_tunables_keep_the_operators_own() {
        let z = "glibc.malloc.tcache_count=0:glibc.malloc.perturb=255";
        assert_eq!(web_tunables(None), z);
        assert_eq!(web_tunables(Some(String::new())), z);
        assert_eq!(
            web_tunables(Some("glibc.malloc.arena_max=2".into())),
            format!("glibc.malloc.arena_max=2:{z}")
        );
    }
}
