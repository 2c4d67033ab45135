//! `destinations:`: where the worker's outgoing HTTP requests (webhook and Slack actions,
//! HTTP lookups) may connect. Pure matching logic; the HTTP client applies it to the URL
//! of every request and to every address a host name resolves to (`actions::egress`).
//!
//! ```yaml
//! destinations:
//!   allow: [hooks.example.com, "*.slack.com", 10.20.0.0/16]   # empty (default): anything not denied
//!   deny: [127.0.0.2, internal.example.com]                   # added to the built-in list
//!   builtin_deny: true                                        # link-local + cloud metadata
//! ```
//!
//! Rules: a destination is denied when its host name matches a `deny` name, or an address
//! (the URL's literal, or each address the name resolves to) is in a `deny` network or the
//! built-in list. When `allow` is not empty, a destination must also match it: by host
//! name, or else every address used must be in an `allow` network. Deny wins over allow.
//! Loopback is allowed by default (sidecars, tests).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use super::reader::{index, Reader};
use super::yaml::Node;

/// The config key, for messages.
pub const DESTINATIONS_KEY: &str = "destinations";

/// Denied unless `destinations.builtin_deny: false`: link-local networks and the cloud
/// instance-metadata endpoints (they hand out credentials to whoever asks from the host).
pub const BUILTIN_DENY: &[(&str, &str)] = &[
    (
        "169.254.0.0/16",
        "IPv4 link-local; AWS, GCP, Azure, OCI and DigitalOcean metadata at 169.254.169.254",
    ),
    ("fe80::/10", "IPv6 link-local"),
    ("fd00:ec2::254/128", "AWS instance metadata (IPv6)"),
    ("100.100.100.200/32", "Alibaba Cloud instance metadata"),
    ("metadata.google.internal", "GCP instance metadata"),
    ("metadata.goog", "GCP instance metadata"),
    ("instance-data.ec2.internal", "AWS instance metadata"),
];

/// An IP network (`10.0.0.0/8`, `fe80::/10`; a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    pub fn parse(text: &str) -> Option<Network> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (text.parse::<IpAddr>().ok()?, None),
        };
        let addr = canonical(addr);
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Network { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn prefix_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let full = usize::from(prefix / 8);
    if a[..full] != b[..full] {
        return false;
    }
    let rest = prefix % 8;
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        a[full] & mask == b[full] & mask
    }
}

/// IPv4-mapped IPv6 (`::ffff:169.254.169.254`) is the IPv4 address it maps.
fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// The IPv4 address inside a NAT64 address (`64:ff9b::a9fe:a9fe` reaches 169.254.169.254
/// through a NAT64 gateway).
fn nat64_embedded(ip: IpAddr) -> Option<IpAddr> {
    let IpAddr::V6(v6) = ip else { return None };
    let o = v6.octets();
    (o[..12] == [0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0])
        .then(|| IpAddr::V4(Ipv4Addr::new(o[12], o[13], o[14], o[15])))
}

/// A host name, or `*.example.com` for every name below `example.com`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    /// Lower case, no trailing dot; without the `*.` of a wildcard.
    name: String,
    wildcard: bool,
}

impl HostPattern {
    pub fn parse(text: &str) -> Option<HostPattern> {
        let text = text.trim().trim_end_matches('.').to_ascii_lowercase();
        let (name, wildcard) = match text.strip_prefix("*.") {
            Some(rest) => (rest.to_owned(), true),
            None => (text, false),
        };
        let valid = !name.is_empty()
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            });
        valid.then_some(HostPattern { name, wildcard })
    }

    /// `host` as it appears in a URL or is handed to the resolver.
    pub fn matches(&self, host: &str) -> bool {
        let host = normalize_host(host);
        if self.wildcard {
            host.len() > self.name.len() + 1
                && host.ends_with(&self.name)
                && host.as_bytes()[host.len() - self.name.len() - 1] == b'.'
        } else {
            host == self.name
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            write!(f, "*.{}", self.name)
        } else {
            f.write_str(&self.name)
        }
    }
}

fn normalize_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// One `allow` / `deny` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    Host(HostPattern),
    Net(Network),
}

impl Rule {
    pub fn parse(text: &str) -> Option<Rule> {
        let text = text.trim();
        // `[::1]` as written in URLs
        let bare = text
            .strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .unwrap_or(text);
        if let Some(net) = Network::parse(bare) {
            return Some(Rule::Net(net));
        }
        if text.contains('/') || text.contains(':') {
            return None;
        }
        HostPattern::parse(text).map(Rule::Host)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::Host(h) => h.fmt(f),
            Rule::Net(n) => n.fmt(f),
        }
    }
}

/// Where a denying rule comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    Builtin(&'static str),
    Deny,
}

