//! A real headless Chromium driven through chromedriver, speaking the W3C WebDriver HTTP protocol
//! with the tests' own HTTP client (`ureq`): a dozen commands are all the dashboard test needs,
//! which is no reason for a WebDriver crate and its async runtime.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

use crate::common::*;

/// The key of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One browser session; chromedriver and the browser go when it is dropped.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    agent: ureq::Agent,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium session of `width`x`height`.
    pub fn start(width: u32, height: u32) -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver must be installed (scripts/setup: chromium-driver)");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let base = format!("http://127.0.0.1:{port}");
        let mut b = Browser {
            driver,
            base,
            session: String::new(),
            agent,
            _profile: tempfile::tempdir().expect("profile dir"),
        };
        wait_for(Duration::from_secs(20), "chromedriver to be ready", || {
            let r = b.agent.get(format!("{}/status", b.base)).call().ok()?;
            let v: Value = r.into_body().read_json().ok()?;
            (v["value"]["ready"] == true).then_some(())
        });
        let binary = if Path::new("/usr/lib/chromium/chromium").exists() {
            "/usr/lib/chromium/chromium"
        } else {
            "/usr/bin/chromium"
        };
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": binary,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--disable-extensions", "--disable-background-networking",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", b._profile.path().display()),
                ]
            },
            "timeouts": {"implicit": 0, "pageLoad": 30000, "script": 30000}
        }}});
        let v = b.post("/session", &caps);
        b.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {v}"))
            .to_string();
        b
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        self.try_call(method, path, body)
            .unwrap_or_else(|v| panic!("WebDriver {method} {path}: {v}"))
    }

    /// The command's value, or its error value.
    fn try_call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, Value> {
        let url = format!("{}{}", self.base, path);
        let r = match (method, body) {
            ("GET", _) => self.agent.get(&url).call(),
            ("DELETE", _) => self.agent.delete(&url).call(),
            (_, b) => self
                .agent
                .post(&url)
                .send_json(b.cloned().unwrap_or(json!({}))),
        };
        let mut resp = r.unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let status = resp.status().as_u16();
        let v: Value = resp.body_mut().read_json().unwrap_or(Value::Null);
        if status < 300 {
            Ok(v["value"].clone())
        } else {
            Err(v["value"].clone())
        }
    }

    /// Runs an element command on the element matching `css`, finding it again when the page
    /// re-rendered it in between (the dashboard redraws rows on every event).
    fn on_element(&self, css: &str, command: &str, body: Option<&Value>) {
        let mut last = Value::Null;
        let done = poll_until(Duration::from_secs(20), || {
            let e = self.find(css)?;
            match self.try_call("POST", &self.s(&format!("/element/{e}/{command}")), body) {
                Ok(_) => Some(()),
                Err(v) => {
                    last = v;
                    None
                }
            }
        });
        assert!(done.is_some(), "{command} on {css}: {last}");
    }

    fn post(&self, path: &str, body: &Value) -> Value {
        let url = format!("{}{}", self.base, path);
        let mut resp = self
            .agent
            .post(&url)
            .send_json(body)
            .unwrap_or_else(|e| panic!("WebDriver POST {path}: {e}"));
        let v: Value = resp.body_mut().read_json().unwrap_or(Value::Null);
        v["value"].clone()
    }

    fn s(&self, path: &str) -> String {
        format!("/session/{}{path}", self.session)
    }

    pub fn goto(&self, url: &str) {
        self.call("POST", &self.s("/url"), Some(&json!({"url": url})));
    }

    /// Emulates a phone's screen (`mobile` viewport, touch-size scale) through the DevTools
    /// protocol: a headless window cannot be made narrower than ~500 px.
    pub fn emulate_phone(&self, width: u32, height: u32) {
        self.call(
            "POST",
            &self.s("/goog/cdp/execute"),
            Some(
                &json!({"cmd": "Emulation.setDeviceMetricsOverride", "params": {
                    "width": width, "height": height, "deviceScaleFactor": 2, "mobile": true
                }}),
            ),
        );
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns what it returns.
    pub fn eval(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            &self.s("/execute/sync"),
            Some(&json!({"script": script, "args": args})),
        )
    }

    /// The element matching `css`, if there is one now.
    pub fn find(&self, css: &str) -> Option<String> {
        let url = format!("{}{}", self.base, self.s("/elements"));
        let mut resp = self
            .agent
            .post(&url)
            .send_json(json!({"using": "css selector", "value": css}))
            .ok()?;
        let v: Value = resp.body_mut().read_json().ok()?;
        v["value"].as_array()?.first()?[ELEMENT]
            .as_str()
            .map(str::to_string)
    }

    /// Clears the field and types `text` into it.
    pub fn type_into(&self, css: &str, text: &str) {
        self.on_element(css, "clear", None);
        self.on_element(css, "value", Some(&json!({"text": text})));
    }

    pub fn click(&self, css: &str) {
        self.on_element(css, "click", None);
    }

    /// The rendered text of the element matching `css` (None when there is none); read in one
    /// script, so a re-rendered element is never stale.
    pub fn text(&self, css: &str) -> Option<String> {
        self.eval(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : null",
            json!([css]),
        )
        .as_str()
        .map(str::to_string)
    }

    /// Whether the element matching `css` is displayed (takes room on the page).
    pub fn visible(&self, css: &str) -> bool {
        self.eval(
            "const e = document.querySelector(arguments[0]); return !!e && e.getClientRects().length > 0",
            json!([css]),
        ) == true
    }

    /// Saves a PNG of the viewport to `path` (creating its directory).
    pub fn screenshot(&self, path: &Path) {
        let b64 = self.call("GET", &self.s("/screenshot"), None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap_or(""))
            .expect("a base64 screenshot");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("artifact dir");
        }
        std::fs::write(path, png).expect("write screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self
                .agent
                .delete(format!("{}/session/{}", self.base, self.session))
                .call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
