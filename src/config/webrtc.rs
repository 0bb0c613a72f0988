//! `webrtc`: how WHIP sources are received (`webrtcbin`, ICE by libnice).

use super::*;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebrtcConfig {
    /// The UDP ports ICE may use, `min-max` (for firewalls and Kubernetes `hostPort`s); empty
    /// for any.
    #[serde(default)]
    pub udp_ports: String,
    /// The public address of a node behind 1:1 NAT: its host candidates are offered with this
    /// address too.
    #[serde(default)]
    pub public_ip: String,
    /// `stun://host:port`, for a node whose public address ICE must discover; empty for none.
    #[serde(default)]
    pub stun_server: String,
    /// `turn(s)://user:password@host:port`, a relay for publishers no direct path reaches.
    #[serde(default)]
    pub turn_server: String,
    /// How long an egress with a WHIP source waits for its publisher's first media, in seconds.
    #[serde(default = "default_publish_timeout")]
    pub publish_timeout_s: f64,
}

fn default_publish_timeout() -> f64 {
    60.0
}

impl WebrtcConfig {
    /// `udp_ports` as (min, max); None for any.
    pub fn port_range(&self) -> Result<Option<(u16, u16)>, &'static str> {
        if self.udp_ports.trim().is_empty() {
            return Ok(None);
        }
        let (a, b) = self
            .udp_ports
            .split_once('-')
            .ok_or("a range 'min-max', e.g. 50000-50100")?;
        let (a, b) = (
            a.trim().parse::<u16>().map_err(|_| "min is not a port")?,
            b.trim().parse::<u16>().map_err(|_| "max is not a port")?,
        );
        if a == 0 || a > b {
            return Err("min must be 1 or more and at most max");
        }
        Ok(Some((a, b)))
    }

    /// Checks every field, naming the key that is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.port_range()
            .map_err(|m| invalid("webrtc.udp_ports", m))?;
        if !self.public_ip.is_empty() && self.public_ip.parse::<std::net::IpAddr>().is_err() {
            return Err(invalid("webrtc.public_ip", "not an IP address"));
        }
        if !self.stun_server.is_empty() && !self.stun_server.starts_with("stun://") {
            return Err(invalid("webrtc.stun_server", "must start with stun://"));
        }
        let turn = &self.turn_server;
        if !turn.is_empty() && !turn.starts_with("turn://") && !turn.starts_with("turns://") {
            return Err(invalid(
                "webrtc.turn_server",
                "must start with turn:// or turns://",
            ));
        }
        if !(self.publish_timeout_s > 0.0 && self.publish_timeout_s <= 3600.0) {
            return Err(invalid("webrtc.publish_timeout_s", "must be in (0, 3600]"));
        }
        Ok(())
    }
}

impl From<&WebrtcConfig> for crate::model::WebrtcOptions {
    fn from(w: &WebrtcConfig) -> Self {
        let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
        crate::model::WebrtcOptions {
            udp_ports: w.port_range().ok().flatten(),
            public_ip: some(&w.public_ip),
            stun_server: some(&w.stun_server),
            turn_server: some(&w.turn_server),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_are_checked() {
        let mut w = WebrtcConfig::default();
        assert_eq!(w.port_range(), Ok(None));
        w.udp_ports = "50000-50100".into();
        assert_eq!(w.port_range(), Ok(Some((50000, 50100))));
        for bad in ["50000", "9-1", "0-10", "a-b"] {
            w.udp_ports = bad.into();
            assert!(w.validate().is_err(), "{bad}");
        }
    }
}