/// Why a destination may not be called. Shown in dead letters and logs: it names the host
/// and address, never a path or query (they may carry tokens).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("destination {host}{} is denied: {reason} (`destinations:` in the worker's configuration file; docs/SECURITY.md)", address.map(|a| format!(" ({a})")).unwrap_or_default())]
pub struct DestinationDenied {
    pub host: String,
    pub address: Option<IpAddr>,
    pub reason: String,
}

/// The validated `destinations:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationPolicy {
    allow: Vec<Rule>,
    deny: Vec<(Rule, Origin)>,
}

impl Default for DestinationPolicy {
    /// Built-in denies only: what a file without `destinations:` gets.
    fn default() -> Self {
        DestinationPolicy::new(Vec::new(), Vec::new(), true)
    }
}

impl DestinationPolicy {
    pub fn new(allow: Vec<Rule>, deny: Vec<Rule>, builtin_deny: bool) -> Self {
        let mut all: Vec<(Rule, Origin)> = deny.into_iter().map(|r| (r, Origin::Deny)).collect();
        if builtin_deny {
            for (text, why) in BUILTIN_DENY {
                if let Some(rule) = Rule::parse(text) {
                    all.push((rule, Origin::Builtin(why)));
                }
            }
        }
        DestinationPolicy { allow, deny: all }
    }

    /// Everything allowed (`builtin_deny: false`, no entries): unit tests of other modules.
    pub fn allow_all() -> Self {
        DestinationPolicy::new(Vec::new(), Vec::new(), false)
    }

    fn denied_because(rule: &Rule, origin: &Origin) -> String {
        match origin {
            Origin::Builtin(why) => {
                format!("it matches the built-in deny entry {rule} ({why}; `builtin_deny: false` lifts it)")
            }
            Origin::Deny => format!("it matches `destinations.deny` entry {rule}"),
        }
    }

    fn allowed_by_name(&self, host: &str) -> bool {
        self.allow
            .iter()
            .any(|r| matches!(r, Rule::Host(h) if h.matches(host)))
    }

    fn allow_has_networks(&self) -> bool {
        self.allow.iter().any(|r| matches!(r, Rule::Net(_)))
    }

    fn not_allowed(host: &str, address: Option<IpAddr>) -> DestinationDenied {
        DestinationDenied {
            host: host.to_owned(),
            address,
            reason: "it matches no `destinations.allow` entry".to_owned(),
        }
    }

