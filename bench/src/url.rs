//! Parsing of the plain `http://host[:port][/path]` URLs the bench accepts (no TLS).

use std::net::{SocketAddr, ToSocketAddrs};

use anyhow::{bail, Context, Result};

/// Where requests go: the resolved socket address, the `Host` header and the request path.
#[derive(Clone, Debug)]
pub struct Target {
    /// The first address the host name resolved to.
    pub addr: SocketAddr,
    /// `host:port` as written in the URL, sent as the `Host` header.
    pub authority: String,
    /// The path and query, always starting with `/`.
    pub path: String,
}

impl Target {
    /// Parses and resolves `url`; only `http://` is supported because the load generator
    /// speaks plain HTTP/1.1 to servers on this machine.
    pub fn parse(url: &str) -> Result<Target> {
        let Some(rest) = url.strip_prefix("http://") else {
            bail!("only http:// URLs are supported, got {url:?}");
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            bail!("no host in URL {url:?}");
        }
        // A bare host means port 80, as in a browser.
        let with_port = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .with_context(|| format!("resolving {with_port}"))?
            .next()
            .with_context(|| format!("{with_port} resolved to no address"))?;
        Ok(Target {
            addr,
            authority: authority.to_string(),
            path: path.to_string(),
        })
    }

    /// The same server with another path, for the helpers that call several routes.
    pub fn with_path(&self, path: &str) -> Target {
        let base = self.path.trim_end_matches('/');
        Target {
            path: format!("{base}{path}"),
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_port_and_path() {
        let t = Target::parse("http://127.0.0.1:18080/health").unwrap();
        assert_eq!(t.addr, "127.0.0.1:18080".parse().unwrap());
        assert_eq!(t.authority, "127.0.0.1:18080");
        assert_eq!(t.path, "/health");
        let t = Target::parse("http://127.0.0.1:9").unwrap();
        assert_eq!(t.path, "/");
        assert_eq!(t.with_path("/v1/me").path, "/v1/me");
        assert!(Target::parse("https://127.0.0.1/").is_err());
        assert!(Target::parse("http:///x").is_err());
    }
}
