//! The worker's one HTTP client, bound to the `destinations:` policy.
//!
//! Every outgoing request (webhook and Slack actions, HTTP lookups) goes through an
//! [`Egress`]: its URL is checked before the request is built (an IP literal is connected to
//! without resolving, so it is checked here completely), and every address a host name
//! resolves to is checked by the client's resolver, which hands the connector only the
//! addresses that pass. A name that resolves only to denied addresses fails the request with
//! [`DestinationDenied`]. Redirects are never followed, so a receiver cannot bounce a request
//! to a denied address.
//!
//! Limit: with `HTTP_PROXY`/`HTTPS_PROXY` in the worker's environment the proxy connects and
//! resolves; the URL check still applies, the address check applies to the proxy's address
//! (docs/SECURITY.md).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

pub use crate::config::destinations::DestinationDenied;
use crate::config::DestinationPolicy;

/// The HTTP client and the policy it enforces. Cheap to clone.
#[derive(Clone)]
pub struct Egress {
    client: reqwest::Client,
    policy: Arc<DestinationPolicy>,
    /// The `smtp:` server of e-mail actions, when configured.
    mailer: Option<Arc<super::email::Mailer>>,
}

impl Egress {
    /// The client for `policy`: keep-alive pool sized for `max_in_flight`, redirects not
    /// followed (a redirected POST would silently become a GET, and a redirect could
    /// point anywhere), every resolved address checked.
    pub fn new(max_in_flight: usize, policy: DestinationPolicy) -> Result<Egress, reqwest::Error> {
        let policy = Arc::new(policy);
        let client = reqwest::Client::builder()
            .user_agent(concat!("fraiseql-observers/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(PolicyResolver {
                policy: policy.clone(),
            }))
            .pool_max_idle_per_host(max_in_flight.max(1))
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(Egress {
            client,
            policy,
            mailer: None,
        })
    }

    /// E-mail actions send through `mailer` (the worker's `smtp:` section).
    pub fn with_mailer(mut self, mailer: Option<Arc<super::email::Mailer>>) -> Self {
        self.mailer = mailer;
        self
    }

    pub fn mailer(&self) -> Option<Arc<super::email::Mailer>> {
        self.mailer.clone()
    }

    /// Checks a request's URL; the request may be sent only when this is `Ok`.
    pub fn check(&self, url: &reqwest::Url) -> Result<&reqwest::Client, DestinationDenied> {
        self.policy.check_url(url)?;
        Ok(&self.client)
    }

    pub fn policy(&self) -> &DestinationPolicy {
        &self.policy
    }
}

/// The policy's refusal inside a failed request's error chain (raised by the resolver).
pub fn denied_in<'e>(e: &'e (dyn std::error::Error + 'static)) -> Option<&'e DestinationDenied> {
    let mut cur: Option<&'e (dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(d) = err.downcast_ref::<DestinationDenied>() {
            return Some(d);
        }
        cur = err.source();
    }
    None
}

/// Resolves with the system resolver and keeps only the addresses the policy allows.
struct PolicyResolver {
    policy: Arc<DestinationPolicy>,
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // names are refused before any lookup when a name rule says so
            policy.check_name(&host)?;
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut first_refusal = None;
            let kept: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|a| match policy.check_resolved(&host, a.ip()) {
                    Ok(()) => true,
                    Err(d) => {
                        first_refusal.get_or_insert(d);
                        false
                    }
                })
                .collect();
            match (kept.is_empty(), first_refusal) {
                (true, Some(refusal)) => Err(Box::new(refusal) as _),
                _ => Ok(Box::new(kept.into_iter()) as Addrs),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::destinations::Rule;

    /// A policy that denies 127.0.0.1 and ::1: `localhost` resolves, but to nothing usable.
    fn deny_loopback() -> DestinationPolicy {
        DestinationPolicy::new(
            Vec::new(),
            vec![
                Rule::parse("127.0.0.0/8").unwrap(),
                Rule::parse("::1").unwrap(),
            ],
            true,
        )
    }

    #[tokio::test]
    async fn a_name_resolving_to_denied_addresses_never_connects() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let egress = Egress::new(2, deny_loopback()).unwrap();
        // the URL text passes (a name); its addresses do not
        let url = reqwest::Url::parse(&format!("http://localhost:{port}/x")).unwrap();
        let client = egress.check(&url).expect("names pass the URL check");
        let err = client.get(url).send().await.unwrap_err();
        let denied = denied_in(&err).expect("the policy's refusal in the error chain");
        assert_eq!(denied.host, "localhost");
        assert!(
            denied.to_string().contains("`destinations.deny` entry"),
            "{denied}"
        );
        // nothing connected
        let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(accepted.is_err(), "a connection reached the denied address");
    }

    #[tokio::test]
    async fn ip_literals_are_refused_before_the_request() {
        let egress = Egress::new(2, deny_loopback()).unwrap();
        let url = reqwest::Url::parse("http://127.0.0.1:9/x?token=abc").unwrap();
        let denied = egress.check(&url).unwrap_err();
        assert_eq!(denied.host, "127.0.0.1");
        assert!(!denied.to_string().contains("token"), "{denied}");
    }
}