    /// The host of a request's URL: an IP literal is checked completely here (the HTTP
    /// client connects to it without resolving); a name is checked against the name rules,
    /// and its addresses later, by [`DestinationPolicy::check_resolved`].
    pub fn check_url(&self, url: &url::Url) -> Result<(), DestinationDenied> {
        match url.host() {
            Some(url::Host::Ipv4(ip)) => self.check_ip(&ip.to_string(), IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.check_ip(&format!("[{ip}]"), IpAddr::V6(ip)),
            Some(url::Host::Domain(name)) => self.check_name(name),
            None => Err(DestinationDenied {
                host: String::new(),
                address: None,
                reason: "the URL has no host".to_owned(),
            }),
        }
    }

    /// A host name before resolution.
    pub fn check_name(&self, host: &str) -> Result<(), DestinationDenied> {
        for (rule, origin) in &self.deny {
            if let Rule::Host(h) = rule {
                if h.matches(host) {
                    return Err(DestinationDenied {
                        host: normalize_host(host),
                        address: None,
                        reason: Self::denied_because(rule, origin),
                    });
                }
            }
        }
        if !self.allow.is_empty() && !self.allowed_by_name(host) && !self.allow_has_networks() {
            return Err(Self::not_allowed(&normalize_host(host), None));
        }
        Ok(())
    }

    /// One address that `host` resolved to (the client connects only to addresses that
    /// pass).
    pub fn check_resolved(&self, host: &str, ip: IpAddr) -> Result<(), DestinationDenied> {
        self.check_name(host)?;
        self.check_address(&normalize_host(host), ip)?;
        if !self.allow.is_empty() && !self.allowed_by_name(host) && !self.in_allowed_network(ip) {
            return Err(Self::not_allowed(&normalize_host(host), Some(ip)));
        }
        Ok(())
    }

    /// An IP literal (URL host).
    pub fn check_ip(&self, shown: &str, ip: IpAddr) -> Result<(), DestinationDenied> {
        self.check_address(shown, ip)?;
        if !self.allow.is_empty() && !self.in_allowed_network(ip) {
            return Err(Self::not_allowed(shown, Some(ip)));
        }
        Ok(())
    }

    fn in_allowed_network(&self, ip: IpAddr) -> bool {
        self.allow
            .iter()
            .any(|r| matches!(r, Rule::Net(n) if n.contains(ip)))
    }

    fn check_address(&self, host: &str, ip: IpAddr) -> Result<(), DestinationDenied> {
        let candidates = [Some(canonical(ip)), nat64_embedded(ip)];
        for candidate in candidates.into_iter().flatten() {
            for (rule, origin) in &self.deny {
                if let Rule::Net(n) = rule {
                    if n.contains(candidate) {
                        return Err(DestinationDenied {
                            host: host.to_owned(),
                            address: Some(ip),
                            reason: Self::denied_because(rule, origin),
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

/// Reads `destinations:` (absent: the built-in denies only).
pub fn read_destinations(r: &mut Reader, node: Option<&Node>) -> DestinationPolicy {
    let Some(node) = node else {
        return DestinationPolicy::default();
    };
    let Some(f) = r.map(node, DESTINATIONS_KEY, &["allow", "deny", "builtin_deny"]) else {
        return DestinationPolicy::default();
    };
    let mut lists: [Vec<Rule>; 2] = [Vec::new(), Vec::new()];
    for (slot, key) in lists.iter_mut().zip(["allow", "deny"]) {
        let Some(n) = f.get(key) else { continue };
        let path = f.path_of(key);
        let Some(items) = r.list(n, &path) else {
            continue;
        };
        for (i, item) in items.iter().enumerate() {
            let p = index(&path, i);
            let Some(text) = r.non_empty_string(item, &p) else {
                continue;
            };
            match Rule::parse(&text) {
                Some(rule) => slot.push(rule),
                None => r.problem(
                    &p,
                    item.mark,
                    format!(
                        "{:?} is neither a host name (`hooks.example.com`, `*.example.com`) nor an IP address or network (`10.0.0.0/8`, `fd00::/8`)",
                        text.trim()
                    ),
                ),
            }
        }
    }
    let builtin_deny = f
        .get("builtin_deny")
        .and_then(|n| r.bool(n, &f.path_of("builtin_deny")))
        .unwrap_or(true);
    let [allow, deny] = lists;
    DestinationPolicy::new(allow, deny, builtin_deny)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn url(s: &str) -> url::Url {
        url::Url::parse(s).unwrap()
    }

    fn policy(yaml: &str) -> (DestinationPolicy, Vec<String>) {
        let tree = crate::config::yaml::parse(yaml).unwrap();
        let env: HashMap<String, String> = HashMap::new();
        let mut r = Reader::new(&env);
        let p = read_destinations(&mut r, tree.get("destinations"));
        (p, r.into_problems().iter().map(|p| p.to_string()).collect())
    }

    #[test]
    fn networks_match_by_prefix() {
        let n = Network::parse("169.254.0.0/16").unwrap();
        assert!(n.contains(ip("169.254.169.254")));
        assert!(n.contains(ip("::ffff:169.254.1.2")), "IPv4-mapped IPv6");
        assert!(!n.contains(ip("169.255.0.1")));
        let n = Network::parse("fe80::/10").unwrap();
        assert!(n.contains(ip("fe80::1")) && n.contains(ip("febf::1")));
        assert!(!n.contains(ip("fec0::1")));
        let n = Network::parse("10.1.2.3").unwrap();
        assert!(n.contains(ip("10.1.2.3")) && !n.contains(ip("10.1.2.4")));
        let n = Network::parse("10.0.0.0/9").unwrap();
        assert!(n.contains(ip("10.127.0.1")) && !n.contains(ip("10.128.0.1")));
        assert!(Network::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(Network::parse("10.0.0.0/33").is_none());
        assert!(Network::parse("example.com").is_none());
    }

    #[test]
    fn host_patterns() {
        let exact = HostPattern::parse("Hooks.Example.com.").unwrap();
        assert!(exact.matches("hooks.example.com") && exact.matches("HOOKS.example.com."));
        assert!(!exact.matches("x.hooks.example.com"));
        let wild = HostPattern::parse("*.example.com").unwrap();
        assert!(wild.matches("a.example.com") && wild.matches("a.b.example.com"));
        assert!(!wild.matches("example.com") && !wild.matches("badexample.com"));
        assert!(HostPattern::parse("bad host").is_none());
        assert!(HostPattern::parse("*").is_none());
        assert!(Rule::parse("[::1]").is_some());
        assert!(Rule::parse("10.0.0.0/x").is_none());
    }

    /// Without `destinations:`: link-local and metadata are denied, loopback and the
    /// rest of the world are not.
    #[test]
    fn defaults_deny_link_local_and_metadata_but_not_loopback() {
        let p = DestinationPolicy::default();
        for u in [
            "http://169.254.169.254/latest/meta-data/",
            "http://[fe80::1]/",
            "http://[fd00:ec2::254]/",
            "http://100.100.100.200/",
            "http://metadata.google.internal/computeMetadata/v1/",
            "http://METADATA.GOOG./",
            "http://[::ffff:169.254.169.254]/",
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://2852039166/", // 169.254.169.254 written as one number
        ] {
            let err = p.check_url(&url(u)).unwrap_err();
            assert!(err.reason.contains("built-in deny entry"), "{u}: {err}");
            assert!(!err.to_string().contains("meta-data"), "path shown: {err}");
        }
        for u in [
            "http://127.0.0.1:8080/",
            "http://[::1]/",
            "http://localhost/",
            "https://hooks.example.com/x",
            "http://10.0.0.5/",
        ] {
            assert_eq!(p.check_url(&url(u)), Ok(()), "{u}");
        }
        // a name that resolves to a metadata address
        let err = p
            .check_resolved("innocent.example.com", ip("169.254.169.254"))
            .unwrap_err();
        assert_eq!(err.address, Some(ip("169.254.169.254")));
        assert!(err.to_string().starts_with(
            "destination innocent.example.com (169.254.169.254) is denied: it matches the built-in deny entry 169.254.0.0/16"
        ), "{err}");
        assert_eq!(p.check_resolved("localhost", ip("127.0.0.1")), Ok(()));
        assert!(DestinationPolicy::allow_all()
            .check_url(&url("http://169.254.169.254/"))
            .is_ok());
    }

    #[test]
    fn deny_entries_by_name_and_network() {
        let (p, problems) = policy("destinations:\n  deny: [127.0.0.2, internal.example.com, \"*.corp\", \"10.0.0.0/8\"]\n");
        assert!(problems.is_empty(), "{problems:?}");
        let err = p.check_url(&url("http://127.0.0.2:9000/x")).unwrap_err();
        assert!(
            err.to_string()
                .contains("`destinations.deny` entry 127.0.0.2/32"),
            "{err}"
        );
        assert!(p.check_url(&url("http://127.0.0.1:9000/x")).is_ok());
        assert!(p.check_url(&url("http://internal.example.com/")).is_err());
        assert!(p.check_url(&url("http://db.corp/")).is_err());
        assert!(p
            .check_resolved("fine.example.com", ip("10.9.9.9"))
            .is_err());
        assert!(p.check_resolved("fine.example.com", ip("11.9.9.9")).is_ok());
        // the built-ins still apply next to the file's entries
        assert!(p.check_url(&url("http://169.254.169.254/")).is_err());
    }

    #[test]
    fn allow_list_by_name_or_network_and_deny_wins() {
        let (p, problems) = policy(
            "destinations:\n  allow: [hooks.example.com, \"*.slack.com\", 192.168.10.0/24]\n  deny: [192.168.10.66]\n",
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert!(p.check_url(&url("https://hooks.example.com/")).is_ok());
        assert!(p.check_url(&url("https://x.slack.com/")).is_ok());
        assert!(p.check_url(&url("http://192.168.10.5/")).is_ok());
        let err = p.check_url(&url("http://192.168.11.5/")).unwrap_err();
        assert!(
            err.reason.contains("no `destinations.allow` entry"),
            "{err}"
        );
        assert!(
            p.check_url(&url("http://192.168.10.66/")).is_err(),
            "deny wins"
        );
        // a name not allowed by name: its addresses must be in an allowed network
        assert!(p.check_url(&url("https://other.example.com/")).is_ok());
        assert!(p
            .check_resolved("other.example.com", ip("192.168.10.7"))
            .is_ok());
        assert!(p
            .check_resolved("other.example.com", ip("8.8.8.8"))
            .is_err());
        // an allowed name still may not resolve to a denied address
        assert!(p
            .check_resolved("hooks.example.com", ip("169.254.169.254"))
            .is_err());
        assert!(p.check_resolved("hooks.example.com", ip("8.8.8.8")).is_ok());
        // allow by names only: other names are refused before any lookup
        let (p, _) = policy("destinations:\n  allow: [hooks.example.com]\n");
        assert!(p.check_url(&url("https://evil.example.net/")).is_err());
        assert!(p.check_url(&url("http://127.0.0.1/")).is_err());
    }

    #[test]
    fn builtin_deny_can_be_lifted_and_bad_entries_are_reported() {
        let (p, problems) = policy("destinations:\n  builtin_deny: false\n");
        assert!(problems.is_empty(), "{problems:?}");
        assert!(p.check_url(&url("http://169.254.169.254/")).is_ok());
        let (_, problems) =
            policy("destinations:\n  allow: [\"not a host\", 10.0.0.0/99]\n  dny: []\n");
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("2:11: destinations.allow[0]:")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("unknown key `dny`")),
            "{problems:?}"
        );
    }
}
