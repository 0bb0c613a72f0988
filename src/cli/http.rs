//! The HTTP side of the client: one blocking request at a time (ureq), the bearer token on each,
//! and every answer turned into JSON (or a model type) or a typed error carrying the API's `code`
//! and `message` (read with the one `ErrorBody`). The command-line client and `calibrate` both
//! speak to a node through it.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::Connection;

/// What can go wrong in a client command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The API answered with an error body `{"error": {"code", "message"}}` (or another non-2xx).
    #[error("{code}: {message} (HTTP {status})")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// No HTTP answer at all: refused, timed out, name not found.
    #[error("cannot reach {url}: {detail}")]
    Unreachable { url: String, detail: String },
    /// A 2xx answer that is not the JSON this client expects.
    #[error("unexpected answer from {url}: {detail}")]
    BadAnswer { url: String, detail: String },
    /// The command line asks for something the client cannot do.
    #[error("{0}")]
    Usage(String),
    /// A watched egress ended without its recording being complete.
    #[error("{0}")]
    EndedBadly(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Api { .. } | CliError::BadAnswer { .. } | CliError::EndedBadly(_) => 1,
            CliError::Usage(_) => 2,
            CliError::Unreachable { .. } => 3,
        }
    }

    /// The API's error code, when the API answered with one.
    pub fn api_code(&self) -> Option<&str> {
        match self {
            CliError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// A node's admin API.
pub struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(conn: &Connection) -> Result<Client, CliError> {
        let base = conn.url.trim_end_matches('/').to_string();
        if base.starts_with("https://") {
            // ureq is built without TLS (no rustls/ring build for one flag): say what to do.
            return Err(CliError::Usage(format!(
                "{base}: this client speaks plain HTTP only; reach the node through a tunnel \
                 (ssh -L 7980:127.0.0.1:7980, kubectl port-forward svc/egress-engine 7980) and \
                 use --url http://127.0.0.1:7980"
            )));
        }
        if !base.starts_with("http://") || base.len() <= "http://".len() {
            return Err(CliError::Usage(format!(
                "--url must look like http://host:port, got '{}'",
                conn.url
            )));
        }
        if !(conn.http_timeout_s.is_finite() && conn.http_timeout_s > 0.0) {
            return Err(CliError::Usage(
                "--http-timeout-s must be a positive number of seconds".into(),
            ));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs_f64(conn.http_timeout_s)))
            .build()
            .into();
        Ok(Client {
            base,
            token: conn.token.clone().filter(|t| !t.is_empty()),
            agent,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// `GET path`: the answer's JSON, or the error.
    pub fn get(&self, path: &str) -> Result<Value, CliError> {
        let url = self.url(path);
        let mut req = self.agent.get(&url);
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        Self::answer(&url, req.call())
    }

    /// `POST path` with a JSON body, or with none.
    pub fn post(&self, path: &str, body: Option<&Value>) -> Result<Value, CliError> {
        let url = self.url(path);
        let mut req = self.agent.post(&url);
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let result = match body {
            Some(b) => req
                .header("content-type", "application/json")
                .send(b.to_string().as_bytes()),
            None => req.send_empty(),
        };
        Self::answer(&url, result)
    }

    /// `GET path`, its answer decoded as `T` (a model type: `EgressInfo`, `CostsReport`...).
    pub fn get_as<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        let v = self.get(path)?;
        self.decode(path, v)
    }

    /// `POST path`, its answer decoded as `T`.
    pub fn post_as<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T, CliError> {
        let v = self.post(path, body)?;
        self.decode(path, v)
    }

    fn decode<T: DeserializeOwned>(&self, path: &str, v: Value) -> Result<T, CliError> {
        serde_json::from_value(v).map_err(|e| CliError::BadAnswer {
            url: self.url(path),
            detail: format!("not the answer this client expects: {e}"),
        })
    }

    fn answer(
        url: &str,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Value, CliError> {
        let mut resp = result.map_err(|e| CliError::Unreachable {
            url: url.to_string(),
            detail: e.to_string(),
        })?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| CliError::Unreachable {
                url: url.to_string(),
                detail: format!("the answer broke off: {e}"),
            })?;
        if (200..300).contains(&status) {
            if text.trim().is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_str(&text).map_err(|e| CliError::BadAnswer {
                url: url.to_string(),
                detail: format!("not JSON ({e}): {}", truncate(&text, 200)),
            });
        }
        Err(api_error(status, &text))
    }
}

/// The typed error of a non-2xx answer: the API's own code and message when the body has them.
pub fn api_error(status: u16, body: &str) -> CliError {
    match crate::error::ErrorBody::parse(body.as_bytes()) {
        Some(b) => CliError::Api {
            status,
            code: b.error.code,
            message: b.error.message,
        },
        None => CliError::Api {
            status,
            code: format!("http_{status}"),
            message: if body.trim().is_empty() {
                "(no body)".to_string()
            } else {
                truncate(body.trim(), 200)
            },
        },
    }
}

fn truncate(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_keep_the_code_and_message() {
        let e = api_error(
            404,
            r#"{"error":{"code":"not_found","message":"no egress EG_x"}}"#,
        );
        assert_eq!(e.api_code(), Some("not_found"));
        assert_eq!(e.to_string(), "not_found: no egress EG_x (HTTP 404)");
        assert_eq!(e.exit_code(), 1);
        let e = api_error(502, "Bad Gateway");
        assert_eq!(e.to_string(), "http_502: Bad Gateway (HTTP 502)");
        assert_eq!(
            api_error(500, "").to_string(),
            "http_500: (no body) (HTTP 500)"
        );
    }

    fn conn(url: &str) -> Connection {
        Connection {
            url: url.into(),
            token: None,
            json: false,
            http_timeout_s: 5.0,
        }
    }

    #[test]
    fn urls_are_checked_before_any_request() {
        assert!(Client::new(&conn("http://127.0.0.1:7980/")).is_ok());
        assert_eq!(
            Client::new(&conn("http://h:1/"))
                .map(|c| c.url("/v1/node"))
                .ok(),
            Some("http://h:1/v1/node".to_string())
        );
        for bad in ["127.0.0.1:7980", "http://", "ftp://x"] {
            assert!(
                matches!(Client::new(&conn(bad)), Err(CliError::Usage(_))),
                "{bad}"
            );
        }
        let Err(CliError::Usage(m)) = Client::new(&conn("https://egress.example.com")) else {
            panic!("https accepted");
        };
        assert!(m.contains("plain HTTP"), "{m}");
    }
}
